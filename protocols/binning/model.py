"""A party's binning of its own columns: fitted on its training population from values alone (no label),
stored with its model half, applied the same way to every row it scores.

Numeric columns get quantile bins (a column with no more distinct values than bins gets a bin per value);
categorical columns get their most frequent levels and one "other" bin for the rest; a column with missing
values in training gets a "missing" bin of its own. Bins are left-closed: with edges ``e0 < e1 < ...`` a
numeric column's bins are ``[-inf, e0), [e0, e1), ..., [ek, inf)``; the missing bin, when there is one,
comes last. Each training-time bin of a quantile fit holds at least one training row.

Columns that cannot be binned usefully are left out and reported (:attr:`BinningModel.dropped`, column ->
reason), never a crash: a constant column (one bin in all), and an identifier-like categorical column
(more than ``IDENTIFIER_MIN_LEVELS`` levels, most of them on a single row: a "top levels" summary of it
would be noise, and binning it would only fingerprint customers). Messages name columns, never values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from protocols.binning.spec import (
    IDENTIFIER_MIN_LEVELS,
    IDENTIFIER_UNIQUE_SHARE,
    BinningError,
    BinningSpec,
    ColumnKind,
)

FORMAT_VERSION = 1
BLOCK_CELLS = 1 << 22  # values of a float matrix binned at once (a few such arrays in memory)
SMALL_ROWS = 64  # up to this many rows (online scoring), numeric columns are binned in one comparison
MISSING_LABEL = "missing"
OTHER_LABEL = "other"
Level = float | str


@dataclass(frozen=True)
class ColumnBins:
    """One kept column's bins. ``counts`` are the training rows per bin (the party's own, label-free)."""
    name: str
    kind: ColumnKind
    edges: tuple[float, ...] = ()  # numeric: interior cut points, strictly increasing
    levels: tuple[Level, ...] = ()  # categorical: the kept levels, most frequent first
    has_other: bool = False  # categorical: levels beyond the kept ones share one bin
    has_missing: bool = False  # training had missing values: they have a bin of their own (the last)
    counts: tuple[int, ...] = ()

    @property
    def n_bins(self) -> int:
        values = len(self.edges) + 1 if self.kind == "numeric" else len(self.levels) + int(self.has_other)
        return values + int(self.has_missing)

    @property
    def missing_bin(self) -> int | None:
        return self.n_bins - 1 if self.has_missing else None

    def labels(self) -> list[str]:
        """A label per bin: ``[a, b)`` intervals, levels, "other", "missing"."""
        if self.kind == "numeric":
            bounds = ["-inf", *(f"{e:g}" for e in self.edges), "inf"]
            out = [f"[{lo}, {hi})" for lo, hi in zip(bounds, bounds[1:], strict=False)]
        else:
            out = [_level_label(v) for v in self.levels] + ([OTHER_LABEL] if self.has_other else [])
        return out + ([MISSING_LABEL] if self.has_missing else [])

    def transform(self, values: pd.Series | np.ndarray) -> np.ndarray:
        """The bin of each value (int32). A float array (what the nodes hold) takes a numpy-only path: online
        scoring bins a row in microseconds."""
        floats = isinstance(values, np.ndarray) and values.dtype.kind == "f"
        missing = np.isnan(values) if floats else np.asarray(pd.isna(values))
        if self.kind == "numeric":
            numbers = values if floats else _numeric(values, self.name)
            out = np.searchsorted(self._lookup[0], np.where(missing, 0.0, numbers), side="right").astype(np.int32)
        else:
            found = self._find(values if floats and not self._text() else
                               _levels(values, missing, self._text(), self.name))
            unseen = (found < 0) & ~missing
            if unseen.any():
                if not self.has_other:
                    raise BinningError(f"column '{self.name}': {int(unseen.sum())} row(s) have a level not seen "
                                       "in training and the binning has no 'other' bin; refit the binning")
                found[unseen] = len(self.levels)
            out = found
        if missing.any():
            if not self.has_missing:
                raise BinningError(f"column '{self.name}': {int(missing.sum())} missing value(s), but training "
                                   "had none, so the binning has no 'missing' bin; fill them or refit")
            out[missing] = self.n_bins - 1
        return out

    def _text(self) -> bool:
        return any(isinstance(v, str) for v in self.levels)

    @cached_property
    def _lookup(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Numeric: the edges. Categorical: the levels sorted, and each one's bin (built once, not per row)."""
        if self.kind == "numeric":
            return np.asarray(self.edges, dtype=np.float64), None
        levels = np.asarray(self.levels, dtype=object if self._text() else np.float64)
        order = np.argsort(levels, kind="stable")
        return levels[order], order.astype(np.int32)

    def _find(self, present: np.ndarray) -> np.ndarray:
        """The bin of each level, -1 where it is not a kept level."""
        ordered, bins = self._lookup
        assert bins is not None
        if not len(ordered):
            return np.full(len(present), -1, dtype=np.int32)
        at = np.minimum(np.searchsorted(ordered, present), len(ordered) - 1)
        return np.where(ordered[at] == present, bins[at], -1).astype(np.int32)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "edges": list(self.edges), "levels": list(self.levels),
                "has_other": self.has_other, "has_missing": self.has_missing, "counts": list(self.counts)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> ColumnBins:
        try:
            bins = cls(name=str(d["name"]), kind=d["kind"], edges=tuple(float(e) for e in d["edges"]),
                       levels=tuple(v if isinstance(v, str) else float(v) for v in d["levels"]),
                       has_other=bool(d["has_other"]), has_missing=bool(d["has_missing"]),
                       counts=tuple(int(c) for c in d["counts"]))
        except (KeyError, TypeError, ValueError) as err:
            raise BinningError(f"{where}: a column's binning is damaged ({err!r})") from None
        if bins.kind not in ("numeric", "categorical") or len(bins.counts) != bins.n_bins or \
                any(b <= a for a, b in zip(bins.edges, bins.edges[1:], strict=False)) or \
                len(set(bins.levels)) != len(bins.levels):
            raise BinningError(f"{where}: column '{bins.name}': stored bins are inconsistent")
        return bins


