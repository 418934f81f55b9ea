"""The platform's disclosure ledger: per customer, the distinct projections of its features the bank may have read.

A projection is one weight vector of the platform's (``protocols.vfl_lr.disclosure.Projection``: a model job,
a tag, an epoch). The bank reads ``x_B . w`` for a customer by scoring (``PartialScore``) and, in the worst case
of a deviating bank, by each evaluation of a split the customer is in (``train.evaluate``). Enough distinct
``w`` per customer give its features away, so the ledger refuses any answer that would give some customer more
than ``[policy] max_released_projections`` of them, whichever alignment, job, split or call they came through.

Customers are keyed by HMAC-SHA256 of their ID under a node-local secret key (``disclosure.key``, 32 bytes,
0600): stable across alignments and data reloads, useless to anyone without the key, never logged. The ledger
(``disclosure.sqlite``, 0600, WAL) records a charge in one savepoint: all of a call's customers or none; charges are
group-committed (``party_common.storage.group_commit``), each committed before its answer leaves (a killed
node loses none; docs/security.md, "The disclosure ledger on a crash").
Audit rows hold job IDs, projection names and counts only.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from party_common.storage import JobStore
from party_common.storage.files import local_secret
from party_common.storage.group_commit import GroupCommit
from protocols.vfl_lr.disclosure import DisclosureRefused, Projection

RELEASE_EVENT = "projection released"  # audit rows under the job that released: names, customers, the most held
REFUSE_EVENT = "disclosure refused"  # audit rows of a charge refused: names, customers, the most it would make
KEY_BYTES = 32
KNOB = "[policy] max_released_projections"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS projections (
    id INTEGER PRIMARY KEY, job_id TEXT NOT NULL, tag TEXT NOT NULL, epoch INTEGER,
    UNIQUE (job_id, tag, epoch));
CREATE TABLE IF NOT EXISTS released (
    customer BLOB NOT NULL, projection INTEGER NOT NULL REFERENCES projections(id),
    PRIMARY KEY (customer, projection)) WITHOUT ROWID;
"""


def _load_key(path: Path) -> bytes:
    """The node's customer-key secret, made (0600, atomically, never replaced) the first time."""
    return local_secret(path, "disclosure key", size=KEY_BYTES,
                        lost="the ledger cannot find its customers without the original key")


def ledger_usage(state_dir: Path) -> dict[str, list[tuple]]:
    """What the ledger holds, read-only, for the operator's pages: ``customers`` as (projections held, customers)
    and ``projections`` as (model job, tag, epoch, customers holding it); empty where the node has no ledger."""
    path = Path(state_dir) / "disclosure.sqlite"
    if not path.exists():
        return {"customers": [], "projections": []}
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
        try:
            held = db.execute("SELECT n, COUNT(*) FROM (SELECT COUNT(*) AS n FROM released GROUP BY customer) "
                              "GROUP BY n ORDER BY n").fetchall()
            projections = db.execute(
                "SELECT p.job_id, p.tag, p.epoch, COUNT(r.customer) FROM projections p LEFT JOIN released r "
                "ON r.projection = p.id GROUP BY p.id ORDER BY p.id").fetchall()
        except sqlite3.OperationalError:  # made but not yet initialised by the node
            return {"customers": [], "projections": []}
    return {"customers": [tuple(r) for r in held], "projections": [tuple(r) for r in projections]}


