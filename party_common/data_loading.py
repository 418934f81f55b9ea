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
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from protocols.party_data import DataError, PartyData, Schema

log = logging.getLogger(__name__)

FillMode = Literal["error", "zero", "mean"]
FILL_MODES: tuple[str, ...] = ("error", "zero", "mean")
# Above this, x**2 summed over the rows (the variance in standardisation) would overflow a float64.
MAX_ABS_VALUE = 1e150
TAG_VALUES = {"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0, "": np.nan}


def _read(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif suffix in (".csv", ".txt", ".gz"):
            # Everything as text first: IDs such as "0012" must stay strings, and we check numbers ourselves.
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])
        else:
            raise DataError(f"{path}: unsupported file type '{suffix}' (use .csv or .parquet)")
    except DataError:
        raise
    except pd.errors.EmptyDataError as err:
        raise DataError(f"{path}: the file is empty") from err
    except Exception as err:  # pyarrow/pandas parse errors come in many classes
        raise DataError(f"{path}: cannot read: {err}") from err
    if frame.shape[1] == 0:
        raise DataError(f"{path}: the file has no columns")
    frame.columns = [str(c).strip() for c in frame.columns]
    dupes = frame.columns[frame.columns.duplicated()].tolist()
    if dupes:
        raise DataError(f"{path}: column(s) {', '.join(dupes)} appear more than once in the header")
    return frame


def _as_text(column: pd.Series) -> pd.Series:
    # None, NaN and pd.NA (nullable Parquet columns) all mean "empty".
    return column.map(lambda v: "" if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))
                      else str(v).strip())


def _ids(frame: pd.DataFrame, id_column: str, path: Path) -> np.ndarray:
    ids = _as_text(frame[id_column])
    empty = np.flatnonzero((ids == "").to_numpy())
    if len(empty):
        raise DataError(f"{path}: column '{id_column}', row {empty[0] + 1}: empty ID "
                        f"({len(empty)} empty ID(s) in all)")
    dup = ids.duplicated(keep=False).to_numpy()
    if dup.any():
        rows = np.flatnonzero(dup)
        first = ids.iloc[rows[0]]
        twin = np.flatnonzero((ids == first).to_numpy())
        raise DataError(f"{path}: column '{id_column}': rows {twin[0] + 1} and {twin[1] + 1} have the same ID "
                        f"({int(ids.duplicated().sum())} duplicate(s) in all)")
    return ids.to_numpy(dtype=object)


