"""The curve kernel: hash IDs to X25519 points and multiply points by a party's secret scalar, on a compute backend."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from concurrent.futures import Future

import numpy as np

from protocols.compute import Compute, ComputeSpec, ProcessPoolCompute, ThreadCompute, as_compute
from protocols.errors import ProtocolError
from protocols.psi.ids import digest_chunk, normalise_id
from protocols.psi.messages import DOMAIN, POINT, PsiError
from protocols.psi.x25519 import LowOrderPoint, kernel

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


def hash_and_blind_chunk(secret: bytes, salt: bytes, ids: list[str]) -> bytes:
    """``secret * H(x)`` for each ID, 32 bytes each, in order (the same bytes as :func:`hash_to_point`)."""
    prefix = hashlib.sha256(DOMAIN + salt)
    hashes = bytearray()
    for raw in ids:
        h = prefix.copy()
        h.update(normalise_id(str(raw)).encode())
        hashes += h.digest()
    return blind_chunk(secret, bytes(hashes))


# ------------------------------------------------------------------------------ the blinder ----


def _threads_if_they_run_in_parallel(compute: Compute) -> Compute:
    """The multi-buffer kernel releases the GIL for its C calls: on this machine threads then beat a process
    pool (no pickling of IDs and points, no worker start-up). A local process pool is swapped for as many
    threads; other backends (inline, distributed) are kept."""
    if isinstance(compute, ProcessPoolCompute) and kernel().name == "multi-buffer":
        compute.close()
        return ThreadCompute(compute.workers)
    return compute



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

    def _parallel(self, n: int) -> bool:
        return self.workers > 1 and n >= 2 * self.min_chunk

    def _bounds(self, n: int, most: int | None = None) -> list[tuple[int, int]]:
        size = max(self.min_chunk, -(-n // self.workers))
        size = min(size, most) if most else size
        return [(i, min(i + size, n)) for i in range(0, n, size)]

    def check_ids(self, ids: Sequence[str]) -> None:
        """Refuse an empty side, empty IDs and IDs equal after normalisation, naming rows (never IDs)."""
        n = len(ids)
        if n == 0:
            raise PsiError("this party has no IDs: an empty side cannot take part in PSI")
        if not self._parallel(n):
            parts = [digest_chunk(list(ids))]
            offsets = [0]
        else:
            bounds = self._bounds(n, most=100_000)  # bounded chunks: each worker holds few IDs at a time
            futures = [self.compute.submit(digest_chunk, list(ids[lo:hi])) for lo, hi in bounds]
            parts = [future.result() for future in futures]
            offsets = [lo for lo, _ in bounds]
        for (_, empty), offset in zip(parts, offsets, strict=True):
            if empty >= 0:
                raise PsiError(f"row {offset + empty + 1}: empty ID after normalisation")
        digests = np.frombuffer(b"".join(d for d, _ in parts), dtype="<u8")
        order = np.argsort(digests, kind="stable")  # equal digests keep file order
        same = np.flatnonzero(digests[order[1:]] == digests[order[:-1]])
        repeats = []
        for i in same.tolist():  # candidates; an 8-byte digest collision is told apart by the IDs
            first, row = int(order[i]), int(order[i + 1])
            if normalise_id(str(ids[first])) == normalise_id(str(ids[row])):
                repeats.append((row, first))
        if repeats:
            row, first = min(repeats)
            raise PsiError(f"rows {first + 1} and {row + 1} hold the same ID after normalisation "
                           "(trim, case, phone/e-mail forms); de-duplicate the file")

    def hash_and_blind_async(self, salt: bytes, ids: Sequence[str]) -> Pending:
        """``secret * H(salt, normalise_id(id))`` for each ID, as 32 bytes each, in order."""
        ids = list(ids)
        if not self._parallel(len(ids)):
            return Pending(hash_and_blind_chunk(self.secret, salt, ids))
        return Pending([self.compute.submit(hash_and_blind_chunk, self.secret, salt, ids[lo:hi])
                        for lo, hi in self._bounds(len(ids))])

    def blind_async(self, points: bytes) -> Pending:
        """``secret * P`` for each 32-byte point, in order."""
        if len(points) % POINT:
            raise ProtocolError(f"points must be a multiple of {POINT} bytes, got {len(points)}")
        n = len(points) // POINT
        if not self._parallel(n):
            return Pending(blind_chunk(self.secret, points))
        return Pending([self.compute.submit(blind_chunk, self.secret, points[lo * POINT:hi * POINT])
                        for lo, hi in self._bounds(n)])

    def close(self) -> None:
        """Drop the secret and close the compute (idempotent)."""
        self.secret = b""
        self.compute.close()


__all__ = ["Blinder", "Pending", "blind_chunk", "hash_and_blind_chunk", "hash_to_point"]
