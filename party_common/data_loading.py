"""Loading a party's data from its file, in one place: CSV or Parquet, an ID column, features, tags.

Every problem raises :class:`DataError` naming the file, the column and the row (1-based data row, as a
spreadsheet would count it after the header). Customer IDs are never put in a message: rows are named by
number. The recorded :class:`Schema` lets scoring refuse data that does not match training.

Missing feature values: ``fill_missing="error"`` (default) refuses them; ``"zero"`` fills 0;
``"mean"`` fills the column mean of the loaded file. Infinite values are always an error, and so is a value
whose magnitude exceeds :data:`MAX_ABS_VALUE` (1e150): standardising it would overflow to NaN.

A feature column whose *every* value is missing is dropped under every mode, ``"error"`` included (it is not
"a few missing values" but a column with nothing in it): a warning naming the file and the column (never a
value) goes to this module's logger and to ``on_warning``, and the schema records only the kept columns.

Files larger than memory: the file is read a block of rows at a time (Parquet by row groups through
``pyarrow``, CSV in chunks through ``pandas``), checked block by block, and the feature matrix collects in
memory up to ``in_memory_mb``; beyond that it goes to a memory-mapped file in ``spill_dir``
(``protocols.rowblocks``), which training, scoring and alignment read a block at a time. IDs and tags stay in
memory (the IDs as a numpy string array, 16 bytes each up to 15 bytes). Errors are gathered over the whole
file and reported as for a file read at once (the first bad row of the first bad column, and how many there
are in the file).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from protocols.identity import customer_keys, describe_difference
from protocols.party_data import DataError, IdIndex, PartyData, Schema, as_ids
from protocols.rowblocks import scratch_array, take_rows

log = logging.getLogger(__name__)

FillMode = Literal["error", "zero", "mean"]
FILL_MODES: tuple[str, ...] = ("error", "zero", "mean")
# Above this, x**2 summed over the rows (the variance in standardisation) would overflow a float64.
MAX_ABS_VALUE = 1e150
TAG_VALUES = {"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0, "": np.nan}
IN_MEMORY_MB = 1024  # feature matrices above this go to a memory-mapped file (when the caller gives a directory)
BLOCK_CELLS = 2_000_000  # cells per block read from the file (a CSV block of text: about 100 MB)
PARQUET_SUFFIXES, CSV_SUFFIXES = (".parquet", ".pq"), (".csv", ".txt", ".gz")


# ---- reading blocks ----


@dataclass
class _Source:
    path: Path
    columns: list[str]  # stripped header names, in file order
    bool_columns: set[str]
    blocks: Callable[[list[str], int], Iterator[pd.DataFrame]]  # (columns wanted, rows per block)
    rows: int | None = None  # known before reading (Parquet's metadata), or not (CSV)


def _open(path: Path) -> _Source:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix in PARQUET_SUFFIXES:
            source = _open_parquet(path)
        elif suffix in CSV_SUFFIXES:
            source = _open_csv(path)
        else:
            raise DataError(f"{path}: unsupported file type '{suffix}' (use .csv or .parquet)")
    except DataError:
        raise
    except pd.errors.EmptyDataError as err:
        raise DataError(f"{path}: the file is empty") from err
    except Exception as err:  # pyarrow/pandas parse errors come in many classes
        raise DataError(f"{path}: cannot read: {err}") from err
    if not source.columns:
        raise DataError(f"{path}: the file has no columns")
    dupes = pd.Index(source.columns)[pd.Index(source.columns).duplicated()].tolist()
    if dupes:
        raise DataError(f"{path}: column(s) {', '.join(dupes)} appear more than once in the header")
    return source


def parquet_file(path: Path) -> pq.ParquetFile:
    """``path`` opened to be read a block at a time (:func:`parquet_batches`)."""
    # pre_buffer=False: with it, the reader keeps every column chunk it has read until the file is closed
    # (measured: the whole 2.4 GB of a 1M x 300 file, where reading without it peaks near 0.6 GB).
    return pq.ParquetFile(path, pre_buffer=False)


def parquet_batches(file: pq.ParquetFile, columns: Sequence[str], rows: int) -> Iterator[pa.RecordBatch]:
    """``columns`` of ``file`` in batches of ``rows`` rows; when the caller is done with one (asks for the next),
    Arrow's allocator, which keeps what was freed for reuse, hands that memory back."""
    for batch in file.iter_batches(batch_size=rows, columns=list(columns)):
        yield batch
        del batch
        pa.default_memory_pool().release_unused()


