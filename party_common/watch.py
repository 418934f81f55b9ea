"""Files a node consults on every call (revocation lists, the model registry), read again only when they change.

A serving call must not cost a file read, nor a ``stat``: :class:`Watched` keeps what it read, and one daemon
thread per process (the poller) looks at the ``stat`` of every watched file or directory every
:data:`CHECK_EVERY_S` and reads again what changed. A call gets the value as last read, with no system call.
A change made by another process (``platform-node revoke``, ``fedprofile-certs crl``) therefore takes effect
within :data:`CHECK_EVERY_S` (plus the read); a change this process makes itself takes effect at once
(:meth:`Watched.invalidate`).

The stamp compared is (mtime, size, inode, ctime). A file written twice within one tick of the file system's
clock can keep its mtime, so while the stamp is younger than :data:`RACY_S` the value is read again at every
poll, as git does for its index: a change is never missed, however quickly it follows the last one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from protocols.errors import NotFound

log = logging.getLogger(__name__)

T = TypeVar("T")

CHECK_EVERY_S = 0.1  # the most a change by another process waits before a call sees it
RACY_S = 2.0  # a stamp younger than this may hide a second change in the same clock tick: read again


def stamp_of(path: Path) -> tuple[int, int, int, int] | None:
    """What changes when ``path`` (a file, or a directory's list of names) changes; None if it is missing."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)


def is_recent(stamp: tuple[int, int, int, int] | None, now_ns: int | None = None) -> bool:
    """Whether a change within the same clock tick as ``stamp`` could still be hidden by it."""
    if stamp is None:
        return False
    now_ns = time.time_ns() if now_ns is None else now_ns
    return now_ns - max(stamp[0], stamp[3]) < RACY_S * 1e9


class Watched(Generic[T]):
    """``read()`` of ``path``: read at the first :meth:`get`, then again by the poller when the stamp of ``path``
    changes. A ``read`` that raises at the first :meth:`get` raises there (and the next call tries again); one
    that raises in the poller is kept and raised by :meth:`get` until a later poll reads the file. Thread-safe.
    """

    def __init__(self, path: Path, read: Callable[[], T]) -> None:
        self.path = Path(path)
        self._read = read
        self._lock = threading.Lock()
        self._stamp: Any = _NEVER
        self._value: T | None = None
        self._error: BaseException | None = None

    def get(self) -> T:
        if self._stamp is _NEVER:
            self._refresh(force=True)
            POLLER.add(self)
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def poll(self) -> None:
        """Read again if the stamp changed (the poller's call; tests call it to skip the wait)."""
        if self._stamp is not _NEVER:
            self._refresh(force=False)

    def _refresh(self, *, force: bool) -> None:
        with self._lock:
            stamp = stamp_of(self.path)
            if not force and self._stamp is not _NEVER and stamp == self._stamp and not is_recent(stamp):
                return
            try:
                value = self._read()
            except Exception as err:
                if force:  # the caller's own read: the error is theirs, and nothing is kept
                    raise
                self._error = err
                return
            self._value, self._error, self._stamp = value, None, stamp

    def invalidate(self) -> None:
        """This process changed the file: the next :meth:`get` reads it again."""
        with self._lock:
            self._stamp = _NEVER


_NEVER = object()  # not read yet, or invalidated


class Poller:
    """The daemon thread that polls every watched object (``poll()``) every ``every_s``; started by the first."""

    def __init__(self, every_s: float = CHECK_EVERY_S) -> None:
        self.every_s = every_s
        self._watched: weakref.WeakSet[Any] = weakref.WeakSet()  # a watcher nobody holds stops being polled
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, watched: Any) -> None:
        with self._lock:
            self._watched.add(watched)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="file-watch", daemon=True)
                self._thread.start()

    def poll_all(self) -> None:
        with self._lock:
            watched = list(self._watched)
        for item in watched:
            try:
                item.poll()
            except Exception as err:  # one file's trouble must not stop the others being watched
                log.error("watching %s failed: %s", getattr(item, "path", item), err)

    def _run(self) -> None:
        while True:
            time.sleep(self.every_s)
            self.poll_all()


POLLER = Poller()


class WatchedDocuments:
    """The documents of a store (the model registry), read again when the store's directory changes.

    A file store publishes every save and delete by a rename or an unlink in its directory, which changes the
    directory's stamp; the snapshot is then read whole (a registry holds a few small documents). A store in
    memory (tests) is read directly: that is as cheap as a cache. The documents returned are shared: read only.
    """

    def __init__(self, store: Any) -> None:
        self._store = store
        directory = getattr(store, "directory", None)
        self._watched = None if directory is None else Watched(Path(directory), self._read_all)

    def _read_all(self) -> dict[str, dict[str, Any]]:
        docs = {}
        for job_id in self._store.list():
            try:
                docs[job_id] = self._store.load(job_id)
            except NotFound:  # deleted between the listing and the read: the next check sees the directory change
                continue
        return docs

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The document of ``job_id`` as last read, or None."""
        if self._watched is None:
            return self._store.load(job_id) if self._store.exists(job_id) else None
        return self._watched.get().get(job_id)

    def snapshot(self) -> dict[str, dict[str, Any]] | None:
        """Every document as last read, one object per read: a caller may keep what it derived from the
        documents for as long as this returns the same object (``is``). None for a store in memory, which is not
        watched: derive afresh each time."""
        return None if self._watched is None else self._watched.get()

    def invalidate(self) -> None:
        """This process saved or deleted a document: the next :meth:`get` reads the store again."""
        if self._watched is not None:
            self._watched.invalidate()

    def poll(self) -> None:
        """Read the store again now if its directory changed (tests: the poller does it every CHECK_EVERY_S)."""
        if self._watched is not None:
            self._watched.poll()


__all__ = ["CHECK_EVERY_S", "POLLER", "RACY_S", "Poller", "Watched", "WatchedDocuments", "is_recent", "stamp_of"]
