"""Data larger than memory: files read a block at a time, features memory-mapped, training and scoring on them
giving the same bits as on data in memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import party_bank.segments as segments
import party_common.data_loading as data_loading
import protocols.party_data as party_data
import protocols.rowblocks as rowblocks
from party_common.data_loading import load_party_data
from party_common.memory import PeakMemory
from party_common.storage import memory_node_stores
from protocols.channel import LocalPeer
from protocols.compute import InlineCompute, ProcessPoolCompute
from protocols.party_data import ID_DTYPE, DataError, IdIndex, PartyData, Schema, as_ids
from protocols.rowblocks import on_disk
from protocols.vfl_lr import TrainParams, make_platform_train_handler, run_bank_training
from simulations.generate import SimulationConfig, generate, write
from tests.nodes_fixture import FAST_TRAIN, make_nodes, simulated_files


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_loading, "BLOCK_CELLS", 1)  # blocks of 1,024 rows: every test file spans several
    monkeypatch.setattr(rowblocks, "BLOCK_BYTES", 1)


def frame(n: int = 2600) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    return pd.DataFrame({"id": [f"c{i:05d}" for i in range(n)], "a": rng.normal(size=n), "b": rng.exponential(size=n),
                         "flag": rng.random(n) < 0.3, "tag": rng.choice(["0", "1", ""], size=n)})


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_a_file_loaded_in_blocks_onto_disk_equals_it_loaded_in_memory(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"data{suffix}"
    table = frame()
    table.loc[[3, 1500, 2599], "b"] = np.nan  # missing values in three blocks
    if suffix == ".parquet":
        table.to_parquet(path)
    else:
        table.astype({"flag": int}).to_csv(path, index=False)
    spill = tmp_path / "spill"
    kwargs: dict[str, Any] = {"id_column": "id", "tag_columns": ["tag"], "fill_missing": "mean"}
    memory = load_party_data(path, **kwargs)
    disk = load_party_data(path, spill_dir=spill, in_memory_mb=0, **kwargs)
    assert not on_disk(memory.features) and on_disk(disk.features)
    assert disk.features.tobytes() == memory.features.tobytes()
    assert np.array_equal(disk.labels, memory.labels, equal_nan=True) and list(disk.ids) == list(memory.ids)
    assert disk.schema == memory.schema and disk.schema.feature_dtypes == (
        ("float64", "float64", "bool") if suffix == ".parquet" else ("float64",) * 3)
    # the mean fill is the mean of the present values, summed block by block
    present = table["b"].dropna().to_numpy()
    assert disk.features[3, 1] == pytest.approx(present.mean(), rel=1e-12)
    assert list(spill.iterdir()) == []  # the mapped file is unlinked at once: nothing is left behind
    # a node's lookups and alignment copies work on the mapped matrix
    order = [str(i) for i in memory.ids[::-7]]
    taken = disk.take(order)
    assert on_disk(taken.features) and taken.features.tobytes() == memory.take(order).features.tobytes()
    assert disk.positions(["c00004", "nobody", "c00000"]).tolist() == [4, -1, 0]


def test_errors_in_later_blocks_name_the_row_and_count_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    table = frame().astype({"a": object})
    table.loc[[2100, 2500], "a"] = "n/a"
    table.to_csv(path, index=False)
    spill = tmp_path / "spill"
    with pytest.raises(DataError, match=r"column 'a', row 2101: 'n/a' is not a number .*2 such value\(s\)"):
        load_party_data(path, id_column="id", spill_dir=spill, in_memory_mb=0)
    assert list(spill.iterdir()) == []  # a refused file leaves no spilled matrix
    table = frame()
    table.loc[2300, "id"] = table.loc[7, "id"]
    table.to_parquet(path.with_suffix(".parquet"))
    with pytest.raises(DataError, match="rows 8 and 2301 have the same ID"):
        load_party_data(path.with_suffix(".parquet"), id_column="id")
    table = frame()
    table.loc[1030:, "a"] = np.nan
    table.loc[1030, "b"] = np.inf
    table.to_parquet(path.with_suffix(".parquet"))
    with pytest.raises(DataError, match=r"column 'a', row 1031: missing value \(1570 in the column\)"):
        load_party_data(path.with_suffix(".parquet"), id_column="id", tag_columns=["tag"])
    with pytest.raises(DataError, match="column 'b', row 1031: infinite value"):
        load_party_data(path.with_suffix(".parquet"), id_column="id", tag_columns=["tag"], fill_missing="zero")


def test_training_on_memory_mapped_features_gives_the_same_model(tmp_path: Path) -> None:
    data = generate(SimulationConfig(n_bank=2400, n_platform=2400, overlap=1.0, n_tags=2, label_share=0.8, seed=4))
    paths = write(data, tmp_path)
    ids = sorted(set(data.bank["id"]))
    params = TrainParams(key_bits=1024, epochs=1, batch_size=1024, label_dp="off", validation_share=0.1)
    results = {}
    for where, spill in (("memory", None), ("disk", tmp_path / "spill")):
        bank = load_party_data(paths["bank"], id_column="id", tag_columns=data.tag_columns, spill_dir=spill,
                               in_memory_mb=0).take(ids)
        platform = load_party_data(paths["platform"], id_column="id", spill_dir=spill, in_memory_mb=0).take(ids)
        assert on_disk(platform.features) == (spill is not None)
        handlers: list[Any] = []
        models: list[Any] = []

        def factory(kind: str, job_id: str, raw: dict, platform: Any = platform, handlers: list = handlers,
                    models: list = models) -> Any:
            handlers.append(make_platform_train_handler(job_id, raw, platform, on_result=models.append,
                                                        compute=InlineCompute(), insecure_for_tests=True))
            return handlers[-1]

        outcome = run_bank_training(LocalPeer(factory), "job-disk", bank, params, compute=InlineCompute(),
                                    insecure_for_tests=True)
        handler = handlers[0]
        # the platform keeps its quantised features as 8-bit integers, on disk beside the mapped features
        assert handler.Xq.dtype == np.int8 and on_disk(handler.Xq) == (spill is not None)
        results[where] = (outcome.model.weights.tobytes(), outcome.model.intercept.tobytes(),
                          models[0].weights.tobytes(), outcome.model.scaler.mean.tobytes(),
                          models[0].scaler.std.tobytes())
    assert results["disk"] == results["memory"]


def test_nodes_align_train_and_batch_score_on_memory_mapped_data(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    files = simulated_files(tmp_path / "data")
    spill = tmp_path / "spill"
    nodes = make_nodes(files, tmp_path / "state",
                       bank_data=load_party_data(files.bank, id_column="id", tag_columns=files.tags, spill_dir=spill,
                                                 in_memory_mb=0),
                       platform_data=load_party_data(files.platform, id_column="id", spill_dir=spill, in_memory_mb=0),
                       bank_stores=memory_node_stores(), platform_stores=memory_node_stores())
    assert on_disk(nodes.bank.data.features) and on_disk(nodes.platform.data.features)
    align = nodes.bank.wait(nodes.bank.submit("align", "", {}), timeout_s=120)
    assert align.status == "succeeded", align.error
    train = nodes.bank.wait(nodes.bank.submit("train", "", {"train": FAST_TRAIN}), timeout_s=300)
    assert train.status == "succeeded", train.error
    monkeypatch.setattr(segments, "WRITE_ROWS", 64)  # the score file is written in blocks of 64 rows
    whole = nodes.bank.segments.enriched(train.job_id, [str(i) for i in nodes.bank.data.ids], None)
    out, rows = nodes.bank.batch_score(train.job_id, "all.parquet", all_customers=True)
    scores = pd.read_parquet(out)
    assert rows == len(nodes.bank.data) and scores[f"p_{files.tags[0]}"].between(0, 1).all()
    pd.testing.assert_frame_equal(scores, whole, check_dtype=False)
    out, _ = nodes.bank.batch_score(train.job_id, "all.csv", all_customers=True)
    text = out.read_text().splitlines()
    assert len(text) == rows + 1 and text[0].startswith('"id","status"') and text.count(text[0]) == 1
    # every job's summary says how much memory the node and its workers took while it ran
    for record in (nodes.bank.stores.jobs.get(align.job_id), nodes.bank.stores.jobs.get(train.job_id),
                   nodes.platform.stores.jobs.get(train.job_id)):
        memory = record.result["memory"]
        assert 0 < memory["node_peak_mb"] <= memory["node_peak_resident_mb"] and memory["workers_peak_mb"] >= 0


def hold_memory(mb: int) -> int:
    """A worker that holds ``mb`` MB for a moment (run in the pool's processes)."""
    import time

    block = np.ones(mb * 2**17)  # 8-byte floats
    time.sleep(0.5)
    return int(block.size)


def test_peak_memory_counts_the_pool_workers_below_the_fork_server() -> None:
    watch = PeakMemory(interval_s=0.05)
    compute = ProcessPoolCompute(2)
    try:
        assert [f.result() for f in [compute.submit(hold_memory, 100) for _ in range(2)]] == [100 * 2**17] * 2
    finally:
        compute.close()
    peaks = watch.stop()
    # both workers' 100 MB, held at once; the workers are the fork server's children, not this process's
    assert peaks["workers_peak_mb"] > 150


def test_ids_are_a_compact_string_array_found_by_binary_search() -> None:
    long_id = "customer-" + "9" * 40  # longer than the 15 bytes kept inline
    ids = ["b-2", "a-1", long_id, "é-4", "a-10"]
    data = PartyData(source="t", ids=ids, features=np.zeros((5, 1)), feature_names=["f"],
                     labels=np.zeros((5, 0)), tag_names=[], schema=Schema("id", ("f",), ("float64",)))
    assert data.ids.dtype == ID_DTYPE and list(data.ids) == ids
    assert data.positions(["a-10", "nobody", long_id, "é-4", "a-1", ""]).tolist() == [4, -1, 2, 3, 1, -1]
    assert data.positions([]).tolist() == [] and data.row_of("b-2") == 0
    assert data.take(["é-4", "b-2"]).ids.tolist() == ["é-4", "b-2"]


def test_the_id_index_is_right_even_when_every_hash_collides(monkeypatch: pytest.MonkeyPatch) -> None:
    ids = as_ids([f"c{i}" for i in range(50)] + ["c7", "c3", "c7"])  # rows 50-52 repeat rows 7, 3, 7
    for hash_of in (lambda a: np.zeros(len(a), np.uint64),  # a hash of the ID, but only three values
                    lambda a: np.array([ord(str(v)[-1]) % 3 for v in a], dtype=np.uint64)):
        monkeypatch.setattr(party_data, "id_hash64", hash_of)
        index = IdIndex(ids)
        assert index.repeats() == [(7, 50), (3, 51), (7, 52)]
        assert index.rows(["c9", "nobody", "c49", "c0"]).tolist() == [9, -1, 49, 0]
    monkeypatch.undo()
    with pytest.raises(DataError, match=r"rows 4 and 52 have the same ID \(3 duplicate\(s\) in all\)"):
        data_loading._check_unique(ids, Path("f.csv"), "id")
