"""Group commit: many threads' small SQLite writes committed together, the disk flush taken off their path.

A node's writer connection keeps a batch transaction open while writes arrive. Each write runs in the open
batch inside its own savepoint (:meth:`GroupCommit.batched`): all of it or none of it, and its checks see every
earlier write of the batch, committed or not, so a check-then-record step (the disclosure budget) stays exact
however many threads call at once. :meth:`GroupCommit.wait` returns once the write's batch is committed. The
first thread to wait commits the batch itself (the leader: no hand-over to another thread, so a lone caller pays
one commit and nothing else); threads that wait meanwhile find their batch committed by it, or lead the next
one with everything written while the first commit ran.

What "committed" survives (WAL, ``synchronous=NORMAL``): the commit has written the batch's frames to the WAL
file, so the operating system holds them; a node process that is killed or crashes right after loses nothing
that was committed. The flush to the disk (``fsync`` of the WAL) is the syncer's, a background thread that
flushes at most every :data:`SYNC_EVERY_S` while there are commits to flush: a power loss or an operating-system
crash loses at most the commits of that last interval and one flush. Nothing on a caller's path waits for the
disk. docs/security.md ("The disclosure ledger on a crash") argues why this is the line for the ledger.

A batch whose commit fails (a full disk) is rolled back whole and every thread waiting on it gets the error,
so none of them answers. Every write is waited for (``transaction``), so no batch stays open without a thread
about to commit it.
"""

from __future__ import annotations

import contextvars
import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
SYNC_EVERY_S = 0.01  # the syncer flushes the WAL at most this often (the most a power loss takes back, plus a flush)
IDLE_EXIT_S = 30.0  # a syncer with nothing to flush for this long ends (a store no longer written keeps no thread)
CHECKPOINT_EVERY = 256  # commits between two checkpoints of the WAL into the database file (by the syncer)
_FAILURES_KEPT = 1024  # failed batches remembered for threads still to wait on them


class BatchFailed(sqlite3.OperationalError):
    """The batch a write joined could not be committed (rolled back whole): the write did not happen."""


@dataclass(frozen=True)
class Pending:
    """A write in progress: the connection to write on, and the batch to wait on."""

    db: sqlite3.Connection
    batch: int


_DEFERRED: contextvars.ContextVar[list[tuple[GroupCommit, int]] | None] = contextvars.ContextVar(
    "group_commit_deferred", default=None)


@contextmanager
def committed_before_return() -> Iterator[None]:
    """Every :meth:`GroupCommit.transaction` in the block waits for its commit at the end of the block instead
    of at its own end: a call that writes several rows (a charge, its audit rows) pays one commit per database,
    shared with whatever other threads wrote meanwhile. The block's writes are committed when it ends, whether
    it returns or raises; a commit that fails raises (an answer built in the block must then not leave)."""
    outer = _DEFERRED.get()
    waits: list[tuple[GroupCommit, int]] = []
    token = _DEFERRED.set(waits)
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        _DEFERRED.reset(token)
        if outer is not None:  # nested: the outer block waits for these too
            outer.extend(waits)
        else:
            _wait_all(waits, raising=not failed)


def _wait_all(waits: list[tuple[GroupCommit, int]], *, raising: bool) -> None:
    problem: BaseException | None = None
    # The latest batch of a database first: once it has committed, the earlier ones have ended too (they end in
    # order) and waiting on them only looks up whether they failed.
    for commit, batch in sorted(set(waits), key=lambda w: -w[1]):
        try:
            commit.wait(batch)
        except BaseException as err:
            problem = problem or err
    if problem is not None and raising:
        raise problem


