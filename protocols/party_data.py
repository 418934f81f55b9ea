"""What one party holds in memory: customer IDs, a feature matrix, tag labels, and the schema they follow.

Loading these from files is ``party_common.data_loading``; here is only the table and what the protocols
and the nodes do with it (take the rows of an alignment, pick tags, find rows by ID). Errors name the
source file and rows by number, never an ID.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from protocols.errors import UserError
from protocols.identity import customer_keys
from protocols.rowblocks import take_rows


class DataError(UserError):
    """Bad input data; the message names the file, column and row."""


class SchemaMismatch(DataError):
    """Data to score does not have the columns the model was trained on."""


@dataclass(frozen=True)
class Schema:
    id_column: str
    feature_columns: tuple[str, ...]
    feature_dtypes: tuple[str, ...]
    tag_columns: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {"id_column": self.id_column, "feature_columns": list(self.feature_columns),
                "feature_dtypes": list(self.feature_dtypes), "tag_columns": list(self.tag_columns)}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Schema:
        return cls(id_column=str(d["id_column"]), feature_columns=tuple(d["feature_columns"]),  # type: ignore[arg-type]
                   feature_dtypes=tuple(d["feature_dtypes"]), tag_columns=tuple(d.get("tag_columns", ())))  # type: ignore[arg-type]

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def check_scoring_compatible(self, other: Schema, source: str) -> None:
        """Raise :class:`SchemaMismatch` unless ``other`` has this schema's features, in order, same kinds."""
        missing = [c for c in self.feature_columns if c not in other.feature_columns]
        extra = [c for c in other.feature_columns if c not in self.feature_columns]
        problems = []
        if missing:
            problems.append(f"missing feature column(s) {', '.join(missing)}")
        if extra:
            problems.append(f"unexpected feature column(s) {', '.join(extra)}")
        if not problems and other.feature_columns != self.feature_columns:
            problems.append("feature columns are in a different order than in training")
        if not problems:
            changed = [c for c, a, b in zip(self.feature_columns, self.feature_dtypes, other.feature_dtypes,
                                            strict=True) if _kind(a) != _kind(b)]
            if changed:
                problems.append(f"column(s) {', '.join(changed)} changed type since training")
        if other.id_column != self.id_column:
            problems.append(f"ID column is '{other.id_column}', training used '{self.id_column}'")
        if problems:
            raise SchemaMismatch(f"{source}: does not match the training schema: {'; '.join(problems)}")


def _kind(dtype: str) -> str:
    return "bool" if dtype.startswith("bool") else "number"


ID_DTYPE = np.dtypes.StringDType()  # 16 bytes per ID of up to 15 bytes (a Python str: about 60), longer ones beside
HASH_BLOCK = 1 << 20


def as_ids(values: Sequence[str] | np.ndarray) -> np.ndarray:
    """Customer IDs as a numpy string array (a copy only when they are not one already)."""
    return np.asarray(values, dtype=ID_DTYPE)


