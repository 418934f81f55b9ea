"""Files a node consults on every call (revocation lists, the model registry), read again only when they change.

A serving call must not cost a file read: :class:`Watched` keeps what it read and looks at the file's (or
directory's) ``stat`` at most every :data:`CHECK_EVERY_S`; a call in between gets the value as last read.
A change made by another process (``platform-node revoke``, ``fedprofile-certs crl``) therefore takes effect
within :data:`CHECK_EVERY_S`; a change this process makes itself takes effect at once (:meth:`Watched.invalidate`).

The stamp compared is (mtime, size, inode, ctime). A file written twice within one tick of the file system's
clock can keep its mtime, so while the stamp is younger than :data:`RACY_S` the value is read again at every
check, as git does for its index: a change is never missed, however quickly it follows the last one.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from protocols.errors import NotFound

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
    """``read()`` of ``path``, read again when the stamp of ``path`` changes, checked at most every ``every_s``.

    ``read`` may raise: the error reaches the caller and the next call reads again. Thread-safe; the fast path
    (checked less than ``every_s`` ago) takes no lock.
    """

    def __init__(self, path: Path, read: Callable[[], T], *, every_s: float = CHECK_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self._read = read
        self._every_s = every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._next_check = float("-inf")
        self._stamp: Any = _NEVER
        self._value: T | None = None

    def get(self) -> T:
        if self._clock() < self._next_check:
            return self._value  # type: ignore[return-value]
        with self._lock:
            now = self._clock()
            if now < self._next_check:
                return self._value  # type: ignore[return-value]
            stamp = stamp_of(self.path)
            if stamp != self._stamp or is_recent(stamp):
                self._stamp = _NEVER  # until read() returns: an error means read again next time
                self._value = self._read()
                self._stamp = stamp
            self._next_check = now + self._every_s
            return self._value  # type: ignore[return-value]

    def invalidate(self) -> None:
        """This process changed the file: the next :meth:`get` reads it again."""
        with self._lock:
            self._next_check = float("-inf")
            self._stamp = _NEVER


_NEVER = object()  # no stamp read yet


class WatchedDocuments:
    """The documents of a store (the model registry), read again when the store's directory changes.

    A file store publishes every save and delete by a rename or an unlink in its directory, which changes the
    directory's stamp; the snapshot is then read whole (a registry holds a few small documents). A store in
    memory (tests) is read directly: that is as cheap as a cache. The documents returned are shared: read only.
    """

    def __init__(self, store: Any, *, every_s: float = CHECK_EVERY_S) -> None:
        self._store = store
        directory = getattr(store, "directory", None)
        self._watched = None if directory is None else Watched(Path(directory), self._read_all, every_s=every_s)

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

    def invalidate(self) -> None:
        """This process saved or deleted a document: the next :meth:`get` reads the store again."""
        if self._watched is not None:
            self._watched.invalidate()


__all__ = ["CHECK_EVERY_S", "RACY_S", "Watched", "WatchedDocuments", "is_recent", "stamp_of"]
