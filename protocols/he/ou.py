"""Okamoto-Uchiyama behind the HE seam: :class:`OUScheme` over the keys and vectors of
:mod:`protocols.he.ou_keys` and the kernels of :mod:`protocols.he.ou_pool`.

Ciphertexts are integers mod n = p^2 q (n_bits long, half a Paillier ciphertext), adding plaintexts
multiplies them mod n, and ``X^T [[d]]`` is the bucket multi-exponentiation shared with Paillier
(:func:`protocols.paillier_math.matvec_t_values`) modulo n. The plaintext space is smaller: signed values
up to ``2^(pb-2) - 1`` (pb = ceil(n_bits / 3), the bits of p), so a 2048-bit key packs 680 bits of slots
(:meth:`OUScheme.slots_per_plaintext`): 9 slots of 69 bits, 5 of 120, 16 of 42; a 3072-bit key 1021 bits.
Security and costs: docs/security.md, "Okamoto-Uchiyama".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gmpy2
import numpy as np
from gmpy2 import mpz

from protocols.compute import ComputeSpec
from protocols.he.ou_keys import CipherVector, NoisePool, PrivateKey, PublicKey, generate_keypair
from protocols.he.ou_pool import OUPool
from protocols.he.scheme import HEScheme
from protocols.packing import SlotLayout, SlotOverflow
from protocols.paillier_math import matvec_t_values

OU = "ou"


def ou_slots(public_key: PublicKey, slot_bits: int) -> int:
    """Signed slots of ``slot_bits`` bits in one plaintext (below p: ``max_int``'s bits less one)."""
    count = (int(public_key.max_int).bit_length() - 1) // slot_bits
    if count < 1:
        raise SlotOverflow(f"a {slot_bits}-bit slot does not fit the key's plaintext space")
    return count


class OUScheme(HEScheme):
    """Okamoto-Uchiyama with bases derived from n, noise made ahead, decryption mod p^2."""

    name = OU

    def generate_keypair(self, key_bits: int, *, allow_insecure: bool = False) -> tuple[PublicKey, PrivateKey]:
        return generate_keypair(key_bits, allow_insecure=allow_insecure)

    def public_key_from_bytes(self, data: bytes, *, key_bits: int | None, allow_insecure: bool = False) -> PublicKey:
        return PublicKey.from_bytes(data, allow_insecure=allow_insecure, key_bits=key_bits)

    def validate_public_key(self, public_key: PublicKey, *, key_bits: int | None,
                            allow_insecure: bool = False) -> None:
        public_key.validate(allow_insecure=allow_insecure, key_bits=key_bits)

    def noise_pool(self, public_key: PublicKey, private_key: PrivateKey | None = None, *,
                   mask: bool = False) -> NoisePool:
        return NoisePool(public_key, private_key, mask=mask)

    def encrypt(self, public_key: PublicKey, ints: Sequence[int] | np.ndarray, noise: NoisePool) -> CipherVector:
        residues = public_key.encode(ints)
        return CipherVector(public_key, public_key.raw_encrypt(residues, noise.take(len(residues))))

    def kernels(self, compute: ComputeSpec = None) -> OUPool:
        return OUPool(compute)

    def ciphertexts(self, public_key: PublicKey, values: list[mpz]) -> CipherVector:
        return CipherVector(public_key, values)

    def ciphertexts_from_bytes(self, public_key: PublicKey, data: bytes) -> CipherVector:
        return CipherVector.from_bytes(public_key, data)

    def concat(self, parts: Sequence[Any]) -> CipherVector:
        return CipherVector.concat(parts)

    def ciphertext_modulus(self, public_key: PublicKey) -> mpz:
        return public_key.n

    def matvec_t(self, cv: CipherVector, X: np.ndarray) -> CipherVector:
        return CipherVector(cv.public_key, matvec_t_values(cv.values, X, cv.public_key.n))

    def rerandomize(self, cv: CipherVector, noise: NoisePool) -> CipherVector:
        return cv.rerandomize(noise)

    def slots_per_plaintext(self, public_key: PublicKey, slot_bits: int) -> int:
        return ou_slots(public_key, slot_bits)

    def pack_ciphertexts(self, cv: CipherVector, layout: SlotLayout) -> CipherVector:
        """Horner's rule mod n: ``(((c_{k-1})^(2^s) c_{k-2})^(2^s) ...) c_0``, slot j = element j of its group."""
        if layout.total_bits >= int(cv.public_key.max_int).bit_length():
            raise SlotOverflow(f"a {layout.total_bits}-bit slot layout does not fit the plaintexts of a "
                               f"{cv.public_key.n_bits}-bit Okamoto-Uchiyama key")
        n = cv.public_key.n
        shift = mpz(1) << layout.slot_bits
        out = []
        values = cv.values
        for start in range(0, len(values), layout.n_slots):
            group = values[start:start + layout.n_slots]
            acc = group[-1]
            for c in reversed(group[:-1]):
                acc = gmpy2.powmod(acc, shift, n) * c % n
            out.append(acc)
        return CipherVector(cv.public_key, out)

    def decrypt(self, private_key: PrivateKey, cv: CipherVector) -> list[int]:
        return private_key.decrypt(cv)


__all__ = ["OU", "OUScheme", "ou_slots"]