def _numeric(frame: pd.DataFrame, column: str, path: Path, fill: FillMode) -> np.ndarray:
    raw = frame[column]
    if pd.api.types.is_bool_dtype(raw):
        values = raw.astype(np.float64).to_numpy()
    elif pd.api.types.is_numeric_dtype(raw):
        values = raw.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        text = _as_text(raw)
        values = pd.to_numeric(text.where(text != "", None), errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(np.isnan(values) & (text != "").to_numpy())
        # "nan"/"inf" spelled out are numbers to pandas; treat them like the floats they are.
        if len(bad):
            row = bad[0]
            raise DataError(f"{path}: column '{column}', row {row + 1}: '{text.iloc[row]}' is not a number "
                            f"(feature columns must be numeric; {len(bad)} such value(s))")
    inf = np.flatnonzero(np.isinf(values))
    if len(inf):
        raise DataError(f"{path}: column '{column}', row {inf[0] + 1}: infinite value")
    with np.errstate(invalid="ignore"):
        huge = np.flatnonzero(np.abs(values) > MAX_ABS_VALUE)
    if len(huge):
        raise DataError(f"{path}: column '{column}', row {huge[0] + 1}: value of magnitude above "
                        f"{MAX_ABS_VALUE:g} would overflow standardisation ({len(huge)} such value(s)); "
                        "rescale the column")
    missing = np.flatnonzero(np.isnan(values))
    if len(missing):
        if fill == "error":
            raise DataError(f"{path}: column '{column}', row {missing[0] + 1}: missing value "
                            f"({len(missing)} in the column); set fill_missing to 'zero' or 'mean' to fill them")
        if fill == "zero":
            values = np.where(np.isnan(values), 0.0, values)
        else:
            if len(missing) == len(values):
                raise DataError(f"{path}: column '{column}': every value is missing, no mean to fill with")
            values = np.where(np.isnan(values), np.nanmean(values), values)
    with np.errstate(over="ignore", invalid="ignore"):
        spread = float(np.std(values))
    if not np.isfinite(spread):
        row = int(np.argmax(np.abs(values)))
        raise DataError(f"{path}: column '{column}', row {row + 1}: the column's variance overflows "
                        "standardisation; rescale the column")
    return values


def _all_missing(frame: pd.DataFrame, column: str) -> bool:
    raw = frame[column]
    if pd.api.types.is_numeric_dtype(raw) or pd.api.types.is_bool_dtype(raw):
        return bool(raw.isna().all())
    return bool((_as_text(raw) == "").all())


def _tags(frame: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    text = _as_text(frame[column])
    mapped = text.map(TAG_VALUES)
    bad = np.flatnonzero(mapped.isna().to_numpy() & (text != "").to_numpy())
    if len(bad):
        row = bad[0]
        raise DataError(f"{path}: tag column '{column}', row {row + 1}: '{text.iloc[row]}' is not 0, 1 or empty")
    return mapped.to_numpy(dtype=np.float64)


def load_party_data(path: str | Path, *, id_column: str, tag_columns: Sequence[str] = (),
                    feature_columns: Sequence[str] | None = None, fill_missing: FillMode = "error",
                    expected_schema: Schema | None = None,
                    on_warning: Callable[[str], None] | None = None) -> PartyData:
    """Load and validate one party's file.

    ``feature_columns=None`` takes every column but the ID and the tags. ``expected_schema`` (scoring):
    refuse a file whose features differ from training with :class:`SchemaMismatch`; tags may be absent.
    A feature column with every value missing is dropped (its schema columns excepted when scoring);
    each such warning is logged and passed to ``on_warning``.
    """
    path = Path(path)
    if fill_missing not in FILL_MODES:
        raise DataError(f"fill_missing must be 'error', 'zero' or 'mean', got {fill_missing!r}")
    frame = _read(path)
    if id_column not in frame.columns:
        raise DataError(f"{path}: no ID column '{id_column}' (columns: {', '.join(frame.columns[:12])})")
    if len(frame) == 0:
        raise DataError(f"{path}: the file has a header but no rows")
    tags = list(tag_columns)
    if expected_schema is not None and not feature_columns:
        feature_columns = [c for c in frame.columns if c != id_column and c not in expected_schema.tag_columns
                           and c not in tags]
    features = list(feature_columns) if feature_columns is not None else [
        c for c in frame.columns if c != id_column and c not in tags]
    missing = [c for c in [*tags, *features] if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    if id_column in features or set(tags) & set(features):
        raise DataError(f"{path}: a column cannot be both a feature and the ID or a tag")
    if not features:
        raise DataError(f"{path}: no feature columns (only '{id_column}' and tags)")
    trained = set(expected_schema.feature_columns) if expected_schema is not None else set()
    empty = [c for c in features if c not in trained and _all_missing(frame, c)]
    for column in empty:
        message = f"{path}: feature column '{column}' has no values at all; dropped"
        log.warning("%s", message)
        if on_warning is not None:
            on_warning(message)
    features = [c for c in features if c not in empty]
    if not features:
        raise DataError(f"{path}: every feature column is entirely missing ({', '.join(empty)})")

    ids = _ids(frame, id_column, path)
    matrix = np.column_stack([_numeric(frame, c, path, fill_missing) for c in features])
    labels = (np.column_stack([_tags(frame, c, path) for c in tags]) if tags
              else np.empty((len(frame), 0), dtype=np.float64))
    dtypes = tuple("bool" if pd.api.types.is_bool_dtype(frame[c]) else "float64" for c in features)
    schema = Schema(id_column=id_column, feature_columns=tuple(features), feature_dtypes=dtypes,
                    tag_columns=tuple(tags))
    if expected_schema is not None:
        expected_schema.check_scoring_compatible(schema, str(path))
    return PartyData(source=str(path), ids=ids, features=matrix, feature_names=features, labels=labels,
                     tag_names=tags, schema=schema)