class GroupCommit:
    """Group commit on one SQLite connection (opened with ``isolation_level=None``, ``check_same_thread=False``,
    WAL); thread-safe. ``begin``: how a batch starts ("BEGIN IMMEDIATE": takes the database's write lock at
    once, so a write never fails half-way for another process's lock)."""

    def __init__(self, db: sqlite3.Connection, *, begin: str = "BEGIN IMMEDIATE",
                 sync_every_s: float = SYNC_EVERY_S) -> None:
        self.db = db
        # A commit writes the WAL and returns; the syncer flushes it (module docstring). The WAL is also synced
        # before every checkpoint copies it into the database file (SQLite's rule for NORMAL).
        db.execute("PRAGMA synchronous=NORMAL")
        # Checkpoints (copying the WAL into the database file, two fsyncs) are the syncer's too: SQLite's
        # automatic one would run in whichever caller's commit found the WAL long.
        db.execute("PRAGMA wal_autocheckpoint=0")
        (path,) = [row[2] for row in db.execute("PRAGMA database_list") if row[1] == "main"]
        self._syncer = WalSyncer(Path(path), sync_every_s)
        self._begin = begin
        self._lock = threading.Lock()  # the connection: one statement sequence at a time
        self._state = threading.Condition(threading.Lock())  # batch numbers, the leader, failures
        self._batch = 0  # the batch writes join now
        self._open = False  # whether that batch's transaction has begun (holds the write lock)
        self._writes = 0  # writes in the open batch
        self._committed = -1  # every batch up to this number has ended (committed or failed)
        self._leading = False
        self._failures: dict[int, BaseException] = {}
        self.commits = 0  # batches committed (tests)

    @contextmanager
    def batched(self) -> Iterator[Pending]:
        """The writer connection (``pending.db``) in a savepoint of the open batch: all of the block's writes or,
        if it raises, none of them (the exception propagates). :meth:`wait` on ``pending.batch`` after the
        block, before relying on what it wrote."""
        with self._lock:
            db = self.db
            if not self._open:
                db.execute(self._begin)
                self._open, self._writes = True, 0
            pending = Pending(db, self._batch)
            db.execute("SAVEPOINT write")
            try:
                yield pending
            except BaseException as err:
                if not db.in_transaction:  # SQLite rolled the whole batch back (a full disk, an I/O error)
                    self._end_batch(pending.batch, BatchFailed(f"the write batch was rolled back by SQLite: {err}"))
                    raise
                db.execute("ROLLBACK TO write")
                db.execute("RELEASE write")
                if self._writes == 0:  # nothing else in the batch: let go of the database's write lock now
                    db.execute("ROLLBACK")
                    self._open = False
                raise
            db.execute("RELEASE write")
            self._writes += 1

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """:meth:`batched` and :meth:`wait`: the block's writes are durable when the ``with`` statement ends, or,
        inside :func:`committed_before_return`, when that block ends."""
        with self.batched() as pending:
            yield pending.db
        waits = _DEFERRED.get()
        if waits is None:
            self.wait(pending.batch)
        else:
            waits.append((self, pending.batch))

    def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(db)`` in a :meth:`transaction`: its value once what it wrote is durable."""
        with self.transaction() as db:
            return fn(db)

    def wait(self, batch: int) -> None:
        """Return once ``batch`` is committed (leading its commit if no thread does); :class:`BatchFailed` if
        it was rolled back instead."""
        while True:
            with self._state:
                while self._committed < batch and self._leading:
                    self._state.wait()
                if self._committed >= batch:
                    failure = self._failures.get(batch)
                    if failure is not None:
                        raise BatchFailed(str(failure)) from failure
                    return
                self._leading = True
            self._lead()

    def _lead(self) -> None:
        """Commit the open batch (this thread is the leader): writes arriving meanwhile join the next one."""
        try:
            with self._lock:
                batch, failure = self._batch, None
                if self._open:
                    try:
                        self.db.execute("COMMIT")
                        self.commits += 1
                        self._syncer.committed()
                    except BaseException as err:  # the whole batch is lost: each of its writers is told
                        failure = err
                        if self.db.in_transaction:
                            self.db.execute("ROLLBACK")
                self._open = False
                self._batch += 1
        finally:
            with self._state:
                self._leading = False
                self._finish(batch, failure)

    def _end_batch(self, batch: int, failure: BaseException) -> None:
        """Under the connection lock: ``batch`` was rolled back by SQLite; later writes start a new one."""
        self._open = False
        self._batch += 1
        with self._state:
            self._finish(batch, failure)

    def _finish(self, batch: int, failure: BaseException | None) -> None:
        """Under ``_state``: ``batch`` has ended; wake its waiters."""
        if failure is not None:
            self._failures[batch] = failure
            while len(self._failures) > _FAILURES_KEPT:
                del self._failures[next(iter(self._failures))]
        self._committed = max(self._committed, batch)
        self._state.notify_all()

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(db)`` on the writer connection (it sees the open batch's writes; for counts that must)."""
        with self._lock:
            return fn(self.db)

    def sync(self) -> None:
        """Flush every commit so far to the disk now (the syncer does it within :data:`SYNC_EVERY_S`)."""
        self._syncer.sync()

    def close(self) -> None:
        """Commit what is open, flush it to the disk, then close the connection."""
        with self._lock:
            if self._open and self.db.in_transaction:
                self.db.execute("COMMIT")
            self._open = False
            self._syncer.close()
            self.db.close()


