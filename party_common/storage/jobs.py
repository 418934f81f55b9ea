"""The node's job store and audit log: SQLite on disk (every change one transaction) or in memory for tests.

Jobs hold parameters and results as JSON: counts, metrics, hashes; never IDs, features or labels.
Job IDs are checked here, once for the whole node (:data:`JOB_ID_RE`, :func:`check_job_id`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sqlite3
import threading
from contextlib import AbstractContextManager, closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from party_common.storage.group_commit import GroupCommit
from protocols.errors import NotFound, UserError

JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
# "awaiting approval": the platform's policy asks its operator to approve the job first (party_common.policy).
# interrupted: the node stopped (or the peer's session went idle) while the job ran; the bank resumes it.
# cancelled: a data scientist cancelled it (on the platform: the bank's cancel, mirrored).
STATUSES = ("queued", "awaiting approval", "running", "succeeded", "failed", "interrupted", "cancelled")
ENDED = ("succeeded", "failed", "cancelled")  # final statuses; "interrupted" jobs may resume
STOPPED_ERROR = "node stopped while the job ran"
AWAITING = "awaiting approval"
_PROGRESS_MAX = 500
_ERROR_MAX = 4000

_STATUS_CHECK = "CHECK (status IN (" + ", ".join(f"'{s}'" for s in STATUSES) + "))"
JOBS_TABLE = """
CREATE TABLE IF NOT EXISTS {table} (
    job_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL """ + _STATUS_CHECK + """,
    params_json TEXT NOT NULL DEFAULT '{}',
    result_json TEXT NOT NULL DEFAULT '{}',
    error TEXT NOT NULL DEFAULT '',
    progress TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    finished_at TEXT NOT NULL DEFAULT ''
);
"""
# An audit row: who (the caller's certificate name), what, how much (a count) and how it ended; never IDs of
# customers, features, labels or keys.
SCHEMA = JOBS_TABLE.replace("{table}", "jobs") + """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    job_id TEXT,
    event TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    actor TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL DEFAULT '',
    count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS audit_by_job ON audit (job_id, seq);
"""
_AUDIT_COLUMNS = ("actor", "outcome", "count")  # added after the first release: old stores gain them on open
_AUDIT_INSERT = "INSERT INTO audit (at, job_id, event, detail, actor, outcome, count) VALUES (?, ?, ?, ?, ?, ?, ?)"
_UNFINISHED = "status IN ('queued', 'awaiting approval', 'running')"
_JOB_COLUMNS = ("job_id, kind, name, status, params_json, result_json, error, progress, created_at, "
                "finished_at")
# A list of jobs shows of each result only its counts and tags, and per tag the test AUCs and the uplift: a
# train job's whole result (history, intervals, calibration) is tens of kB, and a thousand of them take a
# quarter of a second to parse. SQLite cuts them out in C; the memory store applies brief_result.
BRIEF_KEYS = ("intersection_size", "mode", "tags", "memory", "alignment_job_id", "rows")
_BRIEF_RESULT = ("json_object(" + ", ".join(f"'{k}', json_extract(result_json, '$.{k}')" for k in BRIEF_KEYS)
                 + ", 'summary', json_object('tags', (SELECT json_group_object(key, json_object("
                 "'auc', json_extract(value, '$.auc'), 'uplift', json_extract(value, '$.uplift'))) "
                 "FROM json_each(result_json, '$.summary.tags'))))")
_BRIEF_COLUMNS = _JOB_COLUMNS.replace("result_json", _BRIEF_RESULT)


def brief_result(result: dict[str, Any]) -> dict[str, Any]:
    """The part of a job's result a list shows (``list(..., brief=True)``); absent keys stay absent."""
    brief = {k: result[k] for k in BRIEF_KEYS if result.get(k) is not None}
    tags = (result.get("summary") or {}).get("tags")
    if isinstance(tags, dict) and tags:
        brief["summary"] = {"tags": {t: {"auc": s.get("auc"), "uplift": s.get("uplift")} for t, s in tags.items()}}
    return brief


