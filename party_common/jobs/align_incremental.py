"""The align job's incremental path (``incremental = true``): each node keeps the pair's key epoch in its
state directory (``party_common.storage.psi_pairs``) and a re-alignment sends only what changed.

Job records and audit rows carry counts only (new and removed IDs per side, points sent, seconds, the
estimated time a full alignment would have taken): never IDs, values or keys.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from party_common.jobs.base import JobContext
from party_common.storage.psi_pairs import PairStateError, PairStateStore, pair_key
from protocols.channel import Message, Peer
from protocols.psi.incremental import (
    IncrementalResult,
    PairState,
    PlatformIncrementalHandler,
    run_bank_incremental_psi,
)

log = logging.getLogger(__name__)

PAIRS_DIR = "psi_pairs"
BANK_PEER = "platform"  # the bank's one pair: its platform
EVENT = "psi incremental"  # audit row of every incremental alignment (counts only)
STATE_REFUSED_EVENT = "psi state refused"  # audit row when a stored pair state is damaged and not used


def pair_store(ctx: JobContext) -> PairStateStore:
    if ctx.state_dir is None:
        raise RuntimeError("incremental alignment needs the node's state directory")
    return PairStateStore(Path(ctx.state_dir) / PAIRS_DIR)


def load_state(ctx: JobContext, store: PairStateStore, peer: str) -> tuple[PairState | None, str]:
    """The pair's stored state, or None and why: a damaged state is refused (the error names the file), kept
    aside in the log and the audit, and the run starts a new epoch (a full alignment)."""
    try:
        return store.load(peer), ""
    except PairStateError as err:
        log.warning("align job %s: stored PSI state refused, starting a new key epoch: %s", ctx.job_id, err)
        ctx.stores.jobs.audit(ctx.job_id, STATE_REFUSED_EVENT, str(err), outcome="full alignment")
        return None, str(err)


def run_bank(peer: Peer, ctx: JobContext, mode: str, batch_size: int, new_key: bool) -> IncrementalResult:
    store = pair_store(ctx)
    notes: list[str] = []

    def load() -> PairState | None:  # once the session is open: the platform loads its state meanwhile
        state, note = load_state(ctx, store, BANK_PEER)
        notes.append(note)
        return state

    result = run_bank_incremental_psi(peer, ctx.job_id, ctx.data.ids, state=load, mode=mode, batch_size=batch_size,
                                      new_key=new_key, compute=ctx.new_compute(), progress=ctx.progress)
    result.state_note = "".join(notes)
    return result


def keep(ctx: JobContext, store: PairStateStore, peer: str, result: IncrementalResult,
         base: PairState | None) -> dict[str, Any]:
    """Store (or forget) the pair's state after a run; the job summary's incremental part."""
    written, kept_error = 0, ""
    seconds_per_item = store.seconds_per_item(peer) if result.resumed else 0.0
    try:
        if result.state is None:
            store.delete(peer)
        else:
            assert isinstance(result.state, PairState)
            if not result.resumed:  # a full run: what an item costs, for the "saved" estimate of the next runs
                seconds_per_item = result.seconds / max(1, result.own_count + result.peer_count)
            written = store.save(peer, result.state, base, seconds_per_item=seconds_per_item)
    except PairStateError as err:  # the alignment stands; the next run starts a new epoch
        kept_error = str(err)
        log.warning("align job %s: %s", ctx.job_id, err)
    estimated_full = seconds_per_item * (result.own_count + result.peer_count)
    summary: dict[str, Any] = {**result.summary(), "state_bytes_written": written,
                               "estimated_full_seconds": round(estimated_full, 3) if result.resumed else None,
                               "seconds_saved": round(max(0.0, estimated_full - result.seconds), 3)
                               if result.resumed else None}
    if result.state_note:
        summary["stored_state_refused"] = result.state_note
    if kept_error:
        summary["state_not_kept"] = kept_error
    ctx.stores.jobs.audit(ctx.job_id, EVENT,
                          f"{'epoch continued' if result.resumed else 'new key epoch: ' + result.reason}; "
                          f"own new {result.own_added}, removed {result.own_removed}; peer new {result.peer_added}, "
                          f"removed {result.peer_removed}", outcome="ok", count=result.points_sent)
    return summary


def describe(result: dict[str, Any]) -> str:
    """One line of an incremental align job's record for people (the bank's own side is "own")."""
    counts = (f"bank +{result.get('own_new', 0):,} new / -{result.get('own_removed', 0):,} removed, platform "
              f"+{result.get('peer_new', 0):,} / -{result.get('peer_removed', 0):,}; "
              f"{result.get('points_sent', 0):,} points sent")
    if result.get("resumed"):
        saved = result.get("seconds_saved")
        full = result.get("estimated_full_seconds")
        timing = f"; a full run would take about {full:.1f} s: {saved:.1f} s saved" if full else ""
        text = f"incremental: key epoch continued; {counts}{timing}"
    else:
        text = f"incremental: new key epoch ({result.get('new_epoch_reason', '')}): a full alignment; {counts}"
    if result.get("stored_state_refused"):
        text += f"\nstored PSI state refused: {result['stored_state_refused']}"
    if result.get("state_not_kept"):
        text += f"\nstate not kept: {result['state_not_kept']}"
    return text


def save_bank(ctx: JobContext, result: IncrementalResult) -> dict[str, Any]:
    return keep(ctx, pair_store(ctx), BANK_PEER, result, result.base if isinstance(result.base, PairState) else None)


def open_platform(ctx: JobContext, params: Message, caller: str, on_result: Callable[[Any], None],
                  limit: dict[str, Any]) -> PlatformIncrementalHandler:
    """The platform's handler; it loads the pair's state in the background (while the bank loads its own)."""
    store = pair_store(ctx)
    peer = pair_key(caller or "bank")
    notes: list[str] = []  # why the stored state was refused (the file named), for this node's record only

    def load() -> tuple[PairState | None, str]:
        # The alignment store imports pyarrow on its first save, which comes before this node answers
        # psi.inc.finish: a node fresh from a restart (new data) would pay the import (0.3-2 s here) there,
        # on the bank's clock. Importing it now overlaps it with the bank's planning.
        import pyarrow.parquet  # noqa: F401

        if ctx.psi_key_rotation_days <= 0:
            return None, ""
        state, note = load_state(ctx, store, peer)
        notes.append(note)
        return state, "the platform's stored state was damaged and is not used" if note else ""

    def report(result: IncrementalResult) -> None:
        result.state_note = "".join(notes)
        on_result(result)

    return PlatformIncrementalHandler(ctx.job_id, params, ctx.data.ids, state=load, on_result=report,
                                      rotation_days=ctx.psi_key_rotation_days, compute=ctx.new_compute(),
                                      progress=ctx.progress, **limit)


def save_platform(ctx: JobContext, caller: str, result: IncrementalResult) -> dict[str, Any]:
    return keep(ctx, pair_store(ctx), pair_key(caller or "bank"), result,
                result.base if isinstance(result.base, PairState) else None)


__all__ = ["BANK_PEER", "EVENT", "describe", "PAIRS_DIR", "STATE_REFUSED_EVENT", "load_state", "open_platform", "pair_store",
           "run_bank", "save_bank", "save_platform"]
