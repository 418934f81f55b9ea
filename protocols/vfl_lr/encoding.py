"""Integer encodings of the training protocol: fixed-point scores, packed slots, exact ``X^T S``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from protocols.errors import DeviationDetected
from protocols.packing import SlotOverflow, pack_signed, unpack_signed
from protocols.vfl_lr.params import F_BITS, Z_CLIP, SlotPlan


def encode_z(z: np.ndarray) -> np.ndarray:
    """Scores (or any value of their range) in fixed point: clipped at ``Z_CLIP``, ``F_BITS`` fractional bits."""
    return np.rint(np.clip(z, -Z_CLIP, Z_CLIP) * (1 << F_BITS)).astype(np.int64)


def residual_offset(y: np.ndarray) -> np.ndarray:
    """``(2 - 4 y) 2^F``: the bank's constant part of ``d' 2^F`` besides ``z_A``, for 0/1 labels ``y``."""
    return (2 - 4 * y.astype(np.int64)) * (1 << F_BITS)


def pack_rows(values: np.ndarray, groups: Sequence[range], slot_bits: int) -> list[int]:
    """Per tag group, then per row: that row's values of the group's tags in signed slots."""
    return [pack_signed(values[i, list(g)], slot_bits) for g in groups for i in range(len(values))]


def pack_pairs(values: Sequence[int], plan: SlotPlan) -> list[int]:
    """Values of labelled (row, tag) pairs, ``plan.pairs_per_ct`` to a plaintext."""
    k = plan.pairs_per_ct
    return [pack_signed(values[s:s + k], plan.pair_slot) for s in range(0, len(values), k)]


def unpack_pairs(packed: Sequence[int], n_pairs: int, plan: SlotPlan) -> list[int]:
    """The inverse of :func:`pack_pairs` for ``n_pairs`` values."""
    k, out = plan.pairs_per_ct, []
    for j, value in enumerate(packed):
        out.extend(unpack_signed(value, min(k, n_pairs - j * k), plan.pair_slot))
    return out


def check_slots(value: int, count: int, slot_bits: int, low: int, high: int, *, step: str, check: str) -> list[int]:
    """The ``count`` signed slots of a packed ``value`` one party decrypted for, or from, the other, each in
    ``[low, high)`` as the honest protocol makes them and nothing beyond the last slot (the layout); else
    :class:`DeviationDetected` naming ``step`` and ``check`` (and sizes, never the value)."""
    try:
        slots = unpack_signed(value, count, slot_bits)
    except SlotOverflow:
        raise DeviationDetected(step, check, f"a packed value holds more than its {count} slots of {slot_bits} "
                                             "bits") from None
    for slot in slots:
        if not low <= slot < high:
            raise DeviationDetected(step, check, f"a slot holds a {'negative ' if slot < 0 else ''}value of "
                                                 f"{abs(slot).bit_length()} bits, outside the honest protocol's "
                                                 f"range [-2^{max(0, (-low).bit_length() - 1)}, 2^{high.bit_length()})")
    return slots


def exact_xt_s(Xq: np.ndarray, S: list[list[int]] | np.ndarray, n_cols: int, bits: int = 69) -> list[list[int]]:
    """``Xq^T S`` exactly for int8-range Xq and big signed ints S (m x T), ``|S| < 2^bits``: 23-bit limbs
    through int64 (Xq up to 16 bits and 2^17 rows keep every partial product below 2^63)."""
    S_obj = np.asarray(S, dtype=object).reshape(len(Xq), n_cols)
    offset = 1 << (bits + 1)  # makes every entry non-negative
    shifted = S_obj + offset
    out = np.zeros((Xq.shape[1], n_cols), dtype=object)
    X64 = Xq.astype(np.int64)
    limb_bits, mask = 23, (1 << 23) - 1
    for k in range(-(-(bits + 2) // limb_bits)):  # the limbs cover 2^(bits + 2) > every shifted entry
        limb = ((shifted >> (limb_bits * k)) & mask).astype(np.int64)
        part = X64.T @ limb
        out += part.astype(object) * (1 << (limb_bits * k))
    col_sums = X64.sum(axis=0).astype(object)
    out -= np.outer(col_sums, np.full(n_cols, offset, dtype=object))
    return out.tolist()


__all__ = ["check_slots", "encode_z", "exact_xt_s", "pack_pairs", "pack_rows", "residual_offset", "unpack_pairs"]
