"""The platform's side of PSI: a step handler for one session, answering the bank's steps in order."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path

import protocols.psi.messages as wire
from protocols.channel import Message
from protocols.compute import ComputeSpec
from protocols.errors import ProtocolError
from protocols.psi.ids import job_salt
from protocols.psi.kernel import Blinder, Pending
from protocols.psi.messages import (
    MAX_BATCH_SIZE,
    MAX_SET_SIZE,
    MODES,
    VERSION,
    Progress,
    PsiError,
    PsiResult,
    batches,
    exchange_rounds,
    points_field,
)
from protocols.psi.store import PointStore, intersection, match_rows
from protocols.shuffle import secret_permutation

LOOKAHEAD = 2  # platform batches blinded ahead of the bank's requests
OnResult = Callable[[PsiResult], None]


class PlatformPsiHandler:
    """The platform's side of one PSI session (a :class:`protocols.channel.StepHandler`).

    ``on_result`` is called exactly once, with this party's :class:`PsiResult`, right after a successful
    ``psi.finish`` (before its reply goes back), and never if the session ends before that. ``compute``:
    where the curve kernels run; the handler owns it and :meth:`close` closes it.
    """

    def __init__(self, job_id: str, params: Message, ids: Sequence[str], *, on_result: OnResult,
                 compute: ComputeSpec = None, spill_dir: Path | str | None = None,
                 progress: Progress | None = None, max_bank_size: int = MAX_SET_SIZE,
                 limit_name: str = "") -> None:
        self.blinder = Blinder(compute)
        self.max_bank_size, self.limit_name = max_bank_size, limit_name
        try:
            self.mode, self.batch_size = self._check_params(params)
            if len(ids) == 0:
                raise ProtocolError("platform data: this party has no IDs: an empty side cannot take part in PSI")
        except BaseException:
            self.blinder.close()
            raise
        self.job_id = job_id
        self.ids = ids
        self.m = len(ids)
        self.spill_dir = spill_dir
        self.progress = progress
        self._on_result = on_result
        self._result: PsiResult | None = None
        self.started = time.monotonic()
        self.expected = wire.HELLO
        self.salt = b""
        self.n = 0
        self.round = 0
        self.rounds = 0
        self.perm = secret_permutation(self.m)
        self.own_batches = batches(self.m, self.batch_size)
        self.bank_batches: list[tuple[int, int]] = []
        self.ahead: dict[int, Pending] = {}
        self.stores: list[PointStore] = []
        self.own_hashes: PointStore | None = None  # H(y) in our secret order, slot i for row perm[i]
        self.hashing: Future[None] | None = None  # hashing and checking our IDs, from psi.hello on
        self.own_double: PointStore | None = None  # mode "both": a*b*H(y) for our rows
        self.bank_double: PointStore | None = None  # modes "both" and "cardinality": b*a*H(x), bank's order
        self.cardinality_double: PointStore | None = None
        self.cardinality_batches = 0
        self.received_double = 0

    @staticmethod
    def _check_params(params: Message) -> tuple[str, int]:
        version = params.get(wire.PARAM_VERSION)
        if version != VERSION:
            raise ProtocolError(f"PSI version {version!r} is not supported (this node: {VERSION})")
        mode = params.get(wire.PARAM_MODE)
        if mode not in MODES:
            raise ProtocolError(f"unknown PSI mode {mode!r}")
        batch_size = params.get(wire.PARAM_BATCH_SIZE)
        batch_size = wire.read_count(batch_size, "batch_size", most=MAX_BATCH_SIZE)
        return str(mode), batch_size

    @property
    def result(self) -> PsiResult | None:
        """This party's result once ``psi.finish`` has succeeded (also handed to ``on_result``), else None."""
        return self._result

    def _need(self, step: str, *allowed: str) -> None:
        if step not in allowed:
            raise ProtocolError(f"PSI step {step!r} is out of order (expected {' or '.join(allowed)})")

    def _index(self, message: Message, expected: int) -> None:
        if message.get(wire.INDEX) != expected:
            raise ProtocolError(f"batch {message.get(wire.INDEX)!r} arrived where batch {expected} was expected")

    def _store(self, size: int) -> PointStore:
        store = PointStore(size, self.spill_dir)
        self.stores.append(store)
        return store

    def _hashed(self) -> PointStore:
        """Our hashes, once they are all computed and our IDs have passed the checks (else a ProtocolError)."""
        assert self.hashing is not None and self.own_hashes is not None
        try:
            self.hashing.result()
        except PsiError as err:
            raise ProtocolError(f"platform data: {err}") from err
        return self.own_hashes

    def _queue_own(self, k: int) -> None:
        if k < len(self.own_batches) and k not in self.ahead:
            self.ahead[k] = self.blinder.blind_async(self._hashed().read(*self.own_batches[k]))

    def handle(self, step: str, message: Message) -> Message:
        if self._result is not None:
            raise ProtocolError("this PSI session has finished")
        steps = {wire.HELLO: self._hello, wire.EXCHANGE: self._exchange,
                 wire.CARDINALITY_BATCH: self._cardinality_batch, wire.FINISH: self._finish}
        if step not in steps:
            raise ProtocolError(f"unknown PSI step {step!r}")
        self._need(step, self.expected)
        return steps[step](message)

    def _hello(self, message: Message) -> Message:
        nonce, n = message.get(wire.BANK_NONCE), wire.read_count(message.get(wire.BANK_SIZE), "psi.hello bank_size")
        if n > self.max_bank_size:  # checked before any store of that size is made
            raise ProtocolError(f"psi.hello: the bank declares {n:,} IDs; this platform accepts at most "
                                f"{self.max_bank_size:,} per PSI" + (f" ({self.limit_name})" if self.limit_name else ""))
        if not isinstance(nonce, bytes) or len(nonce) != wire.NONCE:
            raise ProtocolError(f"malformed {wire.HELLO}")
        platform_nonce = secrets.token_bytes(wire.NONCE)
        self.salt = job_salt(self.job_id, nonce, platform_nonce)
        self.n = n
        self.bank_batches = batches(n, self.batch_size)
        self.rounds = exchange_rounds(len(self.bank_batches), len(self.own_batches), self.mode)
        if self.mode == "both":
            self.own_double = self._store(self.m)
        if self.mode != "bank_only":
            self.bank_double = self._store(n)
        # Hash and check our IDs in the background while the bank does the same with its own; nothing of
        # ours is sent before the checks pass (see _hashed).
        self.own_hashes = self._store(self.m)
        self.hashing = self.blinder.hash_ids_async(self.salt, self.ids, self.perm, self.own_hashes)
        self.expected = wire.EXCHANGE
        return {wire.PLATFORM_NONCE: platform_nonce, wire.PLATFORM_SIZE: self.m}

    def _exchange(self, message: Message) -> Message:
        k = self.round
        self._index(message, k)
        blinding = None
        if k < len(self.bank_batches):
            lo, hi = self.bank_batches[k]
            blinding = self.blinder.blind_async(points_field(message, wire.POINTS, hi - lo, f"bank batch {k}"))
        elif wire.POINTS in message:
            raise ProtocolError(f"exchange {k} carries bank points after the last bank batch")
        if self.mode == "both" and 1 <= k <= len(self.own_batches):
            assert self.own_double is not None
            lo, hi = self.own_batches[k - 1]
            double = points_field(message, wire.PLATFORM_DOUBLE, hi - lo, f"exchange {k}'s platform_double")
            self.own_double.write(self.perm[lo:hi], double)
            self.received_double = hi
        elif wire.PLATFORM_DOUBLE in message:
            raise ProtocolError(f"exchange {k} carries doubly blinded platform points it should not")
        reply: Message = {}
        if k == 0:
            for ahead in range(LOOKAHEAD):
                self._queue_own(ahead)
        if k < len(self.own_batches):
            self._queue_own(k)
            reply[wire.POINTS] = self.ahead.pop(k).result()
            self._queue_own(k + LOOKAHEAD)
        if blinding is not None:
            lo, hi = self.bank_batches[k]
            double = blinding.result()
            if self.bank_double is not None:
                self.bank_double.write(slice(lo, hi), double)
            if self.mode != "cardinality":
                reply[wire.DOUBLE] = double
            if self.progress:
                self.progress("psi: bank points", hi, self.n)
        self.round += 1
        if self.round == self.rounds:
            if self.mode == "cardinality":
                self.cardinality_double = self._store(self.m)
                self.expected = wire.CARDINALITY_BATCH
            else:
                self.expected = wire.FINISH
        return reply

    def _cardinality_batch(self, message: Message) -> Message:
        assert self.cardinality_double is not None
        self._index(message, self.cardinality_batches)
        lo, hi = self.own_batches[self.cardinality_batches]
        double = points_field(message, wire.DOUBLE, hi - lo, wire.CARDINALITY_BATCH)
        self.cardinality_double.write(slice(lo, hi), double)
        self.cardinality_batches += 1
        if self.cardinality_batches == len(self.own_batches):
            self.expected = wire.FINISH
        return {}

    def _finish(self, message: Message) -> Message:
        if self.mode == "cardinality":
            assert self.bank_double is not None and self.cardinality_double is not None
            size = len(match_rows(self.cardinality_double, self.bank_double)[0])
            return self._report(PsiResult(self.mode, size, None, "", self.m, self.n, 0.0), {wire.SIZE: size})
        size, digest = message.get(wire.SIZE), message.get(wire.CONTENT_HASH)
        if not isinstance(size, int) or not isinstance(digest, str):
            raise ProtocolError(f"malformed {wire.FINISH}")
        if self.mode == "bank_only":
            # We learn only the size the bank reports; we cannot check it, and cannot link it to our users.
            return self._report(PsiResult(self.mode, size, None, digest, self.m, self.n, 0.0), {wire.SIZE: size})
        assert self.own_double is not None and self.bank_double is not None
        if self.received_double != self.m:
            raise ProtocolError("the bank has not returned every doubly blinded platform point")
        members, own_digest = intersection(self.own_double, self.bank_double, self.ids)
        if len(members) != size or own_digest != digest:
            raise ProtocolError("the two sides computed different intersections; nothing stored")
        return self._report(PsiResult(self.mode, size, members, own_digest, self.m, self.n, 0.0),
                            {wire.SIZE: size, wire.CONTENT_HASH: own_digest})

    def _report(self, result: PsiResult, reply: Message) -> Message:
        """The session succeeded: hand the result to the node (once) and answer ``psi.finish``."""
        result.seconds = time.monotonic() - self.started
        self._result = result  # from here on every step is refused, so on_result cannot run twice
        self._on_result(result)
        return reply

    def close(self) -> None:
        if self.hashing is not None:
            self.hashing.cancel()
        for pending in self.ahead.values():
            pending.cancel()
        self.ahead.clear()
        self.blinder.close()
        for store in self.stores:
            store.close()


def make_platform_psi_handler(job_id: str, params: Message, ids: Sequence[str], *, on_result: OnResult,
                              compute: ComputeSpec = None, spill_dir: Path | str | None = None,
                              progress: Progress | None = None, max_bank_size: int = MAX_SET_SIZE,
                              limit_name: str = "") -> PlatformPsiHandler:
    """The node's SessionFactory calls this when the bank opens a ``psi`` session. ``max_bank_size``: the most
    IDs the bank may declare (``limit_name`` names the setting in the refusal)."""
    return PlatformPsiHandler(job_id, params, ids, on_result=on_result, compute=compute, spill_dir=spill_dir,
                              progress=progress, max_bank_size=max_bank_size, limit_name=limit_name)


__all__ = ["LOOKAHEAD", "OnResult", "PlatformPsiHandler", "make_platform_psi_handler"]
