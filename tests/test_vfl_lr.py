"""Vertical LR: both parties in one process over the in-memory channel (the wire's rules enforced).

1024-bit keys keep the suite fast; the encodings, slot plans and messages are those of 2048-bit runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from party_common.data_loading import load_party_data
from protocols.channel import LocalPeer, PeerError
from protocols.evaluation import centralized_baseline, split_rows
from protocols.packing import unpack_signed
from protocols.paillier import CipherVector
from protocols.party_data import PartyData
from protocols.vfl_lr import (
    F_BITS,
    BankModel,
    PlatformModel,
    Scaler,
    SlotPlan,
    TrainingError,
    TrainParams,
    make_platform_train_handler,
    plaintext_reference,
    run_bank_training,
)
from simulations.generate import SimulationConfig, generate, write

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
FAST = {"key_bits": 1024, "validation_share": 0.0}


def aligned(bank: PartyData, platform: PartyData) -> tuple[PartyData, PartyData]:
    members = set(platform.ids)
    ids = [i for i in bank.ids if i in members]
    return bank.take(ids), platform.take(ids)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[PartyData, PartyData]:
    out = tmp_path_factory.mktemp("sim")
    data = generate(SimulationConfig(n_bank=900, n_platform=1000, overlap=0.8, n_tags=3, label_share=0.3, seed=3))
    paths = write(data, out)
    bank = load_party_data(paths["bank"], id_column="id", tag_columns=data.tag_columns)
    platform = load_party_data(paths["platform"], id_column="id")
    return aligned(bank, platform)


class Platform:
    """The platform's side in-process; keeps what it received and its private key, as a curious platform would."""

    def __init__(self, data: PartyData) -> None:
        self.data = data
        self.models: list[PlatformModel] = []
        self.handlers: list = []
        self.secret_keys: list = []

    def __call__(self, kind: str, job_id: str, params: dict) -> object:
        handler = make_platform_train_handler(job_id, params, self.data, on_model=self.models.append, workers=1,
                                              allow_insecure_keys=True)
        original_close = handler.close

        def close() -> None:
            self.secret_keys.append(getattr(handler, "sk", None))
            original_close()

        handler.close = close  # type: ignore[method-assign]
        self.handlers.append(handler)
        return handler


def train(bank: PartyData, platform: PartyData, transcript: bool = False, **kw):
    plat = Platform(platform)
    peer = LocalPeer(plat)
    if transcript:
        original_open = peer.open

        def open_with_transcript(*a, **k):
            channel = original_open(*a, **k)
            channel.keep_transcript = True
            return channel

        peer.open = open_with_transcript  # type: ignore[method-assign]
    params = TrainParams(**{**FAST, **kw})
    outcome = run_bank_training(peer, "job-test", bank, params, workers=1, allow_insecure_keys=True)
    return outcome, plat, peer, params


def test_joint_training_matches_plaintext_taylor_lr(simulated):
    bank, platform = simulated
    # Plain SGD: the update is linear in the gradient, so the weights themselves must agree.
    outcome, plat, _, params = train(bank, platform, epochs=2, batch_size=128, optimizer="sgd", learning_rate=0.5)
    ref = plaintext_reference(bank, platform, params)
    joint_a = np.vstack([outcome.model.weights, outcome.model.intercept])
    joint_b = plat.models[0].weights
    # The bank quantises only the cross term; the platform's whole gradient uses 8-bit features
    # (docs/protocol.md: a few per cent of the largest weight at most).
    for joint, plain, bound in ((joint_a, ref["bank"], 0.01), (joint_b, ref["platform"], 0.06)):
        err = np.abs(joint - plain).max() / np.abs(plain).max()
        assert err < bound, err
    # Scores agree almost perfectly.
    za = outcome.model.partial_scores(bank.features) + plat.models[0].partial_scores(platform.features)
    XA = np.hstack([standardised(bank, bank, params), np.ones((len(bank), 1))])
    zr = XA @ ref["bank"] + standardised(bank, platform, params) @ ref["platform"]
    for t in range(za.shape[1]):
        assert np.corrcoef(za[:, t], zr[:, t])[0, 1] > 0.995
    metrics = outcome.report["metrics"]
    assert set(metrics) == set(bank.tag_names)
    for tag in bank.tag_names:
        assert metrics[tag]["joint"]["auc"] > 0.6
        assert metrics[tag]["bank_only"]["auc"] is not None


def standardised(bank: PartyData, data: PartyData, params: TrainParams) -> np.ndarray:
    """A party's features as training standardised them (the split comes from the bank's labels)."""
    split = split_rows(bank.labels, test_share=params.test_share, validation_share=params.validation_share,
                       seed=params.seed)
    return Scaler.fit(data.features[split.train], params.clip).transform(data.features)


def test_unknown_labels_take_no_part(simulated):
    """Full batch: tag 0's model trained alongside other tags equals tag 0 trained alone."""
    bank, platform = simulated
    together, plat_together, _, _ = train(bank, platform, epochs=2, batch_size=4096)
    alone, plat_alone, _, _ = train(bank.select_tags([bank.tag_names[0]]), platform, epochs=2, batch_size=4096)
    assert np.allclose(together.model.weights[:, 0], alone.model.weights[:, 0], atol=1e-6)
    assert np.allclose(plat_together.models[0].weights[:, 0], plat_alone.models[0].weights[:, 0], atol=1e-6)


