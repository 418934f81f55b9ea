"""Doubly blinded values, in RAM or spilled to memory-mapped files, and the matching that finds the intersection."""

from __future__ import annotations

import hashlib
import mmap
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from protocols.psi.messages import POINT, VERSION

SPILL_AT = 2_000_000  # IDs per side from which doubly blinded values go to memory-mapped files
_DTYPE = f"V{POINT}"


def as_points(data: bytes) -> np.ndarray:
    """32-byte points in ``data`` as a numpy array of opaque 32-byte values (no copy)."""
    return np.frombuffer(data, dtype=_DTYPE)


def content_hash(sorted_points: np.ndarray) -> str:
    """SHA-256 over the version string and the sorted doubly blinded values of the intersection, in hex."""
    return hashlib.sha256(VERSION.encode() + np.ascontiguousarray(sorted_points).tobytes()).hexdigest()


class PointStore:
    """Doubly blinded values, one 32-byte slot per ID, written a batch at a time.

    Small sets live in RAM. From ``SPILL_AT`` slots on (when given a ``spill_dir``) they live in a file in a
    private temporary directory, written through a shared memory map whose pages are handed back to the
    kernel after every batch, and read back by streaming; the file is deleted by :meth:`close`.
    """

    READ_CHUNK = 1 << 20  # slots per read when streaming a spilled file

    def __init__(self, size: int, spill_dir: Path | str | None) -> None:
        self.size = size
        self._dir: str | None = None
        self._map: mmap.mmap | None = None
        if spill_dir is None or size < SPILL_AT:
            self._points = np.empty(size, dtype=_DTYPE)
        else:
            self._points = np.empty(0, dtype=_DTYPE)
            Path(spill_dir).mkdir(parents=True, exist_ok=True)
            self._dir = tempfile.mkdtemp(prefix="psi-", dir=spill_dir)  # mode 0700
            self._path = os.path.join(self._dir, "points.bin")
            with open(self._path, "wb") as f:
                f.truncate(size * POINT)
            with open(self._path, "r+b") as f:
                self._map = mmap.mmap(f.fileno(), size * POINT, access=mmap.ACCESS_WRITE)

    @property
    def spilled(self) -> bool:
        return self._dir is not None

    def write(self, where: slice | np.ndarray, data: bytes) -> None:
        """Store the values in ``data`` (32 bytes each) at slots ``where`` (a slice or row numbers)."""
        if self._map is None:
            self._points[where] = as_points(data)
            return
        view = np.frombuffer(self._map, dtype=_DTYPE)
        view[where] = as_points(data)
        del view
        # A shared file mapping: the data stays in the page cache and reaches the file; only our resident
        # set shrinks.
        self._map.madvise(mmap.MADV_DONTNEED)

    def read(self, lo: int, hi: int) -> bytes:
        """The values in slots ``lo`` to ``hi`` (exclusive), as bytes."""
        if self._map is None:
            return self._points[lo:hi].tobytes()
        return bytes(self._map[lo * POINT:hi * POINT])

    def _chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first slot, values) over the whole store, a bounded chunk at a time."""
        if self._map is None:
            yield 0, self._points
            return
        with open(self._path, "rb") as f:
            for lo in range(0, self.size, self.READ_CHUNK):
                yield lo, np.fromfile(f, dtype=_DTYPE, count=min(self.READ_CHUNK, self.size - lo))

    def prefixes(self) -> np.ndarray:
        """The first 8 bytes of every value as uint64 (the matching key), 8 bytes per slot in RAM."""
        out = np.empty(self.size, dtype="<u8")
        for lo, chunk in self._chunks():
            out[lo:lo + len(chunk)] = chunk.view(np.uint8).reshape(-1, POINT)[:, :8].copy().view("<u8")[:, 0]
        return out

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The values at ``rows`` (any order, repeats allowed), as a new array."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._map is None:
            return self._points[rows]
        out = np.empty(len(rows), dtype=_DTYPE)
        order = np.argsort(rows, kind="stable")
        wanted = rows[order]
        for lo, chunk in self._chunks():
            a, b = np.searchsorted(wanted, [lo, lo + len(chunk)])
            out[order[a:b]] = chunk[wanted[a:b] - lo]
        return out

    def close(self) -> None:
        """Drop the values and delete the spill file and its directory (idempotent)."""
        self._points = np.empty(0, dtype=_DTYPE)
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def match_rows(own: PointStore, peer: PointStore) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``own`` whose value ``peer`` also holds, ascending, checked on all 32 bytes; and their values."""
    peer_keys = peer.prefixes()
    peer_order = np.argsort(peer_keys, kind="stable")
    sorted_keys = peer_keys[peer_order]
    del peer_keys
    own_keys = own.prefixes()
    pos = np.searchsorted(sorted_keys, own_keys)
    pos[pos == len(sorted_keys)] = 0
    candidates = np.flatnonzero(sorted_keys[pos] == own_keys)
    del own_keys
    if len(candidates) == 0:
        return candidates, np.empty(0, dtype=_DTYPE)
    values = own.take(candidates)
    if np.any(sorted_keys[1:] == sorted_keys[:-1]):
        # Two peer values share a prefix (about N*M/2^64 odds): compare the candidates on whole values.
        hit = np.isin(values, peer.take(np.arange(peer.size)), assume_unique=True)
    else:
        hit = values == peer.take(peer_order[pos[candidates]])
    return candidates[hit], values[hit]


def intersection(own: PointStore, peer: PointStore, ids: Sequence[str]) -> tuple[list[str], str]:
    """Own IDs whose doubly blinded value the peer also has, sorted by that value; and the content hash."""
    rows, values = match_rows(own, peer)
    order = np.argsort(values, kind="stable")
    return [ids[r] for r in rows[order].tolist()], content_hash(values[order])


__all__ = ["SPILL_AT", "PointStore", "as_points", "content_hash", "intersection", "match_rows"]