@dataclass
class BinningModel:
    """Every column of one party: the kept ones binned (in input order), the others left out with a reason."""
    input_columns: tuple[str, ...]
    columns: list[ColumnBins]
    dropped: dict[str, str] = field(default_factory=dict)
    spec: BinningSpec = field(default_factory=BinningSpec)

    # ---- fitting ----

    @classmethod
    def fit(cls, data: pd.DataFrame | np.ndarray, names: Sequence[str] | None = None,
            spec: BinningSpec | None = None) -> BinningModel:
        """Fit on the training population: a frame (its columns; text columns are categorical) or a matrix
        with ``names`` for its columns. Raises :class:`BinningError` when no column is left to bin."""
        spec = spec or BinningSpec()
        frame = _as_frame(data, names)
        unknown = sorted(set(spec.columns) - set(frame.columns))
        if unknown:
            raise BinningError(f"[binning]: column(s) {', '.join(unknown)} are not feature columns of the data")
        kept: list[ColumnBins] = []
        dropped: dict[str, str] = {}
        for name in frame.columns:
            bins, reason = _fit_column(str(name), frame[name], spec)
            if bins is None:
                dropped[str(name)] = str(reason)
            else:
                kept.append(bins)
        if not kept:
            kinds: dict[str, list[str]] = {}
            for column, reason in dropped.items():
                kinds.setdefault(reason.split(" ", 1)[0].rstrip(":"), []).append(f"'{column}'")
            raise BinningError(f"no column left to bin: all {len(dropped)} left out ("
                               + "; ".join(f"{kind}: {', '.join(names)}" for kind, names in kinds.items()) + ")")
        return cls(input_columns=tuple(str(c) for c in frame.columns), columns=kept, dropped=dropped, spec=spec)

    # ---- what it is ----

    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def n_bins(self) -> list[int]:
        return [c.n_bins for c in self.columns]

    def labels(self, column: str | int) -> list[str]:
        return self.column(column).labels()

    def column(self, column: str | int) -> ColumnBins:
        if isinstance(column, int):
            return self.columns[column]
        for c in self.columns:
            if c.name == column:
                return c
        raise BinningError(f"column '{column}' is not binned"
                           + (f" (left out: {self.dropped[column]})" if column in self.dropped else ""))

    def summary(self) -> dict[str, Any]:
        """For reports: columns binned, bins in all (the one-hot width), bins per column, columns left out
        and why (names and counts only)."""
        return {"columns": len(self.columns), "bins": int(self.offsets()[-1]),
                "bins_per_column": dict(zip(self.feature_names, self.n_bins, strict=True)),
                "dropped": dict(self.dropped)}

    def dropped_notes(self) -> list[str]:
        """One line per left-out column, for logs and reports (names and reasons, never values)."""
        return [f"column '{name}' left out of binning: {reason}" for name, reason in self.dropped.items()]

    # ---- applying ----

    def transform(self, data: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Bin indices (rows x kept columns, int32). A frame needs every kept column by name; a matrix has
        the fit's input columns, in order."""
        if isinstance(data, pd.DataFrame):
            absent = [c.name for c in self.columns if c.name not in data.columns]
            if absent:
                raise BinningError(f"column(s) {', '.join(absent)} missing from the data to bin")
            series = [data[c.name] for c in self.columns]
        else:
            matrix = np.asarray(data)
            if matrix.ndim != 2 or matrix.shape[1] != len(self.input_columns):
                raise BinningError(f"data to bin has shape {matrix.shape}; expected (rows, "
                                   f"{len(self.input_columns)}) for columns {', '.join(self.input_columns)}")
            if matrix.dtype.kind == "f":
                return self._transform_floats(matrix)
            series = [matrix[:, i] for i in self._positions]
        rows = len(data)
        out = np.empty((rows, len(self.columns)), dtype=np.int32)
        for j, (bins, values) in enumerate(zip(self.columns, series, strict=True)):
            out[:, j] = bins.transform(values)
        return out

    def _transform_floats(self, matrix: np.ndarray) -> np.ndarray:
        """Bins of a float matrix: numeric columns together, a block of rows at a time, with no Python loop
        over columns or rows (a row online: a handful of numpy calls whatever the number of columns);
        categorical columns one by one. The same bins as column by column: a value's bin is the number of
        its column's edges at or below it (``searchsorted(edges, value, side="right")``), and NaN pads the
        shorter edge lists (never at or below a value)."""
        kept, at, edges, missing_bin = self._numeric_plan
        out = np.empty((len(matrix), len(self.columns)), dtype=np.int32)
        ranks = edges.shape[1]
        # few rows: one broadcast comparison (rows x columns x edges); many: a pass per edge rank
        step = max(1, BLOCK_CELLS // max(1, len(at) * (ranks if len(matrix) <= SMALL_ROWS else 1)))
        for a in range(0, len(matrix), step):
            block = matrix[a:a + step][:, at]
            if len(block) <= SMALL_ROWS:
                counts = (block[:, :, None] >= edges).sum(axis=2, dtype=np.int32)
            else:
                counts = np.zeros(block.shape, dtype=np.int32)
                for rank in range(ranks):
                    counts += block >= edges[:, rank]
            missing = np.isnan(block)
            if missing.any():
                unbinned = missing & (missing_bin < 0)
                if unbinned.any():
                    k = int(np.flatnonzero(unbinned.any(axis=0))[0])
                    self.columns[kept[k]].transform(block[:, k])  # raises, naming the column
                counts = np.where(missing, missing_bin, counts).astype(np.int32, copy=False)
            out[a:a + step, kept] = counts
        for j in self._categorical:
            out[:, j] = self.columns[j].transform(matrix[:, self._positions[j]])
        return out

    @cached_property
    def _numeric_plan(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The numeric columns' places among the kept ones and the input ones, their edges padded with NaN
        into one (columns x most edges) array, and their missing bins (-1: none)."""
        kept = np.array([j for j, c in enumerate(self.columns) if c.kind == "numeric"], dtype=np.int64)
        edges = np.full((len(kept), max([len(self.columns[j].edges) for j in kept] + [1])), np.nan)
        for k, j in enumerate(kept):
            edges[k, :len(self.columns[j].edges)] = self.columns[j].edges
        missing_bin = np.array([-1 if self.columns[j].missing_bin is None else self.columns[j].missing_bin
                                for j in kept], dtype=np.int32)
        return kept, np.array([self._positions[j] for j in kept], dtype=np.int64), edges, missing_bin

    @cached_property
    def _categorical(self) -> list[int]:
        return [j for j, c in enumerate(self.columns) if c.kind != "numeric"]

    def offsets(self) -> np.ndarray:
        """Where each column's one-hot block starts (and, last, the total width)."""
        return self._offsets.copy()

    @cached_property
    def _positions(self) -> list[int]:  # each kept column's position among the input columns
        at = {name: i for i, name in enumerate(self.input_columns)}
        return [at[c.name] for c in self.columns]

    @cached_property
    def _offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.n_bins)]).astype(np.int64)

    def one_hot(self, bins: np.ndarray, dtype: np.dtype | type = np.float64) -> np.ndarray:
        """One column per bin (0/1 of ``dtype``, rows x sum(n_bins)) from :meth:`transform`'s indices."""
        bins = np.asarray(bins)
        if bins.ndim != 2 or bins.shape[1] != len(self.columns):
            raise BinningError(f"bin indices have shape {bins.shape}; expected (rows, {len(self.columns)})")
        offsets = self._offsets
        if len(bins) and ((bins < 0).any() or (bins >= np.diff(offsets)).any()):
            raise BinningError("bin indices out of range for this binning")
        width = int(offsets[-1])
        out = np.zeros((len(bins), width), dtype=dtype)
        # flat positions: one scattered write per value (faster than a 2-D fancy index)
        out.reshape(-1)[(np.arange(len(bins), dtype=np.int64)[:, None] * width + bins + offsets[:-1]).ravel()] = 1
        return out

    def one_hot_names(self) -> list[str]:
        """``column=label`` per one-hot column, in :meth:`one_hot`'s order."""
        return [f"{c.name}={label}" for c in self.columns for label in c.labels()]

    # ---- storing ----

    def to_dict(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, "input_columns": list(self.input_columns),
                "columns": [c.to_dict() for c in self.columns], "dropped": dict(self.dropped),
                "spec": self.spec.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "binning") -> BinningModel:
        if not isinstance(d, Mapping) or d.get("version") != FORMAT_VERSION:
            raise BinningError(f"{where}: not a binning of format version {FORMAT_VERSION}")
        try:
            columns = [ColumnBins.from_dict(c, where) for c in d["columns"]]
            model = cls(input_columns=tuple(str(c) for c in d["input_columns"]), columns=columns,
                        dropped={str(k): str(v) for k, v in d["dropped"].items()},
                        spec=BinningSpec.from_dict(d["spec"], where))
        except (KeyError, TypeError, AttributeError) as err:
            raise BinningError(f"{where}: binning is damaged ({err!r})") from None
        missing = [c.name for c in columns if c.name not in model.input_columns]
        if missing or not columns:
            raise BinningError(f"{where}: binning is damaged (binned columns not among its input columns)")
        return model


