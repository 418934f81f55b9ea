"""The node's storage: jobs and audit log, alignments, and JSON documents behind small interfaces."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from party_common.storage.alignments import (
    Alignment,
    AlignmentError,
    FileAlignmentStore,
    MemoryAlignmentStore,
    UnknownAlignment,
)
from party_common.storage.documents import (
    DocumentError,
    DocumentExists,
    FileDocumentStore,
    MemoryDocumentStore,
    UnknownDocument,
)
from party_common.storage.files import ensure_private_dir
from party_common.storage.jobs import (
    JOB_ID_RE,
    AuditEvent,
    DuplicateJob,
    InvalidJobId,
    JobRecord,
    MemoryJobStore,
    NotAwaitingApproval,
    SqliteJobStore,
    UnknownJob,
    check_job_id,
)


@runtime_checkable
class JobStore(Protocol):
    """Jobs (queued [-> awaiting approval -> queued] -> running -> succeeded | failed | cancelled | interrupted
    -> running ...) and the audit log. Unknown IDs raise UnknownJob. ``status_version`` grows each time a job is
    created or changes status (once that change is readable): what is derived from statuses keeps until it moves."""

    status_version: int

    def create(self, job_id: str, kind: str, name: str, params: dict[str, Any], *, actor: str = "",
               status: str = "queued") -> None: ...
    def await_approval(self, job_id: str) -> None: ...
    def approve(self, job_id: str, actor: str) -> None: ...
    def mark_running(self, job_id: str) -> None: ...
    def set_progress(self, job_id: str, progress: str) -> None: ...
    def finish(self, job_id: str, result: dict[str, Any]) -> None: ...
    def fail(self, job_id: str, error: str) -> None: ...
    def reopen(self, job_id: str) -> None: ...
    def stop(self, job_id: str, status: str, reason: str) -> None: ...
    def audit(self, job_id: str | None, event: str, detail: str = "", *, actor: str = "", outcome: str = "",
              count: int = 0) -> None: ...
    def audit_events(self, job_id: str | None = None, *, event: str | None = None,
                     since: str | None = None) -> list[AuditEvent]: ...
    def get(self, job_id: str) -> JobRecord: ...
    def list(self, limit: int = 50, *, kind: str | None = None,
             status: str | None = None) -> list[JobRecord]: ...


@runtime_checkable
class AlignmentStore(Protocol):
    """PSI results, overwritten only by their own align job run again before it succeeded. Unknown IDs raise
    UnknownAlignment."""

    def save(self, alignment: Alignment, *, overwrite: bool = False) -> Alignment: ...
    def load(self, job_id: str) -> Alignment: ...
    def exists(self, job_id: str) -> bool: ...
    def list(self) -> list[str]: ...


@runtime_checkable
class DocumentStore(Protocol):
    """JSON objects keyed by job ID. Unknown IDs raise UnknownDocument; existing ones DocumentExists."""

    def save(self, job_id: str, doc: dict[str, Any], *, overwrite: bool = False) -> None: ...
    def load(self, job_id: str) -> dict[str, Any]: ...
    def exists(self, job_id: str) -> bool: ...
    def list(self) -> list[str]: ...
    def delete(self, job_id: str, *, missing_ok: bool = False) -> None: ...


@dataclass(frozen=True)
class NodeStores:
    jobs: JobStore
    alignments: AlignmentStore
    models: DocumentStore
    reports: DocumentStore
    checkpoints: DocumentStore
    segments: DocumentStore
    registry: DocumentStore
    # Stability references: the training population's bins and counts per model (protocols/stability.py).
    stability: DocumentStore


def open_node_stores(state_dir: Path, *, recover: bool = True, keep_waiting: bool = False) -> NodeStores:
    """The durable stores of the node whose state directory is ``state_dir``, laid out as::

        <state_dir>/                    0700 (each subdirectory too)
            jobs.sqlite                 0600  jobs and the audit log (SQLite, WAL)
            alignments/<job>.json       0600  PSI results; <job>.ids.parquet holds the IDs when known
            models/<job>.model          0600  this node's half of a trained model (JSON; written once, never
                                        replaced or deleted)
            reports/<job>.json          0600  training reports (bank node)
            checkpoints/<job>.json      0600  training checkpoints
            segments/segment-<name>.json 0600 segment records (bank node: sizes, rule, seed; never IDs);
                                        the segment's groups file (<name>.groups.parquet|.csv) sits beside it
            registry/<job>.json         0600  the model registry: a retired model's flag (both nodes);
            registry/registry_aliases.json 0600 the bank's aliases (NAME@LABEL -> model job ID), one document
            stability/<job>.json        0600  the training population's bins and counts of a model (no IDs)

    ``recover=False``: leave unfinished jobs as they are (a command beside the running node, not the node);
    ``keep_waiting``: fail only running jobs, so approvals survive a restart (the platform).
    """
    state_dir = ensure_private_dir(Path(state_dir))
    return NodeStores(
        jobs=SqliteJobStore(state_dir / "jobs.sqlite", recover=recover, keep_waiting=keep_waiting),
        alignments=FileAlignmentStore(state_dir / "alignments"),
        models=FileDocumentStore(state_dir / "models", suffix=".model", kind="model", write_once=True),
        reports=FileDocumentStore(state_dir / "reports", suffix=".json", kind="report"),
        checkpoints=FileDocumentStore(state_dir / "checkpoints", suffix=".json", kind="checkpoint"),
        segments=FileDocumentStore(state_dir / "segments", suffix=".json", kind="segment"),
        registry=FileDocumentStore(state_dir / "registry", suffix=".json", kind="registry entry"),
        stability=FileDocumentStore(state_dir / "stability", suffix=".json", kind="stability reference"),
    )


def memory_node_stores() -> NodeStores:
    """Stores that live in memory only, with the same behaviour: for tests."""
    return NodeStores(jobs=MemoryJobStore(), alignments=MemoryAlignmentStore(),
                      models=MemoryDocumentStore(kind="model", write_once=True),
                      reports=MemoryDocumentStore(kind="report"),
                      checkpoints=MemoryDocumentStore(kind="checkpoint"),
                      segments=MemoryDocumentStore(kind="segment"),
                      registry=MemoryDocumentStore(kind="registry entry"),
                      stability=MemoryDocumentStore(kind="stability reference"))


__all__ = [
    "JOB_ID_RE", "Alignment", "AlignmentError", "AlignmentStore", "AuditEvent", "DocumentError",
    "DocumentExists", "DocumentStore", "DuplicateJob", "FileAlignmentStore", "FileDocumentStore",
    "InvalidJobId", "JobRecord", "JobStore", "MemoryAlignmentStore", "MemoryDocumentStore", "MemoryJobStore",
    "NodeStores", "NotAwaitingApproval", "SqliteJobStore", "UnknownAlignment", "UnknownDocument", "UnknownJob", "check_job_id",
    "memory_node_stores", "open_node_stores",
]
