"""Batch scoring on a compute backend: one party's partial scores for many rows, in fixed row chunks.

Chunks are cut by ``chunk_rows`` alone, never by the number of workers, so every backend (inline, the
process pool, Ray) runs the same floating-point operations on the same rows and returns the same bits.
:func:`iter_partial_scores` keeps at most ``window`` chunks in flight, so scoring a file read block by
block (``party_common.bigdata``) holds a bounded number of rows in memory whatever the file's size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from typing import Protocol

import numpy as np

from protocols.compute import Compute

CHUNK_ROWS = 65_536


class ScoringModel(Protocol):
    def partial_scores(self, features: np.ndarray) -> np.ndarray: ...


def score_chunk(model: ScoringModel, X: np.ndarray) -> np.ndarray:
    """A worker's share: the model half's partial scores (rows x tags) of a block of raw features."""
    return model.partial_scores(X)


def _chunks(X: np.ndarray, chunk_rows: int) -> Iterator[np.ndarray]:
    for a in range(0, len(X), chunk_rows):
        yield X[a:a + chunk_rows]


def iter_partial_scores(compute: Compute, model: ScoringModel, blocks: Iterable[np.ndarray], *,
                        chunk_rows: int = CHUNK_ROWS, window: int | None = None) -> Iterator[np.ndarray]:
    """The partial scores of each chunk of each block, in order, with at most ``window`` chunks in flight
    (default: two per worker)."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    window = window or 2 * compute.workers
    pending: deque[Future[np.ndarray]] = deque()
    for block in blocks:
        for chunk in _chunks(np.asarray(block), chunk_rows):
            if len(pending) >= window:
                yield pending.popleft().result()
            pending.append(compute.submit(score_chunk, model, chunk))
    while pending:
        yield pending.popleft().result()


def partial_scores_on(compute: Compute, model: ScoringModel, X: np.ndarray, *,
                      chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """All of ``X``'s partial scores (rows x tags), computed chunk by chunk on ``compute``."""
    parts = list(iter_partial_scores(compute, model, [X], chunk_rows=chunk_rows))
    return np.vstack(parts) if parts else model.partial_scores(np.asarray(X))


__all__ = ["CHUNK_ROWS", "iter_partial_scores", "partial_scores_on", "score_chunk"]