def _open_parquet(path: Path) -> _Source:
    file = parquet_file(path)
    raw = list(file.schema_arrow.names)
    original = {str(name).strip(): name for name in raw}
    bools = {str(f.name).strip() for f in file.schema_arrow if pa.types.is_boolean(f.type)}

    def blocks(columns: list[str], rows: int) -> Iterator[pd.DataFrame]:
        for batch in parquet_batches(file, [original[c] for c in columns], rows):
            frame = batch.to_pandas()
            del batch  # its memory goes back before the next batch
            frame.columns = [str(c).strip() for c in frame.columns]
            yield frame[columns]

    return _Source(path, [str(c).strip() for c in raw], bools, blocks, file.metadata.num_rows)


def _open_csv(path: Path) -> _Source:
    # Everything as text: IDs such as "0012" must stay strings, and we check numbers ourselves.
    options = {"dtype": str, "keep_default_na": False, "na_values": []}
    header = [str(c).strip() for c in pd.read_csv(path, nrows=0, **options).columns]

    def blocks(columns: list[str], rows: int) -> Iterator[pd.DataFrame]:
        with pd.read_csv(path, chunksize=rows, **options) as reader:
            for frame in reader:
                frame.columns = header
                yield frame[columns]

    return _Source(path, header, set(), blocks)


# ---- checking values, gathered over the blocks ----


def _as_text(column: pd.Series) -> pd.Series:
    # None, NaN and pd.NA (nullable Parquet columns) all mean "empty".
    return column.map(lambda v: "" if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))
                      else str(v).strip())


@dataclass
class _Finding:
    """The first row (1-based) and the number of rows of one kind of problem in one column, over the file."""
    row: int = 0
    count: int = 0
    text: str = ""  # the first offending value, for non-numbers and bad tags (never for IDs)

    def add(self, rows: np.ndarray, start: int, text: pd.Series | None = None) -> None:
        if len(rows) and not self.count:
            self.row = start + int(rows[0]) + 1
            self.text = "" if text is None else str(text.iloc[int(rows[0])])
        self.count += len(rows)