def id_hash64(ids: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each ID (pandas' SipHash with its fixed key), a block at a time. For indexing only:
    every hit is checked against the ID itself."""
    out = np.empty(len(ids), dtype=np.uint64)
    for start in range(0, len(ids), HASH_BLOCK):
        block = np.asarray(ids[start:start + HASH_BLOCK]).astype(object)
        out[start:start + HASH_BLOCK] = pd.util.hash_array(block, categorize=False)
    return out


class IdIndex:
    """Rows of customer IDs by their 64-bit hashes, sorted: 16 bytes per customer and binary search.

    Numpy's own sorting and searching of string arrays is not used: ``np.searchsorted`` on a StringDType
    array fails ("Failed to load string in string comparison", numpy 2.4.6) for a value above every ID when
    the last ID is longer than 15 bytes. A hash shared by two IDs costs a step along the run, never a
    wrong row.
    """

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = ids
        hashes = id_hash64(ids)
        self.order = np.argsort(hashes, kind="stable")
        self.sorted = hashes[self.order]

    def rows(self, wanted: Sequence[str] | np.ndarray) -> np.ndarray:
        """The row of each of ``wanted``, -1 where it is not an ID."""
        queries = as_ids(wanted)
        out = np.full(len(queries), -1, dtype=np.int64)
        if not len(queries) or not len(self.sorted):
            return out
        hashes = id_hash64(queries)
        at = np.searchsorted(self.sorted, hashes)
        candidate = np.flatnonzero(at < len(self.sorted))
        candidate = candidate[self.sorted[at[candidate]] == hashes[candidate]]
        rows = self.order[at[candidate]]
        same = self.ids[rows] == queries[candidate]
        out[candidate[same]] = rows[same]
        for i in candidate[~same].tolist():  # another ID with the same hash came first in the run
            j = int(at[i]) + 1
            while j < len(self.sorted) and self.sorted[j] == hashes[i]:
                if self.ids[self.order[j]] == queries[i]:
                    out[i] = self.order[j]
                    break
                j += 1
        return out

    def repeats(self) -> list[tuple[int, int]]:
        """(first row, later row) for every row whose ID an earlier row already has, in the order of the
        later rows."""
        pairs: list[tuple[int, int]] = []
        same = np.flatnonzero(self.sorted[1:] == self.sorted[:-1])
        if not len(same):
            return pairs
        # runs of equal hashes: positions start..end of the sorted hashes
        breaks = np.flatnonzero(np.diff(same) > 1)
        for start, end in zip(np.r_[same[0], same[breaks + 1]].tolist(), np.r_[same[breaks], same[-1]].tolist(),
                              strict=True):
            seen: dict[str, int] = {}
            for row in sorted(self.order[start:end + 2].tolist()):
                value = str(self.ids[row])
                if value in seen:
                    pairs.append((seen[value], row))
                else:
                    seen[value] = row
        return sorted(pairs, key=lambda pair: pair[1])


@dataclass
class PartyData:
    source: str
    ids: np.ndarray  # numpy StringDType (as_ids); any sequence of str given is converted
    features: np.ndarray  # float64 (n, d); an np.memmap when the node keeps it on disk (protocols.rowblocks)
    feature_names: list[str]
    labels: np.ndarray  # float64 (n, T): 1.0 / 0.0 / NaN (unknown)
    tag_names: list[str]
    schema: Schema
    # Feature columns of the file left out because no row had a value (the loader drops them; reports say so).
    dropped_columns: tuple[str, ...] = field(default=(), compare=False)
    _index: IdIndex | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.ids = as_ids(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """The row of each of ``ids`` (int64), -1 where an ID is not in the file. IDs are compared in their
        normal form (``protocols.identity``): any spelling PSI would match finds the customer. The index
        (:class:`IdIndex` over the normal forms) is built once, on first use, or by the loader."""
        if self._index is None:
            self._index = IdIndex(customer_keys(self.ids))
        return self._index.rows(customer_keys(ids))

    def row_of(self, customer_id: str) -> int:
        """The row of ``customer_id``, or -1."""
        return int(self.positions([customer_id])[0])

    def rows_of(self, ids: Sequence[str], *, what: str = "the alignment") -> np.ndarray:
        """Rows of ``ids`` in that order; :class:`DataError` names the first position not in the file."""
        rows = self.positions(ids)
        missing = np.flatnonzero(rows < 0)
        if len(missing):
            raise DataError(f"{self.source}: customer at position {missing[0] + 1} of {what} is not in the "
                            "file (has the file changed since PSI?)")
        return rows

    def take(self, ids_in_order: Sequence[str]) -> PartyData:
        """The rows for ``ids_in_order``, in that order (e.g. an alignment's agreed order); features on disk
        stay on disk (a scratch file beside them, copied a block of rows at a time)."""
        rows = self.rows_of(ids_in_order)
        return replace(self, ids=self.ids[rows], features=take_rows(self.features, rows), labels=self.labels[rows])

    def select_columns(self, names: Sequence[str]) -> PartyData:
        """Only the feature columns ``names`` (in this data's order), schema included."""
        cols = [i for i, name in enumerate(self.feature_names) if name in set(names)]
        kept = [self.feature_names[i] for i in cols]
        schema = replace(self.schema, feature_columns=tuple(kept),
                         feature_dtypes=tuple(self.schema.feature_dtypes[i] for i in cols))
        return replace(self, features=take_rows(self.features, None, cols), feature_names=kept, schema=schema)

    def select_tags(self, tags: Sequence[str]) -> PartyData:
        missing = [t for t in tags if t not in self.tag_names]
        if missing:
            raise DataError(f"{self.source}: no tag column(s) {', '.join(missing)}")
        cols = [self.tag_names.index(t) for t in tags]
        return replace(self, labels=self.labels[:, cols], tag_names=list(tags))


def tag_summary(labels: np.ndarray, tag_names: Sequence[str]) -> list[dict[str, int | str]]:
    """Counts per tag: known, positive, negative (counts only: safe to log and report)."""
    out = []
    for j, name in enumerate(tag_names):
        col = labels[:, j]
        known = ~np.isnan(col)
        out.append({"tag": name, "known": int(known.sum()), "positive": int((col == 1).sum()),
                    "negative": int((col == 0).sum())})
    return out
