"""Matrices larger than memory: memory-mapped scratch files, block-wise copies and column statistics.

A party's feature matrix that does not fit in memory lives in a memory-mapped file (``np.memmap``, written by
``party_common.data_loading``). Whatever is derived from it row by row (an alignment's rows, a column subset,
quantised features) goes to another such file in the same directory, a block of rows at a time; a matrix in
memory stays in memory. Only the pages in use are resident, so a node's memory is a few blocks, not the file.

Results never depend on where a matrix lives or on the block size: copies are exact, and column sums add the
rows one after another into the running sum, whatever the blocks, which is the order numpy's own axis-0
reduction of a C-ordered matrix of two or more columns takes: :func:`column_mean_std` then equals
``X[rows].mean(0)``, ``X[rows].std(0)`` bit for bit (``tests/test_rowblocks.py``; numpy sums a single
column pairwise, and there the two differ in the last bits).

Scratch files are unlinked as soon as they are mapped: the mapping keeps the data, the file system frees it
when the array is garbage collected, and a node that crashes leaves nothing behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

BLOCK_BYTES = 32 << 20  # a block of float64 rows: 32 MB


def block_rows(n_columns: int, itemsize: int = 8) -> int:
    """Rows per block for a matrix of ``n_columns`` columns of ``itemsize`` bytes (at least 1,024)."""
    return max(1024, BLOCK_BYTES // max(1, n_columns * itemsize))


def on_disk(a: np.ndarray) -> bool:
    return isinstance(a, np.memmap) and a.filename is not None


def scratch_array(directory: str | Path, shape: tuple[int, ...], dtype: np.dtype | type) -> np.memmap:
    """A zero-filled array of ``shape`` in a memory-mapped file of ``directory`` (already unlinked)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, name = tempfile.mkstemp(dir=directory, prefix=".rows-", suffix=".npy")
    os.close(fd)
    try:
        if 0 in shape:  # numpy cannot map an empty file
            return np.memmap(name, mode="w+", dtype=dtype, shape=(1,))[:0].reshape(shape)
        return np.lib.format.open_memmap(name, mode="w+", dtype=dtype, shape=shape)
    finally:
        os.unlink(name)


def empty_rows_like(source: np.ndarray, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """An array to fill with rows derived from ``source``: beside it on disk if it is on disk, else in memory."""
    if on_disk(source):
        return scratch_array(Path(str(source.filename)).parent, shape, dtype)  # type: ignore[union-attr]
    return np.empty(shape, dtype=dtype)


def _spans(n: int, step: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, step):
        yield start, min(n, start + step)


def _row_index(rows: np.ndarray | None) -> np.ndarray | None:
    if rows is None:
        return None
    rows = np.asarray(rows)
    return np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64, copy=False).reshape(-1)


def _read(source: np.ndarray, index: np.ndarray | None, a: int, b: int) -> np.ndarray:
    """Rows ``a:b`` of ``source``, or of ``source[index]``, in memory (the source's type)."""
    if index is None:
        return np.asarray(source[a:b])
    picked = index[a:b]
    if not on_disk(source):
        return np.asarray(source[picked])
    # In file order: the disk reads forward; the rows come back in the order asked.
    order = np.argsort(picked, kind="stable")
    out = np.empty((len(picked), *source.shape[1:]), dtype=source.dtype)
    out[order] = source[picked[order]]
    return out


def map_rows(source: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], n_columns: int, dtype: np.dtype | type,
             *, rows: np.ndarray | None = None) -> np.ndarray:
    """``fn`` applied to blocks of ``source[rows]`` (all rows by default), stacked: ``fn`` must map each row on
    its own (standardising, quantising, clipping a row), so the result equals ``fn(source[rows])``."""
    index = _row_index(rows)
    n = len(source) if index is None else len(index)
    out = empty_rows_like(source, (n, n_columns), dtype)
    step = block_rows(max(source.shape[1] if source.ndim == 2 else 1, n_columns))
    for a, b in _spans(n, step):
        out[a:b] = fn(_read(source, index, a, b))
    return out