class DisclosureLedger:
    """``protocols.vfl_lr.disclosure.DisclosureBudget`` on a SQLite file in the platform's state directory."""

    def __init__(self, state_dir: Path, limit: Callable[[], int], jobs: JobStore) -> None:
        """``limit()``: the most distinct projections per customer, read at every charge (the node's policy)."""
        state_dir = Path(state_dir)
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._key = _load_key(state_dir / "disclosure.key")
        self._limit, self._jobs = limit, jobs
        path = state_dir / "disclosure.sqlite"
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        os.chmod(path, 0o600)
        db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA)
        db.execute("CREATE TEMP TABLE request (customer BLOB PRIMARY KEY) WITHOUT ROWID")
        # Charges are group-committed: each is committed before charge() returns, or before the end of the
        # caller's committed_before_return block; threads charging at once share one commit; the WAL reaches the
        # disk by the group commit's syncer, off the callers' path.
        self._commit = GroupCommit(db)

    @property
    def limit(self) -> int:
        return self._limit()

    def close(self) -> None:
        self._commit.close()

    def customer_keys(self, ids: Iterable[str]) -> list[bytes]:
        """The ledger's key of each customer ID (HMAC-SHA256 under the node's secret, 16 bytes)."""
        key = self._key
        return [hmac.new(key, str(i).encode("utf-8"), hashlib.sha256).digest()[:16] for i in ids]

    def charge(self, ids: Sequence[str], projections: Sequence[Projection], *, what: str,
               check_only: bool = False) -> int:
        """Record every projection for every customer, or refuse (:class:`DisclosureRefused`, naming ``what``
        and the knob) if some customer would hold more than the limit; the most any of them holds after."""
        wanted = list(dict.fromkeys(projections))
        customers = sorted(set(self.customer_keys(ids)))
        if not customers or not wanted:
            return 0
        added = 0
        # Check and record in one savepoint of the open batch, under the connection's lock: exact however many
        # threads charge at once. A repeat (nothing new) or a refusal writes nothing, but still waits for the
        # batch: an answer for a customer another thread has just charged leaves only once that charge is committed.
        with self._commit.transaction() as db:
            limit = self._limit()
            most, over, new = self._count(db, customers, wanted, limit)
            if not (over or check_only or not new):
                before = db.total_changes
                self._record(db, wanted)
                added = db.total_changes - before
        names = ", ".join(p.name for p in wanted)
        job = wanted[0].job_id
        if over:
            self._jobs.audit(job, REFUSE_EVENT, f"{what}: {names}: {over} customers would hold more than "
                             f"{limit} projections (at most {most})", outcome="refused", count=len(customers))
            raise DisclosureRefused(
                f"{what} would give {over} customers more distinct projections of the platform's features than the "
                f"platform allows (one of them {most}, the limit {limit} per customer, counted across "
                f"alignments, jobs, evaluations and scoring; {KNOB})")
        if added:  # count: (customer, projection) pairs newly recorded
            self._jobs.audit(job, RELEASE_EVENT, f"{what}: {names}: {len(customers)} customers, at most {most} of "
                             f"{limit} projections each", count=added)
        return most

    def _count(self, db: sqlite3.Connection, customers: list[bytes], wanted: list[Projection],
               limit: int) -> tuple[int, int, int]:
        """The most projections a requested customer would hold with ``wanted``, how many customers would pass the
        limit, and how many (customer, projection) pairs are new. Leaves the customers in the temporary table
        ``request``."""
        db.execute("DELETE FROM request")
        db.executemany("INSERT INTO request (customer) VALUES (?)", ((c,) for c in customers))
        known = [self._projection_id(db, p) for p in wanted]
        known_ids = [pid for pid in known if pid is not None]
        marks = ",".join("?" * len(known_ids)) or "NULL"
        rows = db.execute(
            "SELECT COUNT(r.projection), SUM(CASE WHEN r.projection IN (" + marks + ") THEN 1 ELSE 0 END) "
            "FROM request q LEFT JOIN released r ON r.customer = q.customer GROUP BY q.customer",
            known_ids).fetchall()
        after = [held + len(wanted) - (already or 0) for held, already in rows]
        new = sum(len(wanted) - (already or 0) for _, already in rows)
        return max(after), sum(1 for n in after if n > limit), new

    def _record(self, db: sqlite3.Connection, wanted: list[Projection]) -> None:
        for p in wanted:
            pid = self._projection_id(db, p)
            if pid is None:
                pid = db.execute("INSERT INTO projections (job_id, tag, epoch) VALUES (?, ?, ?)",
                                 (p.job_id, p.tag, p.epoch)).lastrowid
            db.execute("INSERT OR IGNORE INTO released (customer, projection) SELECT customer, ? FROM request",
                       (pid,))

    @staticmethod
    def _projection_id(db: sqlite3.Connection, p: Projection) -> int | None:
        row = db.execute("SELECT id FROM projections WHERE job_id = ? AND tag = ? AND epoch IS ?",
                         (p.job_id, p.tag, p.epoch)).fetchone()
        return None if row is None else int(row[0])

    def epochs_evaluated(self, job_id: str) -> set[int]:
        rows = self._commit.read(lambda db: db.execute(
            "SELECT DISTINCT epoch FROM projections WHERE job_id = ? AND epoch IS NOT NULL", (job_id,)).fetchall())
        return {int(e) for (e,) in rows}

    def released_to(self, customer_id: str) -> set[Projection]:
        """The projections recorded for one customer (tests, the operator's checks)."""
        (key,) = self.customer_keys([customer_id])
        rows = self._commit.read(lambda db: db.execute(
            "SELECT p.job_id, p.tag, p.epoch FROM released r JOIN projections p ON p.id = r.projection "
            "WHERE r.customer = ?", (key,)).fetchall())
        return {Projection(job_id, tag, epoch) for job_id, tag, epoch in rows}

    def held(self, customer_id: str) -> int:
        """Distinct projections recorded for one customer (tests, the operator's checks)."""
        (key,) = self.customer_keys([customer_id])
        (count,) = self._commit.read(lambda db: db.execute("SELECT COUNT(*) FROM released WHERE customer = ?",
                                                           (key,)).fetchone())
        return int(count)


__all__ = ["REFUSE_EVENT", "RELEASE_EVENT", "DisclosureLedger", "ledger_usage"]
