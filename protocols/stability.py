"""Population stability: how far a scored population has drifted from the one a model was trained on.

The population stability index of two distributions over the same bins, expected ``e`` (the training
population's shares) and actual ``a`` (the scored population's), is ``sum_i (a_i - e_i) ln(a_i / e_i)``: a
symmetric, always non-negative divergence (Jeffreys' divergence on the binned shares). An empty bin's share is
floored at :data:`FLOOR` so the logarithm stays finite. The credit-scoring convention (Siddiqi, *Credit Risk
Scorecards*, 2006) reads it in three bands: below 0.1 stable, 0.1 to 0.25 a moderate shift worth a look,
above 0.25 a significant shift (retrain or investigate): :func:`band`.

Bins are fixed by the training population alone, so any later population is counted into the same ones:

* a feature: quantile bins of its training values (default ten; tied quantiles merge, so a feature with few
  values has fewer bins) and one bin for missing values (NaN), :class:`FeatureReference`; a model trained on
  binned features (``protocols.binning``) is compared on its own bins (:meth:`FeatureReference.from_binning`);
* a tag's score: deciles of the training population's scores, :class:`ScoreReference`.

Each party bins its own features only. What crosses to the other party is one index per feature
(:func:`platform_indices`, rounded), never a bin's share: docs/protocol.md, "Stability".
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocols.binning import BinningError, BinningModel
from protocols.errors import UserError

FLOOR = 1e-4  # the share an empty bin counts as (of either population)
WARN, ALERT = 0.1, 0.25  # the credit-scoring convention's bands
BANDS = ("stable", "moderate shift", "significant shift")
DEFAULT_BINS = 10
INDEX_DECIMALS = 3  # what the platform tells the bank: each index rounded to this many decimals
# The fewest rows the platform computes its indices over (its [policy] min_stability_rows): one row of a set the
# bank picks then moves a bin's share by at most 1/1000, which the rounding mostly hides.
MIN_STABILITY_ROWS = 1_000
VERSION = "stability-v1"
ROW_CHUNK = 8_192  # rows binned at a time (transposed, so that each feature's values lie side by side)


class StabilityError(UserError):
    """A population cannot be compared (no rows, other features, a damaged reference)."""


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray, *,
        floor: float = FLOOR) -> float:
    """The population stability index of two histograms (counts or shares) over the same bins.

    Each histogram is normalised to shares; a bin empty in both adds nothing, a bin empty in one counts as
    ``floor``. Raises :class:`StabilityError` when either histogram is empty or they differ in length.
    """
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.ndim != 1:
        raise StabilityError(f"the two histograms have different bins ({e.shape} and {a.shape})")
    if (e < 0).any() or (a < 0).any():
        raise StabilityError("a histogram has a negative count")
    if e.sum() <= 0 or a.sum() <= 0:
        raise StabilityError("a histogram is empty: no rows to compare")
    used = (e > 0) | (a > 0)
    e_share = np.maximum(e[used] / e.sum(), floor)
    a_share = np.maximum(a[used] / a.sum(), floor)
    return float(np.sum((a_share - e_share) * np.log(a_share / e_share)))


def band(index: float) -> str:
    """The convention's reading of an index: stable (< 0.1), moderate shift (<= 0.25), significant shift."""
    return BANDS[0] if index < WARN else BANDS[1] if index <= ALERT else BANDS[2]


def quantile_edges(values: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """Interior cut points of ``bins`` quantile bins of the finite ``values`` (ties merged; none if constant):
    data values above the minimum, so with left-closed bins every bin holds a training value."""
    if bins < 2:
        raise StabilityError(f"quantile bins: at least 2 bins, got {bins}")
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if len(finite) == 0:
        return np.zeros(0)
    cuts = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1], method="higher"))
    return cuts[cuts > finite.min()]  # a cut at the minimum would leave the bin below it empty for ever


