"""The platform's side of the OT-based PSI: KKRT's OPRF sender, a step handler for one session."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

import protocols.psi.ot.messages as wire
from protocols.channel import Message
from protocols.errors import ProtocolError
from protocols.psi.ids import job_salt
from protocols.psi.messages import (
    MAX_SET_SIZE,
    NONCE,
    PARAM_MODE,
    PARAM_VERSION,
    Progress,
    PsiError,
    PsiResult,
    read_count,
)
from protocols.psi.ot.bank import make_code
from protocols.psi.ot.baseot import BaseOtReceiver
from protocols.psi.ot.items import hash_items
from protocols.psi.ot.kkrt import HASHES, ROW, SenderMatrix, cuckoo_bins, output_bytes
from protocols.shuffle import secret_permutation

log = logging.getLogger(__name__)
OnResult = Callable[[PsiResult], None]
EVALUATION_THREADS = 2
QUEUED_BLOCKS = 16  # blocks (4 MiB of q rows each) received but not yet evaluated; the bank waits beyond this


class Prepared:
    """The platform's items, its (item, hash function) entries grouped by block of bins, and the secret order
    of its ``3M`` values. Entry ``e = h * M + row`` is item ``row`` under hash function ``h``; ``by_block``
    lists the entries block after block (``block_starts``), ``offsets`` the bin of each within its block
    (same order); ``src[p]`` is the entry whose value is sent at position ``p``."""

    def __init__(self, items: np.ndarray, table: np.ndarray, bins: int, src: np.ndarray) -> None:
        self.items = items
        index_type = src.dtype
        entry_bins = table.reshape(-1)  # entry e = h * M + row (a bin_table lists them in that order)
        block_type = np.uint16 if -(-bins // wire.BLOCK_BINS) <= 2**16 else np.uint32
        blocks = (entry_bins // wire.BLOCK_BINS).astype(block_type)
        self.by_block = np.argsort(blocks, kind="stable").astype(index_type)  # a radix sort for uint16
        counts = np.bincount(blocks, minlength=-(-bins // wire.BLOCK_BINS))
        del blocks
        self.block_starts = np.concatenate([[0], np.cumsum(counts)])
        self.offsets = (entry_bins[self.by_block] % wire.BLOCK_BINS).astype(np.uint16)  # BLOCK_BINS <= 2^16
        del entry_bins
        self.src = src

    def release(self) -> None:
        """Drop the arrays (the session is over)."""
        empty = np.empty(0, dtype=np.uint32)
        self.items, self.by_block, self.offsets, self.src = np.empty((0, 16), dtype=np.uint8), empty, empty, empty


def shuffle_for(total: int) -> np.ndarray:
    """The secret order of the platform's values: ``src[p]`` is the entry sent at position ``p``."""
    return secret_permutation(total, np.uint32 if total <= 2**32 else np.int64)


