"""How a party wants its columns binned: the node's ``[binning]`` table, checked, as one object.

Example (either node's TOML)::

    [binning]
    bins = 10                       # quantile bins per numeric column (default 10)
    max_categories = 20             # categorical columns: most frequent levels kept, the rest one "other" bin

    [binning.columns.EDUCATION]
    kind = "categorical"            # its values are levels, not amounts

    [binning.columns.LIMIT_BAL]
    edges = [50000, 100000, 200000] # explicit cut points: bins [-inf, 50000), [50000, 100000), ...

    [binning.columns.AGE]
    bins = 5

Everything here is label-free: the party bins its own columns from their values alone. Unknown keys are
refused by the config loader (``party_common.known_keys``); this module checks kinds and ranges, and its
errors name the key and, for a column, the column.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from protocols.errors import UserError

ColumnKind = Literal["numeric", "categorical"]
KINDS: tuple[str, ...] = ("numeric", "categorical")
DEFAULT_BINS = 10
DEFAULT_MAX_CATEGORIES = 20
MAX_BINS = 1000  # per column: more is not binning but an identifier
# A categorical column with more distinct levels than this *and* mostly unique values (each level on at
# most IDENTIFIER_ROW_SHARE of the rows, on average) identifies customers rather than grouping them.
IDENTIFIER_MIN_LEVELS = 1000
IDENTIFIER_UNIQUE_SHARE = 0.5


class BinningError(UserError):
    """A binning setting or the data to bin is wrong; the message names the key or the column."""


@dataclass(frozen=True)
class ColumnSpec:
    """One column's override; None keeps the table's default."""
    kind: ColumnKind | None = None
    bins: int | None = None
    edges: tuple[float, ...] | None = None
    max_categories: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in
                (("kind", self.kind), ("bins", self.bins), ("edges", self.edges),
                 ("max_categories", self.max_categories)) if v is not None}


@dataclass(frozen=True)
class BinningSpec:
    bins: int = DEFAULT_BINS
    max_categories: int = DEFAULT_MAX_CATEGORIES
    columns: Mapping[str, ColumnSpec] = field(default_factory=dict)

    def for_column(self, name: str) -> ColumnSpec:
        return self.columns.get(name, ColumnSpec())

    def to_dict(self) -> dict[str, Any]:
        return {"bins": self.bins, "max_categories": self.max_categories,
                "columns": {name: spec.to_dict() for name, spec in self.columns.items()}}

    @classmethod
    def from_dict(cls, table: Mapping[str, Any], where: str = "[binning]") -> BinningSpec:
        """Parse a ``[binning]`` table (unknown keys already refused by the caller)."""
        bins = _count(table, "bins", where, DEFAULT_BINS, low=2)
        max_categories = _count(table, "max_categories", where, DEFAULT_MAX_CATEGORIES, low=1)
        columns_table = table.get("columns", {})
        if not isinstance(columns_table, Mapping):
            raise BinningError(f"{where}: 'columns' must be a table of column names")
        columns: dict[str, ColumnSpec] = {}
        for name, raw in columns_table.items():
            at = f"{where} column '{name}'"
            if not isinstance(raw, Mapping):
                raise BinningError(f"{at}: must be a table (e.g. kind = \"categorical\")")
            kind = raw.get("kind")
            if kind is not None and kind not in KINDS:
                raise BinningError(f"{at}: 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
            edges = raw.get("edges")
            if edges is not None:
                edges = _edges(edges, at)
                if kind == "categorical":
                    raise BinningError(f"{at}: 'edges' are for numeric columns, not kind = \"categorical\"")
                if "bins" in raw:
                    raise BinningError(f"{at}: give 'edges' or 'bins', not both (edges fix the bins)")
            columns[str(name)] = ColumnSpec(
                kind=kind, bins=_count(raw, "bins", at, None, low=2), edges=edges,
                max_categories=_count(raw, "max_categories", at, None, low=1))
        return cls(bins=bins, max_categories=max_categories, columns=columns)


def _count(table: Mapping[str, Any], key: str, where: str, default: int | None, *, low: int) -> int | None:
    if key not in table:
        return default
    value = table[key]
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= MAX_BINS:
        raise BinningError(f"{where}: '{key}' must be a whole number from {low} to {MAX_BINS}, got {value!r}")
    return value


def _edges(raw: Any, where: str) -> tuple[float, ...]:
    if not isinstance(raw, list | tuple) or not raw or len(raw) >= MAX_BINS:
        raise BinningError(f"{where}: 'edges' must be a list of 1 to {MAX_BINS - 1} increasing numbers")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw):
        raise BinningError(f"{where}: 'edges' must be numbers, got {raw!r}")
    edges = tuple(float(v) for v in raw)
    if not all(math.isfinite(v) for v in edges) or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise BinningError(f"{where}: 'edges' must be finite and strictly increasing, got {list(raw)}")
    return edges


__all__ = ["DEFAULT_BINS", "DEFAULT_MAX_CATEGORIES", "KINDS", "BinningError", "BinningSpec", "ColumnKind",
           "ColumnSpec"]
