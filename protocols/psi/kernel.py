"""The curve kernel: hash IDs to X25519 points and multiply points by a party's secret scalar, on a compute backend."""

from __future__ import annotations

import hashlib
import secrets
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from protocols.compute import Compute, ComputeSpec, ProcessPoolCompute, ThreadCompute, as_compute
from protocols.errors import ProtocolError
from protocols.psi.ids import normalise_all, normalise_id
from protocols.psi.messages import DOMAIN, POINT, PsiError
from protocols.psi.store import PointStore
from protocols.psi.x25519 import LowOrderPoint, kernel

T = TypeVar("T")

# ------------------------------------------------------------------------- worker functions ----
# Module-level functions of picklable arguments: they run on the compute backend's workers.


def hash_to_point(salt: bytes, raw: str) -> bytes:
    """``H(x)``: SHA-256 over the domain tag, the job salt and the normalised ID, as an X25519 u-coordinate.

    Every 32-byte string is a valid input to X25519 (the curve and its twist are both secure).
    """
    return hashlib.sha256(DOMAIN + salt + normalise_id(str(raw)).encode()).digest()


def blind_chunk(secret: bytes, points: bytes) -> bytes:
    """``secret * P`` for each 32-byte point, in order, on this process's X25519 kernel; a point of small order
    is refused."""
    try:
        return kernel().multiply(secret, points)
    except LowOrderPoint:
        # A low-order input gives the all-zero output. An honest hash hits one of the few such points with
        # probability ~2^-250; a peer sending one is refused.
        raise ProtocolError("a point of small order was received; refusing it") from None


def hash_chunk(salt: bytes, ids: list[str]) -> tuple[bytes, int]:
    """``H(x)`` for each ID (32 bytes each, in order, the same bytes as :func:`hash_to_point`) and the first
    position whose ID is empty after normalisation, or -1."""
    copy = hashlib.sha256(DOMAIN + salt).copy
    digests: list[bytes] = []
    append = digests.append
    empty = -1
    for row, value in enumerate(normalise_all([raw if type(raw) is str else str(raw) for raw in ids])):
        if not value and empty < 0:
            empty = row
        h = copy()
        h.update(value.encode())
        append(h.digest())
    return b"".join(digests), empty


def refuse_repeats(keys: np.ndarray, ids: Sequence[str], order: np.ndarray) -> None:
    """Refuse IDs equal after normalisation, naming rows of the file (never IDs). ``keys[i]``: a 64-bit prefix of
    the salted hash of ``ids[order[i]]``; equal prefixes are candidates, told apart by the IDs themselves."""
    by_key = np.argsort(keys, kind="stable")
    same = np.flatnonzero(keys[by_key[1:]] == keys[by_key[:-1]])
    repeats = []
    for i in same.tolist():
        a, b = int(order[by_key[i]]), int(order[by_key[i + 1]])
        first, row = min(a, b), max(a, b)
        if normalise_id(str(ids[first])) == normalise_id(str(ids[row])):
            repeats.append((row, first))
    if repeats:
        row, first = min(repeats)
        raise PsiError(f"rows {first + 1} and {row + 1} hold the same ID after normalisation "
                       "(trim, case, phone/e-mail forms); de-duplicate the file")


# ------------------------------------------------------------------------------ the blinder ----


def _threads_if_they_run_in_parallel(compute: Compute) -> Compute:
    """The multi-buffer kernel releases the GIL for its C calls: on this machine threads then beat a process
    pool (no pickling of IDs and points, no worker start-up). A local process pool is swapped for as many
    threads; other backends (inline, distributed) are kept."""
    if isinstance(compute, ProcessPoolCompute) and kernel().name == "multi-buffer":
        compute.close()
        return ThreadCompute(compute.workers)
    return compute



def _done(value: T) -> Future[T]:
    future: Future[T] = Future()
    future.set_result(value)
    return future


class Pending:
    """Bytes being computed by workers, in parts; ``result()`` joins them in order."""

    def __init__(self, parts: list[Future[bytes]] | bytes) -> None:
        self._parts = parts

    def result(self) -> bytes:
        if isinstance(self._parts, bytes):
            return self._parts
        return b"".join(part.result() for part in self._parts)

    def cancel(self) -> None:
        if not isinstance(self._parts, bytes):
            for part in self._parts:
                part.cancel()