@dataclass
class _Column:
    """What the blocks of one feature column told: problems, and the sums the mean fill needs."""
    not_number: _Finding = field(default_factory=_Finding)
    infinite: _Finding = field(default_factory=_Finding)
    huge: _Finding = field(default_factory=_Finding)
    missing: _Finding = field(default_factory=_Finding)
    total: float = 0.0  # of the present values
    squares: float = 0.0
    largest: float = -1.0
    largest_row: int = 0

    def values(self, raw: pd.Series, start: int, is_bool: bool) -> np.ndarray:
        blank = None  # where a text column is empty (a text that is not a number is refused, not missing)
        if pd.api.types.is_bool_dtype(raw):
            values = raw.to_numpy(dtype=np.float64)
        elif is_bool:  # a Parquet boolean column with nulls reaches pandas as objects
            values = pd.array(raw, dtype="boolean").to_numpy(dtype=np.float64, na_value=np.nan)
        elif pd.api.types.is_numeric_dtype(raw):
            values = raw.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            text = _as_text(raw)
            blank = (text == "").to_numpy()
            values = pd.to_numeric(text.where(~blank, None), errors="coerce").to_numpy(dtype=np.float64)
            # "nan"/"inf" spelled out are numbers to pandas; treat them like the floats they are.
            self.not_number.add(np.flatnonzero(np.isnan(values) & ~blank), start, text)
        self.infinite.add(np.flatnonzero(np.isinf(values)), start)
        with np.errstate(invalid="ignore"):
            self.huge.add(np.flatnonzero(np.abs(values) > MAX_ABS_VALUE), start)
        self.missing.add(np.flatnonzero(np.isnan(values) if blank is None else blank), start)
        # np.nansum, as np.nanmean sums: a file of one block fills exactly the mean np.nanmean gives.
        self.total += float(np.nansum(values))
        with np.errstate(over="ignore", invalid="ignore"):
            self.squares += float(np.nansum(values * values))
        if not np.isnan(values).all():
            i = int(np.argmax(np.abs(np.where(np.isfinite(values), values, 0.0))))
            if abs(values[i]) > self.largest:
                self.largest, self.largest_row = abs(float(values[i])), start + i + 1
        return values

    def check(self, path: Path, name: str, rows: int, fill: FillMode) -> None:
        """Raise the column's first problem, in the order a reader meets them."""
        if self.not_number.count:
            raise DataError(f"{path}: column '{name}', row {self.not_number.row}: '{self.not_number.text}' is not a "
                            f"number (feature columns must be numeric; {self.not_number.count} such value(s))")
        if self.infinite.count:
            raise DataError(f"{path}: column '{name}', row {self.infinite.row}: infinite value")
        if self.huge.count:
            raise DataError(f"{path}: column '{name}', row {self.huge.row}: value of magnitude above "
                            f"{MAX_ABS_VALUE:g} would overflow standardisation ({self.huge.count} such value(s)); "
                            "rescale the column")
        if self.missing.count and fill == "error":
            raise DataError(f"{path}: column '{name}', row {self.missing.row}: missing value ({self.missing.count} "
                            "in the column); set fill_missing to 'zero' or 'mean' to fill them")
        if not np.isfinite(self.squares) or not np.isfinite(self.total):
            raise DataError(f"{path}: column '{name}', row {self.largest_row}: the column's variance overflows "
                            "standardisation; rescale the column")

    def fill_value(self, rows: int, fill: FillMode) -> float:
        return 0.0 if fill == "zero" else self.total / (rows - self.missing.count)


# ---- the feature matrix: in memory, or on disk beyond a size ----


class _Matrix:
    """Blocks of rows appended in order; kept in memory up to ``limit`` bytes, then in a file of ``directory``.

    With the number of rows known beforehand (``expected``), the whole matrix is allocated once, in memory or
    mapped from a scratch file, and blocks are copied into it; otherwise blocks collect in memory and move to
    a file once they pass ``limit``."""

    def __init__(self, columns: int, directory: Path | None, limit: int, expected: int | None = None) -> None:
        self.columns, self.directory, self.limit = columns, directory, limit
        self.blocks: list[np.ndarray] = []
        self.rows = 0
        self.file: tuple[BinaryIO, str] | None = None
        self.whole: np.ndarray | None = None
        if expected is not None:
            self.whole = (scratch_array(directory, (expected, columns), np.float64)
                          if directory is not None and expected * columns * 8 > limit
                          else np.empty((expected, columns)))

    def append(self, block: np.ndarray) -> None:
        start = self.rows
        self.rows += len(block)
        if self.whole is not None:
            if self.rows > len(self.whole):
                raise DataError("the file has more rows than its metadata says")
            self.whole[start:self.rows] = block
            return
        if self.file is None:
            self.blocks.append(block)
            if self.directory is not None and self.rows * self.columns * 8 > self.limit:
                self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd, name = tempfile.mkstemp(dir=self.directory, prefix=".features-", suffix=".f64")
                self.file = (os.fdopen(fd, "wb"), name)
                for held in self.blocks:
                    self.file[0].write(np.ascontiguousarray(held, dtype=np.float64).tobytes())
                self.blocks = []
        else:
            self.file[0].write(np.ascontiguousarray(block, dtype=np.float64).tobytes())

    def finish(self) -> np.ndarray:
        if self.whole is not None:
            return self.whole[:self.rows]
        if self.file is None:
            return np.vstack(self.blocks) if self.blocks else np.empty((0, self.columns))
        handle, name = self.file
        try:
            handle.close()
            return np.memmap(name, dtype=np.float64, mode="r+", shape=(self.rows, self.columns))
        finally:
            os.unlink(name)  # the mapping keeps the data; the file system frees it with the array

    def discard(self) -> None:
        self.whole = None
        if self.file is not None:
            self.file[0].close()
            os.unlink(self.file[1])
            self.file = None


