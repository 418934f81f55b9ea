"""The storage layer: each contract holds for the durable store and the in-memory one alike."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from party_common.storage import (
    JOB_ID_RE,
    Alignment,
    AlignmentError,
    AlignmentStore,
    DocumentError,
    DocumentExists,
    DocumentStore,
    DuplicateJob,
    FileAlignmentStore,
    FileDocumentStore,
    InvalidJobId,
    JobStore,
    MemoryAlignmentStore,
    MemoryDocumentStore,
    MemoryJobStore,
    NodeStores,
    SqliteJobStore,
    UnknownAlignment,
    UnknownDocument,
    UnknownJob,
    check_job_id,
    memory_node_stores,
    open_node_stores,
)
from party_common.storage import alignments as alignments_module
from party_common.storage.jobs import SCHEMA, STOPPED_ERROR
from protocols.errors import NotFound, UserError

BAD_IDS = ["short", "", "a" * 65, "../../etc/passwd", "job id with spaces", "job.model.x", "jöb-0000001"]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=["sqlite", "memory"])
def jobs(request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    return SqliteJobStore(tmp_path / "state" / "jobs.sqlite") if request.param == "sqlite" else MemoryJobStore()


@pytest.fixture(params=["file", "memory"])
def alignments(request: pytest.FixtureRequest, tmp_path: Path) -> AlignmentStore:
    return FileAlignmentStore(tmp_path / "alignments") if request.param == "file" else MemoryAlignmentStore()


@pytest.fixture(params=["file", "memory"])
def documents(request: pytest.FixtureRequest, tmp_path: Path) -> DocumentStore:
    if request.param == "file":
        return FileDocumentStore(tmp_path / "models", suffix=".model", kind="model")
    return MemoryDocumentStore(kind="model")


# ---- jobs ----

def test_job_ids_are_checked_in_one_place() -> None:
    assert JOB_ID_RE.pattern == r"^[A-Za-z0-9_-]{8,64}$"
    assert check_job_id("align-20260101-120000-abcdef") == "align-20260101-120000-abcdef"
    for bad in BAD_IDS:
        with pytest.raises(InvalidJobId, match="invalid job ID"):
            check_job_id(bad)
    assert issubclass(InvalidJobId, UserError) and not issubclass(InvalidJobId, NotFound)


def test_job_lifecycle(jobs: JobStore) -> None:
    jobs.create("train-00000001", "train", "first", {"tags": ("a", "b"), "train": {"epochs": 3}})
    job = jobs.get("train-00000001")
    assert (job.status, job.kind, job.name, job.params) == ("queued", "train", "first",
                                                            {"tags": ["a", "b"], "train": {"epochs": 3}})
    assert job.result == {} and job.error == "" and job.finished_at == "" and job.created_at
    jobs.mark_running("train-00000001")
    jobs.set_progress("train-00000001", "epoch 1/3: " + "x" * 1000)
    job = jobs.get("train-00000001")
    assert job.status == "running" and len(job.progress) == 500
    jobs.finish("train-00000001", {"auc": np.float64(0.75), "rows": 10, "out": Path("/x/y")})
    job = jobs.get("train-00000001")
    assert job.status == "succeeded" and job.result == {"auc": 0.75, "rows": 10, "out": "/x/y"} and job.finished_at
    job.result["rows"] = 99  # a record is a copy, as a database read is
    assert jobs.get("train-00000001").result["rows"] == 10

    jobs.create("align-00000002", "align", "", {})
    jobs.fail("align-00000002", "peer gone " * 1000)
    job = jobs.get("align-00000002")
    assert job.status == "failed" and job.error.startswith("peer gone") and len(job.error) == 4000


def test_job_listing_newest_first_with_filters(jobs: JobStore) -> None:
    for i, kind in enumerate(["align", "train", "align", "train", "align"]):
        jobs.create(f"{kind}-job-{i:04d}", kind, f"n{i}", {"i": i})
    jobs.mark_running("align-job-0002")
    jobs.finish("align-job-0002", {})
    jobs.fail("train-job-0003", "no")
    assert [j.job_id for j in jobs.list()] == ["align-job-0004", "train-job-0003", "align-job-0002",
                                               "train-job-0001", "align-job-0000"]
    assert [j.job_id for j in jobs.list(2)] == ["align-job-0004", "train-job-0003"]
    assert [j.job_id for j in jobs.list(kind="align")] == ["align-job-0004", "align-job-0002", "align-job-0000"]
    assert [j.job_id for j in jobs.list(1, kind="align", status="succeeded")] == ["align-job-0002"]
    assert [j.job_id for j in jobs.list(status="failed")] == ["train-job-0003"]
    assert jobs.list(kind="score") == [] and jobs.list(0) == []


def test_audit_log_records_every_step(jobs: JobStore) -> None:
    jobs.audit(None, "node-started", "bank")
    jobs.create("align-00000001", "align", "", {})
    jobs.mark_running("align-00000001")
    jobs.set_progress("align-00000001", "half")
    jobs.audit("align-00000001", "peer", "platform-1")
    jobs.finish("align-00000001", {"intersection_size": 3})
    jobs.create("train-00000002", "train", "", {})
    jobs.fail("train-00000002", "boom")
    events = [(e.job_id, e.event, e.detail) for e in jobs.audit_events()]
    assert events == [(None, "node-started", "bank"), ("align-00000001", "created", "align"),
                      ("align-00000001", "running", ""), ("align-00000001", "peer", "platform-1"),
                      ("align-00000001", "succeeded", ""), ("train-00000002", "created", "train"),
                      ("train-00000002", "failed", "")]
    at, job_id, event, detail, *_ = jobs.audit_events("train-00000002")[-1]
    assert (job_id, event) == ("train-00000002", "failed") and at.endswith("+00:00")
    assert jobs.audit_events("other-000001") == []


def test_duplicate_job_id_is_refused_clearly(jobs: JobStore) -> None:
    jobs.create("align-00000001", "align", "first", {"mode": "both"})
    with pytest.raises(DuplicateJob, match="job align-00000001 already exists") as err:
        jobs.create("align-00000001", "train", "second", {})
    assert isinstance(err.value, UserError)
    assert jobs.get("align-00000001").name == "first"
    assert [e.event for e in jobs.audit_events("align-00000001")] == ["created"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_job_ids_are_refused(jobs: JobStore, bad: str) -> None:
    with pytest.raises(InvalidJobId):
        jobs.create(bad, "align", "", {})
    for call in (jobs.get, jobs.mark_running, lambda j: jobs.fail(j, "x"), lambda j: jobs.audit(j, "x")):
        with pytest.raises(InvalidJobId):
            call(bad)
    assert jobs.list() == [] and jobs.audit_events() == []


def test_unknown_job(jobs: JobStore) -> None:
    calls: list[Callable[[str], Any]] = [jobs.get, jobs.mark_running, lambda j: jobs.set_progress(j, "p"),
                                         lambda j: jobs.finish(j, {}), lambda j: jobs.fail(j, "e")]
    for call in calls:
        with pytest.raises(UnknownJob, match="no job nothing-0001"):
            call("nothing-0001")
    assert issubclass(UnknownJob, NotFound) and jobs.audit_events() == []


def test_restart_keeps_every_job_and_marks_the_unfinished_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    store = SqliteJobStore(path)
    for job_id in ("queued-00001", "running-0001", "done-000001", "failed-00001"):
        store.create(job_id, "align", job_id[:4], {"x": 1})
    store.mark_running("running-0001")
    store.finish("done-000001", {"n": 5})
    store.fail("failed-00001", "own error")
    assert mode_of(path) == 0o600

    again = SqliteJobStore(path)  # the node restarts
    by_id = {j.job_id: j for j in again.list(10)}
    assert sorted(by_id) == ["done-000001", "failed-00001", "queued-00001", "running-0001"]
    for job_id in ("queued-00001", "running-0001"):
        assert (by_id[job_id].status, by_id[job_id].error) == ("interrupted", STOPPED_ERROR)
        assert not by_id[job_id].finished_at and again.audit_events(job_id)[-1].event == "interrupted"
    again.reopen("running-0001")  # the bank resumes it
    resumed = again.get("running-0001")
    assert (resumed.status, resumed.error, resumed.finished_at) == ("running", "", "")
    assert again.audit_events("running-0001")[-1].event == "resumed"
    again.stop("running-0001", "cancelled", "cancelled by the data scientist")
    assert again.get("running-0001").status == "cancelled"
    with pytest.raises(ValueError, match="'interrupted' or 'cancelled'"):
        again.stop("running-0001", "succeeded", "")
    assert (by_id["done-000001"].status, by_id["done-000001"].result) == ("succeeded", {"n": 5})
    assert (by_id["failed-00001"].status, by_id["failed-00001"].error) == ("failed", "own error")
    with pytest.raises(DuplicateJob):
        again.create("done-000001", "align", "", {})
    assert len(SqliteJobStore(path).audit_events()) == len(again.audit_events())  # nothing left to fail


# ---- alignments ----

@dataclass
class PsiResult:
    """What protocols.psi.PsiResult holds (the store needs only mode, size, ids and content_hash)."""

    mode: str
    size: int
    ids: list[str] | None
    content_hash: str
    own_count: int
    peer_count: int


def psi_result(n: int, *, ids: bool = True) -> PsiResult:
    members = [f"+44 7700 9{i:05d}" for i in range(n)]
    return PsiResult(mode="both" if ids else "cardinality", size=n, ids=members if ids else None,
                     content_hash=f"hash-{n}", own_count=2 * n, peer_count=3 * n)


@pytest.mark.parametrize("with_ids", [True, False])
def test_alignment_round_trip(alignments: AlignmentStore, with_ids: bool) -> None:
    result = psi_result(100, ids=with_ids)
    saved = alignments.save(Alignment.from_result("align-00000001", result, peer_name="platform"))
    assert alignments.exists("align-00000001") and alignments.list() == ["align-00000001"]
    loaded = alignments.load("align-00000001")
    assert loaded == saved and loaded.ids == result.ids and loaded.size == 100
    assert (loaded.mode, loaded.content_hash, loaded.peer_name) == (result.mode, "hash-100", "platform")
    assert bool(loaded.ids_digest) == with_ids
    if with_ids:
        loaded.ids.append("extra")  # type: ignore[union-attr]
        assert alignments.load("align-00000001").ids == result.ids


def test_alignment_is_never_overwritten(alignments: AlignmentStore) -> None:
    alignments.save(Alignment.from_result("align-00000001", psi_result(5), peer_name="platform"))
    with pytest.raises(AlignmentError, match="never overwritten"):
        alignments.save(Alignment.from_result("align-00000001", psi_result(7), peer_name="platform"))
    assert alignments.load("align-00000001").size == 5


def test_alignment_checks(alignments: AlignmentStore) -> None:
    with pytest.raises(UnknownAlignment, match="no alignment align-nothing-1") as err:
        alignments.load("align-nothing-1")
    assert isinstance(err.value, NotFound) and not alignments.exists("align-nothing-1")
    bad = Alignment("align-00000001", "both", 3, ["a", "b"], "h", "2026-01-01T00:00:00+00:00", "platform")
    with pytest.raises(AlignmentError, match="does not match"):
        alignments.save(bad)
    for job_id in BAD_IDS:
        with pytest.raises(InvalidJobId):
            alignments.load(job_id)
    assert alignments.list() == []


def test_file_alignment_integrity(tmp_path: Path) -> None:
    store = FileAlignmentStore(tmp_path / "alignments")
    result = psi_result(100)
    store.save(Alignment.from_result("job-align-0001", result, peer_name="platform"))
    ids_file, meta_file = tmp_path / "alignments" / "job-align-0001.ids.parquet", tmp_path / "alignments" / "job-align-0001.json"
    assert mode_of(ids_file) == mode_of(meta_file) == 0o600 and mode_of(tmp_path / "alignments") == 0o700
    assert list(tmp_path.rglob("*.tmp")) == []
    pq.write_table(pa.table({"id": list(reversed(result.ids or []))}), ids_file)  # same IDs, another order
    with pytest.raises(AlignmentError, match="do not match their recorded digest"):
        store.load("job-align-0001")
    meta_file.write_text("{not json")
    with pytest.raises(AlignmentError, match="job-align-0001.json: damaged"):
        store.load("job-align-0001")


def test_file_alignment_reads_the_existing_format(tmp_path: Path) -> None:
    """A state directory written before this layer (protocols/alignment.py) still loads."""
    ids = ["u1", "u2", "u3"]
    pq.write_table(pa.table({"id": pa.array(ids, type=pa.string())}), tmp_path / "align-old-0001.ids.parquet")
    (tmp_path / "align-old-0001.json").write_text(json.dumps({
        "job_id": "align-old-0001", "mode": "both", "size": 3, "content_hash": "c", "created_at": "t",
        "peer_name": "bank", "ids_digest": alignments_module.ids_digest(ids), "has_ids": True}, indent=2))
    assert FileAlignmentStore(tmp_path).load("align-old-0001").ids == ids


def test_the_ids_digest_is_the_same_built_in_numpy_or_id_by_id() -> None:
    """The digest of many IDs (built from one Arrow buffer) equals the ID-by-ID one stored alignments carry:
    any text, empty IDs, multi-byte characters; text UTF-8 cannot encode still fails as before."""
    import hashlib

    def by_loop(ids: list[str]) -> str:
        h = hashlib.sha256()
        for value in ids:
            data = value.encode()
            h.update(len(data).to_bytes(4, "big"))
            h.update(data)
        return h.hexdigest()

    rng = np.random.default_rng(7)
    alphabet = list("abc+44 019") + ["é", "ß", "中", "🙂", "\u200b"]
    ids = ["".join(rng.choice(alphabet, size=int(k))) for k in rng.integers(0, 40, size=3000)]
    assert alignments_module.ids_digest(ids) == by_loop(ids)
    assert alignments_module._ids_digest_arrow(ids) == by_loop(ids)  # the fast path itself, not its fallback
    assert alignments_module.ids_digest(ids[::-1]) != by_loop(ids)  # the order counts
    with pytest.raises(UnicodeEncodeError):
        alignments_module.ids_digest(ids + ["\ud800"])


def test_alignment_half_written_does_not_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileAlignmentStore(tmp_path)
    real = alignments_module.atomic_write

    def crash_on_record(path: Path, data: bytes, **kw: Any) -> None:
        if path.suffix == ".json":
            raise OSError("disk full")
        real(path, data, **kw)

    monkeypatch.setattr(alignments_module, "atomic_write", crash_on_record)
    with pytest.raises(OSError, match="disk full"):
        store.save(Alignment.from_result("align-00000001", psi_result(4), peer_name="bank"))
    assert not store.exists("align-00000001") and store.list() == []
    monkeypatch.undo()
    store.save(Alignment.from_result("align-00000001", psi_result(4), peer_name="bank"))  # a retry works
    assert store.load("align-00000001").size == 4


# ---- documents ----

def test_document_round_trip(documents: DocumentStore) -> None:
    doc = {"weights": np.arange(6, dtype=np.float64).reshape(3, 2), "intercept": [np.float32(0.5)],
           "n": np.int64(7), "ok": np.bool_(True), "auc": None, "tags": ("a", "b")}
    documents.save("train-00000001", doc)
    assert documents.exists("train-00000001") and documents.list() == ["train-00000001"]
    loaded = documents.load("train-00000001")
    assert loaded == {"weights": [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], "intercept": [0.5], "n": 7, "ok": True,
                      "auc": None, "tags": ["a", "b"]}
    loaded["n"] = 8
    assert documents.load("train-00000001")["n"] == 7
    documents.delete("train-00000001")
    assert not documents.exists("train-00000001") and documents.list() == []
    with pytest.raises(UnknownDocument):
        documents.delete("train-00000001")
    documents.delete("train-00000001", missing_ok=True)


def test_document_overwrite_only_when_asked(documents: DocumentStore) -> None:
    documents.save("train-00000001", {"v": 1})
    with pytest.raises(DocumentExists, match="model train-00000001 already exists"):
        documents.save("train-00000001", {"v": 2})
    assert documents.load("train-00000001") == {"v": 1}
    documents.save("train-00000001", {"v": 3}, overwrite=True)
    assert documents.load("train-00000001") == {"v": 3}


def test_document_refusals(documents: DocumentStore) -> None:
    with pytest.raises(UnknownDocument, match="no model for job train-00000009") as err:
        documents.load("train-00000009")
    assert isinstance(err.value, NotFound)
    for value in (float("nan"), np.float64("inf"), np.array([1.0, np.nan])):
        with pytest.raises(DocumentError, match="finite"):
            documents.save("train-00000001", {"w": value})
    with pytest.raises(DocumentError, match="set cannot be stored"):
        documents.save("train-00000001", {"w": {1, 2}})
    with pytest.raises(DocumentError, match="JSON object"):
        documents.save("train-00000001", [1, 2])  # type: ignore[arg-type]
    for bad in BAD_IDS:
        with pytest.raises(InvalidJobId):
            documents.save(bad, {})
    assert documents.list() == []


def test_document_files(tmp_path: Path) -> None:
    store = FileDocumentStore(tmp_path / "models", suffix=".model", kind="model")
    store.save("train-00000001", {"w": [1.5]})
    path = tmp_path / "models" / "train-00000001.model"
    assert store.path("train-00000001") == path and mode_of(path) == 0o600 and mode_of(path.parent) == 0o700
    (tmp_path / "models" / "README.txt").write_text("not a model")
    (tmp_path / "models" / "x.model").write_text("{}")  # not a job ID: not listed
    assert store.list() == ["train-00000001"]
    path.write_text('{"w": [1.5')
    with pytest.raises(DocumentError, match=r"train-00000001\.model: damaged document"):
        store.load("train-00000001")
    path.write_text("[1, 2]")
    with pytest.raises(DocumentError, match="not a JSON object"):
        store.load("train-00000001")


@pytest.mark.parametrize("fail", ["write", "fsync", "replace"])
def test_failed_write_keeps_the_previous_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  fail: str) -> None:
    store = FileDocumentStore(tmp_path / "reports")
    store.save("train-00000001", {"version": 1})

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError(f"{fail} failed")

    real_fdopen = os.fdopen

    def half_writing_fdopen(fd: int, *args: Any, **kwargs: Any) -> _HalfWriter:
        return _HalfWriter(real_fdopen(fd, *args, **kwargs))

    if fail == "write":
        monkeypatch.setattr(os, "fdopen", half_writing_fdopen)
    else:
        monkeypatch.setattr(os, fail, broken)
    with pytest.raises(OSError, match=f"{fail} failed"):
        store.save("train-00000001", {"version": 2}, overwrite=True)
    if fail != "replace":  # a new document is published by a hard link, not by replace
        with pytest.raises(OSError, match=f"{fail} failed"):
            store.save("train-00000002", {"version": 1})
    monkeypatch.undo()
    assert store.load("train-00000001") == {"version": 1} and store.list() == ["train-00000001"]
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["train-00000001.json"]


class _HalfWriter:
    """A file that writes half of what it is given, then fails (a full disk)."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def __enter__(self) -> _HalfWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def write(self, data: bytes) -> int:
        self._f.write(data[:len(data) // 2])
        self._f.flush()
        raise OSError("write failed")


def test_concurrent_saves_of_one_id_leave_exactly_one(documents: DocumentStore, jobs: JobStore) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def attempt(i: int) -> str:
        try:
            documents.save("train-00000001", {"writer": i})
            jobs.create("align-00000001", "align", str(i), {})
        except (DocumentExists, DuplicateJob) as err:
            return type(err).__name__
        return "ok"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(attempt, range(16)))
    assert outcomes.count("ok") == 1 and outcomes.count("DocumentExists") == 15
    assert str(documents.load("train-00000001")["writer"]) == jobs.get("align-00000001").name


@pytest.mark.parametrize("kind", ["file", "memory"])
def test_a_write_once_store_never_replaces_a_document(kind: str, tmp_path: Path) -> None:
    """The models store: a second save under the same job ID is refused whatever ``overwrite`` says, and
    concurrent saves leave exactly the first (published atomically); nothing is deleted."""
    from concurrent.futures import ThreadPoolExecutor

    def new_store() -> DocumentStore:
        if kind == "file":
            return FileDocumentStore(tmp_path / "models", suffix=".model", kind="model", write_once=True)
        return MemoryDocumentStore(kind="model", write_once=True)

    store = new_store()

    def attempt(i: int) -> str:
        try:
            store.save("train-00000001", {"writer": i}, overwrite=i % 2 == 1)
        except DocumentExists as err:
            assert "model train-00000001 is stored already" in str(err) and "never replaced" in str(err)
            return "refused"
        return str(i)

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(attempt, range(16)))
    [winner] = [o for o in outcomes if o != "refused"]
    assert store.load("train-00000001") == {"writer": int(winner)}
    with pytest.raises(DocumentError, match="model train-00000001: a stored model is never deleted or replaced"):
        store.delete("train-00000001")
    if kind == "file":  # reopened (a restart): still there, still refused
        assert new_store().load("train-00000001") == {"writer": int(winner)}
        with pytest.raises(DocumentExists):
            new_store().save("train-00000001", {"writer": -1}, overwrite=True)
        assert [p.name for p in (tmp_path / "models").iterdir()] == ["train-00000001.model"]  # no temp file
    assert store.list() == ["train-00000001"]


