"""``hide_label_mask``: the same model as the default mode, and a platform whose view does not depend on ``M``."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from protocols.channel import LocalPeer, PeerError
from protocols.paillier import CipherVector, generate_keypair
from protocols.party_data import PartyData
from protocols.vfl_lr import VERSION, TrainParams, plaintext_reference
from protocols.vfl_lr.disclosure import open_residuals
from protocols.vfl_lr.label_mask import residual_cts, tag_scales
from protocols.vfl_lr.messages import Field, Step
from protocols.vfl_lr.params import SlotPlan
from simulations.generate import SimulationConfig
from tests.bank_keys import bank_key_fields
from tests.test_vfl_lr import FAST, Platform, assert_matches_plaintext, simulate, train

# Tolerance: the hidden mode differs from the default only by k_t = round(2^G / m_t) standing for 2^G / m_t
# (relative error below 2^-(SCALE_MARGIN_BITS + 1) = 3e-8 per gradient) and by its dither (half a fixed-point
# unit, 2^-21, per residual: the size of the rounding both modes already make on z). Over a few steps that
# stays far below 1e-6 of the largest weight.
RTOL_OF_MAX = 1e-6


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> tuple[PartyData, PartyData]:
    """test_vfl_lr's data: 3 tags, 30% of labels known, some rows with none."""
    config = SimulationConfig(n_bank=900, n_platform=1000, overlap=0.8, n_tags=3, label_share=0.3, seed=3)
    return simulate(tmp_path_factory.mktemp("sim"), config)


def assert_same_weights(a: np.ndarray, b: np.ndarray) -> None:
    err = np.abs(a - b).max() / np.abs(a).max()
    assert err < RTOL_OF_MAX, err


def labelled_only(bank: PartyData, platform: PartyData) -> tuple[PartyData, PartyData]:
    """The rows with at least one known label: there both modes batch the same rows."""
    ids = [i for i, known in zip(bank.ids, ~np.isnan(bank.labels).all(axis=1), strict=True) if known]
    return bank.take(ids), platform.take(ids)


def test_hidden_mask_full_batch_trains_the_default_model(sim):
    """Full batch (so the hidden mode's extra rows, those without any label, change no batch's sum)."""
    bank, platform = sim
    assert np.isnan(bank.labels).all(axis=1).any()  # some rows have no label at all
    for kw in ({"optimizer": "sgd", "learning_rate": 0.5}, {}):
        default, plat_d, _, _ = train(bank, platform, epochs=2, batch_size=4096, **kw)
        hidden, plat_h, _, _ = train(bank, platform, epochs=2, batch_size=4096, hide_label_mask=True, **kw)
        assert_same_weights(default.model.weights, hidden.model.weights)
        assert_same_weights(default.model.intercept, hidden.model.intercept)
        assert_same_weights(plat_d.models[0].weights, plat_h.models[0].weights)
        assert default.report["encoding"]["label_mask"] == "sent to the platform"
        assert hidden.report["encoding"]["label_mask"] == "hidden from the platform"


def test_hidden_mask_mini_batches_match_default_and_plaintext(sim):
    bank, platform = labelled_only(*sim)
    kw: dict[str, Any] = {"epochs": 2, "batch_size": 128, "optimizer": "sgd", "learning_rate": 0.5}
    default, plat_d, _, _ = train(bank, platform, **kw)
    hidden, plat_h, _, params = train(bank, platform, hide_label_mask=True, **kw)
    assert_same_weights(default.model.weights, hidden.model.weights)
    assert_same_weights(plat_d.models[0].weights, plat_h.models[0].weights)
    assert_matches_plaintext(bank, platform, hidden, plat_h, params)
    ref = plaintext_reference(bank, platform, params)
    assert ref["platform"].shape == plat_h.models[0].weights.shape


def other_mask(bank: PartyData, seed: int) -> PartyData:
    """The same labels with another mask of the same shape (tag 0's kept, so the stratified split is the same)."""
    rng = np.random.default_rng(seed)
    truth = np.where(np.isnan(bank.labels), rng.integers(0, 2, bank.labels.shape), bank.labels)
    known = rng.random(bank.labels.shape) < 0.5
    known[:, 0] = ~np.isnan(bank.labels[:, 0])
    return replace(bank, labels=np.where(known, truth, np.nan))


def view(message: dict[str, Any]) -> dict[str, Any]:
    """What a message shows without decryption: bytes by length, arrays and other values as they are."""
    out: dict[str, Any] = {}
    for name, value in message.items():
        if isinstance(value, bytes):
            out[name] = ("bytes", len(value))
        elif isinstance(value, np.ndarray):
            out[name] = (value.dtype.str, value.shape, value.tobytes())
        else:
            out[name] = value
    return out


