"""One side's own delta: which of its current IDs are new since the stored state, which stored ones left.

New IDs are hashed with the epoch's salt and checked (empty IDs, and two rows equal after normalisation,
among the new ones and against the kept ones) before anything derived from them leaves the node; errors
name rows of the file, never IDs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from protocols.psi.ids import normalise_id
from protocols.psi.incremental.rawkeys import find_keys, raw_keys
from protocols.psi.incremental.state import PairState, SideDelta, screen
from protocols.psi.kernel import Blinder
from protocols.psi.messages import PsiError
from protocols.psi.store import PointStore
from protocols.shuffle import secret_permutation


@dataclass
class OwnPlan:
    """What changes on this side's own list, and where each current row's item sits after the run."""

    delta: SideDelta
    added_rows: np.ndarray  # rows of the current file, in send order: new slot ``own_slots + i`` is row [i]
    hashes: PointStore  # H(x) of the added rows, in send order (the caller closes it)
    slot_of_row: np.ndarray  # int64 per current row: its slot after the run
    keys: np.ndarray  # (n, 2) raw-text keys of the current rows

    @property
    def added(self) -> int:
        return len(self.added_rows)

    def row_of_slot(self, slots: int) -> np.ndarray:
        """The current row of each own slot after the run (-1 for removed slots)."""
        rows = np.full(slots, -1, dtype=np.int64)
        rows[self.slot_of_row] = np.arange(len(self.slot_of_row), dtype=np.int64)
        return rows


def _rows_named(first: int, row: int) -> PsiError:
    first, row = min(first, row), max(first, row)
    return PsiError(f"rows {first + 1} and {row + 1} hold the same ID after normalisation "
                    "(trim, case, phone/e-mail forms); de-duplicate the file")


@dataclass
class Kept:
    """Which current rows this side already holds in the stored state: each row's stored slot (-1: new), and
    the live stored slots no current row holds any more (removed, ascending)."""

    slot_of_row: np.ndarray
    removed: np.ndarray


def find_kept(state: PairState, keys: np.ndarray) -> Kept:
    """Current rows (their raw-text ``keys``, :func:`~protocols.psi.incremental.rawkeys.raw_keys`) found among
    ``state``'s live own slots. Needs no key or salt of the run: a node computes it while the session opens
    (before it knows whether the epoch goes on). The same raw ID twice, both kept, is refused naming rows."""
    live = np.flatnonzero(state.own_live)
    slot_of_row = np.full(len(keys), -1, dtype=np.int64)
    if len(live):
        at = find_keys(state.own_keys[live], keys)  # stored live keys are distinct
        slot_of_row = np.where(at >= 0, live[np.maximum(at, 0)], -1)
    counts = np.bincount(slot_of_row[slot_of_row >= 0], minlength=state.own_slots)
    if len(counts) and counts.max() > 1:  # the same raw ID twice, both kept
        twice = np.flatnonzero(slot_of_row == int(np.argmax(counts > 1)))
        raise _rows_named(int(twice[0]), int(twice[1]))
    return Kept(slot_of_row, live[counts[live] == 0])


def plan_own(state: PairState | None, ids: Sequence[str] | np.ndarray, blinder: Blinder, salt: bytes, *,
             keys: np.ndarray | None = None, kept: Kept | None = None) -> OwnPlan:
    """The delta of ``ids`` (this node's current IDs, in file order) against ``state`` (None: all new). Kept
    IDs are told from new ones by their raw text (:mod:`~protocols.psi.incremental.rawkeys`, no normalising):
    an ID whose text changed form is a removal and an addition. ``keys`` (the IDs' raw keys) and ``kept``
    (:func:`find_kept` of ``state``) may come computed ahead, while the session opened."""
    n = len(ids)
    if n == 0:
        raise PsiError("this party has no IDs: an empty side cannot take part in PSI")
    keys = raw_keys(ids) if keys is None else keys
    if len(keys) != n:
        raise ValueError(f"{len(keys)} raw keys for {n} IDs")
    old_slots = 0 if state is None else state.own_slots
    if state is None:
        kept = Kept(np.full(n, -1, dtype=np.int64), np.zeros(0, dtype=np.int64))
    elif kept is None:
        kept = find_kept(state, keys)
    slot_of_row, removed = kept.slot_of_row.copy(), kept.removed
    new_rows = np.flatnonzero(slot_of_row < 0)
    added_rows = new_rows[secret_permutation(len(new_rows))] if len(new_rows) else new_rows
    hashes = PointStore(len(added_rows), None)
    try:
        if len(added_rows):
            blinder.hash_ids(salt, ids, added_rows, hashes)  # empty IDs and repeats among the new ones
            if state is not None and len(added_rows) < n:
                _refuse_repeats_of_kept(state, ids, added_rows, hashes.prefixes(), slot_of_row)
    except BaseException:
        hashes.close()
        raise
    slot_of_row[added_rows] = old_slots + np.arange(len(added_rows), dtype=np.int64)
    return OwnPlan(SideDelta(removed=removed, added=len(added_rows)), added_rows, hashes, slot_of_row, keys)


def _refuse_repeats_of_kept(state: PairState, ids: Sequence[str] | np.ndarray, added_rows: np.ndarray,
                            added_keys: np.ndarray, slot_of_row: np.ndarray) -> None:
    """Refuse a new ID equal after normalisation to a kept one (another raw form of the same customer): the
    kept IDs' stored hash prefixes are screened against the new ones' (no sort of the kept side)."""
    kept_rows = np.flatnonzero(slot_of_row >= 0)
    kept_keys = state.own_prefix[slot_of_row[kept_rows]]
    by_key: dict[int, list[int]] = {}
    for i, key in enumerate(added_keys.tolist()):
        by_key.setdefault(key, []).append(int(added_rows[i]))
    found = []
    for i in screen(added_keys, kept_keys).tolist():
        kept_row = int(kept_rows[i])
        for new_row in by_key.get(int(kept_keys[i]), []):
            if normalise_id(str(ids[new_row])) == normalise_id(str(ids[kept_row])):
                found.append((max(new_row, kept_row), min(new_row, kept_row)))
    if found:
        row, first = min(found)
        raise _rows_named(first, row)


__all__ = ["Kept", "OwnPlan", "find_kept", "plan_own"]