# ---- the node's stores ----

def test_open_node_stores_layout_and_existing_state(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "models").mkdir(parents=True)
    (state / "reports").mkdir()
    (state / "models" / "train-old-0001.model").write_text(json.dumps({"kind": "bank", "weights": [[0.1]]}, indent=1))
    (state / "reports" / "train-old-0001.json").write_text(json.dumps({"rows": 3}, indent=2, sort_keys=True))
    stores = open_node_stores(state)
    assert isinstance(stores, NodeStores)
    for sub in ("", "alignments", "models", "reports", "checkpoints"):
        assert mode_of(state / sub) == 0o700, sub
    assert mode_of(state / "jobs.sqlite") == 0o600
    assert stores.models.load("train-old-0001")["weights"] == [[0.1]]
    with pytest.raises(DocumentExists, match="never replaced"):  # the node's models are written once
        stores.models.save("train-old-0001", {"weights": [[0.2]]}, overwrite=True)
    assert stores.reports.load("train-old-0001") == {"rows": 3}
    stores.checkpoints.save("train-new-0002", {"epoch": 1})
    assert (state / "checkpoints" / "train-new-0002.json").exists()
    for store, protocol in ((stores.jobs, JobStore), (stores.alignments, AlignmentStore),
                            (stores.models, DocumentStore), (stores.reports, DocumentStore)):
        assert isinstance(store, protocol)
    with pytest.raises(AttributeError):
        stores.jobs = MemoryJobStore()  # type: ignore[misc]


