"""Private set intersection: ECDH over X25519, driven by the bank, pipelined in batches, over a PeerChannel.

Math. Each ID is normalised (:func:`normalise_id`), hashed with a job salt and a domain tag to a 32-byte
X25519 u-coordinate ``H(x)``; each party multiplies by its own fresh secret scalar with
``cryptography``'s X25519 (clamped scalars; scalar multiplication on u-coordinates commutes, and both the
curve and its twist are secure, so any 32-byte hash is a valid input). ``a*b*H(x) == b*a*H(y)`` iff
``x == y`` (up to SHA-256 collisions). Neither party ever sends an ID or a plain hash of one: only
``a*H(x)``, ``b*H(y)`` and doubly blinded values.

Steps (bank = a, platform = b; each side sends its points in its own secret random order):

1. ``psi.hello``: nonces from both sides give the job salt; set sizes are exchanged. The platform starts
   hashing and blinding its own first batches at once, in the background.
2. ``psi.exchange`` k = 0, 1, ...: the bank sends its batch k, ``a*H(x)``, and (mode "both") the doubly
   blinded platform batch k-1, ``a*b*H(y)``, in the platform's order, so the platform can find its own
   members. The platform replies with ``b*a*H(x)`` for the bank's batch k in the same order (except in
   cardinality mode, where it keeps them) and its own batch k, ``b*H(y)``. In "both" mode one last
   exchange carries only the last platform batch's doubles.
   Both sides compute while the other does: the bank hashes its next batch and blinds the platform's
   last one while the platform blinds the bank's batch; the platform blinds its own batches ahead.
3. ``psi.cardinality_batch`` (cardinality mode only): the bank returns ``a*b*H(y)`` shuffled across the
   whole set, so the platform can only count.
4. ``psi.finish``: sizes and the content hash are compared; both sides must agree.

Output modes: ``both`` (each learns the intersection), ``bank_only`` (the platform learns only the
size), ``cardinality`` (both learn only the size). The agreed order of the intersection is the order
of the doubly blinded values, which both sides hold without revealing anything else; the content hash
is SHA-256 over that sorted list, so the two nodes can compare alignments.

Memory. Neither side holds a second copy of its IDs: workers normalise, hash and blind one batch at a
time. Per ID a party keeps 32 bytes for each doubly blinded value it holds (its own and the peer's), in
RAM or, from ``SPILL_AT`` IDs on and when the node gives a ``spill_dir``, in memory-mapped files there
(deleted when the job ends); matching uses 8-byte prefixes (16 bytes per ID in RAM) and checks every
candidate on all 32 bytes. The duplicate check keeps 8 bytes per ID. The IDs themselves are the node's
data and stay where they are.
"""

from __future__ import annotations

import hashlib
import mmap
import multiprocessing as mp
import os
import re
import secrets
import shutil
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from protocols.channel import Message, Peer, ProtocolError

PsiMode = Literal["both", "bank_only", "cardinality"]
MODES: tuple[str, ...] = ("both", "bank_only", "cardinality")
VERSION = "psi-x25519-v2"
POINT = 32
DOMAIN = b"fedprofile/psi/v1/id-to-point\x00"
SPILL_AT = 2_000_000  # IDs per side from which doubly blinded values go to memory-mapped files
LOOKAHEAD = 2  # platform batches hashed and blinded ahead of the bank's requests
Progress = Callable[[str, int, int], None]

