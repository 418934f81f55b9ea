"""The bank's side of an incremental alignment: it drives the session over a :class:`protocols.channel.Peer`."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import protocols.psi.incremental.messages as inc
import protocols.psi.messages as wire
from protocols.channel import Message, Peer
from protocols.compute import ComputeSpec, as_compute
from protocols.errors import ProtocolError
from protocols.psi.incremental.delta import OwnPlan, find_kept, plan_own
from protocols.psi.incremental.rawkeys import raw_keys
from protocols.psi.incremental.state import (
    DOUBLE,
    PairState,
    apply_delta,
    extend_matches,
    matched_slots,
    new_state,
    peer_values,
    read_removed,
    slots_bytes,
    value_order,
)
from protocols.psi.kernel import Blinder, Pending
from protocols.psi.messages import Progress, PsiError, batches, points_field


def usable_state(state: PairState | None, mode: str, role: str) -> PairState | None:
    """``state`` if a run in ``mode`` may continue it (same role and mode), else None."""
    return state if state is not None and state.role == role and state.mode == mode else None


def next_state(old: PairState, plan: OwnPlan, own_new: np.ndarray | None,
               peer_removed: np.ndarray, peer_added: int, peer_new: np.ndarray | None) -> PairState:
    """``old`` after a run: this side's delta (``plan``, with the doubles of its new items where it keeps
    them) and the peer's (removed slots, how many new, their doubles where it keeps them)."""
    own_live, own_double = apply_delta(old.own_live, old.own_double, plan.delta.removed, own_new, plan.added)
    peer_new = None if peer_new is None else peer_values(peer_new)
    peer_live, peer_double = apply_delta(old.peer_live, old.peer_double, peer_removed, peer_new, peer_added)
    own_keys = np.concatenate([old.own_keys, plan.keys[plan.added_rows]])
    own_keys[plan.delta.removed] = 0  # a removed customer's key leaves the state
    own_prefix = np.concatenate([old.own_prefix, plan.hashes.prefixes()])
    own_match = old.own_match
    if own_double is not None and peer_double is not None:  # only the new items are matched, against everything
        own_match, _ = extend_matches(old.own_match, own_double, own_live, old.own_slots, peer_double, peer_live,
                                      old.peer_slots)
    return PairState(epoch=old.epoch, created_at=old.created_at, mode=old.mode, role=old.role, salt=old.salt,
                     secret=old.secret, own_keys=own_keys, own_live=own_live, own_prefix=own_prefix,
                     own_double=own_double, peer_live=peer_live, peer_double=peer_double, own_match=own_match)


def agreed_order(state: PairState) -> tuple[np.ndarray, str]:
    """The intersection as own slots (live, their matched peer slot live) in the agreed order (by value), and
    its content hash: all that ``psi.inc.finish`` compares."""
    assert state.own_double is not None and state.peer_double is not None
    slots = matched_slots(state)
    values = state.own_double[slots]
    order = value_order(values)
    return slots[order], inc.content_hash(values[order])


def members_of(slots: np.ndarray, ids: Sequence[str] | np.ndarray, plan: OwnPlan, own_slots: int) -> list[str]:
    """The IDs of own ``slots`` (after the run), in that order, as ``ids`` (the current file) has them."""
    rows = plan.row_of_slot(own_slots)[slots]
    if isinstance(ids, np.ndarray):
        return [str(m) for m in ids[rows].tolist()] if ids.dtype == object else ids[rows].tolist()
    return [ids[r] for r in rows.tolist()]


def intersection(state: PairState, ids: Sequence[str] | np.ndarray, plan: OwnPlan) -> tuple[list[str], str]:
    """Own live IDs whose double a live peer slot holds, in the agreed order (by value), as ``ids`` (the current
    file) has them; the content hash."""
    slots, digest = agreed_order(state)
    return members_of(slots, ids, plan, state.own_slots), digest


def read_peer_plan(reply: Message, state: PairState, most: int, what: str) -> tuple[np.ndarray, int, int]:
    """The peer's removed slots, new count and size after the run, checked against our copy of its list."""
    try:
        removed = read_removed(reply.get(inc.REMOVED), state.peer_live, what)
    except ValueError as err:
        raise ProtocolError(str(err)) from None
    added, after = reply.get(inc.ADDED), reply.get(inc.SIZE_AFTER)
    if not isinstance(added, int) or isinstance(added, bool) or not 0 <= added <= wire.MAX_SET_SIZE:
        raise ProtocolError(f"{what}: 'added' must be a count")
    expected = state.live_peer_count() - len(removed) + added
    if after != expected or not 1 <= expected <= most:
        raise ProtocolError(f"{what}: size after the run must be {expected:,} (live items less removed plus new), "
                            f"between 1 and {most:,}")
    return removed, added, expected