def _fill(X: np.ndarray, values: np.ndarray, step: int) -> None:
    """Missing (NaN) entries of ``X`` set to their column's value, in place, a block of rows at a time."""
    for a in range(0, len(X), step):
        block = np.asarray(X[a:a + step])
        missing = np.isnan(block)
        if missing.any():
            X[a:a + step] = np.where(missing, values[None, :], block)


# ---- loading ----


def load_party_data(path: str | Path, *, id_column: str, tag_columns: Sequence[str] = (),
                    feature_columns: Sequence[str] | None = None, fill_missing: FillMode = "error",
                    expected_schema: Schema | None = None,
                    on_warning: Callable[[str], None] | None = None,
                    spill_dir: str | Path | None = None, in_memory_mb: float = IN_MEMORY_MB) -> PartyData:
    """Load and validate one party's file.

    ``feature_columns=None`` takes every column but the ID and the tags. ``expected_schema`` (scoring):
    refuse a file whose features differ from training with :class:`SchemaMismatch`; tags may be absent.
    A feature column with every value missing is dropped (its schema columns excepted when scoring);
    each such warning is logged and passed to ``on_warning``. ``spill_dir``: where a feature matrix of more
    than ``in_memory_mb`` goes (a memory-mapped file, unlinked at once); None keeps it in memory.
    """
    path = Path(path)
    if fill_missing not in FILL_MODES:
        raise DataError(f"fill_missing must be 'error', 'zero' or 'mean', got {fill_missing!r}")
    source = _open(path)
    header = source.columns
    if id_column not in header:
        raise DataError(f"{path}: no ID column '{id_column}' (columns: {', '.join(header[:12])})")
    tags = list(tag_columns)
    if expected_schema is not None and not feature_columns:
        feature_columns = [c for c in header if c != id_column and c not in expected_schema.tag_columns
                           and c not in tags]
    features = list(feature_columns) if feature_columns is not None else [
        c for c in header if c != id_column and c not in tags]
    missing = [c for c in [*tags, *features] if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    if id_column in features or set(tags) & set(features):
        raise DataError(f"{path}: a column cannot be both a feature and the ID or a tag")
    if not features:
        raise DataError(f"{path}: no feature columns (only '{id_column}' and tags)")

    stats = [_Column() for _ in features]
    empty_ids, bad_tags = _Finding(), [_Finding() for _ in tags]
    id_blocks: list[np.ndarray] = []
    label_blocks: list[np.ndarray] = []
    matrix = _Matrix(len(features), None if spill_dir is None else Path(spill_dir), int(in_memory_mb * 2**20),
                     source.rows)
    rows_per_block = max(1024, BLOCK_CELLS // (len(features) + len(tags) + 1))
    try:
        try:
            for frame in source.blocks([id_column, *features, *tags], rows_per_block):
                start = matrix.rows
                ids = _as_text(frame[id_column])
                empty_ids.add(np.flatnonzero((ids == "").to_numpy()), start)
                id_blocks.append(as_ids(ids.to_numpy(dtype=object)))  # 16 bytes per ID, not a Python string
                matrix.append(np.column_stack([s.values(frame[c], start, c in source.bool_columns)
                                               for c, s in zip(features, stats, strict=True)]))
                label_blocks.append(np.column_stack([_tag_values(frame[t], start, f) for t, f in
                                                     zip(tags, bad_tags, strict=True)]) if tags
                                    else np.empty((len(frame), 0)))
        except DataError:
            raise
        except Exception as err:  # a row a CSV reader or Parquet decoder cannot parse, mid-file
            raise DataError(f"{path}: cannot read: {err}") from err
        n = matrix.rows
        if n == 0:
            raise DataError(f"{path}: the file has a header but no rows")
        if empty_ids.count:
            raise DataError(f"{path}: column '{id_column}', row {empty_ids.row}: empty ID "
                            f"({empty_ids.count} empty ID(s) in all)")
        all_ids = np.concatenate(id_blocks)
        id_blocks.clear()
        index = _check_unique(all_ids, path, id_column)
        trained = set(expected_schema.feature_columns) if expected_schema is not None else set()
        dropped = [j for j, (c, s) in enumerate(zip(features, stats, strict=True))
                   if c not in trained and s.missing.count == n]
        for j in dropped:
            message = f"{path}: feature column '{features[j]}' has no values at all; dropped"
            log.warning("%s", message)
            if on_warning is not None:
                on_warning(message)
        kept = [j for j in range(len(features)) if j not in dropped]
        if not kept:
            raise DataError(f"{path}: every feature column is entirely missing "
                            f"({', '.join(features[j] for j in dropped)})")
        for j in kept:
            if stats[j].missing.count == n and fill_missing == "mean":
                raise DataError(f"{path}: column '{features[j]}': every value is missing, no mean to fill with")
            stats[j].check(path, features[j], n, fill_missing)
        for t, finding in zip(tags, bad_tags, strict=True):
            if finding.count:
                raise DataError(f"{path}: tag column '{t}', row {finding.row}: '{finding.text}' is not 0, 1 or empty")
    except BaseException:
        matrix.discard()
        raise
    X = matrix.finish()
    if dropped:
        X = take_rows(X, None, kept)
    names = [features[j] for j in kept]
    if any(stats[j].missing.count for j in kept):
        _fill(X, np.array([stats[j].fill_value(n, fill_missing) if stats[j].missing.count else 0.0 for j in kept]),
              rows_per_block)
    labels = np.concatenate(label_blocks) if label_blocks else np.empty((n, 0))
    dtypes = tuple("bool" if c in source.bool_columns else "float64" for c in names)
    schema = Schema(id_column=id_column, feature_columns=tuple(names), feature_dtypes=dtypes,
                    tag_columns=tuple(tags))
    if expected_schema is not None:
        expected_schema.check_scoring_compatible(schema, str(path))
    loaded = PartyData(source=str(path), ids=all_ids, features=X, feature_names=names, labels=labels,
                       tag_names=tags, schema=schema, dropped_columns=tuple(features[j] for j in dropped))
    loaded._index = index  # built on the IDs' normal forms for the duplicate check: kept for the lookups
    return loaded


def _tag_values(column: pd.Series, start: int, bad: _Finding) -> np.ndarray:
    text = _as_text(column)
    mapped = text.map(TAG_VALUES)
    bad.add(np.flatnonzero(mapped.isna().to_numpy() & (text != "").to_numpy()), start, text)
    return mapped.to_numpy(dtype=np.float64)


def _check_unique(ids: np.ndarray, path: Path, id_column: str) -> IdIndex:
    """The index of the IDs' normal forms (``protocols.identity``); refuse an ID empty in that form, and two
    rows that are one customer (the same text, or forms PSI would match: case, spaces, phone/e-mail format)."""
    keys = customer_keys(ids)
    empty = np.flatnonzero(keys == "")
    if len(empty):
        raise DataError(f"{path}: column '{id_column}', row {empty[0] + 1}: the ID is empty once normalised "
                        f"(only white space or format characters; {len(empty)} such ID(s))")
    index = IdIndex(keys)  # the IDs stay a compact array: no Python string per customer
    repeats = index.repeats()
    if repeats:
        first = min(a for a, _ in repeats)
        twin = sorted({first, *(b for a, b in repeats if a == first)})
        a, b = str(ids[twin[0]]), str(ids[twin[1]])
        how = "have the same ID" if a == b else f"hold {describe_difference(a, b)}"
        raise DataError(f"{path}: column '{id_column}': rows {twin[0] + 1} and {twin[1] + 1} {how} "
                        f"({len(repeats)} duplicate(s) in all); de-duplicate the file")
    return index
