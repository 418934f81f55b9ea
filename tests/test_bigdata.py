"""Data larger than memory: Parquet read by row groups, streamed scoring, int8 features in a memory-mapped file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from party_common.bigdata import iter_blocks, score_file
from protocols.compute import InlineCompute
from protocols.fixedpoint import quantise, quantise_rows
from protocols.party_data import DataError, Schema
from protocols.rowblocks import on_disk, scratch_array
from protocols.scoring import partial_scores_on
from protocols.vfl_lr.model import BankModel
from protocols.vfl_lr.state import Scaler

COLUMNS = ["a", "b", "c"]


def write(path: Path, X: np.ndarray, *, group_rows: int = 100, ids: list[str | None] | None = None) -> Path:
    ids = ids if ids is not None else [f"id-{i}" for i in range(len(X))]
    table = pa.table({"id": pa.array(ids, pa.string()), **{c: X[:, j] for j, c in enumerate(COLUMNS)}})
    pq.write_table(table, path, row_group_size=group_rows)
    return path


def model(rng: np.random.Generator) -> BankModel:
    return BankModel(job_id="j", tag_names=["t1", "t2"], weights=rng.normal(size=(3, 2)),
                     intercept=np.array([0.5, -0.25]), scaler=Scaler(rng.normal(size=3), 1 + rng.random(3), 3.0),
                     schema=Schema("id", tuple(COLUMNS), ("float64",) * 3), key_fingerprints={},
                     calibration=np.array([[1.0, 0.0], [1.0, 0.0]]))


def test_streamed_scores_equal_the_in_memory_scores(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(1_000, 3)) * 4
    path = write(tmp_path / "in.parquet", X)
    m = model(rng)
    blocks = list(iter_blocks(path, "id", COLUMNS, block_rows=300))
    assert [len(ids) for ids, _ in blocks] == [300, 300, 300, 100]
    scored = score_file(InlineCompute(), m, path, tmp_path / "out.parquet", id_column="id", feature_columns=COLUMNS,
                        score_names=["t1", "t2"], block_rows=300, chunk_rows=128)
    out = pd.read_parquet(scored.path)
    assert scored.rows == 1_000 and list(out["id"]) == [f"id-{i}" for i in range(1_000)]
    assert np.array_equal(out[["t1", "t2"]].to_numpy(), partial_scores_on(InlineCompute(), m, X, chunk_rows=128))
    assert np.allclose(out[["t1", "t2"]].to_numpy(), m.partial_scores(X))
    assert scored.peak_rss_mb > 0 and not list(tmp_path.glob(".*.tmp"))


def test_bad_files_are_named_by_column_and_row(tmp_path: Path) -> None:
    X = np.ones((10, 3))
    X[7, 1] = np.nan
    with pytest.raises(DataError, match=r"column 'b', row 8: missing or infinite"):
        list(iter_blocks(write(tmp_path / "nan.parquet", X), "id", COLUMNS))
    ids: list[str | None] = [f"i{k}" for k in range(10)]
    ids[3] = None
    with pytest.raises(DataError, match=r"column 'id', row 4: empty ID"):
        list(iter_blocks(write(tmp_path / "ids.parquet", np.ones((10, 3)), ids=ids), "id", COLUMNS))
    with pytest.raises(DataError, match=r"missing column\(s\) d"):
        list(iter_blocks(tmp_path / "ids.parquet", "id", [*COLUMNS, "d"]))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="cannot read as Parquet"):
        list(iter_blocks(tmp_path / "junk.parquet", "id", COLUMNS))
    with pytest.raises(DataError, match="file not found"):
        list(iter_blocks(tmp_path / "none.parquet", "id", COLUMNS))


def test_products_under_encryption_read_the_memory_mapped_features(tmp_path: Path) -> None:
    from protocols.paillier import generate_keypair
    from protocols.paillier_pool import PaillierPool

    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 3))
    scaler = Scaler.fit(X, 5.0)
    Xq, scale = quantise(scaler.transform(X), 8)
    features = scratch_array(tmp_path, X.shape, np.float64)  # the node's features, spilled to disk
    features[:] = X
    mm, _ = quantise_rows(features, scaler.transform, 8)
    assert on_disk(mm) and mm.dtype == np.int8
    pk, sk = generate_keypair(512, allow_insecure=True)
    d = rng.integers(-1000, 1000, 40)
    with PaillierPool(1) as pool:
        cv = pool.encrypt(pk, d)
        assert pool.decrypt(sk, pool.matvec_t(cv, mm)) == (d @ Xq).tolist()
