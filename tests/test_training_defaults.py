"""Training defaults a bank can act on: base-rate intercepts, the same-optimiser yardstick, Platt calibration,
a split keyed by customer IDs (the same model in any alignment order), and the stored test predictions."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from protocols.errors import ProtocolError
from protocols.party_data import PartyData
from protocols.vfl_lr import BankModel, TrainParams
from protocols.vfl_lr.batching import (
    DP_EPOCHS,
    MAX_AUTO_EPOCHS,
    MIN_STEPS_PER_EPOCH,
    choose_batch_size,
    choose_schedule,
    session_batch_bound,
    session_epochs,
)
from protocols.vfl_lr.label_privacy import LabelPrivacy, max_batch_rows
from protocols.vfl_lr.params import TrainingError
from protocols.vfl_lr.reference import taylor_fit
from protocols.vfl_lr.state import Scaler, base_rate_intercepts
from protocols.vfl_lr.yardstick import bank_only_reference, pair_metrics
from simulations.generate import SimulationConfig
from tests.test_vfl_lr import simulate, train

KW: dict[str, Any] = {"epochs": 2, "batch_size": 128, "validation_share": 0.3, "intercept_init": "base_rate"}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> tuple[PartyData, PartyData]:
    config = SimulationConfig(n_bank=900, n_platform=1000, overlap=0.8, n_tags=2, label_share=0.5, seed=5)
    return simulate(tmp_path_factory.mktemp("sim"), config)


@pytest.fixture(scope="module")
def run(sim: tuple[PartyData, PartyData]) -> Any:
    bank, platform = sim
    return train(bank, platform, **KW)


def test_intercepts_start_at_base_rate_log_odds(sim):
    bank, _ = sim
    params = TrainParams(**KW)
    split = params.split(bank.labels, bank.ids)
    rates = np.nanmean(bank.labels[split.train], axis=0)
    expected = np.log(rates / (1 - rates))
    assert np.allclose(base_rate_intercepts(bank.labels, split.train), expected)
    X = Scaler.fit(bank.features[split.train], params.clip).transform(bank.features)
    X = np.hstack([X, np.ones((len(X), 1))])
    mask = ~np.isnan(bank.labels)
    (W,) = taylor_fit([X], bank.labels, mask, params, lambda e: [], 1,
                      intercepts=params.start_intercepts(bank.labels, split.train))
    assert np.array_equal(W[-1], expected) and not W[:-1].any()
    assert TrainParams(intercept_init="zero").start_intercepts(bank.labels, split.train) is None


def test_bank_only_yardstick_is_the_same_optimiser_run_directly(sim, run):
    bank, _ = sim
    outcome, _, _, params = run
    report = outcome.report
    assert report["epochs_run"] == params.epochs and report["label_privacy"]["mode"] == "unprotected"
    direct = bank_only_reference(bank, TrainParams(**params.to_dict()))
    for t, tag in enumerate(bank.tag_names):
        m = report["metrics"][tag]
        expected = {**pair_metrics(direct.test[t], direct.calibration[t]), "best_epoch": int(direct.best_epoch[t]) + 1}
        assert m["bank_only"] == expected
        assert m["bank_only_sklearn"]["auc"] is not None  # the scikit-learn figure stays, under its own key


def test_calibration_brings_mean_prediction_to_the_base_rate(run):
    outcome = run[0]
    off_before = 0
    for tag, m in outcome.report["metrics"].items():
        joint = m["joint"]
        # 270 labelled validation rows: too few for the monotone map, so Platt's two numbers
        assert m["calibration"]["method"] == "platt" and m["calibration"]["a"] > 0 and m["calibration"]["knots"] is None
        assert abs(joint["mean_predicted_calibrated"] - joint["base_rate"]) < 0.05, tag
        off_before += abs(joint["mean_predicted"] - joint["base_rate"]) > 0.05
        assert joint["logloss_calibrated"] < joint["logloss"] + 0.05  # small sets: Platt on 30% of 700 rows
    assert off_before  # the Taylor loss leaves the raw level off
    model = outcome.model
    z = np.array([[-1.0, 0.5]])
    a = np.array([c["a"] for c in model.calibration])
    b = np.array([c["b"] for c in model.calibration])
    assert np.allclose(model.probabilities(z), 1 / (1 + np.exp(-(a * z + b))))
    assert np.allclose(model.probabilities(z[:, ::-1], [1, 0]), model.probabilities(z)[:, ::-1])
    # Model dicts keep the calibration; those stored before it load with the identity.
    d = model.to_dict()
    assert BankModel.from_dict(d, where="m").calibration == model.calibration
    old = BankModel.from_dict({k: v for k, v in d.items() if k != "calibration"}, where="old")
    assert old.calibration == [{"a": 1.0, "b": 0.0, "knots": None}] * len(model.tag_names)


def test_another_alignment_order_gives_the_same_model_bit_for_bit(sim, run):
    bank, platform = sim
    perm = np.random.default_rng(1).permutation(len(bank))
    ids = [bank.ids[i] for i in perm]
    other, _, _, _ = train(bank.take(ids), platform.take(ids), **KW)
    first = run[0]
    assert np.array_equal(first.model.weights, other.model.weights)
    assert np.array_equal(first.model.intercept, other.model.intercept)
    assert first.model.calibration == other.model.calibration
    for key in ("metrics", "split", "test_predictions", "validation_predictions"):
        assert first.report[key] == other.report[key], key
    history = [{k: v for k, v in e.items() if not k.startswith("seconds")} for e in first.report["history"]]
    assert history == [{k: v for k, v in e.items() if not k.startswith("seconds")} for e in other.report["history"]]


def test_test_predictions_have_the_documented_shape(sim, run):
    bank, _ = sim
    report = run[0].report
    assert "hash" in report["split_scheme"] or "blake2b" in report["split_scheme"]
    for key in ("test_predictions", "validation_predictions"):
        assert set(report[key]) == set(bank.tag_names)
        for tag, entry in report[key].items():
            assert set(entry) == {"joint", "bank_only"}
            n = report["metrics"][tag]["joint"]["n"] if key == "test_predictions" else None
            for side in entry.values():
                assert set(side) == {"p", "y"} and len(side["p"]) == len(side["y"])
                assert all(0 <= p <= 1 and round(p, 6) == p for p in side["p"])
                assert set(side["y"]) <= {0, 1}
                if n is not None:
                    assert len(side["p"]) == n


# ---- the automatic batch size (protocols/vfl_lr/batching.py) ----


def _labels(n: int, share: float, n_tags: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` batched rows and a mask of labels known with ``share``."""
    rng = np.random.default_rng(seed)
    return np.arange(n), rng.random((n, n_tags)) < share


