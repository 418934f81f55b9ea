"""Scoring a half trained on bins without its one-hot rows: the bins of every column found at once, and each
row's score a sum of per-bin terms (``protocols.scoring.BinTables``), the same scores as the one-hot formula
(standardise the one-hot bins, times the weights) online and in batch, and the same terms as the scorecard."""

from __future__ import annotations

import numpy as np
import pytest

from protocols.binning import BinningError, BinningModel, BinningSpec, ColumnSpec
from protocols.compute import as_compute
from protocols.party_data import Schema
from protocols.scorecard import bin_terms
from protocols.scoring import bin_tables, linear_scores, partial_scores_on, standardise
from protocols.vfl_lr import BankModel, PlatformModel
from protocols.vfl_lr.model import BankOnlyHalf
from protocols.vfl_lr.state import Scaler


def table(rows: int, seed: int = 0) -> tuple[np.ndarray, list[str], BinningSpec]:
    """Numeric columns of many shapes (quantiles, few values, explicit edges, missing values) and numeric codes
    binned as categories (with an "other" bin and a missing one)."""
    rng = np.random.default_rng(seed)
    columns = [rng.normal(size=rows), rng.exponential(size=rows), rng.integers(0, 3, rows).astype(float),
               rng.normal(size=rows), rng.integers(0, 9, rows).astype(float), rng.uniform(size=rows),
               rng.integers(0, 40, rows).astype(float)]
    columns[3][rng.random(rows) < 0.1] = np.nan
    columns[4][rng.random(rows) < 0.05] = np.nan
    names = [f"c{i}" for i in range(len(columns))]
    spec = BinningSpec(bins=7, columns={"c4": ColumnSpec(kind="categorical", max_categories=4),
                                        "c5": ColumnSpec(edges=(0.2, 0.5)), "c6": ColumnSpec(bins=25)})
    return np.column_stack(columns), names, spec


@pytest.fixture(scope="module")
def fitted() -> tuple[BinningModel, np.ndarray]:
    X, names, spec = table(3000)
    return BinningModel.fit(X[:2000], names, spec), X


def one_hot_scores(binning: BinningModel, scaler: Scaler, W: np.ndarray, X: np.ndarray) -> np.ndarray:
    """The formula training optimised: the one-hot bins, standardised and clipped, times the weights."""
    return standardise(binning.one_hot(binning.transform(X)), scaler.mean, scaler.std, scaler.clip) @ W


def column_by_column(binning: BinningModel, X: np.ndarray) -> np.ndarray:
    return np.column_stack([c.transform(X[:, binning.input_columns.index(c.name)]) for c in binning.columns])


@pytest.mark.parametrize("rows", [1, 5, 64, 65, 3000])
def test_all_columns_at_once_bin_as_each_column_alone(fitted: tuple[BinningModel, np.ndarray], rows: int) -> None:
    binning, X = fitted
    X = X[-rows:].copy()
    X[::3, 0] = np.inf  # beyond every edge: the last bin, as searchsorted puts it
    X[1::4, 1] = -np.inf
    X[::5, 5] = 0.5  # on an edge: left-closed bins put it above
    got = binning.transform(X)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, column_by_column(binning, X))
    assert (got < np.array(binning.n_bins)).all() and (got >= 0).all()


def test_a_missing_value_in_a_column_trained_without_one_is_named(fitted: tuple[BinningModel, np.ndarray]) -> None:
    binning, X = fitted
    for rows in (1, 100):
        bad = X[:rows].copy()
        bad[-1, 0] = np.nan
        with pytest.raises(BinningError, match="column 'c0': 1 missing value"):
            binning.transform(bad)


