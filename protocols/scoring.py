"""Scoring on a compute backend: one party's partial scores for many rows, in fixed row chunks.

A model half scores ``clip((X - mean) / std, -clip, clip) @ weights (+ intercept)``, ``X`` its raw features
or, for a model trained on bins, their one-hot bins under the half's stored binning: :func:`standardise` and
:func:`linear_scores` are that formula, used by the model halves themselves (``protocols.vfl_lr``) and by the
workers, which receive only the arrays (numpy alone: a worker never imports the training code).

Chunks are cut by ``chunk_rows`` alone, never by the number of workers, so every backend (inline, the
process pool, Ray) runs the same floating-point operations on the same rows and returns the same bits.
:func:`iter_partial_scores` keeps at most ``window`` chunks in flight, so scoring a file read block by
block (``party_common.bigdata``) holds a bounded number of rows in memory whatever the file's size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from typing import Any, NamedTuple, Protocol

import numpy as np

from protocols.binning import BinningModel
from protocols.compute import Compute

CHUNK_ROWS = 65_536


def standardise(X: np.ndarray, mean: np.ndarray, std: np.ndarray, clip: float) -> np.ndarray:
    return np.clip((X - mean) / std, -clip, clip)


def linear_scores(X: np.ndarray, mean: np.ndarray, std: np.ndarray, clip: float, weights: np.ndarray,
                  intercept: np.ndarray | None, binning: BinningModel | None = None) -> np.ndarray:
    """Scores (rows x tags) of raw features ``X``: standardised, clipped, times ``weights``, plus ``intercept``;
    with a ``binning`` (a model trained on bins), ``X`` is first its one-hot bins."""
    X = np.asarray(X, dtype=np.float64)
    if binning is not None:
        X = binning.one_hot(binning.transform(X))
    z = standardise(X, mean, std, clip) @ weights
    return z if intercept is None else z + intercept


class LinearTerms(NamedTuple):
    """What a worker needs of a model half to score: its scaler's arrays, weights and intercept."""

    mean: np.ndarray
    std: np.ndarray
    clip: float
    weights: np.ndarray
    intercept: np.ndarray | None
    binning: BinningModel | None = None  # a model trained on bins: raw rows become one-hot bins first


class ScoringModel(Protocol):
    def scoring_terms(self) -> LinearTerms: ...


def score_chunk(terms: LinearTerms, X: np.ndarray) -> np.ndarray:
    """A worker's share: the partial scores (rows x tags) of a block of raw features."""
    return linear_scores(X, *terms)


def iter_partial_scores(compute: Compute, model: ScoringModel, blocks: Iterable[Any], *,
                        chunk_rows: int = CHUNK_ROWS, window: int | None = None) -> Iterator[np.ndarray]:
    """The partial scores of each chunk of each block, in order, with at most ``window`` chunks in flight
    (default: two per worker)."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    terms = model.scoring_terms()
    window = window or 2 * compute.workers
    pending: deque[Future[np.ndarray]] = deque()
    for block in blocks:
        block = np.asarray(block)
        for a in range(0, len(block), chunk_rows):
            if len(pending) >= window:
                yield pending.popleft().result()
            pending.append(compute.submit(score_chunk, terms, block[a:a + chunk_rows]))
    while pending:
        yield pending.popleft().result()


def partial_scores_on(compute: Compute, model: ScoringModel, X: np.ndarray, *,
                      chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """All of ``X``'s partial scores (rows x tags), computed chunk by chunk on ``compute``."""
    parts = list(iter_partial_scores(compute, model, [X], chunk_rows=chunk_rows))
    return np.vstack(parts) if parts else score_chunk(model.scoring_terms(), np.asarray(X))


__all__ = ["CHUNK_ROWS", "LinearTerms", "iter_partial_scores", "linear_scores", "partial_scores_on",
           "score_chunk", "standardise"]
