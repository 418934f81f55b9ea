"""The per-tag calibrator (Platt on small validation, the monotone map on large, both strictly increasing) and
the per-tag choice of the served model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.party_data import Schema
from protocols.uncertainty import expected_calibration_error, point_auc_ks
from protocols.vfl_lr import BankModel
from protocols.vfl_lr.calibration import (
    MONOTONE_MIN_ROWS,
    apply,
    calibrate_tag,
    check_entry,
    fit_monotone,
)
from protocols.vfl_lr.model import BankOnlyHalf, ModelError
from protocols.vfl_lr.state import Scaler
from protocols.vfl_lr.yardstick import choose_served


def misspecified(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores whose true rate is no sigmoid of them: flat at 0.12 over the lowest 70%, then steep to 0.8
    (default_credit's shape, where two numbers leave an ECE of 0.05)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    cut = np.quantile(z, 0.7)
    rate = np.where(z < cut, 0.12, 0.12 + 0.68 * np.clip((z - cut) / (z.max() - cut), 0, 1) ** 0.5)
    return z, (rng.random(n) < rate).astype(np.float64)


def test_monotone_map_fixes_what_platt_cannot_on_a_large_validation_set() -> None:
    z_val, y_val = misspecified(3000, 1)
    z_test, y_test = misspecified(20000, 2)
    cal = calibrate_tag(z_val, y_val)
    assert cal["method"] == "monotone" and cal["n"] == 3000
    platt = {**cal, "knots": None}
    ece_platt = expected_calibration_error(apply(z_test, platt), y_test)
    ece_monotone = expected_calibration_error(apply(z_test, cal), y_test)
    assert ece_platt > 0.03 and ece_monotone < 0.015, (ece_platt, ece_monotone)
    # a strictly increasing map: the ranking, hence AUC and KS, is exactly the raw score's
    assert point_auc_ks(apply(z_test, cal), y_test) == point_auc_ks(z_test, y_test)
    # the mean prediction meets the base rate
    assert abs(apply(z_test, cal).mean() - y_test.mean()) < 0.01


def test_small_or_one_sided_validation_falls_back() -> None:
    z, y = misspecified(MONOTONE_MIN_ROWS - 1, 3)
    cal = calibrate_tag(z, y)
    assert cal["method"] == "platt" and cal["knots"] is None and cal["a"] > 0
    assert str(MONOTONE_MIN_ROWS) in cal["note"]
    assert calibrate_tag(np.zeros(0), np.zeros(0))["method"] == "identity"
    assert calibrate_tag(np.arange(5.0), np.ones(5))["method"] == "identity"
    backwards = calibrate_tag(-z, y)
    assert backwards["method"] == "identity" and "slope" in backwards["note"]
    # a large set with too few positives for the monotone map
    rng = np.random.default_rng(4)
    z = rng.normal(size=2000)
    y = (z > np.sort(z)[-20]).astype(float)
    assert calibrate_tag(z, y)["method"] == "platt"


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 400), st.integers(1, 60), st.sampled_from([0.02, 0.3, 0.9]))
def test_knots_strictly_increase_and_the_map_keeps_every_order(seed: int, n: int, block: int, rate: float) -> None:
    rng = np.random.default_rng(seed)
    z = np.round(rng.normal(size=n), 1)  # many ties: a tie is never split between blocks
    y = (rng.random(n) < rate).astype(np.float64)
    y[0], y[-1] = 0.0, 1.0
    zk, lk = fit_monotone(z, y, min_block=block)
    assert len(zk) == len(lk) >= 1
    assert np.all(np.diff(zk) > 0) and np.all(np.diff(lk) > 0) and np.all(np.isfinite(lk))
    if len(zk) >= 2:
        entry = check_entry({"a": 0.7, "b": 0.1, "knots": {"z": zk, "logit": lk}})
        grid = np.linspace(z.min() - 3, z.max() + 3, 500)
        p = apply(grid, entry)
        assert np.all(np.diff(p) > 0)


def test_pav_pools_violators_into_their_mean() -> None:
    z = np.array([0.0, 1.0, 2.0, 3.0])
    y = np.array([1.0, 0.0, 0.0, 1.0])
    zk, lk = fit_monotone(z, y, min_block=1)
    # 1, 0, 0 pool into one block of rate 1/3 at score 1; then the last row (rate 1, clipped to 1 - 1/8)
    assert zk == [1.0, 3.0]
    assert lk == pytest.approx([np.log(0.5), np.log(7.0)])


def test_the_model_keeps_the_monotone_map_and_refuses_a_damaged_one() -> None:
    z, y = misspecified(2000, 5)
    cal = calibrate_tag(z, y)
    model = BankModel("job", ["t"], np.zeros((1, 1)), np.zeros(1), Scaler(np.zeros(1), np.ones(1), 5.0),
                      Schema("id", ("x",), ("float64",), ("t",)), {}, calibration=[cal])
    d = model.to_dict()
    assert d["calibration"]["method"] == "monotone"
    back = BankModel.from_dict(d, where="m.json")
    grid = np.linspace(-4, 4, 50)[:, None]
    assert np.array_equal(back.probabilities(grid), model.probabilities(grid))
    assert np.allclose(model.probabilities(grid)[:, 0], apply(grid[:, 0], cal))
    # a model stored before the monotone map (no "knots") loads with Platt alone
    older = {**d, "calibration": {"method": "platt", "a": [cal["a"]], "b": [cal["b"]]}}
    assert BankModel.from_dict(older, where="old").calibration[0]["knots"] is None
    bad = {**d, "calibration": {**d["calibration"], "knots": [{"z": [0.0, -1.0], "logit": [0.0, 1.0]}]}}
    with pytest.raises(ModelError, match="bad.json.*strictly increase"):
        BankModel.from_dict(bad, where="bad.json")
    with pytest.raises(ModelError, match="one entry per tag"):
        BankModel.from_dict({**d, "calibration": {"a": [1.0, 1.0], "b": [0.0, 0.0]}}, where="two")


def test_the_served_model_is_the_joint_one_only_where_it_beats_the_bank_alone_on_validation() -> None:
    y = np.array([0, 0, 1, 1, 0, 1], dtype=float)
    # scores are log-odds, outside [0, 1] (tag_metrics takes probabilities and would clip them into ties)
    good, poor = np.array([-3.0, -2.0, 2.0, 3.0, -1.0, 1.0]), np.array([2.5, -2.0, -1.5, 3.0, 2.8, -2.5])
    assert choose_served((good, y), (poor, y))["model"] == "joint"
    # ranked perfectly but every score above 1: as probabilities they would all clip to one tie (AUC 0.5)
    high, fair = np.array([1.5, 2.0, 4.0, 5.0, 3.0, 4.5]), np.array([0.1, 0.2, 0.8, 0.9, 0.85, 0.3])
    chosen = choose_served((high, y), (fair, y))
    assert chosen["model"] == "joint" and chosen["validation_auc"]["joint"] == 1.0
    worse = choose_served((poor, y), (good, y))
    assert worse["model"] == "bank_only" and "is not above" in worse["reason"]
    assert choose_served((good, y), (good, y))["model"] == "bank_only"  # a tie: the platform's part must earn it
    assert choose_served((poor, y), (good, y), "joint")["model"] == "joint"
    assert choose_served(None, (good, y))["model"] == "joint"  # no validation: nothing to compare on
    assert choose_served((np.zeros(0), np.zeros(0)), (good, y))["model"] == "joint"
    one_class = choose_served((good, np.ones(6)), (good, np.ones(6)))
    assert one_class["model"] == "bank_only" and "no validation AUC" in one_class["reason"]


def test_the_model_keeps_which_tags_use_the_platform() -> None:
    model = BankModel("job", ["t", "u"], np.zeros((1, 2)), np.zeros(2), Scaler(np.zeros(1), np.ones(1), 5.0),
                      Schema("id", ("x",), ("float64",), ("t", "u")), {}, platform_part=[True, False])
    d = model.to_dict()
    assert d["platform_part"] == [True, False]
    assert BankModel.from_dict(d, where="m").platform_part == [True, False]
    assert BankModel.from_dict({k: v for k, v in d.items() if k != "platform_part"}, where="old").platform_part \
        == [True, True]  # stored before the choice: every tag joint
    platt = BankModel("job", ["t", "u"], np.zeros((1, 2)), np.zeros(2), Scaler(np.zeros(1), np.ones(1), 5.0),
                      Schema("id", ("x",), ("float64",), ("t", "u")), {}, calibration=np.array([[2.0, 0.5], [1.0, 0.0]]))
    assert platt.calibration == [{"a": 2.0, "b": 0.5, "knots": None}, {"a": 1.0, "b": 0.0, "knots": None}]
    with pytest.raises(ModelError, match="bad: damaged bank model: platform_part is not one true/false per tag"):
        BankModel.from_dict({**d, "platform_part": [True]}, where="bad")


def test_the_model_keeps_the_bank_only_yardstick_and_loads_older_models_without_it() -> None:
    z, y = misspecified(2000, 5)
    scaler, schema = Scaler(np.array([1.0, 0.0]), np.array([2.0, 1.0]), 5.0), Schema(
        "id", ("x", "w"), ("float64", "float64"), ("t", "u"))
    yardstick = np.array([[0.5, -1.0], [2.0, 0.25], [-0.3, 0.7]])  # (d_A + 1, T): the intercept last
    alone = BankOnlyHalf.from_fit(yardstick, [calibrate_tag(z, y), {"a": 2.0, "b": -0.5, "knots": None}],
                                  fit_intercept=True)
    model = BankModel("job", ["t", "u"], np.ones((2, 2)), np.zeros(2), scaler, schema, {}, bank_only=alone)
    back = BankModel.from_dict(model.to_dict(), where="m.json")
    X = np.array([[3.0, 1.0], [-1.0, 0.5], [40.0, -2.0]])
    z_alone = scaler.transform(X) @ yardstick[:2] + yardstick[2]
    expected = np.column_stack([apply(z_alone[:, 0], alone.calibration[0]), apply(z_alone[:, 1], alone.calibration[1])])
    np.testing.assert_allclose(back.bank_only_probabilities(X), expected, rtol=1e-12)
    np.testing.assert_allclose(back.bank_only_probabilities(X, [1]), expected[:, [1]], rtol=1e-12)
    assert "bank-only model" in back.fallback_note()
    # A model stored before the yardstick was kept: loads, and its fallback is the joint model's bank half.
    older = BankModel.from_dict({k: v for k, v in model.to_dict().items() if k != "bank_only"}, where="old")
    assert older.bank_only is None
    np.testing.assert_allclose(older.bank_only_probabilities(X), older.probabilities(older.partial_scores(X)))
    assert "job was stored before bank-only weights were kept" in older.fallback_note()
    assert "joint model's bank half" in older.fallback_note()
    damaged = model.to_dict()
    damaged["bank_only"]["weights"] = [[1.0, 2.0]]
    with pytest.raises(ModelError, match=r"bad: damaged bank model: the bank-only weights are \(1, 2\), not \(2, 2\)"):
        BankModel.from_dict(damaged, where="bad")
    with pytest.raises(ModelError, match="bad: damaged bank model: missing 'intercept'"):
        BankModel.from_dict({**model.to_dict(), "bank_only": {"weights": [[0, 0], [0, 0]], "calibration": {}}},
                            where="bad")