def _from_brief_sql(result: dict[str, Any]) -> dict[str, Any]:
    """SQLite's brief result as :func:`brief_result` gives it: no null keys, no empty summary."""
    out = {k: v for k, v in result.items() if v is not None and k != "summary"}
    if result.get("summary", {}).get("tags"):
        out["summary"] = result["summary"]
    return out


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class InvalidJobId(UserError):
    """A job ID that is not 8-64 letters, digits, '_' or '-'."""


class DuplicateJob(UserError):
    """A job with that ID already exists on this node."""


class UnknownJob(NotFound):
    """No job with that ID on this node."""


def check_job_id(job_id: str) -> str:
    """Return ``job_id`` if it is a valid job ID (safe as a file name too); raise :class:`InvalidJobId`."""
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise InvalidJobId(f"invalid job ID {job_id!r}: use 8 to 64 letters, digits, '_' or '-'")
    return job_id


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    kind: str
    name: str
    status: str
    params: dict[str, Any]
    result: dict[str, Any]
    error: str
    progress: str
    created_at: str
    finished_at: str


class AuditEvent(NamedTuple):
    """One line of the audit log; ``job_id`` is None for node-level events. ``actor``: the certificate name
    (or operating-system user) of whoever asked; ``outcome``: "ok", "refused (STATUS)" or ""; ``count``:
    rows or customers the event concerned."""

    at: str
    job_id: str | None
    event: str
    detail: str
    actor: str = ""
    outcome: str = ""
    count: int = 0


class NotAwaitingApproval(UserError):
    """Approving a job that does not wait for approval."""


def _audit_row(job_id: str | None, event: str, detail: str = "", actor: str = "", outcome: str = "",
               count: int = 0, at: str | None = None) -> tuple[Any, ...]:
    return (at or now(), job_id, event, detail, actor, outcome, int(count))