# ---- fitting one column ----


def _fit_column(name: str, values: pd.Series, spec: BinningSpec) -> tuple[ColumnBins | None, str | None]:
    override = spec.for_column(name)
    missing = np.asarray(values.isna())
    text = not (pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values))
    kind: ColumnKind = override.kind or ("categorical" if text else "numeric")
    has_missing = bool(missing.any())
    if kind == "categorical":
        present = pd.Series(_levels(values, missing, text, name)[~missing])
        counts = present.value_counts(sort=False)
        if len(counts) > IDENTIFIER_MIN_LEVELS and len(counts) > IDENTIFIER_UNIQUE_SHARE * max(len(present), 1):
            return None, (f"identifier-like: {len(counts)} distinct levels on {len(present)} rows (a category "
                          "column groups customers; this one names them); leave it out or bin it as numeric")
        order = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
        keep = override.max_categories or spec.max_categories
        levels = tuple(_plain(v) for v, _ in order[:keep])
        bins = ColumnBins(name, "categorical", levels=levels, has_other=len(order) > keep, has_missing=has_missing)
    else:
        numbers = _numeric(values, name)[~missing]
        if override.edges is not None:
            edges = override.edges
        else:
            edges = _quantile_edges(numbers, override.bins or spec.bins)
        bins = ColumnBins(name, "numeric", edges=edges, has_missing=has_missing)
    present_values = len(np.unique(_levels(values, missing, text and kind == "categorical", name)[~missing]))
    if present_values + int(has_missing) < 2:
        what = "every value missing" if not present_values else "one value in every row"
        return None, f"constant ({what}): nothing to learn from it"
    counts_per_bin = np.bincount(bins.transform(values), minlength=bins.n_bins)
    return replace(bins, counts=tuple(int(c) for c in counts_per_bin)), None


