"""The bank's score and segment files: where they may be written, how they are written, how ID and outcome files
are read (party_bank/segments.py writes them; the CLI, the console and the control API read them)."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from party_common.storage.files import atomic_write_with, ensure_private_dir
from protocols.errors import UserError
from protocols.party_data import DataError

OUTCOME_VALUES = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1}


class OutputError(UserError):
    """An output path or name is refused, or the file exists and overwriting was not asked for."""


def safe_output_path(base: Path, relative: str, *, what: str = "scores") -> Path:
    """``relative`` inside ``base`` (created 0700); absolute paths, '~', '..' and symbolic links are refused.

    Every component of ``relative`` that exists already is checked (a folder, not a symbolic link; the file
    itself no link either) before any folder is created, so a refused path leaves nothing behind, inside
    ``base`` or out of it; the missing folders are created (0700) only after the check.
    """
    text = (relative or "").strip()
    if not text:
        raise OutputError(f"give an output file name (written under the node's {what}/ directory)")
    rel = Path(text)
    if rel.is_absolute() or text.startswith("~"):
        raise OutputError(f"{text}: absolute paths are refused; give a path relative to the node's {what}/ "
                          "directory (e.g. campaign/march.parquet)")
    if ".." in rel.parts:
        raise OutputError(f"{text}: '..' is refused; output stays inside the node's {what}/ directory")
    if rel.suffix not in (".csv", ".parquet"):
        raise OutputError(f"{text}: scores are written as .csv or .parquet")
    root = ensure_private_dir(base)
    out = root / rel
    missing: list[Path] = []
    for depth in range(1, len(rel.parts) + 1):
        path = root.joinpath(*rel.parts[:depth])
        if path.is_symlink():  # wherever it points: a link could lead out of the directory, now or later
            raise OutputError(f"{text}: {path.relative_to(root)} is a symbolic link; output stays inside the "
                              f"node's {what}/ directory")
        if depth < len(rel.parts):
            if not path.exists():
                missing.append(path)
            elif not path.is_dir():
                raise OutputError(f"{text}: {path.relative_to(root)} is a file, not a folder")
    for folder in missing:  # only after every existing component passed
        folder.mkdir(mode=0o700, exist_ok=True)
    if not out.parent.resolve().is_relative_to(root.resolve()):  # a link made since the check
        raise OutputError(f"{text}: leads outside the node's {what}/ directory")
    return out


def write_frame(frame: pd.DataFrame, path: Path, *, overwrite: bool) -> None:
    """Parquet, or CSV with every text field quoted (IDs such as +447700900123 stay text); 0600, atomic."""
    write_frames([frame], path, overwrite=overwrite)


def write_frames(frames: Iterable[pd.DataFrame], path: Path, *, overwrite: bool) -> None:
    """:func:`write_frame` of the blocks of one table, written one after another (same columns in each)."""

    def write(out: BinaryIO) -> None:
        if path.suffix == ".csv":
            for k, frame in enumerate(frames):
                out.write(frame.to_csv(index=False, header=k == 0, quoting=csv.QUOTE_NONNUMERIC).encode())
            return
        writer: pq.ParquetWriter | None = None
        try:
            for frame in frames:
                table = pa.Table.from_pandas(frame, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(out, table.schema)
                writer.write_table(table.cast(writer.schema))
        finally:
            if writer is not None:
                writer.close()

    try:
        atomic_write_with(path, write, mode=0o600, overwrite=overwrite)
    except FileExistsError:
        raise OutputError(f"{path.name} already exists ({path}); pass --overwrite to replace it") from None


def read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:  # text: IDs such as 0012 or +447700900123 stay as written
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])
    except Exception as err:  # pandas/pyarrow raise many classes
        raise DataError(f"{path}: cannot read: {err}") from err
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _text(column: pd.Series) -> list[str]:
    return ["" if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else str(v).strip()
            for v in column.tolist()]


def id_column_of(frame: pd.DataFrame, path: Path, id_column: str, *, others: Sequence[str] = ()) -> str:
    if id_column in frame.columns:
        return id_column
    rest = [c for c in frame.columns if c not in others]
    if len(rest) == 1:
        return rest[0]
    raise DataError(f"{path}: no column '{id_column}' (the bank's ID column) and not a one-column file "
                    f"(columns: {', '.join(frame.columns)})")


def read_ids(path: Path, id_column: str) -> list[str]:
    """The customer IDs of a CSV/Parquet file: its ``id_column``, or its only column. Every row is kept."""
    frame = read_table(Path(path))
    ids = _text(frame[id_column_of(frame, path, id_column)])
    if not ids:
        raise DataError(f"{path}: no rows")
    return ids


def read_outcomes(path: Path, id_column: str, outcome_column: str = "outcome") -> tuple[list[str], list[int]]:
    """IDs and 0/1 outcomes of a campaign file; a bad value names the file, the column and the row."""
    path = Path(path)
    frame = read_table(path)
    if outcome_column not in frame.columns:
        raise DataError(f"{path}: no outcome column '{outcome_column}' (columns: {', '.join(frame.columns)}; "
                        "see --outcome-column)")
    ids = _text(frame[id_column_of(frame, path, id_column, others=[outcome_column])])
    outcomes = []
    for row, value in enumerate(_text(frame[outcome_column]), start=1):
        code = OUTCOME_VALUES.get(value.lower())
        if code is None:
            raise DataError(f"{path}: column '{outcome_column}', row {row}: '{value[:20]}' is not an outcome "
                            "(use 0 or 1)")
        outcomes.append(code)
    return ids, outcomes


__all__ = ["OUTCOME_VALUES", "OutputError", "id_column_of", "read_ids", "read_outcomes", "read_table", "safe_output_path",
           "write_frame", "write_frames"]