def _params_json(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


def _result_json(result: dict[str, Any]) -> str:
    return json.dumps(result, sort_keys=True, default=str)


class SqliteJobStore:
    """Thread-safe; each method is one transaction, so a crash never leaves a half-written job.

    Opening the store marks the jobs that were queued or running when the node stopped as interrupted (the bank
    node resumes them; :meth:`reopen`), unless ``recover=False`` (a command that reads or edits the store beside
    a running node). ``keep_waiting`` (the platform): jobs awaiting approval, or approved and not started yet,
    keep waiting; only running ones are interrupted.
    """

    def __init__(self, path: Path, *, recover: bool = True, keep_waiting: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))  # private from the start
        os.chmod(self.path, 0o600)  # SQLite gives its -wal and -shm files the database file's mode
        with closing(self._connect()) as db:
            db.executescript(SCHEMA)
        # One connection for every write, open for the store's lifetime: a connection per transaction cost a
        # connect, and closing the last connection to a WAL database checkpoints it and deletes the WAL file:
        # ~10 ms a write. Writes are group-committed (party_common.storage.group_commit): each is committed
        # when its method returns (a killed process loses none), threads writing at once share one commit, and
        # a background syncer flushes the WAL to the disk. Reads use one connection per thread (_reader).
        self._commit = GroupCommit(self._connect(shared=True))
        self._readers = threading.local()
        self.status_version = 0  # see :meth:`_status_changed`
        self._version_lock = threading.Lock()
        self._migrate()
        if not recover:
            return
        # Jobs that were running when the node stopped did not finish: say so instead of leaving them running.
        with self._transaction() as db:
            at = now()
            unfinished = "status = 'running'" if keep_waiting else _UNFINISHED
            rows = db.execute(f"SELECT job_id FROM jobs WHERE {unfinished} ORDER BY rowid").fetchall()
            stopped = [r[0] for r in rows]
            db.execute(f"UPDATE jobs SET status='interrupted', error=? WHERE {unfinished}", (STOPPED_ERROR,))
            db.executemany(_AUDIT_INSERT, [_audit_row(job_id, "interrupted", STOPPED_ERROR, at=at)
                                           for job_id in stopped])

    def _migrate(self) -> None:
        """Bring a store written by an older release up to this schema (new audit columns, new statuses)."""
        with self._transaction() as db:
            have = {row[1] for row in db.execute("PRAGMA table_info(audit)")}
            for column in _AUDIT_COLUMNS:
                if column not in have:
                    kind = "INTEGER NOT NULL DEFAULT 0" if column == "count" else "TEXT NOT NULL DEFAULT ''"
                    db.execute(f"ALTER TABLE audit ADD COLUMN {column} {kind}")
            sql = db.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name='jobs'").fetchone()[0]
            if _STATUS_CHECK not in sql:  # SQLite cannot alter a CHECK: copy into a table that has the new one
                db.execute(JOBS_TABLE.replace("{table}", "jobs_new"))
                db.execute(f"INSERT INTO jobs_new ({_JOB_COLUMNS}) SELECT {_JOB_COLUMNS} FROM jobs ORDER BY rowid")
                db.execute("DROP TABLE jobs")
                db.execute("ALTER TABLE jobs_new RENAME TO jobs")

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection, opened once (a read costs no connect; in WAL mode each statement
        outside a transaction reads the latest commit)."""
        db = getattr(self._readers, "db", None)
        if db is None:
            db = self._readers.db = self._connect()
        return db

    def _connect(self, *, shared: bool = False) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=not shared)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """The writer connection in a savepoint of the open write batch: the block's writes all happen or, on
        any exception, none; committed when the block ends (WAL written; flushed to the disk by the syncer within
        ``SYNC_EVERY_S``), or at the end of an enclosing
        ``committed_before_return`` block (``party_common.storage.group_commit``)."""
        return self._commit.transaction()

    def _status_changed(self) -> None:
        """A job was created or changed status, and that write is committed: ``status_version`` counts these, so
        that a reader can keep what it derived from the jobs' statuses (the bank's ``latest`` model) until the next
        one. Bumped after the commit, never before: a reader that sees the new number reads the new state. (This
        node is the only writer of its job store's statuses: ``party_common.state_lock``.)"""
        with self._version_lock:
            self.status_version += 1

    def _update(self, job_id: str, sql: str, args: tuple[Any, ...], event: str | None) -> None:
        check_job_id(job_id)
        with self._transaction() as db:
            if db.execute(sql, (*args, job_id)).rowcount == 0:
                raise UnknownJob(f"no job {job_id}")
            if event:
                db.execute(_AUDIT_INSERT, _audit_row(job_id, event))
        if event:  # every status change names its event; a progress line does not
            self._status_changed()

    def create(self, job_id: str, kind: str, name: str, params: dict[str, Any], *, actor: str = "",
               status: str = "queued") -> None:
        check_job_id(job_id)
        at, params_json = now(), _params_json(params)
        with self._transaction() as db:
            try:
                db.execute("INSERT INTO jobs (job_id, kind, name, status, params_json, created_at) "
                           "VALUES (?, ?, ?, ?, ?, ?)", (job_id, kind, name, status, params_json, at))
            except sqlite3.IntegrityError as err:
                raise DuplicateJob(f"job {job_id} already exists") from err
            db.execute(_AUDIT_INSERT, _audit_row(job_id, "created", kind, actor, at=at))
        self._status_changed()

    def await_approval(self, job_id: str) -> None:
        self._update(job_id, f"UPDATE jobs SET status='{AWAITING}' WHERE job_id=?", (), AWAITING)

    def approve(self, job_id: str, actor: str) -> None:
        """An awaiting job back to queued (its next start runs), audited with who approved it."""
        check_job_id(job_id)
        with self._transaction() as db:
            if db.execute(f"UPDATE jobs SET status='queued' WHERE job_id=? AND status='{AWAITING}'",
                          (job_id,)).rowcount == 0:
                row = db.execute("SELECT status FROM jobs WHERE job_id=?", (job_id,)).fetchone()
                if row is None:
                    raise UnknownJob(f"no job {job_id}")
                raise NotAwaitingApproval(f"job {job_id} is {row[0]}, not {AWAITING}")
            db.execute(_AUDIT_INSERT, _audit_row(job_id, "approved", "", actor, "ok"))
        self._status_changed()

    def mark_running(self, job_id: str) -> None:
        self._update(job_id, "UPDATE jobs SET status='running' WHERE job_id=?", (), "running")

    def set_progress(self, job_id: str, progress: str) -> None:
        self._update(job_id, "UPDATE jobs SET progress=? WHERE job_id=?", (progress[:_PROGRESS_MAX],), None)

    def reopen(self, job_id: str) -> None:
        sql = "UPDATE jobs SET status='running', error='', finished_at='' WHERE job_id=?"
        self._update(job_id, sql, (), "resumed")

    def stop(self, job_id: str, status: str, reason: str) -> None:
        _check_stop(status)
        finished = now() if status == "cancelled" else ""  # an interrupted job has not finished: it resumes
        self._update(job_id, "UPDATE jobs SET status=?, error=?, finished_at=? WHERE job_id=?",
                     (status, reason[:_ERROR_MAX], finished), status)

    def finish(self, job_id: str, result: dict[str, Any]) -> None:
        sql = "UPDATE jobs SET status='succeeded', result_json=?, finished_at=? WHERE job_id=?"
        self._update(job_id, sql, (_result_json(result), now()), "succeeded")

    def fail(self, job_id: str, error: str) -> None:
        self._update(job_id, "UPDATE jobs SET status='failed', error=?, finished_at=? WHERE job_id=?",
                     (error[:_ERROR_MAX], now()), "failed")

    def audit(self, job_id: str | None, event: str, detail: str = "", *, actor: str = "", outcome: str = "",
              count: int = 0) -> None:
        """Append to the audit log (group-committed with other threads' rows: see :meth:`_transaction`)."""
        if job_id is not None:
            check_job_id(job_id)
        with self._transaction() as db:
            db.execute(_AUDIT_INSERT, _audit_row(job_id, event, detail, actor, outcome, count))

    def audit_events(self, job_id: str | None = None, *, event: str | None = None,
                     since: str | None = None) -> list[AuditEvent]:
        """The audit log, oldest first; only ``job_id``'s events, one ``event``, or those at/after ``since``."""
        where: list[str] = []
        args: list[Any] = []
        if job_id is not None:
            where.append("job_id=?")
            args.append(check_job_id(job_id))
        if event is not None:
            where.append("event=?")
            args.append(event)
        if since is not None:
            where.append("at>=?")
            args.append(since)
        sql = "SELECT at, job_id, event, detail, actor, outcome, count FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        db = self._reader()
        rows = db.execute(sql + " ORDER BY seq", args).fetchall()
        return [AuditEvent(*row) for row in rows]

    def get(self, job_id: str) -> JobRecord:
        check_job_id(job_id)
        db = self._reader()
        row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        if row is None:
            raise UnknownJob(f"no job {job_id}")
        return self._record(row)

    def list(self, limit: int = 50, *, kind: str | None = None, status: str | None = None,
             brief: bool = False) -> list[JobRecord]:
        """The newest ``limit`` jobs first, optionally only of one kind and/or status; ``brief``: each result
        cut to :func:`brief_result`."""
        sql = f"SELECT {_BRIEF_COLUMNS if brief else _JOB_COLUMNS} FROM jobs"
        where, args = [], []
        if kind:
            where.append("kind=?")
            args.append(kind)
        if status:
            where.append("status=?")
            args.append(status)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, rowid DESC LIMIT ?"
        db = self._reader()
        rows = db.execute(sql, (*args, limit)).fetchall()
        records = [self._record(r) for r in rows]
        if brief:
            records = [replace(r, result=_from_brief_sql(r.result)) for r in records]
        return records

    @staticmethod
    def _record(row: tuple[Any, ...]) -> JobRecord:
        return JobRecord(job_id=row[0], kind=row[1], name=row[2], status=row[3], params=json.loads(row[4]),
                         result=json.loads(row[5]), error=row[6], progress=row[7], created_at=row[8],
                         finished_at=row[9])


class MemoryJobStore:
    """The contract of :class:`SqliteJobStore` in dicts, for tests; values go through JSON the same way."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, JobRecord] = {}  # insertion order = creation order
        self._audit: list[AuditEvent] = []
        self.status_version = 0  # jobs created or changed status (under the lock, with the change)

    def _update(self, job_id: str, event: str | None, **changes: Any) -> None:
        check_job_id(job_id)
        with self._lock:
            if job_id not in self._jobs:
                raise UnknownJob(f"no job {job_id}")
            self._jobs[job_id] = replace(self._jobs[job_id], **changes)
            if event:
                self._audit.append(AuditEvent(*_audit_row(job_id, event)))
            if "status" in changes:
                self.status_version += 1

    def create(self, job_id: str, kind: str, name: str, params: dict[str, Any], *, actor: str = "",
               status: str = "queued") -> None:
        check_job_id(job_id)
        at, stored = now(), json.loads(_params_json(params))
        with self._lock:
            if job_id in self._jobs:
                raise DuplicateJob(f"job {job_id} already exists")
            self._jobs[job_id] = JobRecord(job_id, kind, name, status, stored, {}, "", "", at, "")
            self._audit.append(AuditEvent(*_audit_row(job_id, "created", kind, actor, at=at)))
            self.status_version += 1

    def await_approval(self, job_id: str) -> None:
        self._update(job_id, AWAITING, status=AWAITING)

    def approve(self, job_id: str, actor: str) -> None:
        check_job_id(job_id)
        with self._lock:
            record = self._jobs.get(job_id)
            if record is None:
                raise UnknownJob(f"no job {job_id}")
            if record.status != AWAITING:
                raise NotAwaitingApproval(f"job {job_id} is {record.status}, not {AWAITING}")
            self._jobs[job_id] = replace(record, status="queued")
            self._audit.append(AuditEvent(*_audit_row(job_id, "approved", "", actor, "ok")))
            self.status_version += 1

    def mark_running(self, job_id: str) -> None:
        self._update(job_id, "running", status="running")

    def set_progress(self, job_id: str, progress: str) -> None:
        self._update(job_id, None, progress=progress[:_PROGRESS_MAX])

    def reopen(self, job_id: str) -> None:
        self._update(job_id, "resumed", status="running", error="", finished_at="")

    def stop(self, job_id: str, status: str, reason: str) -> None:
        _check_stop(status)
        self._update(job_id, status, status=status, error=reason[:_ERROR_MAX],
                     finished_at=now() if status == "cancelled" else "")

    def finish(self, job_id: str, result: dict[str, Any]) -> None:
        self._update(job_id, "succeeded", status="succeeded", result=json.loads(_result_json(result)),
                     finished_at=now())

    def fail(self, job_id: str, error: str) -> None:
        self._update(job_id, "failed", status="failed", error=error[:_ERROR_MAX], finished_at=now())

    def audit(self, job_id: str | None, event: str, detail: str = "", *, actor: str = "", outcome: str = "",
              count: int = 0) -> None:
        if job_id is not None:
            check_job_id(job_id)
        with self._lock:
            self._audit.append(AuditEvent(*_audit_row(job_id, event, detail, actor, outcome, count)))

    def audit_events(self, job_id: str | None = None, *, event: str | None = None,
                     since: str | None = None) -> list[AuditEvent]:
        if job_id is not None:
            check_job_id(job_id)
        with self._lock:
            return [e for e in self._audit if (job_id is None or e.job_id == job_id)
                    and (event is None or e.event == event) and (since is None or e.at >= since)]

    def get(self, job_id: str) -> JobRecord:
        check_job_id(job_id)
        with self._lock:
            record = self._jobs.get(job_id)
        if record is None:
            raise UnknownJob(f"no job {job_id}")
        return _copy(record)

    def list(self, limit: int = 50, *, kind: str | None = None, status: str | None = None,
             brief: bool = False) -> list[JobRecord]:
        with self._lock:
            records = list(self._jobs.values())
        # As SQL's ORDER BY created_at DESC, rowid DESC: sorting is stable, so ties stay newest first.
        newest = sorted(reversed(records), key=lambda r: r.created_at, reverse=True)
        chosen = [r for r in newest if (not kind or r.kind == kind) and (not status or r.status == status)]
        chosen = chosen if limit < 0 else chosen[:limit]  # SQLite: LIMIT -1 = no limit
        if brief:
            return [replace(_copy(r), result=brief_result(r.result)) for r in chosen]
        return [_copy(r) for r in chosen]


def _check_stop(status: str) -> None:
    if status not in ("interrupted", "cancelled"):
        raise ValueError(f"a job is stopped as 'interrupted' or 'cancelled', not {status!r}")


def _copy(record: JobRecord) -> JobRecord:
    """A record whose dicts the caller may change without changing the store (as a database read gives)."""
    return replace(record, params=json.loads(json.dumps(record.params)),
                   result=json.loads(json.dumps(record.result)))