def test_batch_size_defaults_to_automatic_and_validates():
    assert TrainParams().batch_size is None and TrainParams().validate().batch_size is None
    assert TrainParams(batch_size=16).validate().batch_size == 16
    for bad in (15, 65537, True, 64.0):
        with pytest.raises(TrainingError, match="batch_size must be null"):
            TrainParams(batch_size=bad).validate()  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="batch_size is null"):
        max_batch_rows(None)  # a session's parameters carry an integer: the platform refuses a null one


def test_defaults_on_a_small_simulated_set_take_one_newton_step_or_several_adam_steps_per_epoch(sim, run):
    bank, platform = sim
    # No mini-batch of 4 steps holds the floor here: the default ("auto") runs Newton on one full batch per epoch
    outcome, _, _, params = train(bank, platform, epochs=2, validation_share=0.3)
    batching, history = outcome.report["batching"], outcome.report["history"]
    assert batching["batch_size"] == outcome.report["params"]["batch_size"] and batching["automatic"]
    assert outcome.report["params"]["optimizer"] == "newton" and params.optimizer == "auto"
    assert batching["steps_per_epoch"] == 1 and "one batch per epoch" in batching["reason"]
    assert all(h["batches"] == 1 for h in history)
    # A first-order optimiser takes several steps per epoch (1024, the former default, was one step here).
    outcome, _, _, params = train(bank, platform, epochs=2, validation_share=0.3, optimizer="adam")
    batching, history = outcome.report["batching"], outcome.report["history"]
    assert batching["steps_per_epoch"] >= MIN_STEPS_PER_EPOCH and "steps per epoch" in batching["reason"]
    assert all(h["batches"] == batching["steps_per_epoch"] for h in history)
    # an explicit batch size is kept as it is
    assert batching["batch_size"] < 1024 and params.batch_size is None
    explicit = run[0].report["batching"]
    assert explicit["batch_size"] == 128 and not explicit["automatic"] and explicit["reason"].startswith("set by")