def take_rows(source: np.ndarray, rows: np.ndarray | None = None, columns: list[int] | None = None) -> np.ndarray:
    """``source[rows][:, columns]``, on disk beside ``source`` if it is on disk (an in-memory one is indexed)."""
    if not on_disk(source):
        out = source if rows is None else source[_row_index(rows)]
        return out if columns is None else out[:, columns]
    width = source.shape[1] if columns is None else len(columns)
    return map_rows(source, (lambda X: X) if columns is None else (lambda X: X[:, columns]), width, source.dtype,
                    rows=rows)


def _running_sum(total: np.ndarray | None, block: np.ndarray) -> np.ndarray:
    # numpy sums a C-ordered matrix of two or more columns over axis 0 row after row into one accumulator;
    # carrying the accumulator as the block's first row continues exactly that order. A single column is
    # contiguous, and numpy would sum it pairwise (an order blocks cannot continue): a zero column beside it
    # keeps the row-after-row order.
    stacked = block if total is None else np.vstack([total[None], block])
    if stacked.shape[1] == 1:
        return np.add.reduce(np.hstack([stacked, np.zeros_like(stacked)]), axis=0)[:1]
    return np.add.reduce(stacked, axis=0)


def _float_blocks(source: np.ndarray, rows: np.ndarray | None,
                  transform: Callable[[np.ndarray], np.ndarray] | None = None) -> Iterator[np.ndarray]:
    """``transform(source[rows])`` (all rows by default) as float64 blocks of rows, in order."""
    index = _row_index(rows)
    for a, b in _spans(len(source) if index is None else len(index), block_rows(source.shape[1])):
        X = np.asarray(_read(source, index, a, b), dtype=np.float64)
        yield X if transform is None else transform(X)


def column_mean_std(source: np.ndarray, rows: np.ndarray | None = None, *,
                    transform: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population standard deviation of the columns of ``transform(source[rows])``, block by block,
    with the rows added one after another (for two or more columns, bit for bit ``X.mean(axis=0)`` and
    ``X.std(axis=0)`` of the whole matrix)."""
    n = len(source) if rows is None else len(_row_index(rows))  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("no rows to fit on")
    total = None
    for X in _float_blocks(source, rows, transform):
        total = _running_sum(total, X)
    mean = total / n  # type: ignore[operator]
    squares = None
    for X in _float_blocks(source, rows, transform):
        deviation = X - mean
        squares = _running_sum(squares, deviation * deviation)
    return mean, np.sqrt(squares / n)  # type: ignore[operator]


def column_max_abs(source: np.ndarray, rows: np.ndarray | None = None, *,
                   transform: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """``np.abs(transform(source[rows])).max(axis=0, initial=0.0)``, block by block (a maximum is exact)."""
    top = np.zeros(source.shape[1])  # transforms keep the columns (standardising, scaling)
    for X in _float_blocks(source, rows, transform):
        top = np.maximum(top, np.abs(X).max(axis=0, initial=0.0))
    return top


def row_norm_max(source: np.ndarray, rows: np.ndarray | None = None) -> float:
    """The largest L2 norm of a row of ``source[rows]`` (0 for none)."""
    return max((float(np.sqrt((X * X).sum(axis=1)).max(initial=0.0)) for X in _float_blocks(source, rows)),
               default=0.0)


class RowView:
    """Rows of a matrix computed on demand from another's: ``view[rows]`` is ``fn(source[rows])``.

    What training keeps instead of a standardised copy of a party's features: the few rows a batch needs are
    standardised when asked for (the same bits as standardising everything first: ``fn`` maps rows on their
    own), so a node holds its raw features once, on disk or in memory.
    """

    def __init__(self, source: np.ndarray | RowView, fn: Callable[[np.ndarray], np.ndarray], n_columns: int) -> None:
        self.source, self.fn = source, fn
        self.shape = (len(source), n_columns)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: np.ndarray | slice) -> np.ndarray:
        return self.fn(np.asarray(self.source[rows]))

    @property
    def ndim(self) -> int:
        return 2


__all__ = ["BLOCK_BYTES", "RowView", "block_rows", "column_max_abs", "column_mean_std", "empty_rows_like",
           "map_rows", "on_disk", "row_norm_max", "scratch_array", "take_rows"]