def bin_counts(X: np.ndarray, edges: Sequence[np.ndarray]) -> np.ndarray:
    """Counts (features, width + 2) of the rows of ``X`` (rows, features) in each feature's bins.

    Feature ``j``'s bin ``k`` holds values in ``[edges[j][k-1], edges[j][k])`` (bin 0 everything below the first
    edge, bin ``len(edges[j])`` everything from the last up), left-closed as ``protocols.binning``'s numeric
    bins, so a binned model's edges count the same way; the last column counts missing values (NaN).
    ``width`` is the most edges any feature has, so columns beyond a feature's bins stay zero.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(edges):
        raise StabilityError(f"rows have {X.shape[-1] if X.ndim else 0} features, the bins are for {len(edges)}")
    d, width = len(edges), max((len(e) for e in edges), default=0)
    counts = np.zeros((d, width + 2), dtype=np.int64)
    for start in range(0, len(X), ROW_CHUNK):
        block = np.ascontiguousarray(X[start:start + ROW_CHUNK].T)  # a feature's values side by side
        for j, e in enumerate(edges):  # a binary search per value
            column = block[j]
            missing = np.isnan(column)
            index = np.searchsorted(e, column[~missing] if missing.any() else column, side="right")  # left-closed
            counts[j, :len(e) + 1] += np.bincount(index, minlength=len(e) + 1)
            counts[j, -1] += int(missing.sum())
    return counts


@dataclass(frozen=True)
class FeatureReference:
    """One party's features in the training population: the bins (edges per feature) and their counts."""

    names: list[str]
    edges: list[np.ndarray]
    counts: np.ndarray  # (features, width + 2): :func:`bin_counts` of the training rows
    source: str = "quantile"  # "quantile" (this module's bins) or "binning" (the model's own)
    # A model trained on bins: its binning (protocols.binning) is the bins, numeric and categorical alike, and
    # ``counts`` (features, most bins) are its training counts; ``edges`` is then empty.
    binning: BinningModel | None = None

    @classmethod
    def from_binning(cls, binning: BinningModel) -> FeatureReference:
        """The bins a model was trained on, with the training rows' counts its binning kept."""
        width = max(binning.n_bins)
        counts = np.zeros((len(binning.columns), width), dtype=np.int64)
        for j, column in enumerate(binning.columns):
            counts[j, :column.n_bins] = column.counts
        return cls(binning.feature_names, [], counts, "binning", binning)

    @classmethod
    def from_rows(cls, names: Sequence[str], X: np.ndarray, *, bins: int = DEFAULT_BINS) -> FeatureReference:
        """Quantile bins of each feature of the training rows ``X`` (rows, features), and their counts."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(names):
            raise StabilityError(f"the training rows have {X.shape[-1] if X.ndim else 0} features, "
                                 f"not the {len(names)} named")
        if len(X) == 0:
            raise StabilityError("the training population has no rows")
        edges = [quantile_edges(X[:, j], bins) for j in range(X.shape[1])]
        return cls(list(names), edges, bin_counts(X, edges))

    @classmethod
    def from_blocks(cls, names: Sequence[str], sample: np.ndarray, blocks: Iterable[np.ndarray], *,
                    bins: int = DEFAULT_BINS) -> FeatureReference:
        """Quantile bins of a ``sample`` of the training rows, counted over all of them, a block at a time (a
        population larger than memory)."""
        sample = np.asarray(sample, dtype=np.float64)
        if sample.ndim != 2 or sample.shape[1] != len(names) or len(sample) == 0:
            raise StabilityError(f"the training sample is not rows of the {len(names)} features named")
        edges = [quantile_edges(sample[:, j], bins) for j in range(sample.shape[1])]
        counts = np.zeros((len(names), max((len(e) for e in edges), default=0) + 2), dtype=np.int64)
        for block in blocks:
            counts += bin_counts(block, edges)
        return cls(list(names), edges, counts)

    @classmethod
    def from_edges(cls, names: Sequence[str], edges: Sequence[Sequence[float]], X: np.ndarray, *,
                   source: str) -> FeatureReference:
        """Given bins (a binned model's own edges), counted on the training rows ``X``."""
        cuts = [np.asarray(e, dtype=np.float64) for e in edges]
        if len(cuts) != len(names):
            raise StabilityError(f"{len(cuts)} features' bins for {len(names)} features")
        for name, e in zip(names, cuts, strict=True):
            if e.ndim != 1 or not np.all(np.isfinite(e)) or np.any(np.diff(e) <= 0):
                raise StabilityError(f"feature '{name}': bin edges must be finite and increasing")
        return cls(list(names), cuts, bin_counts(X, cuts), source)

    @property
    def rows(self) -> int:
        return int(self.counts[0].sum()) if len(self.counts) else 0

    def count(self, X: np.ndarray) -> np.ndarray:
        """:func:`bin_counts` of rows ``X`` of the same features in these bins (with a binning: rows of its
        input columns, binned as the model scores them)."""
        if self.binning is None:
            return bin_counts(X, self.edges)
        d, width = self.counts.shape
        out = np.zeros(d * width, dtype=np.int64)
        offsets = np.arange(d) * width
        for start in range(0, len(X), ROW_CHUNK):
            try:
                index = self.binning.transform(np.asarray(X[start:start + ROW_CHUNK], dtype=np.float64))
            except BinningError as err:
                raise StabilityError(f"the rows do not fit the model's bins: {err}") from err
            out += np.bincount((index + offsets).ravel(), minlength=len(out))
        return out.reshape(d, width)

    def indices(self, counts: np.ndarray) -> dict[str, float]:
        """Feature name -> PSI of a population counted by :meth:`count` (the same bins) against this one."""
        counts = np.asarray(counts)
        if counts.shape != self.counts.shape:
            raise StabilityError(f"counts of shape {counts.shape} are not for these bins {self.counts.shape}")
        return {name: psi(self.counts[j], counts[j]) for j, name in enumerate(self.names)}

    def to_dict(self) -> dict[str, Any]:
        return {"version": VERSION, "source": self.source, "names": list(self.names),
                "edges": [e.tolist() for e in self.edges], "counts": self.counts.tolist(),
                **({"binning": self.binning.to_dict()} if self.binning is not None else {})}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str) -> FeatureReference:
        try:
            if d.get("version") != VERSION:
                raise ValueError(f"version {d.get('version')!r}, not {VERSION}")
            if d.get("binning") is not None:
                return cls.from_binning(BinningModel.from_dict(d["binning"], where=where))
            names = [str(n) for n in d["names"]]
            edges = [np.asarray(e, dtype=np.float64).reshape(-1) for e in d["edges"]]
            counts = np.asarray(d["counts"], dtype=np.int64).reshape(len(names), -1)
            width = max((len(e) for e in edges), default=0)
            if len(edges) != len(names) or counts.shape[1] != width + 2:
                raise ValueError("names, edges and counts do not match")
        except (KeyError, TypeError, ValueError, BinningError) as err:
            raise StabilityError(f"{where}: damaged stability reference: {err}") from err
        return cls(names, edges, counts, str(d.get("source", "quantile")))


