"""Private set intersection: ECDH over X25519, driven by the bank, in batches, over a PeerChannel.

Math. Each ID is normalised (:func:`normalise_id`), hashed with a job salt and a domain tag to a 32-byte
X25519 u-coordinate ``H(x)``; each party multiplies by its own fresh secret scalar with
``cryptography``'s X25519 (clamped scalars; scalar multiplication on u-coordinates commutes, and both the
curve and its twist are secure, so any 32-byte hash is a valid input). ``a*b*H(x) == b*a*H(y)`` iff
``x == y`` (up to SHA-256 collisions). Neither party ever sends an ID or a plain hash of one: only
``a*H(x)``, ``b*H(y)`` and doubly blinded values.

Steps (bank = a, platform = b; each side shuffles what it sends):

1. ``psi.hello``: nonces from both sides give the job salt; set sizes are exchanged.
2. ``psi.bank_batch`` (i = 0, 1, ...): the bank sends ``a*H(x)``; the platform computes ``b*a*H(x)`` and,
   except in cardinality mode, returns them in the same order, so the bank knows its own doubly blinded
   values. In "both" and "cardinality" modes the platform keeps the set (it cannot link it to IDs).
3. ``psi.platform_batch`` (i): the platform sends ``b*H(y)``; the bank computes ``a*b*H(y)``.
   In "both" mode the bank returns them in order (``psi.platform_double``) so the platform can find its
   own members. In "cardinality" mode the bank returns them shuffled across the whole set, after the
   last batch, so the platform can only count.
4. ``psi.finish``: sizes and the content hash are compared; both sides must agree.

Output modes: ``both`` (each learns the intersection), ``bank_only`` (the platform learns only the
size), ``cardinality`` (both learn only the size). The agreed order of the intersection is the order
of the doubly blinded values, which both sides hold without revealing anything else; the content hash
is SHA-256 over that sorted list, so the two nodes can compare alignments.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import re
import secrets
import time
import unicodedata
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from protocols.channel import Message, Peer, ProtocolError

PsiMode = Literal["both", "bank_only", "cardinality"]
MODES: tuple[str, ...] = ("both", "bank_only", "cardinality")
VERSION = "psi-x25519-v1"
POINT = 32
DOMAIN = b"fedprofile/psi/v1/id-to-point\x00"
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


def normalise_ids(ids: Sequence[str]) -> list[str]:
    """Normalise and check: no empty IDs, no two rows that become the same ID. Errors name rows, not IDs."""
    if len(ids) == 0:
        raise PsiError("this party has no IDs: an empty side cannot take part in PSI")
    out = [normalise_id(str(x)) for x in ids]
    seen: dict[str, int] = {}
    for row, value in enumerate(out):
        if not value:
            raise PsiError(f"row {row + 1}: empty ID after normalisation")
        first = seen.setdefault(value, row)
        if first != row:
            raise PsiError(f"rows {first + 1} and {row + 1} hold the same ID after normalisation "
                           "(trim, case, phone/e-mail forms); de-duplicate the file")
    return out


def job_salt(job_id: str, bank_nonce: bytes, platform_nonce: bytes) -> bytes:
    h = hashlib.sha256()
    for part in (b"fedprofile/psi/v1/salt", job_id.encode(), bank_nonce, platform_nonce):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


# ---------------------------------------------------------------------------- the kernels ----


def _hash_blind_chunk(secret: bytes, salt: bytes, ids: list[str]) -> bytes:
    key = X25519PrivateKey.from_private_bytes(secret)
    prefix = hashlib.sha256(DOMAIN + salt)
    out = bytearray()
    for value in ids:
        h = prefix.copy()
        h.update(value.encode())
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


class Blinder:
    """One party's secret scalar and a process pool that uses every core."""

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

    def _chunk(self, n: int) -> int:
        return max(self.min_chunk, -(-n // self.workers))

    def hash_and_blind(self, salt: bytes, ids: Sequence[str]) -> bytes:
        """``secret * H(salt, id)`` for each ID, as 32 bytes each, in order."""
        ids = list(ids)
        pool = self._pool_for(len(ids))
        if pool is None:
            return _hash_blind_chunk(self.secret, salt, ids)
        size = self._chunk(len(ids))
        parts = [ids[i:i + size] for i in range(0, len(ids), size)]
        return b"".join(pool.map(_hash_blind_chunk, [self.secret] * len(parts), [salt] * len(parts), parts))

    def blind(self, points: bytes) -> bytes:
        """``secret * P`` for each 32-byte point, in order."""
        if len(points) % POINT:
            raise ProtocolError(f"points must be a multiple of {POINT} bytes, got {len(points)}")
        n = len(points) // POINT
        pool = self._pool_for(n)
        if pool is None:
            return _blind_chunk(self.secret, points)
        step = self._chunk(n) * POINT
        parts = [points[i:i + step] for i in range(0, len(points), step)]
        return b"".join(pool.map(_blind_chunk, [self.secret] * len(parts), parts))

    def close(self) -> None:
        self.secret = b""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def as_points(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=f"V{POINT}")


def content_hash(sorted_points: np.ndarray) -> str:
    return hashlib.sha256(VERSION.encode() + sorted_points.tobytes()).hexdigest()


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


def _members(own_double: np.ndarray, peer_double: np.ndarray, ids: Sequence[str]) -> tuple[list[str], str]:
    """Own IDs whose doubly blinded value the peer also has, sorted by that value; and the content hash."""
    mask = np.isin(own_double, peer_double, assume_unique=True)
    rows = np.flatnonzero(mask)
    order = np.argsort(own_double[rows], kind="stable")
    rows = rows[order]
    return [ids[r] for r in rows], content_hash(own_double[rows])


def _batches(n: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(i + size, n)) for i in range(0, n, size)]


# ------------------------------------------------------------------------------ the bank ----


def run_bank_psi(peer: Peer, job_id: str, ids: Sequence[str], *, mode: str = "both", batch_size: int = 50_000,
                 workers: int | None = None, spill_dir: object = None,
                 progress: Progress | None = None) -> PsiResult:
    """Run PSI as the bank against the platform behind ``peer``.

    ``ids`` are the bank's raw IDs in file order; the result's ``ids`` are the same raw strings.
    ``spill_dir`` is accepted for the node's sake; the working set is ~100 bytes per ID held in numpy
    arrays (no per-ID Python objects beyond the ID list itself), see docs/protocol.md.
    """
    if mode not in MODES:
        raise PsiError(f"unknown PSI mode {mode!r}; use one of {', '.join(MODES)}")
    if batch_size < 1:
        raise PsiError("batch_size must be positive")
    started = time.monotonic()
    normal = normalise_ids(ids)
    n = len(normal)
    blinder = Blinder(workers)
    channel = peer.open("psi", job_id, {"version": VERSION, "mode": mode, "batch_size": batch_size})
    try:
        nonce = secrets.token_bytes(32)
        hello = channel.call("psi.hello", {"bank_nonce": nonce, "bank_size": n})
        platform_nonce, m = hello.get("platform_nonce"), hello.get("platform_size")
        if not isinstance(platform_nonce, bytes) or len(platform_nonce) != 32 or not isinstance(m, int) or m < 1:
            raise ProtocolError("malformed psi.hello reply")
        salt = job_salt(job_id, nonce, platform_nonce)

        # Phase A: our singly blinded points, in a random order; the platform blinds them again.
        perm = np.random.default_rng(secrets.randbits(64)).permutation(n)
        own_double = np.empty(n, dtype=f"V{POINT}")
        for k, (lo, hi) in enumerate(_batches(n, batch_size)):
            rows = perm[lo:hi]
            points = blinder.hash_and_blind(salt, [normal[r] for r in rows])
            reply = channel.call("psi.bank_batch", {"index": k, "points": points})
            if mode != "cardinality":
                double = reply.get("double")
                if not isinstance(double, bytes) or len(double) != len(points):
                    raise ProtocolError("psi.bank_batch reply has the wrong size")
                own_double[rows] = as_points(double)
            if progress:
                progress("psi: bank points", hi, n)

        # Phase B: the platform's singly blinded points; we blind them again.
        platform_double = np.empty(m, dtype=f"V{POINT}")
        got = 0
        for k, (lo, hi) in enumerate(_batches(m, batch_size)):
            reply = channel.call("psi.platform_batch", {"index": k})
            points = reply.get("points")
            if not isinstance(points, bytes) or len(points) != (hi - lo) * POINT:
                raise ProtocolError("psi.platform_batch reply has the wrong size")
            double = blinder.blind(points)
            platform_double[lo:hi] = as_points(double)
            got = hi
            if mode == "both":
                channel.call("psi.platform_double", {"index": k, "double": double})
            if progress:
                progress("psi: platform points", hi, m)
        if got != m:
            raise ProtocolError("the platform sent fewer points than it announced")

        if mode == "cardinality":
            shuffled = platform_double[np.random.default_rng(secrets.randbits(64)).permutation(m)]
            for k, (lo, hi) in enumerate(_batches(m, batch_size)):
                channel.call("psi.cardinality_batch", {"index": k, "double": shuffled[lo:hi].tobytes()})
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


# -------------------------------------------------------------------------- the platform ----


class PlatformPsiHandler:
    """The platform's side of one PSI session. ``result`` is set after ``psi.finish``."""

    def __init__(self, job_id: str, params: Message, ids: Sequence[str], *, workers: int | None = None,
                 progress: Progress | None = None) -> None:
        if params.get("version") != VERSION:
            raise ProtocolError(f"PSI version {params.get('version')!r} is not supported (this node: {VERSION})")
        mode = params.get("mode")
        if mode not in MODES:
            raise ProtocolError(f"unknown PSI mode {mode!r}")
        batch_size = params.get("batch_size")
        if not isinstance(batch_size, int) or not 1 <= batch_size <= 1_000_000:
            raise ProtocolError("batch_size must be an integer between 1 and 1,000,000")
        self.job_id, self.mode, self.batch_size = job_id, str(mode), batch_size
        self.raw_ids = ids
        try:
            self.normal = normalise_ids(ids)
        except PsiError as err:
            raise ProtocolError(f"platform data: {err}") from err
        self.m = len(self.normal)
        self.blinder = Blinder(workers)
        self.progress = progress
        self.started = time.monotonic()
        self.expected = "psi.hello"
        self.salt = b""
        self.n = 0
        self.bank_batches = self.platform_batches = 0
        self.perm = np.random.default_rng(secrets.randbits(64)).permutation(self.m)
        self.bank_double: list[bytes] = []
        self.own_double = np.empty(self.m, dtype=f"V{POINT}")
        self.cardinality_double: list[bytes] = []
        self.received_double = 0
        self.result: PsiResult | None = None

    def _need(self, step: str, *allowed: str) -> None:
        if step not in allowed:
            raise ProtocolError(f"PSI step {step!r} is out of order (expected {' or '.join(allowed)})")

    def _index(self, message: Message, expected: int) -> None:
        if message.get("index") != expected:
            raise ProtocolError(f"batch {message.get('index')!r} arrived where batch {expected} was expected")

    def handle(self, step: str, message: Message) -> Message:
        if self.result is not None:
            raise ProtocolError("this PSI session has finished")
        n_bank_batches = -(-self.n // self.batch_size) if self.n else 0
        n_platform_batches = -(-self.m // self.batch_size)
        if step == "psi.hello":
            self._need(step, self.expected)
            nonce, n = message.get("bank_nonce"), message.get("bank_size")
            if not isinstance(nonce, bytes) or len(nonce) != 32 or not isinstance(n, int) or n < 1:
                raise ProtocolError("malformed psi.hello")
            platform_nonce = secrets.token_bytes(32)
            self.salt = job_salt(self.job_id, nonce, platform_nonce)
            self.n = n
            self.expected = "psi.bank_batch"
            return {"platform_nonce": platform_nonce, "platform_size": self.m}
        if step == "psi.bank_batch":
            self._need(step, "psi.bank_batch")
            if self.expected != "psi.bank_batch" or self.bank_batches >= n_bank_batches:
                raise ProtocolError("unexpected bank batch")
            self._index(message, self.bank_batches)
            points = message.get("points")
            want = min(self.batch_size, self.n - self.bank_batches * self.batch_size)
            if not isinstance(points, bytes) or len(points) != want * POINT:
                raise ProtocolError(f"bank batch {self.bank_batches} must hold {want} points")
            double = self.blinder.blind(points)
            self.bank_batches += 1
            if self.bank_batches == n_bank_batches:
                self.expected = "psi.platform_batch"
            if self.progress:
                self.progress("psi: bank points", min(self.bank_batches * self.batch_size, self.n), self.n)
            if self.mode != "bank_only":
                self.bank_double.append(double)
            return {} if self.mode == "cardinality" else {"double": double}
        if step == "psi.platform_batch":
            self._need(self.expected, "psi.platform_batch")
            self._index(message, self.platform_batches)
            if self.platform_batches >= n_platform_batches:
                raise ProtocolError("no more platform batches")
            lo = self.platform_batches * self.batch_size
            hi = min(lo + self.batch_size, self.m)
            points = self.blinder.hash_and_blind(self.salt, [self.normal[r] for r in self.perm[lo:hi]])
            self.platform_batches += 1
            if self.mode == "both":
                self.expected = "psi.platform_double"
            elif self.platform_batches == n_platform_batches:
                self.expected = "psi.cardinality_batch" if self.mode == "cardinality" else "psi.finish"
            return {"points": points}
        if step == "psi.platform_double":
            self._need(self.expected, "psi.platform_double")
            self._index(message, self.platform_batches - 1)
            lo = (self.platform_batches - 1) * self.batch_size
            hi = min(lo + self.batch_size, self.m)
            double = message.get("double")
            if not isinstance(double, bytes) or len(double) != (hi - lo) * POINT:
                raise ProtocolError("psi.platform_double has the wrong size")
            self.own_double[self.perm[lo:hi]] = as_points(double)
            self.received_double = hi
            self.expected = "psi.platform_batch" if self.platform_batches < n_platform_batches else "psi.finish"
            return {}
        if step == "psi.cardinality_batch":
            self._need(self.expected, "psi.cardinality_batch")
            self._index(message, len(self.cardinality_double))
            double = message.get("double")
            lo = len(self.cardinality_double) * self.batch_size
            want = min(self.batch_size, self.m - lo)
            if not isinstance(double, bytes) or len(double) != want * POINT:
                raise ProtocolError("psi.cardinality_batch has the wrong size")
            self.cardinality_double.append(double)
            if len(self.cardinality_double) == n_platform_batches:
                self.expected = "psi.finish"
            return {}
        if step == "psi.finish":
            self._need(self.expected, "psi.finish")
            return self._finish(message)
        raise ProtocolError(f"unknown PSI step {step!r}")

    def _finish(self, message: Message) -> Message:
        elapsed = lambda: time.monotonic() - self.started  # noqa: E731
        if self.mode == "cardinality":
            bank = as_points(b"".join(self.bank_double))
            theirs = as_points(b"".join(self.cardinality_double))
            size = int(np.isin(theirs, bank, assume_unique=True).sum())
            self.result = PsiResult(self.mode, size, None, "", self.m, self.n, elapsed())
            return {"size": size}
        size, digest = message.get("size"), message.get("content_hash")
        if not isinstance(size, int) or not isinstance(digest, str):
            raise ProtocolError("malformed psi.finish")
        if self.mode == "bank_only":
            # We learn only the size the bank reports; we cannot check it, and cannot link it to our users.
            self.result = PsiResult(self.mode, size, None, digest, self.m, self.n, elapsed())
            return {"size": size}
        members, own_digest = _members(self.own_double, as_points(b"".join(self.bank_double)), self.raw_ids)
        if len(members) != size or own_digest != digest:
            raise ProtocolError("the two sides computed different intersections; nothing stored")
        self.result = PsiResult(self.mode, size, members, own_digest, self.m, self.n, elapsed())
        return {"size": size, "content_hash": own_digest}

    def close(self) -> None:
        self.blinder.close()
        self.bank_double.clear()
        self.cardinality_double.clear()


def make_platform_psi_handler(job_id: str, params: Message, ids: Sequence[str], *, workers: int | None = None,
                              spill_dir: object = None, progress: Progress | None = None) -> PlatformPsiHandler:
    """The node's SessionFactory calls this when the bank opens a ``psi`` session."""
    return PlatformPsiHandler(job_id, params, ids, workers=workers, progress=progress)