class WalSyncer:
    """Flushes the WAL of database file ``path`` to the disk (``fsync``) in a daemon thread, at most every
    ``every_s`` while commits arrive (:meth:`committed`), and not at all while none do; every
    :data:`CHECKPOINT_EVERY` commits it checkpoints the WAL into the database file instead (on a connection of its
    own, PASSIVE: writers go on meanwhile; SQLite syncs the WAL before it copies it). ``synced``: commits known
    to be on the disk."""

    def __init__(self, path: Path, every_s: float) -> None:
        self.path = path
        self.wal = Path(f"{path}-wal")
        self.every_s = every_s
        self._checkpointed = 0  # commits up to the last checkpoint
        self._reader: sqlite3.Connection | None = None
        self._wake = threading.Condition(threading.Lock())
        self._commits = 0  # commits so far
        self.synced = 0  # commits flushed so far
        self._fd: int | None = None
        self._flush_lock = threading.Lock()
        self._stopping = False
        self._idle = False  # the thread waits for a commit (it must be woken) rather than sleeping to its next flush
        self._thread: threading.Thread | None = None

    def committed(self) -> None:
        with self._wake:
            self._commits += 1
            if self._thread is None:  # started by the first commit: a store only read never runs one
                self._thread = threading.Thread(target=self._run, name=f"wal-sync {self.wal.name}", daemon=True)
                self._thread.start()
            if self._idle:  # while it sleeps to its next flush, a commit needs no wake-up: that flush takes it
                self._wake.notify()

    def _run(self) -> None:
        last = 0.0
        while True:
            with self._wake:
                while self._commits == self.synced and not self._stopping:
                    self._idle = True
                    if not self._wake.wait(IDLE_EXIT_S) and self._commits == self.synced:
                        self._idle, self._thread = False, None  # the next commit starts a new one
                        return
                self._idle = False
                if self._stopping:
                    return
            pause = last + self.every_s - time.monotonic()
            if pause > 0:  # commits that arrive meanwhile are flushed by the same fsync
                time.sleep(pause)
            last = time.monotonic()
            try:
                self.sync()
            except Exception as err:  # tried again a second later: the thread must not die of one failure
                log.error("flushing %s to the disk failed: %s", self.wal, err)
                with self._wake:
                    if not self._stopping:
                        self._wake.wait(1.0)

    def sync(self) -> None:
        """fsync the WAL: every commit made before this call is on the disk when it returns."""
        with self._wake:
            upto = self._commits
        with self._flush_lock:
            if upto <= self.synced:
                return
            try:
                try:
                    os.fsync(self._wal_fd())
                except OSError as err:  # the descriptor went bad under us (closed elsewhere): open the WAL again
                    if err.errno != errno.EBADF:
                        raise
                    self._fd = None
                    os.fsync(self._wal_fd())
            except FileNotFoundError:  # no WAL: the last connection checkpointed it into the database and
                pass  # removed it (SQLite syncs the database file then), or the store itself is gone
            with self._wake:
                self.synced = max(self.synced, upto)
            if upto - self._checkpointed >= CHECKPOINT_EVERY:
                self._checkpoint()
                self._checkpointed = upto

    def _wal_fd(self) -> int:
        fd = self._fd
        if fd is None or os.fstat(fd).st_nlink == 0:  # first flush, or the WAL was deleted and made anew
            if fd is not None:
                os.close(fd)
            fd = self._fd = os.open(self.wal, os.O_RDONLY)
        return fd

    def _checkpoint(self) -> None:
        """Copy the WAL into the database file so that it does not grow without end (the writer starts it
        afresh at its next batch once every frame is copied)."""
        if self._reader is None:
            self._reader = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            self._reader.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as err:  # the next one tries again; the WAL only grows meanwhile
            log.warning("checkpoint of %s failed: %s", self.path, err)

    def close(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        try:
            self.sync()
        except OSError as err:
            log.error("flushing %s to the disk failed: %s", self.wal, err.strerror)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None


__all__ = ["SYNC_EVERY_S", "BatchFailed", "GroupCommit", "Pending", "WalSyncer", "committed_before_return"]
