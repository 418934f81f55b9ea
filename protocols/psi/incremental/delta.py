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


def plan_own(state: PairState | None, ids: Sequence[str] | np.ndarray, blinder: Blinder, salt: bytes) -> OwnPlan:
    """The delta of ``ids`` (this node's current IDs, in file order) against ``state`` (None: all new). Kept
    IDs are told from new ones by their raw text (:mod:`~protocols.psi.incremental.rawkeys`, no normalising):
    an ID whose text changed form is a removal and an addition."""
    n = len(ids)
    if n == 0:
        raise PsiError("this party has no IDs: an empty side cannot take part in PSI")
    keys = raw_keys(ids)
    slot_of_row = np.full(n, -1, dtype=np.int64)
    removed = np.zeros(0, dtype=np.int64)
    old_slots = 0
    if state is not None:
        old_slots = state.own_slots
        live = np.flatnonzero(state.own_live)
        at = find_keys(state.own_keys[live], keys)  # stored live keys are distinct
        slot_of_row = np.where(at >= 0, live[np.maximum(at, 0)], -1) if len(live) else slot_of_row
        kept_slots = slot_of_row[at >= 0]
        counts = np.bincount(kept_slots, minlength=old_slots)
        if len(counts) and counts.max() > 1:  # the same raw ID twice, both kept
            twice = np.flatnonzero(slot_of_row == int(np.argmax(counts > 1)))
            raise _rows_named(int(twice[0]), int(twice[1]))
        removed = live[counts[live] == 0]
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


__all__ = ["OwnPlan", "plan_own"]
