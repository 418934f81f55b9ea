"""What a row's ciphertext holds in the screen, and the checks on what the bank decrypts for the platform.

Each intersected row is one plaintext (several when the tags do not fit one) of signed slots: slot 0 holds 1
(the row itself: a bin's sum is its row count), then per tag the row's event value and its labelled
indicator, (0, 0) for a row without a label for that tag, (0, 1) for a non-event, (1, 1) for an event, after
randomised response (:mod:`protocols.screen.rr`). The slots are sized for a whole bin's sum: every slot of an
honest bin lies in ``[0, n_rows]``, and within a bin, events <= labelled <= rows.

What the platform sends back is checked before decrypting (its count) and after (every slot in range, the
layout, the per-bin order of the slots, each feature's bins summing to exactly the rows sent, and each bin
holding at least the rows both parties' floors demand); a violation raises
:class:`~protocols.errors.DeviationDetected` naming the step and the check.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from protocols.errors import DeviationDetected
from protocols.packing import pack_signed
from protocols.vfl_lr.encoding import check_slots

NONE, NON_EVENT, EVENT = 0, 1, 2  # a (row, tag)'s category: no label, label 0, label 1


def categories(labels: np.ndarray) -> np.ndarray:
    """(rows, tags) of 1.0 / 0.0 / NaN -> int8 categories (NONE, NON_EVENT, EVENT)."""
    y = np.asarray(labels, dtype=np.float64)
    out = np.full(y.shape, NONE, dtype=np.int8)
    out[y == 0] = NON_EVENT
    out[y == 1] = EVENT
    return out


def slot_bits_for(n_rows: int) -> int:
    """Signed slots that hold any value in ``[0, n_rows]`` (a whole bin's sum) with one bit of headroom."""
    return max(4, int(n_rows).bit_length() + 2)


def tag_groups(n_tags: int, tags_per_ciphertext: int) -> list[range]:
    """The tags each of a row's ciphertexts carries."""
    return [range(a, min(n_tags, a + tags_per_ciphertext)) for a in range(0, n_tags, tags_per_ciphertext)]


def tags_per_ciphertext(slots_per_plaintext: int, n_tags: int) -> int:
    """Tags per plaintext: one slot for the row count, two per tag."""
    return max(1, min(n_tags, (slots_per_plaintext - 1) // 2))


def pack_rows(cats: np.ndarray, group: range, slot_bits: int) -> list[int]:
    """Per row, the plaintext of ``group``'s tags: [1, event_t, labelled_t for t in group] in signed slots."""
    sub = cats[:, list(group)]
    event = (sub == EVENT).astype(np.int64)
    labelled = (sub != NONE).astype(np.int64)
    slots = np.empty((len(cats), 1 + 2 * len(group)), dtype=np.int64)
    slots[:, 0] = 1
    slots[:, 1::2] = event
    slots[:, 2::2] = labelled
    return [pack_signed(row, slot_bits) for row in slots.tolist()]


def open_bins(values: Sequence[int], n_bins: Sequence[int], n_rows: int, group_size: int, slot_bits: int, *,
              min_bin_rows: int, step: str) -> np.ndarray:
    """The decrypted bins of one tag group -> int64 array (total bins, 1 + 2 * group_size): rows, then per tag
    events and labelled; every check of the module docstring, :class:`DeviationDetected` on a violation."""
    n_slots = 1 + 2 * group_size
    if len(values) != sum(n_bins):
        raise DeviationDetected(step, "bin count", f"{len(values)} values for {sum(n_bins)} bins")
    out = np.array([check_slots(v, n_slots, slot_bits, 0, n_rows + 1, step=step, check="slot range")
                    for v in values], dtype=np.int64).reshape(len(values), n_slots)
    rows, events, labelled = out[:, :1], out[:, 1::2], out[:, 2::2]
    if (events > labelled).any() or (labelled > rows).any():
        raise DeviationDetected(step, "bin order", "a bin holds more events than labelled rows, or more labelled "
                                                   "rows than rows")
    floor = min(min_bin_rows, n_rows)
    start = 0
    for j, k in enumerate(n_bins):
        part = out[start:start + k, 0]
        if int(part.sum()) != n_rows:
            raise DeviationDetected(step, "bin partition", f"feature {j}: its bins hold {int(part.sum())} rows, "
                                                           f"not the {n_rows} sent")
        if int(part.min()) < floor:
            raise DeviationDetected(step, "bin rows", f"feature {j}: a bin of {int(part.min())} rows, below the "
                                                      f"floor of {floor}")
        start += k
    return out


__all__ = ["EVENT", "NONE", "NON_EVENT", "categories", "open_bins", "pack_rows", "slot_bits_for", "tag_groups",
           "tags_per_ciphertext"]