@dataclass(frozen=True)
class ScoreReference:
    """Per tag, deciles of the training population's scores and their counts."""

    tags: list[str]
    edges: list[np.ndarray]
    counts: np.ndarray  # (tags, width + 2), the missing column always zero (a score is never missing)

    @classmethod
    def from_scores(cls, scores: Mapping[str, Sequence[float]], *, bins: int = DEFAULT_BINS) -> ScoreReference:
        tags = list(scores)
        values = [np.asarray(scores[t], dtype=np.float64) for t in tags]
        for tag, v in zip(tags, values, strict=True):
            if len(v) == 0:
                raise StabilityError(f"tag {tag}: the training population has no scores")
        edges = [quantile_edges(v, bins) for v in values]
        width = max((len(e) for e in edges), default=0)
        counts = np.vstack([_widen(bin_counts(v[:, None], [e])[0], width)
                            for v, e in zip(values, edges, strict=True)])
        return cls(tags, edges, counts)

    def indices(self, scores: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
        """Tag -> {"psi", "rows"} of the scores given for it (NaN dropped: rows without a score); a tag with
        no scored row is left out."""
        out: dict[str, dict[str, Any]] = {}
        for t, tag in enumerate(self.tags):
            if tag not in scores:
                continue
            v = np.asarray(scores[tag], dtype=np.float64)
            v = v[np.isfinite(v)]
            if len(v) == 0:
                continue
            counts = _widen(bin_counts(v[:, None], [self.edges[t]])[0], self.counts.shape[1] - 2)
            out[tag] = {"psi": psi(self.counts[t], counts), "rows": len(v)}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"version": VERSION, "tags": list(self.tags), "edges": [e.tolist() for e in self.edges],
                "counts": self.counts.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str) -> ScoreReference:
        try:
            tags = [str(t) for t in d["tags"]]
            edges = [np.asarray(e, dtype=np.float64).reshape(-1) for e in d["edges"]]
            counts = np.asarray(d["counts"], dtype=np.int64).reshape(len(tags), -1)
            if len(edges) != len(tags):
                raise ValueError("tags and edges do not match")
        except (KeyError, TypeError, ValueError) as err:
            raise StabilityError(f"{where}: damaged score reference: {err}") from err
        return cls(tags, edges, counts)


def _widen(counts: np.ndarray, width: int) -> np.ndarray:
    """One feature's counts (its own width + 2) in a table ``width`` + 2 wide: the missing column last."""
    out = np.zeros(width + 2, dtype=np.int64)
    out[:len(counts) - 1] = counts[:-1]
    out[-1] = counts[-1]
    return out