@pytest.mark.parametrize("clip", [1.5, 5.0])
def test_per_bin_terms_score_as_the_one_hot_rows(fitted: tuple[BinningModel, np.ndarray], clip: float) -> None:
    binning, X = fitted
    rng = np.random.default_rng(1)
    scaler = Scaler.fit(binning.one_hot(binning.transform(X[:2000])), clip)  # as training standardises bins
    W = rng.normal(size=(len(scaler.mean), 3))
    intercept = rng.normal(size=3)
    tables = bin_tables(binning, scaler.mean, scaler.std, clip, W)
    for rows in (X[2000:2001], X[2000:]):
        expected = one_hot_scores(binning, scaler, W, rows) + intercept
        got = linear_scores(rows, scaler.mean, scaler.std, clip, W, intercept, binning, tables)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
        # without prebuilt tables, and for a subset of the tags
        np.testing.assert_array_equal(linear_scores(rows, scaler.mean, scaler.std, clip, W, intercept, binning), got)
        np.testing.assert_array_equal(
            linear_scores(rows, scaler.mean, scaler.std, clip, W[:, [2, 0]], None, binning, tables.tag_columns([2, 0])),
            linear_scores(rows, scaler.mean, scaler.std, clip, W, None, binning, tables)[:, [2, 0]])
    # the scorecard's points are these very terms
    for t in range(3):
        terms = bin_terms(binning, scaler.mean, scaler.std, clip, W[:, t])
        np.testing.assert_array_equal(np.concatenate(terms), tables.terms[t])
    with pytest.raises(ValueError, match="binning .* bins"):
        bin_tables(binning, scaler.mean, scaler.std, clip, W[1:])


def halves(binning: BinningModel, X: np.ndarray) -> tuple[BankModel, PlatformModel, Scaler]:
    rng = np.random.default_rng(2)
    scaler = Scaler.fit(binning.one_hot(binning.transform(X[:2000])), 3.0)
    d = len(scaler.mean)
    schema = Schema("id", binning.input_columns, ("float64",) * len(binning.input_columns))
    W = rng.normal(size=(d, 2))
    bank_only = BankOnlyHalf(rng.normal(size=(d, 2)), rng.normal(size=2), [{"a": 1.0, "b": 0.0, "knots": None}] * 2)
    bank = BankModel("job", ["t0", "t1"], W, rng.normal(size=2), scaler, schema, {}, bank_only=bank_only,
                     binning=binning)
    platform = PlatformModel("job", ["t0", "t1"], -W, scaler, schema, {}, binning=binning)
    return bank, platform, scaler


def test_model_halves_online_and_in_batch_agree_with_the_one_hot_rows(
        fitted: tuple[BinningModel, np.ndarray]) -> None:
    binning, X = fitted
    bank, platform, scaler = halves(binning, X)
    rows = X[2000:]
    expected_bank = one_hot_scores(binning, scaler, bank.weights, rows) + bank.intercept
    expected_platform = one_hot_scores(binning, scaler, platform.weights, rows)
    for i in (0, 17, len(rows) - 1):  # online: one row
        np.testing.assert_allclose(bank.partial_scores(rows[i:i + 1]), expected_bank[i:i + 1], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(platform.partial_scores(rows[i:i + 1]), expected_platform[i:i + 1], rtol=1e-12,
                                   atol=1e-12)
    compute = as_compute(1)  # batch: chunks on a compute backend (inline: the same calls as every backend)
    try:
        np.testing.assert_allclose(partial_scores_on(compute, bank, rows, chunk_rows=128), expected_bank,
                                   rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(partial_scores_on(compute, platform, rows, chunk_rows=333), expected_platform,
                                   rtol=1e-12, atol=1e-12)
    finally:
        compute.close()
    alone = bank.bank_only
    assert alone is not None
    z = one_hot_scores(binning, scaler, alone.weights, rows[:9]) + alone.intercept
    np.testing.assert_allclose(bank.bank_only_probabilities(rows[:9], [1]), 1 / (1 + np.exp(-z[:, [1]])), rtol=1e-12)
    # the tables are built once per half, and again only when its arrays are replaced
    first = bank.scoring_terms().tables
    assert first is not None and bank.scoring_terms().tables is first
    bank.weights = bank.weights * 2
    np.testing.assert_allclose(bank.partial_scores(rows[:3]), 2 * (expected_bank[:3] - bank.intercept) + bank.intercept,
                               rtol=1e-12)


def test_a_raw_half_has_no_tables() -> None:
    scaler = Scaler(np.zeros(2), np.ones(2), 5.0)
    half = PlatformModel("job", ["t"], np.ones((2, 1)), scaler, Schema("id", ("a", "b"), ("float64", "float64")), {})
    assert half.scoring_terms().tables is None
    np.testing.assert_array_equal(half.partial_scores(np.array([[1.0, 2.0]])), [[3.0]])


def test_the_micro_benchmark_times_both_paths_and_they_agree() -> None:
    from benchmarks.binned_scoring import case

    result = case(5, 30, 2, repeats=3)
    assert result["bins"] > 30 and result["max_abs_difference"] < 1e-12
    assert result["partial_scores"]["median_us"] > 0 and result["one_hot_formula"]["p99_us"] > 0