class Blinder:
    """One party's secret scalar and the compute backend its kernels run on.

    ``compute`` is a backend, a worker count (1 = everything in this process) or None (every core).
    Inputs smaller than two chunks of ``min_chunk`` run in this process, never on the backend. The
    ``*_async`` methods queue work and return at once, so a party can compute its next batch while it
    waits for the peer. The blinder owns its compute: :meth:`close` closes it. ``secret`` is for test
    vectors only; a party always draws a fresh one.
    """

    def __init__(self, compute: ComputeSpec = None, *, min_chunk: int = 2_000, secret: bytes | None = None) -> None:
        if secret is not None and len(secret) != POINT:
            raise ValueError(f"a secret scalar is {POINT} bytes, got {len(secret)}")
        self.secret = secrets.token_bytes(POINT) if secret is None else bytes(secret)
        self.compute: Compute = _threads_if_they_run_in_parallel(as_compute(compute))
        self.workers = self.compute.workers
        self.min_chunk = min_chunk
        self._held = self.compute.keep(self.secret)  # what the workers get in the secret's place
        self._background: ThreadPoolExecutor | None = None

    def _parallel(self, n: int) -> bool:
        return self.workers > 1 and n >= 2 * self.min_chunk

    def _bounds(self, n: int, most: int | None = None) -> list[tuple[int, int]]:
        size = max(self.min_chunk, -(-n // self.workers))
        size = min(size, most) if most else size
        return [(i, min(i + size, n)) for i in range(0, n, size)]

    def hash_ids(self, salt: bytes, ids: Sequence[str], order: np.ndarray, store: PointStore) -> None:
        """``H(x)`` for ``ids[order[i]]`` into slot ``i`` of ``store``; then refuse empty IDs and IDs equal after
        normalisation, naming rows of the file (never IDs). Nothing derived from the IDs may leave this party
        before this has returned."""
        n = len(order)
        if n == 0:
            raise PsiError("this party has no IDs: an empty side cannot take part in PSI")
        bounds = self._bounds(n, most=100_000) if self._parallel(n) else [(0, n)]  # few IDs per worker at a time
        queued: deque[tuple[int, int, Future[tuple[bytes, int]]]] = deque()
        empties: list[int] = []

        def collect() -> None:
            lo, hi, future = queued.popleft()
            hashes, empty = future.result()
            store.write(slice(lo, hi), hashes)
            if empty >= 0:
                empties.append(int(order[lo + empty]))

        for lo, hi in bounds:
            chunk = [ids[r] for r in order[lo:hi].tolist()]
            queued.append((lo, hi, self.compute.submit(hash_chunk, salt, chunk) if len(bounds) > 1
                           else _done(hash_chunk(salt, chunk))))
            if len(queued) > 2 * self.workers:
                collect()
        while queued:
            collect()
        if empties:
            raise PsiError(f"row {min(empties) + 1}: empty ID after normalisation")
        refuse_repeats(store.prefixes(), ids, order)

    def hash_ids_async(self, salt: bytes, ids: Sequence[str], order: np.ndarray, store: PointStore) -> Future[None]:
        """:meth:`hash_ids` on a thread of its own (it waits on the compute, so it must not run on it)."""
        if self._background is None:
            self._background = ThreadPoolExecutor(1, thread_name_prefix="psi-hash")
        return self._background.submit(self.hash_ids, salt, ids, order, store)

    def blind_async(self, points: bytes) -> Pending:
        """``secret * P`` for each 32-byte point, in order."""
        if len(points) % POINT:
            raise ProtocolError(f"points must be a multiple of {POINT} bytes, got {len(points)}")
        n = len(points) // POINT
        if not self._parallel(n):
            return Pending(blind_chunk(self.secret, points))
        return Pending([self.compute.submit(blind_chunk, self._held, points[lo * POINT:hi * POINT])
                        for lo, hi in self._bounds(n)])

    def close(self) -> None:
        """Drop the secret and close the compute (idempotent)."""
        self.secret = self._held = b""
        self.compute.close()  # first: background hashing then stops at its next chunk
        if self._background is not None:
            self._background.shutdown(wait=True, cancel_futures=True)
            self._background = None


__all__ = ["Blinder", "Pending", "blind_chunk", "hash_chunk", "hash_to_point", "refuse_repeats"]