def test_curious_platform_sees_nothing_that_depends_on_the_mask(sim):
    bank, platform = sim
    kw: dict[str, Any] = {"epochs": 1, "batch_size": 128, "validation_share": 0.1, "hide_label_mask": True}
    runs = []
    for b in (bank, other_mask(bank, 1)):
        outcome, plat, peer, params = train(b, platform, transcript=True, **kw)
        runs.append((b, plat, peer.channels[0].transcript, params))
    (bank1, plat1, t1, params), (bank2, _, t2, _) = runs
    assert not np.array_equal(np.isnan(bank1.labels), np.isnan(bank2.labels))
    # Message for message, the same fields, sizes and plaintext values (ciphertext counts included).
    assert len(t1) == len(t2)
    for (step1, req1, rep1), (step2, req2, rep2) in zip(t1, t2, strict=True):
        assert step1 == step2
        assert Field.LABEL_MASK not in req1 and Field.LABEL_MASK not in req2
        assert view(req1) == view(req2), step1
        assert view(rep1) == view(rep2), step1

    # Decrypted residuals: unlabelled pairs (their mask alone) look like labelled ones (k_t d' 2^F + e).
    handler, sk = plat1.handlers[0], plat1.secret_keys[0]
    plan = handler.plan
    assert plan.hide_mask and handler.mask[handler.train].all()  # every training row counts as labelled
    sizes = next(req[Field.BATCH_SIZES] for step, req, _ in t1 if step == Step.EPOCH)
    rows = np.concatenate([req[Field.BATCH_ROWS] for step, req, _ in t1 if step == Step.EPOCH])
    batches = np.split(rows, np.cumsum(sizes)[:-1])
    assert set(rows) == set(params.split(bank1.labels, bank1.ids).train)  # rows without any label train too
    mask = ~np.isnan(bank1.labels)
    labelled, unlabelled = [], []
    gradients = [req for step, req, _ in t1 if step == Step.GRADIENT]
    for req, batch in zip(gradients, batches, strict=True):
        cv = CipherVector.from_bytes(sk.public_key, req[Field.MASKED_RESIDUALS])
        assert len(cv) == residual_cts(len(batch), plan)
        S = open_residuals(plan, sk.decrypt(cv), np.ones((len(batch), plan.n_tags), bool), hidden=True)
        m = mask[batch]
        labelled.extend(S[m].tolist())
        unlabelled.extend(S[~m].tolist())
    assert len(labelled) > 300 and len(unlabelled) > 300
    top = 2.0 ** plan.e_bits
    for values in (labelled, unlabelled):
        u = np.array([float(v) for v in values]) / top  # the mask is uniform on [0, 2^e_bits)
        assert np.all((u > -0.001) & (u < 1.001))
        # Empirical quantiles of 300+ uniform draws: standard error <= 0.03, so 0.1 is over 3 of them.
        assert np.allclose(np.quantile(u, [0.1, 0.25, 0.5, 0.75, 0.9]), [0.1, 0.25, 0.5, 0.75, 0.9], atol=0.1)
        assert np.median(np.log2(np.abs(u) * top)) > plan.e_bits - 2


def test_tag_scales_round_two_to_the_g_over_counts():
    plan = SlotPlan(8, 255, 3, 1000, hide_mask=True)
    assert plan.scale_bits == 8 + 24 and SlotPlan(8, 255, 3, 1000).scale_bits == 0
    k = tag_scales(np.array([1, 3, 0]), plan)
    assert k == [2 ** 32, round(2 ** 32 / 3), 0]
    assert SlotPlan(8, 255, 3, 1000, hide_mask=True).e_bits == SlotPlan(8, 255, 3, 1000).e_bits + 32 + 1


def test_platform_refuses_a_label_mask_when_the_job_hides_it(sim):
    _, platform = sim
    params = {Field.VERSION: VERSION, Field.PARAMS: TrainParams(**FAST, hide_label_mask=True).to_json(),
              Field.TAGS: '["a"]'}
    channel = LocalPeer(Platform(platform)).open("train", "job-m", params)
    keys = bank_key_fields("job-m", generate_keypair(1024, allow_insecure=True),
                           generate_keypair(1024, allow_insecure=True))
    n = len(platform)
    with pytest.raises(PeerError, match="must not carry one"):
        channel.call(Step.SETUP, {**keys, Field.N_ROWS: n,
                                  Field.BANK_COLUMNS: 2, Field.TRAIN_ROWS: np.arange(3),
                                  Field.VALIDATION_ROWS: np.arange(0), Field.TEST_ROWS: np.arange(3, 23),
                                  Field.LABEL_MASK: np.ones((n, 1), np.uint8)})


def test_hidden_mask_with_label_dp_runs(sim):
    bank, platform = sim
    outcome, _, _, _ = train(bank, platform, epochs=1, batch_size=256, hide_label_mask=True, label_dp="on",
                             dp_epsilon=50.0)
    assert outcome.report["label_privacy"]["mode"] == "dp"