def test_automatic_batches_meet_the_floor_without_dp_on_a_large_enough_set():
    rows, mask = _labels(20000, 0.5)
    params = TrainParams(epochs=2)
    choice = choose_batch_size(params, rows, mask, 5, session_batch_bound(len(rows)))
    plan = LabelPrivacy.plan(dataclasses.replace(params, batch_size=choice.batch_size), rows, mask, 5,
                             strict=True)
    assert choice.kind == "floor" and plan.mode == "floor" and plan.noise is None
    assert plan.smallest is not None and plan.smallest >= plan.floor
    assert len(plan.batches(0)) >= MIN_STEPS_PER_EPOCH and choice.batch_size <= session_batch_bound(len(rows))
    # A floor 10 times higher needs bigger batches, found all the same (still at least 4 steps).
    bigger = choose_batch_size(params, rows, mask, 50, session_batch_bound(len(rows)))
    assert bigger.kind == "floor" and bigger.batch_size > choice.batch_size
    explicit = choose_batch_size(TrainParams(epochs=2, batch_size=300), rows, mask, 5, 300)
    assert (explicit.batch_size, explicit.kind) == (300, "explicit")


def test_an_unreachable_floor_turns_label_dp_on_or_is_refused_when_off():
    rows, mask = _labels(600, 0.5)
    auto = TrainParams(epochs=2)
    choice = choose_batch_size(auto, rows, mask, 20, session_batch_bound(len(rows)))  # floor 400 of ~300 labels
    # label DP with the Newton optimiser ("auto"): every row in one batch per epoch
    assert choice.kind == "no_floor" and choice.full and choice.batch_size == 600
    plan = LabelPrivacy.plan(dataclasses.replace(auto, batch_size=choice.batch_size), rows, mask, 20, strict=True)
    assert plan.mode == "dp" and plan.noise is not None and len(plan.batches(0)) == 1
    assert "label DP with the Newton optimiser" in choice.report(len(plan.batches(0)), plan.mode)["reason"]
    # an explicit first-order optimiser keeps about TARGET_STEPS_PER_EPOCH steps
    adam = choose_batch_size(TrainParams(epochs=2, optimizer="adam"), rows, mask, 20, session_batch_bound(len(rows)))
    assert (adam.batch_size, adam.full) == (60, False)
    plan = LabelPrivacy.plan(dataclasses.replace(auto, batch_size=adam.batch_size), rows, mask, 20, strict=True)
    assert "label DP is on" in adam.report(len(plan.batches(0)), plan.mode)["reason"]
    off = TrainParams(epochs=2, label_dp="off")
    choice = choose_batch_size(off, rows, mask, 20, session_batch_bound(len(rows)))
    with pytest.raises(TrainingError, match=r"the floor is 400 \(10 x 20 platform features x 2 epochs\)"):
        LabelPrivacy.plan(dataclasses.replace(off, batch_size=choice.batch_size), rows, mask, 20, strict=True)


# ---- automatic epochs (batching.choose_schedule) ----


def test_epochs_default_to_automatic_and_validate():
    assert TrainParams().epochs is None and TrainParams().validate().epochs is None
    assert session_epochs(TrainParams()) == MAX_AUTO_EPOCHS == 10 and session_epochs(TrainParams(epochs=3)) == 3
    for bad in (0, 1001):
        with pytest.raises(TrainingError, match="epochs must be null"):
            TrainParams(epochs=bad).validate()
    with pytest.raises(TrainingError, match="'epochs' must be an integer, got bool"):
        TrainParams.from_dict({"epochs": True})
    assert TrainParams.from_dict({"epochs": None}).epochs is None


def test_automatic_epochs_on_a_small_set_take_label_dp_with_two_epochs():
    rows, mask = _labels(600, 0.5)  # 40 platform features: the floor is out of reach for any epochs
    params, choice, entry = choose_schedule(TrainParams(), rows, mask, 40, session_batch_bound(len(rows)))
    assert (params.epochs, entry["epochs"], entry["automatic"], entry["max_epochs"]) == (DP_EPOCHS, 2, True, 10)
    assert choice.kind == "no_floor" and "2 epochs" in entry["reason"]
    plan = LabelPrivacy.plan(params, rows, mask, 40, strict=True)
    assert plan.mode == "dp" and plan.noise is not None and plan.noise.epochs == DP_EPOCHS  # noise for 2, not 10
    assert len(plan.batches(0)) == 1  # Newton on the full batch
    on, _, entry = choose_schedule(TrainParams(label_dp="on"), rows, mask, 20, session_batch_bound(len(rows)))
    assert on.epochs == DP_EPOCHS and "label_dp is 'on'" in entry["reason"]


