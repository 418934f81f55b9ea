"""Files that are whole or absent: atomic writes (temp file, fsync, rename) with the mode set before the data.

Every store of the node writes through here, so a crash mid-write leaves the old file or the new one,
never a part, and private material is never readable by others, not even for a moment.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from protocols.errors import UserError


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part.

    With ``overwrite=False`` the file is published only if ``path`` does not exist yet (checked atomically,
    by a hard link); otherwise :class:`FileExistsError` is raised and nothing changes.
    """
    atomic_write_with(path, lambda f: f.write(data), mode=mode, overwrite=overwrite)


def atomic_write_with(path: Path, write: Callable[[BinaryIO], object], *, mode: int = 0o644,
                      overwrite: bool = True) -> None:
    """:func:`atomic_write` of what ``write`` writes into the open file (a file too large to build in memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _publish_new(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _publish_new(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)  # fails with FileExistsError if path exists: no window between check and write
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: check, then rename
        if path.exists():
            raise FileExistsError(f"{path} already exists") from None
        os.replace(tmp, path)
    else:
        tmp.unlink()


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: not every platform can open a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it private to this user (0700)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def local_secret(path: Path, what: str, *, size: int = 32, lost: str = "") -> bytes:
    """A node-local secret of ``size`` random bytes at ``path``: made (0600, atomically, never replaced) the first
    time; refused when others may read it or it has another size. ``what`` names it in errors, ``lost`` says
    what a replaced one costs."""
    if not path.exists():
        with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
            atomic_write(path, secrets.token_bytes(size), mode=0o600, overwrite=False)
    if path.stat().st_mode & 0o077:
        raise UserError(f"{path}: the {what} is readable by others; chmod 600 it")
    key = path.read_bytes()
    if len(key) != size:
        raise UserError(f"{path}: the {what} must be {size} bytes, it has {len(key)}" + (f"; {lost}" if lost else ""))
    return key
