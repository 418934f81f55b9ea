"""Scoring a Parquet file larger than memory: read row group by row group, scored block by block.

Nothing here loads a whole file. :func:`iter_blocks` yields (IDs, features) one block of at most
``block_rows`` rows at a time (pyarrow reads the row groups it needs and no more); :func:`score_file`
streams those blocks through a model half's partial scores on any compute backend
(``protocols.scoring``) into an output Parquet file written atomically. Peak memory is then a few
blocks per process, whatever the number of rows (``party_common.memory.peak_rss_mb`` reports it). A node's
own data file is read by ``party_common.data_loading`` (block by block too, features memory-mapped above
``[data] in_memory_mb``), and training quantises it with ``protocols.fixedpoint.quantise_rows``.

Every error names the file, the column and the row (1-based data row), never a value or an ID.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from party_common.data_loading import parquet_batches, parquet_file
from party_common.memory import peak_rss_mb
from protocols.compute import Compute
from protocols.party_data import DataError
from protocols.scoring import CHUNK_ROWS, ScoringModel, iter_partial_scores

BLOCK_ROWS = 262_144


def _open(path: Path, id_column: str, feature_columns: Sequence[str]) -> pq.ParquetFile:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        file = parquet_file(path)
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"{path}: cannot read as Parquet: {err}") from err
    names = set(file.schema_arrow.names)
    missing = [c for c in (id_column, *feature_columns) if c not in names]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    return file


def iter_blocks(path: str | Path, id_column: str, feature_columns: Sequence[str], *,
                block_rows: int = BLOCK_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(IDs as an object array of str, features as float64 rows x columns) per block of ``block_rows``."""
    path = Path(path)
    file = _open(path, id_column, feature_columns)
    start = 0
    for batch in parquet_batches(file, [id_column, *feature_columns], block_rows):
        ids = batch.column(0)
        if ids.null_count:
            row = start + int(np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))[0]) + 1
            raise DataError(f"{path}: column '{id_column}', row {row}: empty ID")
        X = np.empty((batch.num_rows, len(feature_columns)), dtype=np.float64)
        for j, name in enumerate(feature_columns):
            column = batch.column(j + 1)
            try:
                X[:, j] = column.to_numpy(zero_copy_only=False)
            except (pa.ArrowException, TypeError, ValueError) as err:
                raise DataError(f"{path}: column '{name}' is not numeric ({column.type})") from err
        bad = ~np.isfinite(X)
        if bad.any():
            r, j = (int(v[0]) for v in np.nonzero(bad))
            raise DataError(f"{path}: column '{feature_columns[j]}', row {start + r + 1}: missing or infinite "
                            f"value ({int(bad.sum())} in this block); fill or drop such rows first")
        yield np.asarray(ids.to_pylist(), dtype=object).astype(str).astype(object), X
        start += batch.num_rows


@dataclass(frozen=True)
class ScoredFile:
    path: Path
    rows: int
    peak_rss_mb: float  # this process's peak (the backend's workers hold a few chunks each)


def score_file(compute: Compute, model: ScoringModel, path: str | Path, out_path: str | Path, *,
               id_column: str, feature_columns: Sequence[str], score_names: Sequence[str],
               block_rows: int = BLOCK_ROWS, chunk_rows: int = CHUNK_ROWS) -> ScoredFile:
    """Partial scores of every row of ``path`` into ``out_path`` (Parquet: the ID column, then one float64
    column per score name), a block at a time; the file appears complete or not at all."""
    out = Path(out_path)
    tmp = out.with_name(f".{out.name}.tmp")
    schema = pa.schema([(id_column, pa.string()), *[(name, pa.float64()) for name in score_names]])
    blocks = iter_blocks(path, id_column, feature_columns, block_rows=block_rows)
    id_queue: list[np.ndarray] = []

    def features() -> Iterator[np.ndarray]:
        for ids, X in blocks:
            id_queue.append(ids)
            yield X

    rows = 0
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            pending_ids = np.empty(0, dtype=object)
            for z in iter_partial_scores(compute, model, features(), chunk_rows=chunk_rows):
                if z.shape[1] != len(score_names):
                    raise DataError(f"{path}: the model gives {z.shape[1]} scores per row, not {len(score_names)}")
                while len(pending_ids) < len(z):
                    pending_ids = np.concatenate([pending_ids, id_queue.pop(0)])
                ids, pending_ids = pending_ids[:len(z)], pending_ids[len(z):]
                writer.write_table(pa.table([pa.array(ids, pa.string()), *[pa.array(z[:, t]) for t in
                                                                          range(z.shape[1])]], schema=schema))
                rows += len(z)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ScoredFile(out, rows, round(peak_rss_mb(), 1))


__all__ = ["BLOCK_ROWS", "ScoredFile", "iter_blocks", "score_file"]