class PlatformOtPsiHandler:
    """The platform's side of one OT-based PSI session (a :class:`protocols.channel.StepHandler`).

    ``on_result`` is called exactly once, with this party's :class:`PsiResult`, right after a successful
    ``psi.finish`` and never if the session ends before that. Heavy work (hashing after ``psi.ot.hello``,
    evaluating each block of ``u`` rows) runs on one helper thread, so the bank computes meanwhile.
    """

    def __init__(self, job_id: str, params: Message, ids: Sequence[str], *, on_result: OnResult,
                 progress: Progress | None = None, max_bank_size: int = MAX_SET_SIZE, limit_name: str = "") -> None:
        version, mode = params.get(PARAM_VERSION), params.get(PARAM_MODE)
        if version != wire.VERSION:
            raise ProtocolError(f"PSI version {version!r} is not supported here (this handler: {wire.VERSION})")
        if mode not in wire.MODES:
            raise ProtocolError(f"PSI mode {mode!r} is not offered by the OT-based protocol "
                                f"({', '.join(wire.MODES)})")
        if len(ids) == 0:
            raise ProtocolError("platform data: this party has no IDs: an empty side cannot take part in PSI")
        self.job_id, self.mode, self.ids, self.m = job_id, str(mode), ids, len(ids)
        self.max_bank_size, self.limit_name = max_bank_size, limit_name
        self.progress = progress
        self._on_result = on_result
        self._result: PsiResult | None = None
        self.started = time.monotonic()
        self.expected = wire.HELLO
        self.n = 0
        self.bins = 0
        self.out_bytes = 0
        self.blocks: list[tuple[int, int]] = []
        self.value_batches: list[tuple[int, int]] = []
        self.received_blocks = 0
        self.sent_batches = 0
        self.member_batches = 0
        self.positions: list[np.ndarray] = []
        self.values: np.ndarray | None = None  # (3M, out_bytes): our OPRF values, entry e = h * M + row
        # Hashing runs on one thread; the shuffle and the evaluation of u blocks on a pool of two (numpy and
        # AES release the GIL, so they use a second core while the bank's node waits on us).
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="psi-ot-platform")
        self._pool = ThreadPoolExecutor(EVALUATION_THREADS, thread_name_prefix="psi-ot-evaluate")
        self._shuffle: Future[np.ndarray] | None = None
        self._stopped = threading.Event()
        self._prepared: Future[Prepared] | None = None
        self._evaluating: deque[Future[None]] = deque()
        self._matrix: SenderMatrix | None = None

    @property
    def result(self) -> PsiResult | None:
        return self._result

    def handle(self, step: str, message: Message) -> Message:
        if self._result is not None:
            raise ProtocolError("this PSI session has finished")
        steps = {wire.HELLO: self._hello, wire.EXTEND: self._extend, wire.VALUES: self._values,
                 wire.MEMBERS: self._members, wire.FINISH: self._finish}
        if step not in steps:
            raise ProtocolError(f"unknown PSI step {step!r}")
        allowed = {wire.HELLO: (wire.HELLO,), wire.EXTEND: (wire.EXTEND,), wire.VALUES: (wire.VALUES,),
                   wire.MEMBERS: (wire.MEMBERS, wire.FINISH), wire.FINISH: (wire.FINISH,)}[self.expected]
        if step not in allowed:
            raise ProtocolError(f"PSI step {step!r} is out of order (expected {' or '.join(allowed)})")
        return steps[step](message)

    def _index(self, message: Message, expected: int) -> None:
        if message.get(wire.INDEX) != expected:
            raise ProtocolError(f"batch {message.get(wire.INDEX)!r} arrived where batch {expected} was expected")

    def _hello(self, message: Message) -> Message:
        n = read_count(message.get(wire.BANK_SIZE), f"{wire.HELLO} bank_size")
        if n > self.max_bank_size:
            raise ProtocolError(f"{wire.HELLO}: the bank declares {n:,} IDs; this platform accepts at most "
                                f"{self.max_bank_size:,} per PSI" + (f" ({self.limit_name})" if self.limit_name else ""))
        bank_nonce = wire.bytes_field(message, wire.BANK_NONCE, NONCE, f"{wire.HELLO} bank_nonce")
        sender_point = wire.bytes_field(message, wire.BASE_OT_SENDER, 32, f"{wire.HELLO} base-OT point")
        self.n = n
        self.bins = cuckoo_bins(n)
        self.out_bytes = output_bytes(n, HASHES * self.m)
        self.blocks = [(lo, min(lo + wire.BLOCK_BINS, self.bins)) for lo in range(0, self.bins, wire.BLOCK_BINS)]
        self.value_batches = wire.value_batches(HASHES * self.m, self.out_bytes)
        # Hash and check our IDs while the bank does the same with its own (and while we run the base OTs);
        # nothing derived from them leaves before the checks pass.
        self._shuffle = self._pool.submit(shuffle_for, HASHES * self.m)
        self._prepared = self._worker.submit(self._prepare, wire.item_salt(self.job_id, bank_nonce))
        choice = secrets.token_bytes(ROW)
        bits = np.unpackbits(np.frombuffer(choice, dtype=np.uint8), bitorder="little").tolist()
        base = BaseOtReceiver(bits, sender_point)
        platform_nonce = secrets.token_bytes(NONCE)
        salt = job_salt(self.job_id, bank_nonce, platform_nonce)
        self._matrix = SenderMatrix(choice, base.keys(salt), make_code(salt, self.out_bytes))
        self.expected = wire.EXTEND
        log.debug("psi-ot platform: hello answered at %.2f s", time.monotonic() - self.started)
        return {wire.PLATFORM_NONCE: platform_nonce, wire.PLATFORM_SIZE: self.m,
                wire.BASE_OT_POINTS: base.points, wire.BASE_OT_SIGNS: base.signs}

    def _prepare(self, salt: bytes) -> Prepared:
        items, table = hash_items(salt, self.ids, self.bins, stop=self._stopped.is_set)
        log.debug("psi-ot platform: hashed at %.2f s", time.monotonic() - self.started)
        assert self._shuffle is not None
        prepared = Prepared(items, table, self.bins, self._shuffle.result())
        del table
        self.values = np.empty((HASHES * self.m, self.out_bytes), dtype=np.uint8)
        log.debug("psi-ot platform: prepared at %.2f s", time.monotonic() - self.started)
        return prepared

    def _ready(self) -> Prepared:
        assert self._prepared is not None
        try:
            return self._prepared.result()
        except PsiError as err:
            raise ProtocolError(f"platform data: {err}") from err

    def _evaluate(self, k: int, q: np.ndarray) -> None:
        """Our OPRF values for every (item, hash) whose bin is in block ``k`` (whose ``q`` rows are given),
        written at their positions."""
        prepared = self._ready()
        assert self._matrix is not None and self.values is not None
        lo, hi = prepared.block_starts[k], prepared.block_starts[k + 1]
        if lo == hi:
            return
        entries = prepared.by_block[lo:hi].astype(np.int64)
        values = self._matrix.evaluate(q[prepared.offsets[lo:hi]], prepared.items[entries % self.m])
        self.values[entries] = values  # in entry order; sent in the secret order (src) by psi.ot.values

    def _extend(self, message: Message) -> Message:
        k = self.received_blocks
        self._index(message, k)
        lo, hi = self.blocks[k]
        u = wire.rows_field(message, hi - lo, f"{wire.EXTEND} {k}")
        assert self._matrix is not None
        q = self._matrix.rows(u)  # in order: the column streams are read block after block
        while len(self._evaluating) >= QUEUED_BLOCKS:
            self._wait(self._evaluating.popleft())
        self._evaluating.append(self._pool.submit(self._evaluate, k, q))
        self.received_blocks += 1
        if self.progress:
            self.progress("psi: oblivious PRF", hi, self.bins)
        if self.received_blocks == len(self.blocks):
            self.expected = wire.VALUES
            log.debug("psi-ot platform: last block received at %.2f s", time.monotonic() - self.started)
        return {}

    def _wait(self, future: Future[None]) -> None:
        try:
            future.result()
        except PsiError as err:
            raise ProtocolError(f"platform data: {err}") from err

    def _values(self, message: Message) -> Message:
        k = self.sent_batches
        self._index(message, k)
        while self._evaluating:
            self._wait(self._evaluating.popleft())
            if not self._evaluating:
                log.debug("psi-ot platform: evaluated at %.2f s", time.monotonic() - self.started)
        assert self.values is not None
        lo, hi = self.value_batches[k]
        self.sent_batches += 1
        if self.sent_batches == len(self.value_batches):
            self.expected = wire.MEMBERS if self.mode == "both" else wire.FINISH
        return {wire.VALUES_FIELD: self.values[self._ready().src[lo:hi]].tobytes()}

    def _members(self, message: Message) -> Message:
        self._index(message, self.member_batches)
        positions = message.get(wire.POSITIONS)
        if (not isinstance(positions, np.ndarray) or positions.dtype != np.int64 or positions.ndim != 1
                or not 1 <= len(positions) <= wire.POSITIONS_PER_MESSAGE):
            raise ProtocolError(f"{wire.MEMBERS} {self.member_batches}: positions must be 1 to "
                                f"{wire.POSITIONS_PER_MESSAGE:,} int64 values")
        if positions.min() < 0 or positions.max() >= HASHES * self.m:
            raise ProtocolError(f"{wire.MEMBERS} {self.member_batches}: a position is outside 0..{HASHES * self.m - 1}")
        self.positions.append(positions)
        self.member_batches += 1
        return {}

    def _finish(self, message: Message) -> Message:
        size, digest = message.get(wire.SIZE), message.get(wire.CONTENT_HASH)
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= min(self.n, self.m) \
                or not isinstance(digest, str):
            raise ProtocolError(f"malformed {wire.FINISH}")
        if self.mode == "bank_only":
            # We learn only the size the bank reports; we cannot check it, and cannot link it to our users.
            return self._report(PsiResult(self.mode, size, None, digest, self.m, self.n, 0.0, "ot"), {wire.SIZE: size})
        if self.values is None:
            raise ProtocolError(f"{wire.FINISH}: this session already refused the bank's members; nothing stored")
        prepared = self._ready()
        positions = np.concatenate(self.positions) if self.positions else np.empty(0, dtype=np.int64)
        if len(positions) != size:
            raise ProtocolError(f"{wire.FINISH}: the bank reports {size} members but named {len(positions)}")
        self.positions = []
        entries = prepared.src[positions]
        values = self.values[entries]
        rows = entries.astype(np.int64) % self.m
        del entries
        self.values = None  # all the rest needs is in rows and values: drop the big arrays now
        prepared.release()
        if not wire.all_distinct(rows, self.m):
            raise ProtocolError(f"{wire.FINISH}: the bank named one platform ID twice; nothing stored")
        if not wire.strictly_ascending(values):
            raise ProtocolError(f"{wire.FINISH}: the bank's members are not in the agreed order; nothing stored")
        own_digest = wire.content_hash(values)
        if own_digest != digest:
            raise ProtocolError("the two sides computed different intersections; nothing stored")
        members = wire.take_ids(self.ids, rows)
        log.debug("psi-ot platform: finished at %.2f s", time.monotonic() - self.started)
        return self._report(PsiResult(self.mode, size, members, own_digest, self.m, self.n, 0.0, "ot"),
                            {wire.SIZE: size, wire.CONTENT_HASH: own_digest})

    def _report(self, result: PsiResult, reply: Message) -> Message:
        result.seconds = time.monotonic() - self.started
        self._result = result  # from here on every step is refused, so on_result cannot run twice
        self._on_result(result)
        return reply

    def close(self) -> None:
        self._stopped.set()
        for future in self._evaluating:
            future.cancel()
        self._worker.shutdown(wait=True, cancel_futures=True)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.values = None
        self._matrix = None


__all__ = ["PlatformOtPsiHandler"]