def test_what_the_platform_decrypts_is_masked(simulated):
    bank, platform = simulated
    outcome, plat, peer, params = train(bank, platform, transcript=True, epochs=1, batch_size=256)
    sk = plat.secret_keys[0]
    handler = plat.handlers[0]
    plan = SlotPlan(params.quant_bits, params.batch_size, len(bank.tag_names), handler.plan.plaintext_bits)
    residuals, gradients = [], []
    for step, request, _reply in peer.channels[0].transcript:
        if step == "train.gradient":
            res = sk.decrypt(CipherVector.from_bytes(sk.public_key, request["masked_residuals"]))
            for value in res:
                residuals.extend(unpack_signed(value, plan.pairs_per_ct, plan.pair_slot))
            gradients.extend(sk.decrypt(CipherVector.from_bytes(sk.public_key, request["masked_gradient"])))
    assert len(residuals) > 100 and gradients
    # The true residuals d' 2^F are below 2^27 in magnitude; what the platform sees spreads over ~2^67.
    values = np.array([abs(v) for v in residuals if v != 0], dtype=float)
    assert np.median(values) > 2.0 ** 60
    assert (values > 2.0 ** (F_BITS + 8)).mean() > 0.99
    # No request or reply holds a label or a bank feature value in the clear.
    for step, request, reply in peer.channels[0].transcript:
        for message in (request, reply):
            for name, value in message.items():
                if isinstance(value, np.ndarray) and value.dtype == np.float64:
                    assert step in ("train.validate", "train.finish"), (step, name)
                    assert name == "partial_scores"


def test_breast_auc_within_bound_of_centralized():
    bank = load_party_data(DATASETS / "breast_hetero_guest.csv", id_column="id", tag_columns=["y"])
    platform = load_party_data(DATASETS / "breast_hetero_host.csv", id_column="id")
    bank, platform = aligned(bank, platform)
    params = {"epochs": 10, "batch_size": 128, "l2": 0.1}
    outcome, _, _, p = train(bank, platform, **params)
    joint = outcome.report["metrics"]["y"]["joint"]["auc"]
    central = centralized_baseline(bank, platform, p)["y"]["auc"]
    assert joint >= central - 0.005, (joint, central)


def test_model_halves_round_trip(simulated, tmp_path):
    bank, platform = simulated
    outcome, plat, _, _ = train(bank, platform, epochs=1)
    outcome.model.alignment_job_id = "align-1"
    outcome.model.save(tmp_path / "bank.model")
    plat.models[0].save(tmp_path / "platform.model")
    loaded = BankModel.load(tmp_path / "bank.model")
    assert loaded.alignment_job_id == "align-1" and loaded.tag_names == bank.tag_names
    assert np.allclose(loaded.partial_scores(bank.features), outcome.model.partial_scores(bank.features))
    loaded_p = PlatformModel.load(tmp_path / "platform.model")
    assert np.allclose(loaded_p.partial_scores(platform.features), plat.models[0].partial_scores(platform.features))
    assert oct((tmp_path / "bank.model").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(ValueError, match="not a platform model"):
        PlatformModel.load(tmp_path / "bank.model")
    (tmp_path / "broken.model").write_text("{")
    with pytest.raises(ValueError, match="broken.model"):
        BankModel.load(tmp_path / "broken.model")


def test_tag_with_one_class_is_refused(simulated):
    bank, platform = simulated
    labels = bank.labels.copy()
    labels[~np.isnan(labels[:, 1]), 1] = 1.0
    from dataclasses import replace

    with pytest.raises(TrainingError, match=f"'{bank.tag_names[1]}' has one class only"):
        train(replace(bank, labels=labels), platform, epochs=1)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="batch_size"):
        TrainParams(batch_size=3).validate()
    with pytest.raises(ValueError, match="insecure"):
        TrainParams(key_bits=1024).validate()
    with pytest.raises(ValueError, match="optimizer"):
        TrainParams(optimizer="lbfgs").validate()


def test_platform_refuses_steps_out_of_order_and_weak_keys(simulated):
    bank, platform = simulated
    plat = Platform(platform)
    params = {"version": "vfl-lr-taylor-v1", "params": TrainParams(**FAST).to_json(), "tags": '["a"]'}
    channel = LocalPeer(plat).open("train", "job-x", params)
    with pytest.raises(PeerError, match="out of order"):
        channel.call("train.forward", {"epoch": 0, "batch": 0})
    strict = make_platform_train_handler("job-y", {**params, "params": TrainParams().to_json()}, platform,
                                         on_model=lambda m: None, workers=1)
    from protocols.paillier import generate_keypair

    weak, _ = generate_keypair(1024, allow_insecure=True)
    from protocols.channel import ProtocolError

    with pytest.raises(ProtocolError, match="refused"):
        strict.handle("train.setup", {"bank_key": weak.to_bytes(), "n_rows": len(platform),
                                      "train_rows": np.arange(3), "validation_rows": np.arange(0),
                                      "test_rows": np.arange(3, 5), "label_mask": np.ones((len(platform), 1), np.uint8)})
    with pytest.raises(ProtocolError, match="not supported"):
        make_platform_train_handler("job-z", {**params, "version": "v0"}, platform, on_model=lambda m: None)
