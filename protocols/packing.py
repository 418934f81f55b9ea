"""Packing several non-negative integers into one Paillier plaintext, in slots with headroom.

A :class:`SlotLayout` of ``n_slots`` slots of ``slot_bits`` bits holds values ``v_j < 2**slot_bits`` as
``sum_j v_j * 2**(slot_bits * j)``. Sums and scalar products act slot-wise as long as no slot exceeds
``2**slot_bits``: size the slots for the largest result, not the inputs (the headroom). Signed values
travel with an offset (:meth:`SlotLayout.offset`), removed after unpacking.

Packing already-encrypted values (so that the key holder decrypts once for many) is done on
ciphertexts by Horner's rule: ``C = (((c_{k-1})^(2^s) c_{k-2})^(2^s) ... ) c_0``, which costs s squarings
per value and saves a whole decryption per value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import gmpy2
import numpy as np
from gmpy2 import mpz

from protocols.errors import CryptoError
from protocols.paillier import CipherVector, PublicKey


class SlotOverflow(CryptoError):
    """A value does not fit its slot."""


@dataclass(frozen=True)
class SlotLayout:
    slot_bits: int
    n_slots: int

    def __post_init__(self) -> None:
        if self.slot_bits < 1 or self.n_slots < 1:
            raise ValueError("slot_bits and n_slots must be positive")

    @property
    def total_bits(self) -> int:
        return self.slot_bits * self.n_slots

    def fits(self, public_key: PublicKey, *, below: int | None = None) -> bool:
        """Whether a packed value stays below the key's positive plaintext range (or ``below``)."""
        limit = below if below is not None else public_key.max_int
        return self.total_bits < int(limit).bit_length()

    @staticmethod
    def for_key(public_key: PublicKey, slot_bits: int, *, below: int | None = None) -> SlotLayout:
        limit = below if below is not None else public_key.max_int
        n_slots = (int(limit).bit_length() - 1) // slot_bits
        if n_slots < 1:
            raise SlotOverflow(f"a {slot_bits}-bit slot does not fit the key's plaintext space")
        return SlotLayout(slot_bits, n_slots)

    def offset(self) -> int:
        """The offset that maps signed values in (-2^(s-2), 2^(s-2)) to non-negative ones with headroom."""
        return 1 << (self.slot_bits - 2)

    def pack(self, rows: np.ndarray | Sequence[Sequence[int]]) -> list[int]:
        """Rows of at most ``n_slots`` non-negative ints -> one int each (slot 0 in the low bits)."""
        out = []
        top = 1 << self.slot_bits
        for row in rows:
            if len(row) > self.n_slots:
                raise SlotOverflow(f"{len(row)} values for {self.n_slots} slots")
            acc = 0
            for j, v in enumerate(row):
                v = int(v)
                if not 0 <= v < top:
                    raise SlotOverflow(f"value of {v.bit_length()} bits (or negative) in a {self.slot_bits}-bit slot")
                acc |= v << (self.slot_bits * j)
            out.append(acc)
        return out

    def unpack(self, packed: Sequence[int], count: int | None = None) -> list[list[int]]:
        """Each packed int -> ``count`` (default ``n_slots``) slot values."""
        k = self.n_slots if count is None else count
        mask = (1 << self.slot_bits) - 1
        out = []
        for value in packed:
            value = int(value)
            if value < 0 or value.bit_length() > self.total_bits:
                raise SlotOverflow("packed value exceeds the layout: a slot overflowed")
            out.append([(value >> (self.slot_bits * j)) & mask for j in range(k)])
        return out

    def pack_ciphertexts(self, cv: CipherVector) -> CipherVector:
        """Pack groups of ``n_slots`` ciphertexts into one each (Horner), slot j = element j of the group.

        Each plaintext must be non-negative and below ``2**slot_bits``, or slots bleed into each other.
        """
        if not self.fits(cv.public_key):
            raise SlotOverflow(f"a {self.total_bits}-bit slot layout does not fit the plaintexts of a "
                               f"{cv.public_key.n.bit_length()}-bit key")
        n2 = cv.public_key.nsquare
        shift = mpz(1) << self.slot_bits
        out = []
        values = cv.values
        for start in range(0, len(values), self.n_slots):
            group = values[start:start + self.n_slots]
            acc = group[-1]
            for c in reversed(group[:-1]):
                acc = gmpy2.powmod(acc, shift, n2) * c % n2
            out.append(acc)
        return CipherVector(cv.public_key, out)


# ---- signed slots: values of either sign, recovered by signed-digit unpacking ----


def pack_signed(values: Sequence[int], slot_bits: int) -> int:
    """``sum_j v_j * 2**(slot_bits * j)`` for signed ``v_j`` in ``[-2**(slot_bits-1), 2**(slot_bits-1))``.

    The result may be negative; it is what a Paillier plaintext holds after slot-wise sums and scalar
    products of signed values, as long as every slot's true value stays in that range (the headroom).
    """
    half = 1 << (slot_bits - 1)
    acc = 0
    for j, v in enumerate(values):
        v = int(v)
        if not -half <= v < half:
            raise SlotOverflow(f"value of {v.bit_length()} bits in a signed {slot_bits}-bit slot")
        acc += v << (slot_bits * j)
    return acc


def unpack_signed(packed: int, count: int, slot_bits: int) -> list[int]:
    """Inverse of :func:`pack_signed`: signed digits base ``2**slot_bits``, lowest slot first.

    Raises :class:`SlotOverflow` if anything is left above the last slot (some slot overflowed).
    """
    value = int(packed)
    full, half = 1 << slot_bits, 1 << (slot_bits - 1)
    mask = full - 1
    out = []
    for _ in range(count):
        digit = value & mask
        if digit >= half:
            digit -= full
        out.append(digit)
        value = (value - digit) >> slot_bits
    if value != 0:
        raise SlotOverflow("packed value exceeds its slots: a slot overflowed")
    return out


def slots_per_plaintext(public_key: PublicKey, slot_bits: int) -> int:
    """How many signed slots of ``slot_bits`` fit in the key's signed plaintext range."""
    count = (int(public_key.max_int).bit_length() - 1) // slot_bits
    if count < 1:
        raise SlotOverflow(f"a {slot_bits}-bit slot does not fit the key's plaintext space")
    return count