def platform_indices(reference: FeatureReference, counts: np.ndarray, rows: int, *,
                     min_rows: int) -> dict[str, float]:
    """What the platform tells the bank about its features over ``rows`` scored rows: one index per feature,
    rounded to :data:`INDEX_DECIMALS` decimals, and only over at least ``min_rows`` rows (its policy's smallest
    stability set, ``[policy] min_stability_rows``): an index over a handful of rows the bank picked would say
    where those rows' values lie."""
    if rows < max(1, min_rows):
        raise StabilityError(f"stability over {rows} row(s): the platform computes indices over at least "
                             f"{max(1, min_rows)} rows ([policy] min_stability_rows)")
    return {name: round(value, INDEX_DECIMALS) for name, value in reference.indices(counts).items()}


class RecentWindow:
    """The most recent rows a node served for one model, as what PSI needs and nothing more: per call, either
    the bin counts of the rows' features (:meth:`add_counts`) or the rows' scores per tag (:meth:`add_scores`).
    Never an ID. Bounded: the oldest calls go once more than ``max_rows`` rows are held. Thread-safe."""

    def __init__(self, max_rows: int) -> None:
        if max_rows < 1:
            raise StabilityError(f"a window holds at least one row, not {max_rows}")
        self.max_rows = max_rows
        self._calls: deque[tuple[int, Any]] = deque()
        self._rows = 0
        self._lock = threading.Lock()

    def _add(self, rows: int, item: Any) -> None:
        with self._lock:
            self._calls.append((rows, item))
            self._rows += rows
            while self._rows - self._calls[0][0] >= self.max_rows:
                self._rows -= self._calls.popleft()[0]

    def add_counts(self, counts: np.ndarray, rows: int) -> None:
        self._add(rows, np.asarray(counts, dtype=np.int64))

    def add_scores(self, scores: Mapping[str, np.ndarray]) -> None:
        rows = max((len(v) for v in scores.values()), default=0)
        if rows:
            self._add(rows, {t: np.asarray(v, dtype=np.float32) for t, v in scores.items()})

    @property
    def rows(self) -> int:
        with self._lock:
            return self._rows

    def counts(self) -> tuple[np.ndarray | None, int]:
        """The summed counts of the window's calls (None when it holds none) and its rows."""
        with self._lock:
            calls = list(self._calls)
        if not calls:
            return None, 0
        return np.sum([c for _, c in calls], axis=0), sum(r for r, _ in calls)

    def scores(self) -> dict[str, np.ndarray]:
        """Tag -> the window's scores for it, oldest first."""
        with self._lock:
            calls = [item for _, item in self._calls]
        tags = {t for item in calls for t in item}
        return {t: np.concatenate([item[t] for item in calls if t in item]).astype(np.float64) for t in sorted(tags)}


class Windows:
    """A node's :class:`RecentWindow` per served model (the most recently used ``max_models``)."""

    def __init__(self, max_rows: int, max_models: int = 32) -> None:
        self.max_rows, self.max_models = max_rows, max_models
        self._windows: OrderedDict[str, RecentWindow] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, key: str) -> RecentWindow:
        with self._lock:
            window = self._windows.pop(key, None) or RecentWindow(self.max_rows)
            self._windows[key] = window
            while len(self._windows) > self.max_models:
                self._windows.popitem(last=False)
            return window

    def get(self, key: str) -> RecentWindow | None:
        with self._lock:
            return self._windows.get(key)


def rows_bitmap(positions: np.ndarray) -> bytes:
    """Distinct alignment positions as a bitmap (bit ``i`` set: position ``i``): an eighth of a byte per
    alignment row, so a batch of ten million members fits one message."""
    positions = np.asarray(positions, dtype=np.int64)
    if len(positions) == 0:
        return b""
    if positions.min() < 0:
        raise StabilityError("alignment positions are never negative")
    bits = np.zeros(int(positions.max()) + 1, dtype=np.uint8)
    bits[positions] = 1
    return np.packbits(bits).tobytes()


def bitmap_rows(bitmap: bytes) -> np.ndarray:
    """The positions (int64, ascending) of a :func:`rows_bitmap`."""
    return np.flatnonzero(np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8))).astype(np.int64)


def feature_rows(indices: Mapping[str, float], party: str) -> list[dict[str, Any]]:
    """Table rows (party, feature, psi, band), the largest index first."""
    return [{"party": party, "feature": name, "psi": value, "band": band(value)}
            for name, value in sorted(indices.items(), key=lambda kv: -kv[1])]


__all__ = ["ALERT", "BANDS", "DEFAULT_BINS", "FLOOR", "INDEX_DECIMALS", "MIN_STABILITY_ROWS", "VERSION", "WARN", "FeatureReference",
           "RecentWindow", "ScoreReference", "Windows", "StabilityError", "band", "bin_counts", "bitmap_rows", "feature_rows", "platform_indices", "psi",
           "quantile_edges", "rows_bitmap"]
