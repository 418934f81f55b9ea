"""Scoring on a compute backend: one party's partial scores for many rows, in fixed row chunks.

A model half scores ``clip((X - mean) / std, -clip, clip) @ weights (+ intercept)``, ``X`` its raw features
or, for a model trained on bins, their one-hot bins under the half's stored binning (scored as a sum of
per-bin terms, :class:`BinTables`, without building the one-hot rows): :func:`standardise` and
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
GATHER_CELLS = 1 << 21  # per-bin terms gathered at once when scoring a binned half (16 MiB)
FEW_ROWS = 64  # up to this many rows (online scoring) every tag's terms are gathered in one call


def standardise(X: np.ndarray, mean: np.ndarray, std: np.ndarray, clip: float) -> np.ndarray:
    return np.clip((X - mean) / std, -clip, clip)


def linear_scores(X: np.ndarray, mean: np.ndarray, std: np.ndarray, clip: float, weights: np.ndarray,
                  intercept: np.ndarray | None, binning: BinningModel | None = None,
                  tables: BinTables | None = None) -> np.ndarray:
    """Scores (rows x tags) of raw features ``X``: standardised, clipped, times ``weights``, plus ``intercept``;
    with a ``binning`` (a model trained on bins), the same formula on ``X``'s one-hot bins, computed as a sum
    of per-bin terms (:class:`BinTables`; ``tables``: those of these arrays, built once by the caller)."""
    X = np.asarray(X, dtype=np.float64)
    if binning is not None:
        z = binned_scores(tables or bin_tables(binning, mean, std, clip, weights), X)
    else:
        z = standardise(X, mean, std, clip) @ weights
    return z if intercept is None else z + intercept


class BinTables(NamedTuple):
    """A half trained on one-hot bins, folded into one term per (tag, bin): what a row in that bin adds to the
    tag's score. A row has 1 in its bin's one-hot column and 0 in its feature's others, so its feature adds
    ``t1[b] + sum of t0 over the feature's other columns`` (``t1``, ``t0``: a column's standardised, clipped
    value times its weight when it is 1 or 0), and its score is the sum of its features' terms: the one-hot
    matrix is never built (scoring is a gather, not a rows x bins product), and the score is the same up to
    the order of the additions."""

    binning: BinningModel
    terms: np.ndarray  # (tags, sum of bins): each tag's terms, a feature's bins side by side
    starts: np.ndarray  # (features,) int64: where each feature's bins start

    def tag_columns(self, columns: list[int] | np.ndarray) -> BinTables:
        """The tables of the tags ``columns`` alone (weights[:, columns])."""
        return self._replace(terms=np.ascontiguousarray(self.terms[columns]))


def bin_tables(binning: BinningModel, mean: np.ndarray, std: np.ndarray, clip: float,
               weights: np.ndarray) -> BinTables:
    """The per-bin terms of a half trained on ``binning``'s one-hot bins (scaler ``mean``, ``std``, ``clip``;
    ``weights`` one column per tag, or one vector)."""
    offsets = binning.offsets()
    width = int(offsets[-1])
    mean, std = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (mean, std))
    W = np.asarray(weights, dtype=np.float64).reshape(len(weights), -1)
    if not len(mean) == len(std) == len(W) == width:
        raise ValueError(f"the model's weights cover {len(W)} columns and its scaler {len(mean)}, its binning "
                         f"{width} bins")
    t1 = np.clip((1.0 - mean) / std, -clip, clip)[:, None] * W
    t0 = np.clip((0.0 - mean) / std, -clip, clip)[:, None] * W
    rest = np.add.reduceat(t0, offsets[:-1], axis=0)  # (features, tags): every column of the feature at 0
    terms = t1 - t0 + np.repeat(rest, np.diff(offsets), axis=0)
    return BinTables(binning, np.ascontiguousarray(terms.T), offsets[:-1].copy())


def binned_scores(tables: BinTables, X: np.ndarray) -> np.ndarray:
    """Scores (rows x tags, no intercept) of raw rows ``X``: each row's bins (one vectorised pass over all
    columns), then the sum of their terms: for a few rows one gather over every tag, for many a gather per tag
    (each tag's terms stay in cache), a block of rows at a time."""
    at = tables.binning.transform(np.asarray(X, dtype=np.float64)) + tables.starts
    tags, width = tables.terms.shape
    if len(at) <= FEW_ROWS:
        return np.take(tables.terms.reshape(-1), at + (np.arange(tags) * width)[:, None, None]).sum(axis=2).T
    out = np.empty((len(at), tags), dtype=np.float64)
    step = max(1, GATHER_CELLS // max(1, at.shape[1]))
    for a in range(0, len(at), step):
        for t in range(tags):
            out[a:a + step, t] = np.take(tables.terms[t], at[a:a + step]).sum(axis=1)
    return out


class LinearTerms(NamedTuple):
    """What a worker needs of a model half to score: its scaler's arrays, weights and intercept."""

    mean: np.ndarray
    std: np.ndarray
    clip: float
    weights: np.ndarray
    intercept: np.ndarray | None
    binning: BinningModel | None = None  # a model trained on bins: raw rows are scored through their bins
    tables: BinTables | None = None  # its per-bin terms (built once per model half, not per call)


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


__all__ = ["CHUNK_ROWS", "BinTables", "LinearTerms", "bin_tables", "binned_scores", "iter_partial_scores", "linear_scores", "partial_scores_on",
           "score_chunk", "standardise"]
