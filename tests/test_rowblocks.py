"""Block-wise matrices (protocols.rowblocks): the same bits as whole-matrix numpy, in memory or on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocols.rowblocks as rowblocks
from protocols.fixedpoint import quantise, quantise_rows
from protocols.rowblocks import (
    column_max_abs,
    column_mean_std,
    on_disk,
    row_norm_max,
    scratch_array,
    take_rows,
)
from protocols.vfl_lr.state import Scaler


@st.composite
def matrices(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(1, 2500))
    d = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # magnitudes over many orders, so that any change in the order of additions shows in the last bits
    X = rng.standard_normal((n, d)) * 10.0 ** rng.uniform(-6, 9, (n, d))
    rows = np.sort(rng.choice(n, size=draw(st.integers(1, n)), replace=False))
    return X, rows


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rowblocks, "BLOCK_BYTES", 1)  # the minimum: blocks of 1,024 rows


def on_disk_copy(X: np.ndarray, directory: Path) -> np.memmap:
    out = scratch_array(directory, X.shape, X.dtype)
    out[:] = X
    return out


def sequential_mean_std(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows added one after another, in Python floats: the order column_mean_std promises."""
    n, d = X.shape
    mean = np.empty(d)
    square = np.empty(d)
    for j in range(d):
        total = 0.0
        for v in X[:, j].tolist():
            total += v
        mean[j] = total / n
        acc = 0.0
        for v in (X[:, j] - mean[j]).tolist():
            acc += v * v
        square[j] = acc
    return mean, np.sqrt(square / n)


@settings(max_examples=40, deadline=None)
@given(matrices(), st.integers(1, 9))
def test_column_mean_std_adds_rows_in_order_whatever_the_blocks(case: tuple[np.ndarray, np.ndarray], block: int) -> None:
    X, rows = case
    rowblocks.BLOCK_BYTES = block * 8192  # blocks of 1,024 rows and more (the fixture restores it)
    mean, std = column_mean_std(X, rows)
    want_mean, want_std = sequential_mean_std(X[rows])
    assert mean.tobytes() == want_mean.tobytes() and std.tobytes() == want_std.tobytes()
    if X.shape[1] > 1:  # and what numpy gives for a matrix (a single column numpy sums pairwise)
        assert mean.tobytes() == X[rows].mean(axis=0).tobytes() and std.tobytes() == X[rows].std(axis=0).tobytes()
    assert column_max_abs(X, rows).tobytes() == np.abs(X[rows]).max(axis=0).tobytes()
    assert row_norm_max(X, rows) == float(np.sqrt((X[rows] * X[rows]).sum(axis=1)).max())


@settings(max_examples=25, deadline=None)
@given(matrices(), st.integers(2, 16))
def test_scaler_and_quantisation_on_disk_equal_the_in_memory_ones(tmp_path_factory: pytest.TempPathFactory,
                                                                   case: tuple[np.ndarray, np.ndarray], bits: int) -> None:
    X, rows = case
    disk = on_disk_copy(X, tmp_path_factory.mktemp("rows"))
    old = Scaler(*sequential_mean_std(X[rows]), 5.0)
    old.std[~(old.std > 1e-12)] = 1.0
    for source in (X, disk):
        scaler = Scaler.fit(source, 5.0, rows=rows)
        assert scaler.mean.tobytes() == old.mean.tobytes() and scaler.std.tobytes() == old.std.tobytes()
        Xq, scale = quantise_rows(source, scaler.transform, bits, fit_rows=rows)
        want, want_scale = quantise(old.transform(X), bits, fit_rows=rows)
        assert on_disk(Xq) == (source is disk)
        assert np.array_equal(Xq, want) and Xq.dtype == (np.int8 if bits <= 8 else np.int16)
        assert scale.tobytes() == want_scale.tobytes()
        view = scaler.rows(source, intercept=True)
        assert view.shape == (len(X), X.shape[1] + 1)
        assert view[rows].tobytes() == np.hstack([old.transform(X), np.ones((len(X), 1))])[rows].tobytes()


def test_take_rows_copies_exactly_and_stays_where_its_source_is(tmp_path: Path) -> None:
    X = np.random.default_rng(3).standard_normal((5000, 4))
    rows = np.random.default_rng(4).permutation(5000)[:3100]
    disk = on_disk_copy(X, tmp_path)
    taken = take_rows(disk, rows, [3, 1])
    assert on_disk(taken) and np.array_equal(taken, X[rows][:, [3, 1]])
    assert not on_disk(take_rows(X, rows)) and np.array_equal(take_rows(X, rows), X[rows])
    assert np.array_equal(take_rows(disk, np.zeros(5000, dtype=bool)), np.empty((0, 4)))
    # scratch files are unlinked as soon as they are mapped: nothing is left in the directory
    assert list(tmp_path.iterdir()) == []