def _quantile_edges(values: np.ndarray, bins: int) -> tuple[float, ...]:
    distinct = np.unique(values)
    if len(distinct) <= bins:  # a bin per value
        return tuple(float(v) for v in distinct[1:])
    # Cut points are data values ("higher": with left-closed bins the lower bin then holds about its share),
    # above the minimum, so every bin holds a training row.
    cuts = np.unique(np.quantile(values, np.arange(1, bins) / bins, method="higher"))
    return tuple(float(v) for v in cuts[cuts > distinct[0]])


def _numeric(values: pd.Series | np.ndarray, name: str) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        return values.astype(np.float64, copy=False)
    series = pd.Series(values)
    numbers = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.isnan(numbers) & ~np.asarray(series.isna())
    if bad.any():
        raise BinningError(f"column '{name}', row {int(np.flatnonzero(bad)[0]) + 1}: not a number; declare it "
                           "kind = \"categorical\" in [binning.columns] to bin it by level")
    if np.isinf(numbers).any():
        raise BinningError(f"column '{name}', row {int(np.flatnonzero(np.isinf(numbers))[0]) + 1}: infinite value")
    return numbers


def _levels(values: pd.Series | np.ndarray, missing: np.ndarray, text: bool, name: str) -> np.ndarray:
    """Levels to look up: text for text columns, float64 otherwise (missing rows hold a placeholder)."""
    if text:
        return np.where(missing, "", np.asarray(values, dtype=object).astype(str)).astype(object)
    return np.where(missing, 0.0, _numeric(values, name))


def _plain(level: Any) -> Level:
    return level if isinstance(level, str) else float(level)


def _level_label(level: Level) -> str:
    return level if isinstance(level, str) else f"{level:g}"


def _as_frame(data: pd.DataFrame | np.ndarray, names: Sequence[str] | None) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        return data
    matrix = np.asarray(data)
    if matrix.ndim != 2:
        raise BinningError(f"data to bin must be a table (rows x columns), got shape {matrix.shape}")
    names = list(names) if names is not None else [f"x{i}" for i in range(matrix.shape[1])]
    if len(names) != matrix.shape[1]:
        raise BinningError(f"{len(names)} column names for {matrix.shape[1]} columns")
    return pd.DataFrame(matrix, columns=names, copy=False)


__all__ = ["FORMAT_VERSION", "MISSING_LABEL", "OTHER_LABEL", "BinningModel", "ColumnBins"]