def test_memory_node_stores_are_separate() -> None:
    one, two = memory_node_stores(), memory_node_stores()
    one.models.save("train-00000001", {"w": 1})
    assert not two.models.exists("train-00000001") and not one.reports.exists("train-00000001")
    with pytest.raises(DocumentExists, match="never replaced"):
        one.models.save("train-00000001", {"w": 2}, overwrite=True)
    assert isinstance(one.jobs, JobStore) and isinstance(one.checkpoints, DocumentStore)


def test_a_store_from_before_the_new_statuses_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "jobs.sqlite"
    old_schema = SCHEMA.replace(", 'interrupted', 'cancelled'", "")
    with sqlite3.connect(path) as db:
        db.executescript(old_schema)
        db.execute("INSERT INTO jobs (job_id, kind, name, status, params_json, created_at) "
                   "VALUES ('old-job-0001', 'train', 'n', 'running', '{}', '2026-01-01T00:00:00+00:00')")
    store = SqliteJobStore(path)
    assert store.get("old-job-0001").status == "interrupted"
    store.stop("old-job-0001", "cancelled", "no longer wanted")
    assert store.get("old-job-0001").status == "cancelled"


def test_a_brief_list_cuts_results_to_what_a_list_shows_the_same_in_sqlite_and_in_memory(tmp_path: Path) -> None:
    from party_common.storage.jobs import MemoryJobStore, SqliteJobStore, brief_result

    train = {"tags": ["a", "b"], "rows": 420, "alignment_job_id": "align-x", "history": [{"epoch": 1}],
             "metrics": {"a": {"joint": {"auc": 0.7}}},
             "summary": {"tags": {"a": {"auc": {"joint": 0.7, "bank_only": 0.6}, "uplift": 0.1, "intervals": {}},
                                  "b": {"auc": {"joint": None, "bank_only": None}, "uplift": None}}}}
    align = {"intersection_size": 812, "mode": "both", "content_hash": "ab", "memory": {"node_peak_mb": 80.0}}
    expected = {"train-20250101-000001": {"tags": ["a", "b"], "rows": 420, "alignment_job_id": "align-x",
                                          "summary": {"tags": {"a": {"auc": {"joint": 0.7, "bank_only": 0.6},
                                                                     "uplift": 0.1},
                                                               "b": {"auc": {"joint": None, "bank_only": None},
                                                                     "uplift": None}}}},
                "align-20250101-000000": {"intersection_size": 812, "mode": "both",
                                          "memory": {"node_peak_mb": 80.0}},
                "train-20250101-000002": {}}
    for store in (SqliteJobStore(tmp_path / "jobs.sqlite"), MemoryJobStore()):
        for job_id, kind, result in (("align-20250101-000000", "align", align),
                                     ("train-20250101-000001", "train", train),
                                     ("train-20250101-000002", "train", None)):
            store.create(job_id, kind, "", {})
            if result is not None:
                store.finish(job_id, result)
        brief = {r.job_id: r.result for r in store.list(10, brief=True)}
        assert brief == expected, type(store).__name__
        full = {r.job_id: r.result for r in store.list(10)}
        assert full["train-20250101-000001"] == train
        assert all(brief_result(full[j]) == expected[j] for j in expected)
