"""Group commit (party_common/storage/group_commit.py) and files read again on change (party_common/watch.py):
the pieces that take the per-call writes and file reads off a Score call without losing a guarantee."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from party_common.storage import MemoryJobStore
from party_common.storage.files import atomic_write
from party_common.storage.group_commit import BatchFailed, GroupCommit, committed_before_return
from party_common.watch import Watched, WatchedDocuments
from party_platform.disclosure import DisclosureLedger
from protocols.vfl_lr.disclosure import DisclosureRefused, Projection


def writer(path: Path) -> GroupCommit:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA foreign_keys=ON")
    db.executescript("CREATE TABLE IF NOT EXISTS parent (id INTEGER PRIMARY KEY);"
                     "CREATE TABLE IF NOT EXISTS child (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES parent(id) "
                     "DEFERRABLE INITIALLY DEFERRED);")
    return GroupCommit(db)


def committed_rows(path: Path, table: str) -> list[int]:
    """What another connection (another process) sees: committed rows only."""
    with sqlite3.connect(path) as db:
        return [r[0] for r in db.execute(f"SELECT id FROM {table} ORDER BY id")]


def test_writes_of_one_batch_share_one_commit_and_are_seen_only_once_committed(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    commit = writer(path)
    with commit.batched() as first:
        first.db.execute("INSERT INTO parent (id) VALUES (1)")
    with commit.batched() as second:
        assert second.db.execute("SELECT COUNT(*) FROM parent").fetchone() == (1,)  # the batch's own writes
        second.db.execute("INSERT INTO parent (id) VALUES (2)")
    assert first.batch == second.batch and committed_rows(path, "parent") == []
    commit.wait(second.batch)
    assert commit.commits == 1 and committed_rows(path, "parent") == [1, 2]
    commit.wait(first.batch)  # ended already: nothing more to commit
    assert commit.commits == 1
    commit.close()


def test_a_failed_write_leaves_nothing_and_the_rest_of_its_batch_commits(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    commit = writer(path)
    with pytest.raises(ValueError), commit.transaction() as db:
        db.execute("INSERT INTO parent (id) VALUES (1)")
        raise ValueError("refused half-way")
    with commit.transaction() as db:
        db.execute("INSERT INTO parent (id) VALUES (2)")
    assert committed_rows(path, "parent") == [2]
    commit.close()


def test_a_batch_whose_commit_fails_fails_every_write_in_it(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    commit = writer(path)
    with commit.batched() as good:
        good.db.execute("INSERT INTO parent (id) VALUES (1)")
    with commit.batched() as bad:  # a deferred foreign key: the COMMIT itself fails
        bad.db.execute("INSERT INTO child (id, parent) VALUES (1, 99)")
    for pending in (good, bad):
        with pytest.raises(BatchFailed, match="FOREIGN KEY"):
            commit.wait(pending.batch)
    assert committed_rows(path, "parent") == [] and committed_rows(path, "child") == []
    with commit.transaction() as db:  # the next batch starts afresh
        db.execute("INSERT INTO parent (id) VALUES (3)")
    assert committed_rows(path, "parent") == [3]
    commit.close()


def test_committed_before_return_waits_once_at_the_end_of_the_block(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    commit = writer(path)
    with committed_before_return():
        for i in range(3):
            with commit.transaction() as db:
                db.execute("INSERT INTO parent (id) VALUES (?)", (i,))
        assert committed_rows(path, "parent") == []  # nothing has left the block yet
    assert committed_rows(path, "parent") == [0, 1, 2] and commit.commits == 1
    with pytest.raises(BatchFailed), committed_before_return(), commit.transaction() as db:
        db.execute("INSERT INTO child (id, parent) VALUES (1, 99)")  # the block ends in a failed commit: it raises
    commit.close()


def test_the_syncer_flushes_every_commit_off_the_callers_path(tmp_path: Path) -> None:
    commit = writer(tmp_path / "db.sqlite")
    for i in range(20):
        with commit.transaction() as db:
            db.execute("INSERT INTO parent (id) VALUES (?)", (i,))
    syncer = commit._syncer
    deadline = time.monotonic() + 10
    while syncer.synced < 20 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert syncer.synced == 20  # within SYNC_EVERY_S of the last commit (plus the flush), on a quiet machine
    commit.close()


def test_concurrent_charges_never_pass_the_budget(tmp_path: Path) -> None:
    """Eight threads charge the same customers distinct projections at once: exactly `limit` are recorded per
    customer, every other charge is refused, whatever the interleaving of batches and commits."""
    limit, threads, per_thread = 3, 8, 4
    jobs = MemoryJobStore()
    ledger = DisclosureLedger(tmp_path, lambda: limit, jobs)
    customers = [f"customer-{i}" for i in range(5)]
    granted: list[Projection] = []
    refused = 0
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def charge(k: int) -> None:
        nonlocal refused
        start.wait()
        for j in range(per_thread):
            projection = Projection("train-00000001", f"tag{k}", j)
            try:
                with committed_before_return():
                    ledger.charge(customers, [projection], what="scoring")
            except DisclosureRefused:
                with lock:
                    refused += 1
            else:
                with lock:
                    granted.append(projection)

    workers = [threading.Thread(target=charge, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(granted) == limit and refused == threads * per_thread - limit
    assert all(ledger.released_to(c) == set(granted) for c in customers)
    ledger.close()
    reopened = DisclosureLedger(tmp_path, lambda: limit, jobs)  # what was answered is what is on disk
    assert all(reopened.released_to(c) == set(granted) for c in customers)
    reopened.close()


def test_a_watched_file_costs_a_call_no_system_call_and_is_read_again_on_change(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import party_common.watch as watch

    path = tmp_path / "list.txt"
    atomic_write(path, b"one")
    reads: list[bytes] = []
    stats: list[Path] = []
    real_stamp = watch.stamp_of
    monkeypatch.setattr(watch, "stamp_of", lambda p: stats.append(p) or real_stamp(p))
    monkeypatch.setattr(watch, "RACY_S", 0.0)  # this test's writes are all "recent": judge the stamp alone
    watched = Watched(path, lambda: reads.append(path.read_bytes()) or reads[-1])
    assert [watched.get() for _ in range(50)] == [b"one"] * 50
    assert len(stats) == 1 and len(reads) == 1  # fifty calls: one stat and one read, at the first
    atomic_write(path, b"two")
    assert watched.get() == b"one" and len(stats) == 1  # until the poller looks: as last read, no stat
    watched.poll()  # the poller's look, every CHECK_EVERY_S
    assert watched.get() == b"two" and len(reads) == 2
    watched.poll()
    assert len(stats) == 3 and len(reads) == 2  # looked at, unchanged: not read again
    atomic_write(path, b"three")
    watched.invalidate()  # this process wrote it: seen at once
    assert watched.get() == b"three"
    assert watched in watch.POLLER._watched  # the process's poller looks at it


def test_a_recent_stamp_is_read_again_at_every_poll(tmp_path: Path) -> None:
    """Two writes in one clock tick can leave the stamp as it was: while it is young, each poll reads."""
    path = tmp_path / "list.txt"
    path.write_bytes(b"one")
    watched = Watched(path, path.read_bytes)
    assert watched.get() == b"one"
    stat = path.stat()
    path.write_bytes(b"two")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the same mtime, as in one clock tick
    watched.poll()
    assert watched.get() == b"two"


def test_a_watched_file_that_turns_unreadable_raises_until_it_is_fixed(tmp_path: Path) -> None:
    path = tmp_path / "doc.json"
    path.write_text("{}")
    watched = Watched(path, lambda: json.loads(path.read_text()))
    assert watched.get() == {}
    path.write_text("{damaged")
    watched.poll()
    with pytest.raises(ValueError):
        watched.get()
    path.write_text('{"fixed": 1}')
    watched.poll()
    assert watched.get() == {"fixed": 1}


def test_watched_documents_see_a_save_by_another_store(tmp_path: Path) -> None:
    from party_common.storage import FileDocumentStore

    mine = FileDocumentStore(tmp_path / "registry", kind="registry entry")
    theirs = FileDocumentStore(tmp_path / "registry", kind="registry entry")  # another process's
    docs = WatchedDocuments(mine)
    assert docs.get("train-00000001") is None
    theirs.save("train-00000001", {"status": "revoked"})
    docs.poll()
    assert docs.get("train-00000001") == {"status": "revoked"}
    theirs.delete("train-00000001")
    docs.poll()
    assert docs.get("train-00000001") is None


def test_an_idle_syncer_ends_and_the_next_commit_starts_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import party_common.storage.group_commit as group_commit

    monkeypatch.setattr(group_commit, "IDLE_EXIT_S", 0.05)
    commit = writer(tmp_path / "db.sqlite")
    syncer = commit._syncer

    def settle(commits: int) -> None:
        deadline = time.monotonic() + 10
        while (syncer.synced < commits or syncer._thread is not None) and time.monotonic() < deadline:
            time.sleep(0.01)

    with commit.transaction() as db:
        db.execute("INSERT INTO parent (id) VALUES (1)")
    settle(1)
    assert syncer.synced == 1 and syncer._thread is None  # flushed, then gone: an unwritten store keeps no thread
    with commit.transaction() as db:
        db.execute("INSERT INTO parent (id) VALUES (2)")
    settle(2)
    assert syncer.synced == 2
    commit.close()
