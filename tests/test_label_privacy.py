"""Label privacy: the attacks are real, the floor holds them off on one epoch, label DP has the calibrated scale."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import protocols.vfl_lr.platform as platform_module
from benchmarks.privacy import (
    attack_batches,
    exact_solve_attack,
    label_recovery_accuracy,
    load_default_credit,
    majority_rate,
    platform_view,
    single_batch_advantage,
)
from party_common.data_loading import load_party_data
from protocols.channel import LocalPeer
from protocols.errors import ProtocolError
from protocols.paillier import generate_keypair
from protocols.party_data import PartyData, Schema
from protocols.vfl_lr import TrainingError, TrainParams, make_platform_train_handler, run_bank_training
from protocols.vfl_lr.encoding import encode_z
from protocols.vfl_lr.label_privacy import (
    FLOOR_FACTOR,
    LabelPrivacy,
    batch_floor,
    below_floor,
    gaussian_epsilon,
    gaussian_mu,
    join_short_last,
    rdp_epsilon,
)
from protocols.vfl_lr.messages import Field, Step
from protocols.vfl_lr.params import F_BITS
from tests.bank_keys import bank_key_fields

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SETTINGS = {"epochs": 1, "l2": 0.1, "validation_share": 0.0}


@pytest.fixture(scope="module")
def breast() -> tuple[PartyData, PartyData]:
    bank = load_party_data(DATASETS / "breast_hetero_guest.csv", id_column="id", tag_columns=["y"])
    platform = load_party_data(DATASETS / "breast_hetero_host.csv", id_column="id")
    ids = [i for i in bank.ids if platform.row_of(i) >= 0]
    return bank.take(ids), platform.take(ids)


@pytest.fixture(scope="module")
def credit() -> tuple[PartyData, PartyData]:
    return load_default_credit()


def test_exact_solve_recovers_labels_when_a_batch_has_no_more_rows_than_features(breast):
    """The old behaviour, simulated: batches of 16 rows against 20 platform features give the labels away."""
    bank, platform = breast
    view = platform_view(bank, platform, TrainParams(**SETTINGS, batch_size=16))
    truth = np.where(view.mask, bank.labels, np.nan)
    guesses = np.concatenate([exact_solve_attack(view.Xq, b.rows, b.gradient, b.zb, view.mask)
                              for b in view.batches])
    labels = np.concatenate([truth[b.rows] for b in view.batches])
    accuracy = label_recovery_accuracy(guesses, labels)
    assert len(labels) > 400 and accuracy > 0.9 and accuracy > majority_rate(labels) + 0.25, accuracy


def strict_platform(platform: PartyData, params: TrainParams) -> Any:
    message = {Field.VERSION: platform_module.VERSION, Field.PARAMS: params.to_json(), Field.TAGS: '["y"]'}
    return make_platform_train_handler("job-floor", message, platform, on_result=lambda m: None, compute=1)


def test_the_platform_refuses_batches_below_the_floor(breast):
    bank, platform = breast
    params = TrainParams(**SETTINGS, batch_size=16, label_dp="off")
    split = params.split(bank.labels, bank.ids)
    handler = strict_platform(platform, params)
    try:
        mask = np.zeros((len(platform), 1), np.uint8)
        mask[split.train] = 1
        reply = handler.handle(Step.SETUP, {
            **bank_key_fields("job-floor", generate_keypair(2048), generate_keypair(2048)),
            Field.N_ROWS: len(platform), Field.BANK_COLUMNS: 2, Field.TRAIN_ROWS: split.train,
            Field.VALIDATION_ROWS: split.validation, Field.TEST_ROWS: split.test, Field.LABEL_MASK: mask})
        d = reply[Field.N_FEATURES]
        assert d == 20 and handler.floor == FLOOR_FACTOR * d  # one epoch
        rows = split.train[:64]
        with pytest.raises(ProtocolError, match=rf"16 labelled rows of tag 'y'.*the floor is {FLOOR_FACTOR * d} "
                                                rf"\({FLOOR_FACTOR} x {d} platform features x 1 epoch\)"):
            handler.handle(Step.EPOCH, {Field.EPOCH: 0, Field.BATCH_ROWS: rows,
                                        Field.BATCH_SIZES: np.full(4, 16, dtype=np.int64)})
        assert handler.state.epoch == -1  # refused before anything moved
    finally:
        handler.close()


def test_the_bank_refuses_an_explicit_batch_below_the_floor(breast):
    bank, platform = breast

    def factory(kind: str, job_id: str, message: dict) -> Any:
        return make_platform_train_handler(job_id, message, platform, on_result=lambda m: None, compute=1)

    small_batch = TrainParams(**SETTINGS, batch_size=64, label_dp="off")
    with pytest.raises(TrainingError, match=rf"the floor is {FLOOR_FACTOR * 20} \({FLOOR_FACTOR} x 20 platform "
                                            r"features x 1 epoch\).*raise batch_size \(to about \d+ at this "
                                            r"tag's label share\), or set label_dp to 'on' or 'auto'"):
        run_bank_training(LocalPeer(factory), "job-floor-1", bank, small_batch, compute=1)
    small_data = TrainParams(**{**SETTINGS, "epochs": 3}, batch_size=256, label_dp="off")
    with pytest.raises(TrainingError, match=rf"the floor is {FLOOR_FACTOR * 60} \({FLOOR_FACTOR} x 20 platform "
                                            r"features x 3 epochs\).*tag 1 has only \d+ labelled training rows, "
                                            r"so no batch can meet it, or set label_dp"):
        run_bank_training(LocalPeer(factory), "job-floor-2", bank, small_data, compute=1)


def test_batches_join_and_the_plan_picks_floor_or_dp():
    mask = np.zeros((1000, 2), dtype=bool)
    mask[:, 0] = True
    mask[::2, 1] = True
    rows = np.arange(1000)
    batches = [rows[:400], rows[400:800], rows[800:830]]
    assert below_floor(batches, mask, 100) == (2, 0, 30)
    joined = join_short_last(batches, mask, 100)
    assert [len(b) for b in joined] == [400, 430] and below_floor(joined, mask, 100) is None
    # 5 platform features, 2 epochs: floor 100 labelled rows per tag. Tag 1 has 500 labelled rows: enough.
    plan = LabelPrivacy.plan(TrainParams(batch_size=300, epochs=2), rows, mask, 5, strict=True)
    assert plan.mode == "floor" and plan.noise is None and plan.smallest is not None and plan.smallest >= 100
    for epoch in range(2):
        assert below_floor(plan.batches(epoch), mask, 100) is None
    with pytest.raises(TrainingError, match=r"the floor is 100 \(10 x 5 platform features x 2 epochs\)"):
        LabelPrivacy.plan(TrainParams(batch_size=150, epochs=2, label_dp="off"), rows, mask, 5, strict=True)
    small_batch = LabelPrivacy.plan(TrainParams(batch_size=150, epochs=2), rows, mask, 5, strict=True)
    assert small_batch.mode == "dp" and "miss the floor of 100" in small_batch.summary()["notes"][0]
    # 60 features: floor 600 > the 500 labelled rows of tag 1, so "auto" turns label DP on ...
    dp = LabelPrivacy.plan(TrainParams(batch_size=150, epochs=1), rows, mask, 60, strict=True)
    assert dp.mode == "dp" and dp.noise is not None and dp.summary()["epsilon"] == 0.0
    # ... except in insecure test runs, which go on unprotected and say so.
    loose = LabelPrivacy.plan(TrainParams(batch_size=150, epochs=1), rows, mask, 60, strict=False)
    assert loose.mode == "unprotected" and "below the floor" in loose.summary()["notes"][0]


def test_least_squares_advantage_at_the_floor_stays_within_0_02(credit):
    """default_credit (10 platform features). One epoch: each batch attacked alone, scores pooled; three
    epochs at their floor: every gradient the platform kept, stacked.

    The platform's features alone predict the label above the majority rate (its own model does), so the
    leak is the attack's accuracy beyond what a least-squares fit of the labels on its features gets.
    """
    bank, platform = credit
    d = platform.features.shape[1]
    at_floor = single_batch_advantage(platform_view(bank, platform, TrainParams(
        **SETTINGS, batch_size=batch_floor(d, 1))), bank.labels)
    assert at_floor["advantage_over_features"] <= 0.02, at_floor
    assert at_floor["advantage"] < at_floor["feature_baseline"] - at_floor["majority_rate"] + 0.02
    three = TrainParams(**{**SETTINGS, "epochs": 3}, batch_size=batch_floor(d, 3))
    stacked = attack_batches(platform_view(bank, platform, three, join_floor=batch_floor(d, 3)), bank.labels)
    assert stacked["advantage_over_features"] <= 0.02, stacked
    below = single_batch_advantage(platform_view(bank, platform, TrainParams(**SETTINGS, batch_size=2 * d)),
                                   bank.labels)
    assert below["advantage_over_features"] > 0.05, below


def test_epochs_stacked_beat_the_floor_and_noise_stops_them(credit):
    bank, platform = credit
    subset = np.arange(6000)
    bank, platform = bank.take(bank.ids[subset]), platform.take(platform.ids[subset])
    params = TrainParams(**{**SETTINGS, "epochs": 4}, batch_size=100)
    floor_only = platform_view(bank, platform, params, join_floor=100)  # the one-epoch floor, four epochs
    one, four = attack_batches(floor_only, bank.labels, [0]), attack_batches(floor_only, bank.labels)
    assert four["label_recovery_accuracy"] > one["label_recovery_accuracy"] + 0.04, (one, four)
    # Label DP (epsilon 3): each label is released once, noisy; stacking epochs gives no noise-free view. What is
    # left is the per-row guarantee (a Bayes-optimal guess beats this 78/22 majority by at most 0.005 at mu 0.72)
    # plus the best cut's optimism over 4,800 labels (one standard error 0.006), and stays under the features'.
    noisy = attack_batches(platform_view(bank, platform, params, dp=True), bank.labels)
    assert noisy["label_recovery_accuracy"] < noisy["majority_rate"] + 0.02, noisy
    assert noisy["label_recovery_accuracy"] < noisy["feature_baseline"], noisy


def test_accountant_matches_google_dp_accounting():
    """Reference: dp_accounting 0.6.0 (PyPI), GaussianDpEvent(z) composed n times; get_epsilon(delta) of its
    PLDAccountant (value_discretization_interval=1e-5) and of its RdpAccountant (default orders)."""
    cases = [  # z, n, delta, PLD epsilon, RDP epsilon
        (1.0, 1, 1e-5, 4.377178095869925, 4.728507067217623),
        (2.0, 5, 1e-5, 4.983306406190732, 5.377728336819822),
        (0.8, 10, 1e-6, 25.947734960555785, 27.38482163001636),
        (5.0, 3, 1e-5, 1.3262312339529294, 1.445621967952188),
    ]
    for z, n, delta, pld, rdp in cases:
        mu = math.sqrt(n) / z
        assert gaussian_epsilon(mu, delta) == pytest.approx(pld, rel=1e-6)
        assert rdp_epsilon(mu, delta) == pytest.approx(rdp, rel=1e-9)
        # Calibration is the inverse: the mu found for (epsilon, delta) spends exactly epsilon.
        assert gaussian_epsilon(gaussian_mu(pld, delta), delta) == pytest.approx(pld, rel=1e-6)


def synthetic(rows: int, features: int, seed: int = 0) -> tuple[PartyData, PartyData]:
    rng = np.random.default_rng(seed)
    XA, XB = rng.normal(size=(rows, 4)), rng.normal(size=(rows, features))
    y = (rng.random(rows) < 1 / (1 + np.exp(-XA[:, 0] - XB[:, 0]))).astype(np.float64)[:, None]
    ids = np.array([f"c{i}" for i in range(rows)], dtype=object)

    def party(X: np.ndarray, labels: np.ndarray, tags: list[str]) -> PartyData:
        cols = [f"x{j}" for j in range(X.shape[1])]
        return PartyData("synthetic", ids, X, cols, labels, tags, Schema("id", tuple(cols), ("float64",) * len(cols),
                                                                        tuple(tags)))

    return party(XA, y, ["y"]), party(XB, np.zeros((rows, 0)), [])


def test_with_label_dp_the_platforms_gradient_carries_noise_of_the_calibrated_scale(monkeypatch):
    """The real protocol: the bank's noise sits on each labelled training label, so the platform's exact
    X_Bq^T S - X_Bq^T E of the first batch (both models at their start) is X_Bq^T (M o (d' 2^F + noise)) with its
    features as they are, and the noise's scale is a label's step: nothing the platform declares or computes sets it."""
    bank, platform = synthetic(300, 120)
    seen: dict[str, Any] = {}
    original_xts, original_noise = platform_module.exact_xt_s, LabelPrivacy.label_noise

    def recording(Xq: np.ndarray, S: Any, n_cols: int, bits: int) -> list[list[int]]:
        out = original_xts(Xq, S, n_cols, bits)
        seen.setdefault("xts", out)
        return out

    def noise_recording(self: LabelPrivacy, n_rows: int, n_tags: int, **kw: Any) -> np.ndarray:
        out = original_noise(self, n_rows, n_tags, **kw)
        seen.setdefault("noise", out)
        return out

    monkeypatch.setattr(platform_module, "exact_xt_s", recording)
    monkeypatch.setattr(LabelPrivacy, "label_noise", noise_recording)
    handlers = []

    def factory(kind: str, job_id: str, message: dict) -> Any:
        handler = make_platform_train_handler(job_id, message, platform, on_result=lambda m: None, compute=1,
                                              insecure_for_tests=True)
        gradient = handler._gradient

        def keep_mask_path(msg: dict) -> dict:
            if "xte" not in seen:
                seen["xte"], seen["rows"] = handler.xte[handler.state.next_batch].copy(), handler.batches[0]
            return gradient(msg)

        handler._steps[Step.GRADIENT] = keep_mask_path
        handlers.append(handler)
        return handler

    params = TrainParams(epochs=1, batch_size=128, validation_share=0.0, key_bits=1024, label_dp="on",
                         dp_epsilon=4.0)
    outcome = run_bank_training(LocalPeer(factory), "job-dp", bank, params, compute=1, insecure_for_tests=True)
    privacy = outcome.report["label_privacy"]
    assert privacy["mode"] == "dp" and privacy["epsilon"] == pytest.approx(4.0, rel=1e-6)
    # sigma = z * 4 * 2^F * sqrt(T), z = 1 / mu(epsilon, delta): a label's step, drawn once per (row, tag)
    sigma = 1 / gaussian_mu(4.0, 1e-5) * 4 * (1 << F_BITS)
    assert privacy["residual_sigma_fixed_point"] == pytest.approx(sigma, rel=1e-9)
    assert "platform_row_norm_bound" not in privacy
    handler = handlers[0]
    rows, noise = seen["rows"], seen["noise"][seen["rows"]]
    assert 0.8 < seen["noise"].std() / sigma < 1.2, seen["noise"].std() / sigma
    m = handler.mask[rows][:, 0]
    split = params.split(bank.labels, bank.ids)
    z_a = encode_z(params.start_intercepts(bank.labels, split.train))[0]  # the features' weights start at 0
    d_fixed = z_a + ((2 - 4 * bank.labels[rows, 0]).astype(np.int64) << F_BITS) + noise[:, 0]
    exact = handler.Xq[rows].T.astype(object) @ np.where(m, d_fixed, 0).astype(object)
    got = np.array(seen["xts"], dtype=object)[:, 0] - seen["xte"][:, 0]
    assert (got == exact).all()  # the platform's gradient is its own features times the noisy residuals


def test_train_params_label_dp_fields():
    p = TrainParams(label_dp="on", dp_epsilon=1, dp_delta=1e-6)
    assert TrainParams.from_json(p.to_json()) == p and TrainParams().label_dp == "auto"
    p.validate()
    for bad, match in [({"label_dp": "yes"}, "label_dp must be 'auto', 'on' or 'off'"),
                       ({"dp_epsilon": 0.0}, "dp_epsilon must be in"), ({"dp_epsilon": 1000.0}, "dp_epsilon"),
                       ({"dp_delta": 0.0}, "dp_delta must be in"), ({"dp_delta": 0.01}, "dp_delta")]:
        with pytest.raises(TrainingError, match=match):
            TrainParams(**bad).validate()  # type: ignore[arg-type]
    with pytest.raises(TrainingError, match="'label_dp' must be a string, got bool"):
        TrainParams.from_dict({"label_dp": True})
    with pytest.raises(TrainingError, match="'dp_epsilon' must be a number, got str"):
        TrainParams.from_dict({"dp_epsilon": "3"})


def test_the_held_out_recovery_accuracy_reads_separated_labels_and_not_noise():
    from benchmarks.privacy import held_out_recovery_accuracy

    rng = np.random.default_rng(4)
    y = (rng.random(400) < 0.3).astype(float)
    assert held_out_recovery_accuracy(-y + 0.01 * rng.random(400), y) == 1.0  # lowest are positive
    noise = [held_out_recovery_accuracy(rng.normal(size=400), y) for _ in range(20)]
    assert abs(float(np.mean(noise)) - majority_rate(y)) < 0.02  # no cut chosen on other rows beats the majority