def test_automatic_epochs_on_a_small_set_take_the_most_a_full_batch_meets_without_noise():
    rows, mask = _labels(600, 0.5)  # about 300 labelled rows per tag, 10 platform features: floor 100 per epoch
    params, choice, entry = choose_schedule(TrainParams(), rows, mask, 10, session_batch_bound(len(rows)))
    fewest = int(mask.sum(axis=0).min())
    assert choice.kind == "full_floor" and choice.full and params.batch_size == 600
    assert params.epochs == min(10, fewest // 100) and "one full batch per epoch" in entry["reason"]
    plan = LabelPrivacy.plan(params, rows, mask, 10, strict=True)
    assert plan.mode == "floor" and plan.noise is None and len(plan.batches(0)) == 1
    assert "one Newton step per epoch" in choice.report(1, plan.mode)["reason"]
    # one epoch more and the full batch misses the floor
    assert choose_batch_size(dataclasses.replace(params, epochs=params.epochs + 1, batch_size=None), rows, mask, 10,
                             600).kind == "no_floor"


def test_automatic_epochs_on_a_large_set_take_the_floor_with_the_most_epochs_it_allows():
    rows, mask = _labels(20000, 0.5)
    bound = session_batch_bound(len(rows))
    easy, _, _ = choose_schedule(TrainParams(), rows, mask, 5, bound)
    assert easy.epochs == MAX_AUTO_EPOCHS  # never more than the session's bound
    params, choice, entry = choose_schedule(TrainParams(), rows, mask, 40, bound)
    assert choice.kind == "floor" and 1 < params.epochs < MAX_AUTO_EPOCHS and entry["epochs"] == params.epochs
    assert choice.floor == 10 * 40 * params.epochs
    assert choose_batch_size(dataclasses.replace(params, epochs=params.epochs + 1, batch_size=None), rows, mask, 40,
                             bound).kind != "floor"  # one more epoch and the floor is out of reach
    plan = LabelPrivacy.plan(params, rows, mask, 40, strict=True)
    assert plan.mode == "floor" and plan.noise is None and len(plan.batches(0)) >= MIN_STEPS_PER_EPOCH


def test_explicit_epochs_are_kept_and_automatic_epochs_with_label_dp_off_are_ten():
    rows, mask = _labels(600, 0.5)
    bound = session_batch_bound(len(rows))
    kept, _, entry = choose_schedule(TrainParams(epochs=3), rows, mask, 20, bound)
    assert kept.epochs == 3 and not entry["automatic"] and entry["reason"].startswith("set by")
    off, choice, entry = choose_schedule(TrainParams(label_dp="off"), rows, mask, 20, bound)
    ten, ten_choice, _ = choose_schedule(TrainParams(label_dp="off", epochs=10), rows, mask, 20, bound)
    assert off == ten and choice == ten_choice and entry["automatic"]
    with pytest.raises(TrainingError, match=r"the floor is 2000 \(10 x 20 platform features x 10 epochs\)"):
        LabelPrivacy.plan(off, rows, mask, 20, strict=True)


def test_defaults_end_to_end_run_the_chosen_epochs_and_report_them(sim):
    bank, platform = sim
    outcome, _, _, _ = train(bank, platform, epochs=None, validation_share=0.3, patience_steps=0)
    report = outcome.report
    assert report["epochs"]["automatic"] and report["epochs"]["epochs"] == report["params"]["epochs"]
    assert report["epochs_run"] == len(report["history"]) == report["epochs"]["epochs"] <= MAX_AUTO_EPOCHS
    assert report["batching"]["steps_per_epoch"] == 1 and report["params"]["optimizer"] == "newton"
    direct = bank_only_reference(bank, TrainParams(**report["params"]))  # the yardstick, rebuilt from the report
    for t, tag in enumerate(bank.tag_names):
        assert report["metrics"][tag]["bank_only"]["auc"] == pair_metrics(direct.test[t], direct.calibration[t])["auc"]


def test_the_automatic_validation_share_grows_on_large_sets_and_an_explicit_one_wins() -> None:
    auto = TrainParams().validate()
    assert auto.validation_share_for(569) == 0.1  # a small set keeps its rows for training and the label floor
    assert auto.validation_share_for(30_000) == 0.2  # a large one buys the calibration map more rows
    assert TrainParams(validation_share=0.05).validate().validation_share_for(30_000) == 0.05
    assert TrainParams(validation_share=0.0).validate().validation_share_for(30_000) == 0.0
    labels = np.zeros((30_000, 1))
    labels[::5] = 1
    split = auto.split(labels, [f"c{i}" for i in range(30_000)])
    assert abs(len(split.validation) - 0.2 * 24_000) <= 10
    with pytest.raises(TrainingError, match="validation_share"):
        TrainParams(validation_share=0.95).validate()
