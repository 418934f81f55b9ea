"""One node process per state directory: ``<state_dir>/node.lock``, held with ``fcntl.flock`` while it serves.

Two processes serving one state directory would both resume its jobs and share its files (and, with the
port shared, split a job's calls between them). The lock is the kernel's: it goes with the process, however
the process ends (``kill -9`` included), so a stale file never blocks a restart. The file holds the PID of
the holder, for the refusal's message only.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from protocols.errors import UserError

LOCK_NAME = "node.lock"


class StateDirInUse(UserError):
    """Another process serves this state directory."""


class StateLock:
    """The held lock on one state directory; :meth:`release` (or the process's end) frees it."""

    def __init__(self, state_dir: Path, fd: int) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def lock_state_dir(state_dir: Path, *, what: str) -> StateLock:
    """Take ``state_dir``'s lock for this process, or raise :class:`StateDirInUse` naming the holder's PID."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        pid = f"PID {holder}" if holder.isdigit() else "another process"
        raise StateDirInUse(f"{state_dir} is in use: {pid} already serves this state directory as the {what} "
                            f"(stop it first, e.g. `kill {holder if holder.isdigit() else 'PID'}`; one node "
                            "process per state directory)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return StateLock(state_dir, fd)


T = TypeVar("T")


def under_state_lock(state_dir: Path, what: str, build: Callable[[StateLock], T]) -> T:
    """``build(lock)`` holding ``state_dir``'s lock, taken before anything reads the state; the lock is let go if
    ``build`` fails (a node that started keeps it until it stops)."""
    lock = lock_state_dir(state_dir, what=what)
    try:
        return build(lock)
    except BaseException:
        lock.release()
        raise