def run_bank_incremental_psi(peer: Peer, job_id: str, ids: Sequence[str] | np.ndarray, *,
                             state: PairState | None | Callable[[], PairState | None], mode: str = "both", batch_size: int = 50_000,
                             new_key: bool = False, compute: ComputeSpec = None,
                             progress: Progress | None = None) -> inc.IncrementalResult:
    """Align with the platform behind ``peer``, continuing ``state`` (this node's stored state of the pair, or
    None, or a function that loads it: called once the session is open, so the platform loads its own state
    meanwhile) where the platform agrees; else a new key epoch starts (a full alignment). ``result.state`` is what
    to keep (None: keep nothing, the platform keeps no state). ``compute`` is owned and closed by the run."""
    started = time.monotonic()
    owned = as_compute(compute)
    blinder: Blinder | None = None
    plan: OwnPlan | None = None
    # Work that needs neither the run's key nor the platform's answer, on a thread of its own while the session
    # opens and the state loads: the raw keys of our IDs, then which of them the state holds.
    background = ThreadPoolExecutor(1, thread_name_prefix="psi-inc-ahead")
    try:
        if mode not in inc.MODES:
            raise PsiError(f"incremental alignment offers modes {', '.join(inc.MODES)}, not {mode!r}")
        if not 1 <= batch_size <= wire.MAX_BATCH_SIZE:
            raise PsiError(f"batch_size must be between 1 and {wire.MAX_BATCH_SIZE:,}")
        if len(ids) == 0:
            raise PsiError("this party has no IDs: an empty side cannot take part in PSI")
        keying = background.submit(raw_keys, ids)
        channel = peer.open(wire.KIND, job_id, {wire.PARAM_VERSION: inc.VERSION, wire.PARAM_MODE: mode,
                                                wire.PARAM_BATCH_SIZE: batch_size})
    except BaseException:
        background.shutdown(wait=True, cancel_futures=True)
        owned.close()
        raise
    try:
        phases: dict[str, float] = {}  # seconds per phase, for the job record (where a re-alignment's time goes)
        mark = [started]

        def lap(name: str) -> None:
            now = time.monotonic()
            phases[name] = round(now - mark[0], 3)
            mark[0] = now

        lap("open")
        stored = None if new_key else usable_state(state() if callable(state) else state, mode, "bank")
        finding = None if stored is None else background.submit(lambda s=stored: find_kept(s, keying.result()))
        lap("load_state")
        nonce = secrets.token_bytes(wire.NONCE)
        hello = channel.call(inc.HELLO, {wire.BANK_NONCE: nonce, inc.EPOCH: stored.epoch if stored else "",
                                         inc.STATE_DIGEST: stored.digest() if stored else "",
                                         inc.NEW_KEY: new_key})
        epoch, resumed, keep = hello.get(inc.EPOCH), hello.get(inc.RESUMED), hello.get(inc.KEEP)
        platform_nonce, reason = hello.get(wire.PLATFORM_NONCE), hello.get(inc.REASON, "")
        if (not isinstance(epoch, str) or not inc.EPOCH_RE.match(epoch) or not isinstance(resumed, bool)
                or not isinstance(keep, bool) or not isinstance(reason, str)
                or not isinstance(platform_nonce, bytes) or len(platform_nonce) != wire.NONCE):
            raise ProtocolError(f"malformed {inc.HELLO} reply")
        if resumed and (stored is None or epoch != stored.epoch):
            raise ProtocolError(f"{inc.HELLO} reply: the platform continues epoch {epoch[:8]}, which this node "
                                "did not offer")
        if resumed:
            assert stored is not None
            current = stored
        else:
            current = new_state(epoch, mode, "bank", inc.epoch_salt(epoch, nonce, platform_nonce),
                                secrets.token_bytes(wire.POINT), own_double=True, peer_double=True)
        blinder = Blinder(owned, secret=current.secret, min_chunk=inc.MIN_CHUNK)
        lap("hello")
        plan = plan_own(current if resumed else None, ids, blinder, current.salt, keys=keying.result(),
                        kept=finding.result() if resumed and finding is not None else None)
        lap("plan")
        n_after = plan.delta.size_after(current.live_own_count())
        reply = channel.call(inc.PLAN, {inc.REMOVED: slots_bytes(plan.delta.removed), inc.ADDED: plan.added,
                                        inc.SIZE_AFTER: n_after})
        peer_removed, peer_added, m_after = read_peer_plan(reply, current, wire.MAX_SET_SIZE, f"{inc.PLAN} reply")

        own_new = np.zeros(plan.added, dtype=DOUBLE)
        peer_new = np.zeros(peer_added, dtype=DOUBLE)
        own_batches, peer_batches = batches(plan.added, batch_size), batches(peer_added, batch_size)
        hashes = plan.hashes

        def own_points(k: int) -> Pending:
            return blinder.blind_async(hashes.read(*own_batches[k]))

        ahead = own_points(0) if own_batches else None
        blinding: Pending | None = None  # the platform's previous batch, being blinded by us
        lap("plan_reply")
        for k in range(inc.rounds(plan.added, peer_added, batch_size, mode)):
            message: Message = {wire.INDEX: k}
            if k < len(own_batches):
                assert ahead is not None
                message[wire.POINTS] = ahead.result()
                if k + 1 < len(own_batches):
                    ahead = own_points(k + 1)
            if blinding is not None:
                double = blinding.result()
                lo, hi = peer_batches[k - 1]
                peer_new[lo:hi] = np.frombuffer(double, dtype=DOUBLE)
                if mode == "both":
                    message[wire.PLATFORM_DOUBLE] = double
                blinding = None
            reply = channel.call(inc.EXCHANGE, message)
            what = f"{inc.EXCHANGE} {k} reply"
            if k < len(own_batches):
                lo, hi = own_batches[k]
                own_new[lo:hi] = np.frombuffer(points_field(reply, wire.DOUBLE, hi - lo, what), dtype=DOUBLE)
                if progress:
                    progress("psi: new bank points", hi, plan.added)
            if k < len(peer_batches):
                lo, hi = peer_batches[k]
                blinding = blinder.blind_async(points_field(reply, wire.POINTS, hi - lo, what))
        if blinding is not None:  # bank_only: the platform's last batch is never sent back
            lo, hi = peer_batches[-1]
            peer_new[lo:hi] = np.frombuffer(blinding.result(), dtype=DOUBLE)

        lap("exchange")
        after = next_state(current, plan, own_new, peer_removed, peer_added, peer_new)
        slots, digest = agreed_order(after)
        # The members' IDs are listed while the platform checks and stores its side (finish needs only these).
        listing = background.submit(members_of, slots, ids, plan, after.own_slots)
        lap("intersection")
        state_digest = after.digest()
        reply = channel.call(inc.FINISH, {wire.SIZE: len(slots), wire.CONTENT_HASH: digest,
                                          inc.STATE_DIGEST: state_digest})
        if reply.get(wire.SIZE) != len(slots) or (mode == "both" and reply.get(wire.CONTENT_HASH) != digest):
            raise ProtocolError("the platform computed a different intersection; alignment not stored")
        if reply.get(inc.STATE_DIGEST) != state_digest:
            raise ProtocolError("the platform's state after the run differs from this node's; nothing stored")
        members = listing.result()
        lap("finish")
        channel.close()
        both = mode == "both"
        return inc.IncrementalResult(
            mode, len(members), members, digest, n_after, m_after, time.monotonic() - started, protocol="ecdh",
            epoch=epoch, resumed=resumed, reason=reason, own_added=plan.added,
            own_removed=len(plan.delta.removed), peer_added=peer_added, peer_removed=len(peer_removed),
            points_sent=plan.added + (peer_added if both else 0), points_received=plan.added + peer_added,
            state=after if keep else None, base=current if resumed else None, phase_seconds=phases)
    except BaseException:
        channel.close()
        raise
    finally:
        background.shutdown(wait=True, cancel_futures=True)
        if plan is not None:
            plan.hashes.close()
        if blinder is not None:
            blinder.close()
        else:
            owned.close()


__all__ = ["agreed_order", "intersection", "members_of", "next_state", "read_peer_plan", "run_bank_incremental_psi",
           "usable_state"]
