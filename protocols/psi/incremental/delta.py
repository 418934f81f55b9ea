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
from protocols.psi.incremental.state import PairState, SideDelta
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

    @property
    def added(self) -> int:
        return len(self.added_rows)


def _rows_named(first: int, row: int) -> PsiError:
    first, row = min(first, row), max(first, row)
    return PsiError(f"rows {first + 1} and {row + 1} hold the same ID after normalisation "
                    "(trim, case, phone/e-mail forms); de-duplicate the file")


def plan_own(state: PairState | None, ids: Sequence[str] | np.ndarray, blinder: Blinder, salt: bytes) -> OwnPlan:
    """The delta of ``ids`` (this node's current IDs, in file order) against ``state`` (None: all new)."""
    n = len(ids)
    if n == 0:
        raise PsiError("this party has no IDs: an empty side cannot take part in PSI")
    rows_list = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
    slot_of_row = np.full(n, -1, dtype=np.int64)
    removed = np.zeros(0, dtype=np.int64)
    old_slots = 0
    if state is not None:
        old_slots = state.own_slots
        live = np.flatnonzero(state.own_live)
        lookup = dict(zip([state.own_ids[s] for s in live.tolist()], live.tolist(), strict=True))
        get = lookup.get
        slot_of_row[:] = [get(raw if type(raw) is str else str(raw), -1) for raw in rows_list]
        kept_rows = np.flatnonzero(slot_of_row >= 0)
        kept_slots = slot_of_row[kept_rows]
        if len(kept_slots) != len(np.unique(kept_slots)):  # the same raw ID twice, both kept
            order = np.argsort(kept_slots, kind="stable")
            i = int(np.flatnonzero(kept_slots[order][1:] == kept_slots[order][:-1])[0])
            raise _rows_named(int(kept_rows[order[i]]), int(kept_rows[order[i + 1]]))
        still = np.zeros(old_slots, dtype=bool)
        still[kept_slots] = True
        removed = live[~still[live]]
    new_rows = np.flatnonzero(slot_of_row < 0)
    added_rows = new_rows[secret_permutation(len(new_rows))] if len(new_rows) else new_rows
    hashes = PointStore(len(added_rows), None)
    try:
        if len(added_rows):
            blinder.hash_ids(salt, rows_list, added_rows, hashes)  # empty IDs and repeats among the new ones
            if state is not None and len(added_rows) < n:
                _refuse_repeats_of_kept(state, rows_list, added_rows, hashes.prefixes(), slot_of_row)
    except BaseException:
        hashes.close()
        raise
    slot_of_row[added_rows] = old_slots + np.arange(len(added_rows), dtype=np.int64)
    return OwnPlan(SideDelta(removed=removed, added=len(added_rows)), added_rows, hashes, slot_of_row)


def _refuse_repeats_of_kept(state: PairState, rows: list[str], added_rows: np.ndarray, added_keys: np.ndarray,
                            slot_of_row: np.ndarray) -> None:
    """Refuse a new ID equal after normalisation to a kept one (another raw form of the same customer)."""
    kept_rows = np.flatnonzero(slot_of_row >= 0)
    kept_keys = state.own_prefix[slot_of_row[kept_rows]]
    order = np.argsort(kept_keys, kind="stable")
    sorted_keys = kept_keys[order]
    pos = np.searchsorted(sorted_keys, added_keys)
    pos[pos == len(sorted_keys)] = 0
    found = []
    for i in np.flatnonzero(sorted_keys[pos] == added_keys).tolist():
        new_row = int(added_rows[i])
        for j in range(int(pos[i]), len(sorted_keys)):  # every kept ID with that prefix
            if sorted_keys[j] != added_keys[i]:
                break
            kept_row = int(kept_rows[order[j]])
            if normalise_id(str(rows[new_row])) == normalise_id(str(rows[kept_row])):
                found.append((max(new_row, kept_row), min(new_row, kept_row)))
    if found:
        row, first = min(found)
        raise _rows_named(first, row)


__all__ = ["OwnPlan", "plan_own"]
