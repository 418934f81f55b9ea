"""The node's job store and audit log: one SQLite file, every change in a transaction.

Jobs hold parameters and results as JSON: counts, metrics, hashes; never IDs, features or labels.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocols.errors import NotFound

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    params_json TEXT NOT NULL DEFAULT '{}',
    result_json TEXT NOT NULL DEFAULT '{}',
    error TEXT NOT NULL DEFAULT '',
    progress TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    finished_at TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    job_id TEXT,
    event TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
"""


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


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


class UnknownJob(NotFound):
    """No job with that ID on this node."""


class JobStore:
    """Thread-safe; each method is one transaction, so a crash never leaves a half-written job."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        with self._connect() as db:
            db.executescript(SCHEMA)
        # Jobs that were running when the node stopped did not finish: say so instead of leaving them running.
        with self._connect() as db:
            db.execute("UPDATE jobs SET status='failed', error='node stopped while the job ran', finished_at=? "
                       "WHERE status IN ('queued', 'running')", (now(),))

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    def _tx(self, sql: str, args: tuple[Any, ...]) -> int:
        with self._lock, closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                cur = db.execute(sql, args)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return cur.rowcount

    def create(self, job_id: str, kind: str, name: str, params: dict[str, Any]) -> None:
        self._tx("INSERT INTO jobs (job_id, kind, name, status, params_json, created_at) VALUES (?, ?, ?, 'queued', ?, ?)",
                 (job_id, kind, name, json.dumps(params, sort_keys=True), now()))
        self.audit(job_id, "created", kind)

    def mark_running(self, job_id: str) -> None:
        self._tx("UPDATE jobs SET status='running' WHERE job_id=?", (job_id,))
        self.audit(job_id, "running")

    def set_progress(self, job_id: str, progress: str) -> None:
        self._tx("UPDATE jobs SET progress=? WHERE job_id=?", (progress[:500], job_id))

    def finish(self, job_id: str, result: dict[str, Any]) -> None:
        self._tx("UPDATE jobs SET status='succeeded', result_json=?, finished_at=? WHERE job_id=?",
                 (json.dumps(result, sort_keys=True, default=str), now(), job_id))
        self.audit(job_id, "succeeded")

    def fail(self, job_id: str, error: str) -> None:
        self._tx("UPDATE jobs SET status='failed', error=?, finished_at=? WHERE job_id=?",
                 (error[:4000], now(), job_id))
        self.audit(job_id, "failed")

    def audit(self, job_id: str | None, event: str, detail: str = "") -> None:
        self._tx("INSERT INTO audit (at, job_id, event, detail) VALUES (?, ?, ?, ?)", (now(), job_id, event, detail))

    def get(self, job_id: str) -> JobRecord:
        with closing(self._connect()) as db:
            row = db.execute("SELECT job_id, kind, name, status, params_json, result_json, error, progress, "
                             "created_at, finished_at FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        if row is None:
            raise UnknownJob(f"no job {job_id}")
        return self._record(row)

    def list(self, limit: int = 50, *, kind: str | None = None, status: str | None = None) -> list[JobRecord]:
        sql = ("SELECT job_id, kind, name, status, params_json, result_json, error, progress, created_at, "
               "finished_at FROM jobs")
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
        with closing(self._connect()) as db:
            rows = db.execute(sql, (*args, limit)).fetchall()
        return [self._record(r) for r in rows]

    @staticmethod
    def _record(row: tuple[Any, ...]) -> JobRecord:
        return JobRecord(job_id=row[0], kind=row[1], name=row[2], status=row[3], params=json.loads(row[4]),
                         result=json.loads(row[5]), error=row[6], progress=row[7], created_at=row[8],
                         finished_at=row[9])
