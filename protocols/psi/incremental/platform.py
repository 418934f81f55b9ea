"""The platform's side of an incremental alignment: a step handler for one session.

The platform decides at ``psi.inc.hello`` whether the stored epoch goes on (same epoch and mode on both
nodes, the same state digest, the key younger than the rotation period) or a new one starts; the reason
for a new epoch goes back to the bank in plain words.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

import protocols.psi.incremental.messages as inc
import protocols.psi.messages as wire
from protocols.channel import Message
from protocols.compute import Compute, ComputeSpec
from protocols.errors import ProtocolError
from protocols.psi.incremental.bank import intersection, next_state, read_peer_plan, usable_state
from protocols.psi.incremental.delta import Kept, OwnPlan, find_kept, plan_own
from protocols.psi.incremental.rawkeys import raw_keys
from protocols.psi.incremental.state import DOUBLE, PairState, new_state, slots_bytes
from protocols.psi.kernel import Blinder, Pending
from protocols.psi.messages import MAX_BATCH_SIZE, MAX_SET_SIZE, Progress, PsiError, batches, points_field

LOOKAHEAD = 2  # own batches blinded ahead of the bank's requests
OnResult = Callable[[inc.IncrementalResult], None]
StateLoader = Callable[[], tuple[PairState | None, str]]  # the stored state (or None) and why none
ROTATION_KNOB = "[policy] psi_key_rotation_days"


def new_epoch_reason(stored: PairState | None, note: str, bank_epoch: str, bank_digest: str, mode: str,
                     new_key: bool, rotation_days: float) -> str:
    """Why this run starts a new epoch (a full alignment), or "" when the stored one goes on."""
    if rotation_days <= 0:
        return f"the platform keeps no incremental state ({ROTATION_KNOB} = 0)"
    if new_key:
        return "the bank asked for a new key"
    if stored is None:
        return note or "the platform has no stored state for this pair"
    if stored.mode != mode:
        return f"the stored key epoch is for mode {stored.mode!r}, not {mode!r}"
    if not bank_epoch:
        return "the bank has no stored state for this pair"
    if bank_epoch != stored.epoch:
        return "the two nodes hold different key epochs"
    age = stored.age_days()
    if age >= rotation_days:
        return f"the key is {age:.1f} days old ({ROTATION_KNOB} = {rotation_days:g}): rotated"
    if bank_digest != stored.digest():
        return "the two nodes' stored states differ (one stored an alignment the other did not)"
    return ""


class PlatformIncrementalHandler:
    """The platform's side of one incremental alignment (a :class:`protocols.channel.StepHandler`).

    ``state``: the platform's stored state of this pair (None if none, or unreadable: ``state_note`` then
    says why, for the bank's job record), or a function that loads both: it runs in the background from the
    session's opening on, while the bank loads its own. ``rotation_days``: ``[policy] psi_key_rotation_days`` (0: keep no
    state). ``on_result`` is called once, after a successful ``psi.inc.finish``, before its reply; the
    result's ``state`` is what to keep (None: keep nothing).
    """

    def __init__(self, job_id: str, params: Message, ids: Sequence[str] | np.ndarray, *,
                 state: PairState | None | StateLoader, on_result: OnResult, rotation_days: float = 30.0, state_note: str = "",
                 compute: ComputeSpec = None, progress: Progress | None = None,
                 max_bank_size: int = MAX_SET_SIZE, limit_name: str = "") -> None:
        if params.get(wire.PARAM_VERSION) != inc.VERSION:
            raise ProtocolError(f"PSI version {params.get(wire.PARAM_VERSION)!r} is not supported here "
                                f"(this handler: {inc.VERSION})")
        mode = params.get(wire.PARAM_MODE)
        if mode not in inc.MODES:
            raise ProtocolError(f"incremental alignment offers modes {', '.join(inc.MODES)}, not {mode!r}")
        if len(ids) == 0:
            raise ProtocolError("platform data: this party has no IDs: an empty side cannot take part in PSI")
        self.mode = str(mode)
        self.batch_size = wire.read_count(params.get(wire.PARAM_BATCH_SIZE), "batch_size", most=MAX_BATCH_SIZE)
        self.job_id, self.ids, self.state_note = job_id, ids, state_note
        self.rotation_days, self.compute, self.progress = rotation_days, compute, progress
        self.max_bank_size, self.limit_name = max_bank_size, limit_name
        self._on_result = on_result
        self._result: inc.IncrementalResult | None = None
        self.started = time.monotonic()
        self.expected = inc.HELLO
        self.blinder: Blinder | None = None
        self._background = ThreadPoolExecutor(1, thread_name_prefix="psi-inc")
        self.loading: Future[tuple[PairState | None, str]] = self._background.submit(
            state if callable(state) else lambda: (state, state_note))
        # Ahead of psi.inc.hello: our IDs' raw keys (on a thread of their own, beside the loading), then which of
        # them the stored state holds (None: no usable state); neither needs the run's key nor tells the bank
        # anything.
        self._keys = ThreadPoolExecutor(1, thread_name_prefix="psi-inc-keys")
        self.keying: Future[np.ndarray] = self._keys.submit(raw_keys, ids)
        self.finding: Future[Kept | None] = self._background.submit(self._find_kept)
        self.planning: Future[OwnPlan] | None = None
        self.finishing: Future[tuple[PairState, list[str] | None, str]] | None = None
        self.plan: OwnPlan | None = None
        self.current: PairState | None = None
        self.resumed, self.keep, self.reason = False, False, ""
        self.round = self.rounds = 0
        self.own_batches: list[tuple[int, int]] = []
        self.bank_batches: list[tuple[int, int]] = []
        self.ahead: dict[int, Pending] = {}
        self.bank_removed = np.zeros(0, dtype=np.int64)
        self.bank_added = self.bank_after = self.received = 0
        self.own_new: np.ndarray | None = None  # mode "both": a*b*H(y) of our new items, from the bank
        self.bank_new: np.ndarray | None = None  # mode "both": b*a*H(x) of the bank's new items

    @property
    def result(self) -> inc.IncrementalResult | None:
        return self._result

    def handle(self, step: str, message: Message) -> Message:
        if self._result is not None:
            raise ProtocolError("this PSI session has finished")
        steps = {inc.HELLO: self._hello, inc.PLAN: self._plan, inc.EXCHANGE: self._exchange, inc.FINISH: self._finish}
        if step not in steps:
            raise ProtocolError(f"unknown incremental PSI step {step!r}")
        if step != self.expected:
            raise ProtocolError(f"PSI step {step!r} is out of order (expected {self.expected})")
        return steps[step](message)

    def _hello(self, message: Message) -> Message:
        nonce, epoch, digest = message.get(wire.BANK_NONCE), message.get(inc.EPOCH), message.get(inc.STATE_DIGEST)
        new_key = message.get(inc.NEW_KEY)
        if (not isinstance(nonce, bytes) or len(nonce) != wire.NONCE or not isinstance(epoch, str)
                or not isinstance(digest, str) or not isinstance(new_key, bool)):
            raise ProtocolError(f"malformed {inc.HELLO}")
        loaded, self.state_note = self.loading.result()
        stored = usable_state(loaded, loaded.mode if loaded else self.mode, "platform")
        self.reason = new_epoch_reason(stored, self.state_note, epoch, digest, self.mode, new_key, self.rotation_days)
        self.resumed, self.keep = not self.reason, self.rotation_days > 0
        platform_nonce = secrets.token_bytes(wire.NONCE)
        if self.resumed:
            assert stored is not None
            self.current = stored
        else:
            new_epoch = secrets.token_hex(16)
            both = self.mode == "both"
            self.current = new_state(new_epoch, self.mode, "platform", inc.epoch_salt(new_epoch, nonce, platform_nonce),
                                     secrets.token_bytes(wire.POINT), own_double=both, peer_double=both)
        self.blinder = Blinder(self.compute, secret=self.current.secret, min_chunk=inc.MIN_CHUNK)
        # Our delta (hashing and checking our new IDs) in the background while the bank computes its own;
        # nothing of ours leaves before it has passed (psi.inc.plan's reply waits for it).
        self.planning = self._background.submit(self._plan_own, stored if self.resumed else None)
        self.expected = inc.PLAN
        return {inc.EPOCH: self.current.epoch, inc.RESUMED: self.resumed, inc.REASON: self.reason,
                inc.KEEP: self.keep, wire.PLATFORM_NONCE: platform_nonce}

    def _find_kept(self) -> Kept | None:
        loaded, _ = self.loading.result()  # done: it ran first on this thread
        stored = usable_state(loaded, loaded.mode if loaded else self.mode, "platform")
        return None if stored is None else find_kept(stored, self.keying.result())

    def _plan_own(self, stored: PairState | None) -> OwnPlan:
        """Our delta against ``stored`` (the epoch goes on) or from nothing (a new epoch)."""
        assert self.blinder is not None and self.current is not None
        kept = None if stored is None else self.finding.result()  # found against this same stored state
        return plan_own(stored, self.ids, self.blinder, self.current.salt, keys=self.keying.result(), kept=kept)

    def _plan(self, message: Message) -> Message:
        assert self.current is not None and self.planning is not None
        self.bank_removed, self.bank_added, self.bank_after = read_peer_plan(
            message, self.current, MAX_SET_SIZE, inc.PLAN)
        if self.bank_after > self.max_bank_size:
            raise ProtocolError(f"{inc.PLAN}: the bank declares {self.bank_after:,} IDs; this platform accepts at "
                                f"most {self.max_bank_size:,} per PSI" + (f" ({self.limit_name})" if self.limit_name else ""))
        try:
            self.plan = self.planning.result()
        except PsiError as err:
            raise ProtocolError(f"platform data: {err}") from err
        plan = self.plan
        self.own_batches = batches(plan.added, self.batch_size)
        self.bank_batches = batches(self.bank_added, self.batch_size)
        self.rounds = inc.rounds(self.bank_added, plan.added, self.batch_size, self.mode)
        if self.mode == "both":
            self.own_new = np.zeros(plan.added, dtype=DOUBLE)
            self.bank_new = np.zeros(self.bank_added, dtype=DOUBLE)
        self.expected = inc.EXCHANGE if self.rounds else inc.FINISH
        if not self.rounds:
            self._start_finishing()
        for k in range(LOOKAHEAD):
            self._queue_own(k)
        return {inc.REMOVED: slots_bytes(plan.delta.removed), inc.ADDED: plan.added,
                inc.SIZE_AFTER: plan.delta.size_after(self.current.live_own_count())}

    def _queue_own(self, k: int) -> None:
        if k < len(self.own_batches) and k not in self.ahead:
            assert self.blinder is not None and self.plan is not None
            self.ahead[k] = self.blinder.blind_async(self.plan.hashes.read(*self.own_batches[k]))

    def _exchange(self, message: Message) -> Message:
        assert self.blinder is not None
        k = self.round
        if message.get(wire.INDEX) != k:
            raise ProtocolError(f"batch {message.get(wire.INDEX)!r} arrived where batch {k} was expected")
        blinding = None
        if k < len(self.bank_batches):
            lo, hi = self.bank_batches[k]
            blinding = self.blinder.blind_async(points_field(message, wire.POINTS, hi - lo, f"bank batch {k}"))
        elif wire.POINTS in message:
            raise ProtocolError(f"exchange {k} carries bank points after the last new bank batch")
        if self.mode == "both" and 1 <= k <= len(self.own_batches):
            assert self.own_new is not None
            lo, hi = self.own_batches[k - 1]
            double = points_field(message, wire.PLATFORM_DOUBLE, hi - lo, f"exchange {k}'s platform_double")
            self.own_new[lo:hi] = np.frombuffer(double, dtype=DOUBLE)
            self.received = hi
        elif wire.PLATFORM_DOUBLE in message:
            raise ProtocolError(f"exchange {k} carries doubly blinded platform points it should not")
        reply: Message = {}
        if k < len(self.own_batches):
            self._queue_own(k)
            reply[wire.POINTS] = self.ahead.pop(k).result()
            self._queue_own(k + LOOKAHEAD)
        if blinding is not None:
            lo, hi = self.bank_batches[k]
            double = blinding.result()
            if self.bank_new is not None:
                self.bank_new[lo:hi] = np.frombuffer(double, dtype=DOUBLE)
            reply[wire.DOUBLE] = double
            if self.progress:
                self.progress("psi: new bank points", hi, self.bank_added)
        self.round += 1
        if self.round == self.rounds:
            self.expected = inc.FINISH
            self._start_finishing()
        return reply

    def _start_finishing(self) -> None:
        """Our state after the run and (mode "both") our intersection, in the background while the bank computes
        its own; ``psi.inc.finish`` then compares."""
        assert self._background is not None
        self.finishing = self._background.submit(self._after)

    def _after(self) -> tuple[PairState, list[str] | None, str]:
        assert self.current is not None and self.plan is not None
        after = next_state(self.current, self.plan, self.own_new, self.bank_removed, self.bank_added, self.bank_new)
        if self.mode != "both":
            return after, None, ""
        members, digest = intersection(after, self.ids, self.plan)
        return after, members, digest

    def _finish(self, message: Message) -> Message:
        assert self.current is not None and self.plan is not None
        size, digest, bank_state = (message.get(wire.SIZE), message.get(wire.CONTENT_HASH),
                                    message.get(inc.STATE_DIGEST))
        if not isinstance(size, int) or isinstance(size, bool) or not isinstance(digest, str) \
                or not isinstance(bank_state, str):
            raise ProtocolError(f"malformed {inc.FINISH}")
        if self.mode == "both" and self.received != self.plan.added:
            raise ProtocolError("the bank has not returned every doubly blinded platform point")
        assert self.finishing is not None
        after, members, own_digest = self.finishing.result()
        if bank_state != after.digest():
            raise ProtocolError("the bank's state after the run differs from this node's; nothing stored")
        m_after = after.live_own_count()
        if members is not None:
            if len(members) != size or own_digest != digest:
                raise ProtocolError("the two sides computed different intersections; nothing stored")
        elif not 0 <= size <= min(m_after, self.bank_after):
            raise ProtocolError(f"{inc.FINISH}: an intersection of {size:,} cannot be (sizes {m_after:,} and "
                                f"{self.bank_after:,})")
        both = self.mode == "both"
        result = inc.IncrementalResult(
            self.mode, size, members, digest, m_after, self.bank_after, time.monotonic() - self.started,
            protocol="ecdh", epoch=after.epoch, resumed=self.resumed, reason=self.reason, own_added=self.plan.added,
            own_removed=len(self.plan.delta.removed), peer_added=self.bank_added, peer_removed=len(self.bank_removed),
            points_sent=self.plan.added + self.bank_added, points_received=self.bank_added + (self.plan.added if both else 0),
            state=after if self.keep else None, base=self.current if self.resumed else None)
        self._result = result  # from here on every step is refused, so on_result cannot run twice
        self._on_result(result)
        return {wire.SIZE: size, wire.CONTENT_HASH: digest, inc.STATE_DIGEST: after.digest()}

    def close(self) -> None:
        for future in (self.loading, self.keying, self.finding, self.planning, self.finishing):
            if future is not None:
                future.cancel()
        for pending in self.ahead.values():
            pending.cancel()
        self.ahead.clear()
        if self.blinder is not None:
            self.blinder.close()
        elif isinstance(self.compute, Compute):  # closed before psi.inc.hello: the session still owns it
            self.compute.close()
        self._background.shutdown(wait=True, cancel_futures=True)
        self._keys.shutdown(wait=True, cancel_futures=True)
        if self.plan is not None:
            self.plan.hashes.close()
        elif self.planning is not None and self.planning.done() and not self.planning.cancelled() \
                and self.planning.exception() is None:
            self.planning.result().hashes.close()


__all__ = ["LOOKAHEAD", "OnResult", "PlatformIncrementalHandler", "StateLoader", "new_epoch_reason"]