_PHONE_CHARS = re.compile(r"^\+?[0-9 ()./-]{7,}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


class PsiError(ValueError):
    """Bad PSI input (duplicates after normalisation, empty IDs, an empty side)."""


# ------------------------------------------------------------------------------------ IDs ----


def normalise_id(raw: str) -> str:
    """The normal form both parties apply before hashing.

    * Unicode NFKC, surrounding white space removed, case folded.
    * E-mail (``local@domain``): the whole address lower-cased (after case folding); nothing else changed.
    * Phone number (optional ``+``, then at least 7 digits with spaces, dots, dashes, brackets or slashes):
      separators removed; a leading ``00`` becomes ``+``; a leading ``+`` is kept. Numbers are not
      re-written between national and international form: both sides must use the same convention
      (the simulator and most CRMs store E.164, ``+447700900123``).
    * Anything else: the trimmed, case-folded text.
    """
    text = unicodedata.normalize("NFKC", raw).strip().casefold()
    if _EMAIL.match(text):
        return text
    if _PHONE_CHARS.match(text):
        digits = re.sub(r"[^0-9]", "", text)
        if text.startswith("+"):
            return "+" + digits
        if digits.startswith("00"):
            return "+" + digits[2:]
        return digits
    return text


def job_salt(job_id: str, bank_nonce: bytes, platform_nonce: bytes) -> bytes:
    h = hashlib.sha256()
    for part in (b"fedprofile/psi/v1/salt", job_id.encode(), bank_nonce, platform_nonce):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


# ---------------------------------------------------------------------------- the kernels ----
# Module-level functions: they run in the worker processes.


def _check_chunk(ids: list[str]) -> tuple[bytes, int]:
    """8-byte digests of the normalised IDs (for the duplicate check) and the first empty row, or -1."""
    out = bytearray()
    empty = -1
    for row, raw in enumerate(ids):
        value = normalise_id(str(raw)).encode()
        if not value and empty < 0:
            empty = row
        out += hashlib.blake2b(value, digest_size=8).digest()
    return bytes(out), empty


def _hash_blind_chunk(secret: bytes, salt: bytes, ids: list[str]) -> bytes:
    key = X25519PrivateKey.from_private_bytes(secret)
    prefix = hashlib.sha256(DOMAIN + salt)
    out = bytearray()
    for raw in ids:
        h = prefix.copy()
        h.update(normalise_id(str(raw)).encode())
        out += _exchange(key, h.digest())
    return bytes(out)


def _blind_chunk(secret: bytes, points: bytes) -> bytes:
    key = X25519PrivateKey.from_private_bytes(secret)
    out = bytearray()
    for i in range(0, len(points), POINT):
        out += _exchange(key, points[i:i + POINT])
    return bytes(out)


def _exchange(key: X25519PrivateKey, point: bytes) -> bytes:
    try:
        return key.exchange(X25519PublicKey.from_public_bytes(point))
    except ValueError:
        # A low-order input gives the all-zero output, which cryptography refuses. An honest hash hits one
        # of the few such points with probability ~2^-250; a peer sending one is refused.
        raise ProtocolError("a point of small order was received; refusing it") from None


class Pending:
    """Bytes being computed by pool workers, in parts; ``result()`` joins them in order."""

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
    """One party's secret scalar and a process pool that uses every core.

    The ``*_async`` methods queue work on the pool and return at once, so a party can compute its next
    batch while it waits for the peer.
    """

    def __init__(self, workers: int | None = None, *, min_chunk: int = 2_000) -> None:
        self.secret = secrets.token_bytes(POINT)
        self.workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
        self.min_chunk = min_chunk
        self._pool: ProcessPoolExecutor | None = None

    def _pool_for(self, n: int) -> ProcessPoolExecutor | None:
        if self.workers == 1 or n < 2 * self.min_chunk:
            return None
        if self._pool is None:
            # forkserver, not fork: the nodes run gRPC threads, and forking a threaded process is unsafe.
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("forkserver"))
        return self._pool

    def _bounds(self, n: int, most: int | None = None) -> list[tuple[int, int]]:
        size = max(self.min_chunk, -(-n // self.workers))
        size = min(size, most) if most else size
        return [(i, min(i + size, n)) for i in range(0, n, size)]

    def check_ids(self, ids: Sequence[str]) -> None:
        """Refuse an empty side, empty IDs and IDs equal after normalisation, naming rows (never IDs)."""
        n = len(ids)
        if n == 0:
            raise PsiError("this party has no IDs: an empty side cannot take part in PSI")
        pool = self._pool_for(n)
        if pool is None:
            parts = [_check_chunk(list(ids))]
            offsets = [0]
        else:
            bounds = self._bounds(n, most=100_000)  # bounded chunks: each worker holds few IDs at a time
            parts = list(pool.map(_check_chunk, (list(ids[lo:hi]) for lo, hi in bounds)))
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
        pool = self._pool_for(len(ids))
        if pool is None:
            return Pending(_hash_blind_chunk(self.secret, salt, ids))
        return Pending([pool.submit(_hash_blind_chunk, self.secret, salt, ids[lo:hi])
                        for lo, hi in self._bounds(len(ids))])

    def blind_async(self, points: bytes) -> Pending:
        """``secret * P`` for each 32-byte point, in order."""
        if len(points) % POINT:
            raise ProtocolError(f"points must be a multiple of {POINT} bytes, got {len(points)}")
        n = len(points) // POINT
        pool = self._pool_for(n)
        if pool is None:
            return Pending(_blind_chunk(self.secret, points))
        return Pending([pool.submit(_blind_chunk, self.secret, points[lo * POINT:hi * POINT])
                        for lo, hi in self._bounds(n)])

    def close(self) -> None:
        self.secret = b""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def as_points(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=f"V{POINT}")


def content_hash(sorted_points: np.ndarray) -> str:
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
        self._points = np.empty(0 if spill_dir is not None and size >= SPILL_AT else size, dtype=f"V{POINT}")
        if spill_dir is not None and size >= SPILL_AT:
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
        view = np.frombuffer(self._map, dtype=f"V{POINT}")
        view[where] = as_points(data)
        del view
        # A shared file mapping: the data stays in the page cache and reaches the file; only our resident
        # set shrinks.
        self._map.madvise(mmap.MADV_DONTNEED)

    def _chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first slot, values) over the whole store, a bounded chunk at a time."""
        if self._map is None:
            yield 0, self._points
            return
        with open(self._path, "rb") as f:
            for lo in range(0, self.size, self.READ_CHUNK):
                yield lo, np.fromfile(f, dtype=f"V{POINT}", count=min(self.READ_CHUNK, self.size - lo))

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
        out = np.empty(len(rows), dtype=f"V{POINT}")
        order = np.argsort(rows, kind="stable")
        wanted = rows[order]
        for lo, chunk in self._chunks():
            a, b = np.searchsorted(wanted, [lo, lo + len(chunk)])
            out[order[a:b]] = chunk[wanted[a:b] - lo]
        return out

    def close(self) -> None:
        self._points = np.empty(0, dtype=f"V{POINT}")
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


# ------------------------------------------------------------------------------- results ----


@dataclass
class PsiResult:
    mode: str
    size: int
    ids: list[str] | None  # the intersection in the agreed order; None where this party learns only the size
    content_hash: str
    own_count: int
    peer_count: int
    seconds: float


def _matches(own: PointStore, peer: PointStore) -> tuple[np.ndarray, np.ndarray]:
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
        return candidates, np.empty(0, dtype=f"V{POINT}")
    values = own.take(candidates)
    if np.any(sorted_keys[1:] == sorted_keys[:-1]):
        # Two peer values share a prefix (about N*M/2^64 odds): compare the candidates on whole values.
        hit = np.isin(values, peer.take(np.arange(peer.size)), assume_unique=True)
    else:
        hit = values == peer.take(peer_order[pos[candidates]])
    return candidates[hit], values[hit]


def _members(own: PointStore, peer: PointStore, ids: Sequence[str]) -> tuple[list[str], str]:
    """Own IDs whose doubly blinded value the peer also has, sorted by that value; and the content hash."""
    rows, values = _matches(own, peer)
    order = np.argsort(values, kind="stable")
    return [ids[r] for r in rows[order].tolist()], content_hash(values[order])


def _batches(n: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def exchange_rounds(bank_batches: int, platform_batches: int, mode: str) -> int:
    """How many ``psi.exchange`` steps a run takes: in mode "both" the platform's batch k comes back
    doubly blinded in exchange k + 1, so the last one may need an exchange of its own."""
    return max(bank_batches, platform_batches + 1 if mode == "both" else platform_batches)


def _points_field(message: Message, field: str, count: int, what: str) -> bytes:
    value = message.get(field)
    if not isinstance(value, bytes) or len(value) != count * POINT:
        raise ProtocolError(f"{what} must hold {count} points")
    return value


# ------------------------------------------------------------------------------ the bank ----


def run_bank_psi(peer: Peer, job_id: str, ids: Sequence[str], *, mode: str = "both", batch_size: int = 50_000,
                 workers: int | None = None, spill_dir: Path | str | None = None,
                 progress: Progress | None = None) -> PsiResult:
    """Run PSI as the bank against the platform behind ``peer``.

    ``ids`` are the bank's raw IDs in file order; the result's ``ids`` are the same raw strings.
    ``spill_dir``: where doubly blinded values go (memory-mapped, deleted afterwards) for large sets.
    """
    if mode not in MODES:
        raise PsiError(f"unknown PSI mode {mode!r}; use one of {', '.join(MODES)}")
    if batch_size < 1:
        raise PsiError("batch_size must be positive")
    started = time.monotonic()
    n = len(ids)
    blinder = Blinder(workers)
    stores: list[PointStore] = []
    try:
        blinder.check_ids(ids)
        channel = peer.open("psi", job_id, {"version": VERSION, "mode": mode, "batch_size": batch_size})
    except BaseException:
        blinder.close()
        raise
    try:
        nonce = secrets.token_bytes(32)
        hello = channel.call("psi.hello", {"bank_nonce": nonce, "bank_size": n})
        platform_nonce, m = hello.get("platform_nonce"), hello.get("platform_size")
        if not isinstance(platform_nonce, bytes) or len(platform_nonce) != 32 or not isinstance(m, int) or m < 1:
            raise ProtocolError("malformed psi.hello reply")
        salt = job_salt(job_id, nonce, platform_nonce)
        own_double, platform_double = PointStore(n, spill_dir), PointStore(m, spill_dir)
        stores += [own_double, platform_double]

        perm = np.random.default_rng(secrets.randbits(64)).permutation(n)
        own_batches, platform_batches = _batches(n, batch_size), _batches(m, batch_size)

        def own_points(k: int) -> Pending:
            lo, hi = own_batches[k]
            return blinder.hash_and_blind_async(salt, [ids[r] for r in perm[lo:hi].tolist()])

        ahead = own_points(0)
        blinding: Pending | None = None  # the platform's previous batch, being blinded by us
        for k in range(exchange_rounds(len(own_batches), len(platform_batches), mode)):
            message: Message = {"index": k}
            if k < len(own_batches):
                message["points"] = ahead.result()
                if k + 1 < len(own_batches):
                    ahead = own_points(k + 1)
            if blinding is not None:
                double = blinding.result()
                lo, hi = platform_batches[k - 1]
                platform_double.write(slice(lo, hi), double)
                if mode == "both":
                    message["platform_double"] = double
                blinding = None
                if progress:
                    progress("psi: platform points", hi, m)
            reply = channel.call("psi.exchange", message)
            if k < len(own_batches):
                lo, hi = own_batches[k]
                if mode != "cardinality":
                    double = _points_field(reply, "double", hi - lo, f"psi.exchange {k} reply")
                    own_double.write(perm[lo:hi], double)
                if progress:
                    progress("psi: bank points", hi, n)
            if k < len(platform_batches):
                lo, hi = platform_batches[k]
                blinding = blinder.blind_async(_points_field(reply, "points", hi - lo, f"psi.exchange {k} reply"))
        if blinding is not None:  # bank_only and cardinality: the platform's last batch was never sent back
            lo, hi = platform_batches[-1]
            platform_double.write(slice(lo, hi), blinding.result())

        if mode == "cardinality":
            shuffled = platform_double.take(np.random.default_rng(secrets.randbits(64)).permutation(m))
            for k, (lo, hi) in enumerate(_batches(m, batch_size)):
                channel.call("psi.cardinality_batch", {"index": k, "double": shuffled[lo:hi].tobytes()})
            del shuffled
            reply = channel.call("psi.finish", {})
            size = reply.get("size")
            if not isinstance(size, int) or not 0 <= size <= min(n, m):
                raise ProtocolError("malformed psi.finish reply")
            result = PsiResult(mode, size, None, "", n, m, 0.0)
        else:
            members, digest = _members(own_double, platform_double, ids)
            reply = channel.call("psi.finish", {"size": len(members), "content_hash": digest})
            if reply.get("size") != len(members) or (mode == "both" and reply.get("content_hash") != digest):
                raise ProtocolError("the platform computed a different intersection; alignment not stored")
            result = PsiResult(mode, len(members), members, digest, n, m, 0.0)
        result.seconds = time.monotonic() - started
        channel.close()
        return result
    except BaseException:
        channel.close()
        raise
    finally:
        blinder.close()
        for store in stores:
            store.close()


# -------------------------------------------------------------------------- the platform ----


class PlatformPsiHandler:
    """The platform's side of one PSI session. ``result`` is set after ``psi.finish``."""

    def __init__(self, job_id: str, params: Message, ids: Sequence[str], *, workers: int | None = None,
                 spill_dir: Path | str | None = None, progress: Progress | None = None) -> None:
        if params.get("version") != VERSION:
            raise ProtocolError(f"PSI version {params.get('version')!r} is not supported (this node: {VERSION})")
        mode = params.get("mode")
        if mode not in MODES:
            raise ProtocolError(f"unknown PSI mode {mode!r}")
        batch_size = params.get("batch_size")
        if not isinstance(batch_size, int) or not 1 <= batch_size <= 1_000_000:
            raise ProtocolError("batch_size must be an integer between 1 and 1,000,000")
        self.job_id, self.mode, self.batch_size = job_id, str(mode), batch_size
        self.ids = ids
        self.m = len(ids)
        self.blinder = Blinder(workers)
        try:
            self.blinder.check_ids(ids)
        except PsiError as err:
            self.blinder.close()
            raise ProtocolError(f"platform data: {err}") from err
        self.spill_dir = spill_dir
        self.progress = progress
        self.started = time.monotonic()
        self.expected = "psi.hello"
        self.salt = b""
        self.n = 0
        self.round = 0
        self.rounds = 0
        self.perm = np.random.default_rng(secrets.randbits(64)).permutation(self.m)
        self.own_batches = _batches(self.m, batch_size)
        self.bank_batches: list[tuple[int, int]] = []
        self.ahead: dict[int, Pending] = {}
        self.stores: list[PointStore] = []
        self.own_double: PointStore | None = None  # mode "both": a*b*H(y) for our rows
        self.bank_double: PointStore | None = None  # modes "both" and "cardinality": b*a*H(x), bank's order
        self.cardinality_double: PointStore | None = None
        self.cardinality_batches = 0
        self.received_double = 0
        self.result: PsiResult | None = None

    def _need(self, step: str, *allowed: str) -> None:
        if step not in allowed:
            raise ProtocolError(f"PSI step {step!r} is out of order (expected {' or '.join(allowed)})")

    def _index(self, message: Message, expected: int) -> None:
        if message.get("index") != expected:
            raise ProtocolError(f"batch {message.get('index')!r} arrived where batch {expected} was expected")

    def _store(self, size: int) -> PointStore:
        store = PointStore(size, self.spill_dir)
        self.stores.append(store)
        return store

    def _queue_own(self, k: int) -> None:
        if k < len(self.own_batches) and k not in self.ahead:
            lo, hi = self.own_batches[k]
            self.ahead[k] = self.blinder.hash_and_blind_async(
                self.salt, [self.ids[r] for r in self.perm[lo:hi].tolist()])

    def handle(self, step: str, message: Message) -> Message:
        if self.result is not None:
            raise ProtocolError("this PSI session has finished")
        if step == "psi.hello":
            self._need(step, self.expected)
            nonce, n = message.get("bank_nonce"), message.get("bank_size")
            if not isinstance(nonce, bytes) or len(nonce) != 32 or not isinstance(n, int) or n < 1:
                raise ProtocolError("malformed psi.hello")
            platform_nonce = secrets.token_bytes(32)
            self.salt = job_salt(self.job_id, nonce, platform_nonce)
            self.n = n
            self.bank_batches = _batches(n, self.batch_size)
            self.rounds = exchange_rounds(len(self.bank_batches), len(self.own_batches), self.mode)
            if self.mode == "both":
                self.own_double = self._store(self.m)
            if self.mode != "bank_only":
                self.bank_double = self._store(n)
            for k in range(LOOKAHEAD):
                self._queue_own(k)
            self.expected = "psi.exchange"
            return {"platform_nonce": platform_nonce, "platform_size": self.m}
        if step == "psi.exchange":
            self._need(step, self.expected)
            return self._exchange(message)
        if step == "psi.cardinality_batch":
            self._need(step, self.expected)
            assert self.cardinality_double is not None
            self._index(message, self.cardinality_batches)
            lo, hi = self.own_batches[self.cardinality_batches]
            double = _points_field(message, "double", hi - lo, "psi.cardinality_batch")
            self.cardinality_double.write(slice(lo, hi), double)
            self.cardinality_batches += 1
            if self.cardinality_batches == len(self.own_batches):
                self.expected = "psi.finish"
            return {}
        if step == "psi.finish":
            self._need(step, self.expected)
            return self._finish(message)
        raise ProtocolError(f"unknown PSI step {step!r}")

    def _exchange(self, message: Message) -> Message:
        k = self.round
        self._index(message, k)
        blinding = None
        if k < len(self.bank_batches):
            lo, hi = self.bank_batches[k]
            blinding = self.blinder.blind_async(_points_field(message, "points", hi - lo, f"bank batch {k}"))
        elif "points" in message:
            raise ProtocolError(f"exchange {k} carries bank points after the last bank batch")
        if self.mode == "both" and 1 <= k <= len(self.own_batches):
            assert self.own_double is not None
            lo, hi = self.own_batches[k - 1]
            double = _points_field(message, "platform_double", hi - lo, f"exchange {k}'s platform_double")
            self.own_double.write(self.perm[lo:hi], double)
            self.received_double = hi
        elif "platform_double" in message:
            raise ProtocolError(f"exchange {k} carries doubly blinded platform points it should not")
        reply: Message = {}
        if k < len(self.own_batches):
            self._queue_own(k)
            reply["points"] = self.ahead.pop(k).result()
            self._queue_own(k + LOOKAHEAD)
        if blinding is not None:
            lo, hi = self.bank_batches[k]
            double = blinding.result()
            if self.bank_double is not None:
                self.bank_double.write(slice(lo, hi), double)
            if self.mode != "cardinality":
                reply["double"] = double
            if self.progress:
                self.progress("psi: bank points", hi, self.n)
        self.round += 1
        if self.round == self.rounds:
            if self.mode == "cardinality":
                self.cardinality_double = self._store(self.m)
                self.expected = "psi.cardinality_batch"
            else:
                self.expected = "psi.finish"
        return reply

    def _finish(self, message: Message) -> Message:
        elapsed = lambda: time.monotonic() - self.started  # noqa: E731
        if self.mode == "cardinality":
            assert self.bank_double is not None and self.cardinality_double is not None
            size = len(_matches(self.cardinality_double, self.bank_double)[0])
            self.result = PsiResult(self.mode, size, None, "", self.m, self.n, elapsed())
            return {"size": size}
        size, digest = message.get("size"), message.get("content_hash")
        if not isinstance(size, int) or not isinstance(digest, str):
            raise ProtocolError("malformed psi.finish")
        if self.mode == "bank_only":
            # We learn only the size the bank reports; we cannot check it, and cannot link it to our users.
            self.result = PsiResult(self.mode, size, None, digest, self.m, self.n, elapsed())
            return {"size": size}
        assert self.own_double is not None and self.bank_double is not None
        if self.received_double != self.m:
            raise ProtocolError("the bank has not returned every doubly blinded platform point")
        members, own_digest = _members(self.own_double, self.bank_double, self.ids)
        if len(members) != size or own_digest != digest:
            raise ProtocolError("the two sides computed different intersections; nothing stored")
        self.result = PsiResult(self.mode, size, members, own_digest, self.m, self.n, elapsed())
        return {"size": size, "content_hash": own_digest}

    def close(self) -> None:
        for pending in self.ahead.values():
            pending.cancel()
        self.ahead.clear()
        self.blinder.close()
        for store in self.stores:
            store.close()


def make_platform_psi_handler(job_id: str, params: Message, ids: Sequence[str], *, workers: int | None = None,
                              spill_dir: Path | str | None = None,
                              progress: Progress | None = None) -> PlatformPsiHandler:
    """The node's SessionFactory calls this when the bank opens a ``psi`` session."""
    return PlatformPsiHandler(job_id, params, ids, workers=workers, spill_dir=spill_dir, progress=progress)
