"""Paillier behind the HE seam: :class:`PaillierScheme` adapts the kernels of ``protocols.paillier``,
``protocols.paillier_pool`` and ``protocols.packing`` (which stay where they are, unchanged) to
:class:`protocols.he.scheme.HEScheme`. Its objects are those modules' own: ``PublicKey``, ``PrivateKey``,
``CipherVector``, ``NoisePool`` and ``PaillierPool`` as the kernels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gmpy2 import mpz

from protocols import modulus_proof
from protocols.compute import ComputeSpec
from protocols.he.scheme import HEScheme
from protocols.packing import SlotLayout, slots_per_plaintext
from protocols.paillier import CipherVector, NoisePool, PrivateKey, PublicKey, generate_keypair, matvec_t
from protocols.paillier_pool import PaillierPool

PAILLIER = "paillier"


class PaillierScheme(HEScheme):
    """Paillier with g = n + 1, noise from a base derived from n, CRT decryption (``protocols.paillier``)."""

    name = PAILLIER

    def generate_keypair(self, key_bits: int, *, allow_insecure: bool = False) -> tuple[PublicKey, PrivateKey]:
        return generate_keypair(key_bits, allow_insecure=allow_insecure)

    def public_key_from_bytes(self, data: bytes, *, key_bits: int | None, allow_insecure: bool = False) -> PublicKey:
        return PublicKey.from_bytes(data, allow_insecure=allow_insecure, key_bits=key_bits)

    def validate_public_key(self, public_key: PublicKey, *, key_bits: int | None,
                            allow_insecure: bool = False) -> None:
        public_key.validate(allow_insecure=allow_insecure, key_bits=key_bits)

    def key_proof(self, private_key: PrivateKey, context: bytes) -> bytes:
        """The proof that the modulus is a Paillier-Blum modulus (``protocols.modulus_proof``, CGGMP's Pi^mod)."""
        return modulus_proof.prove(private_key, context)

    def verify_key_proof(self, public_key: PublicKey, proof: bytes | None, context: bytes) -> None:
        modulus_proof.verify(public_key.n, proof, context)

    def noise_pool(self, public_key: PublicKey, private_key: PrivateKey | None = None, *,
                   mask: bool = False) -> NoisePool:
        return NoisePool(public_key, private_key, mask=mask)

    def encrypt(self, public_key: PublicKey, ints: Sequence[int] | np.ndarray, noise: NoisePool) -> CipherVector:
        residues = public_key.encode(ints)
        return CipherVector(public_key, public_key.raw_encrypt(residues, noise.take(len(residues))))

    def kernels(self, compute: ComputeSpec = None) -> PaillierPool:
        return PaillierPool(compute)

    def ciphertexts(self, public_key: PublicKey, values: list[mpz]) -> CipherVector:
        return CipherVector(public_key, values)

    def ciphertexts_from_bytes(self, public_key: PublicKey, data: bytes) -> CipherVector:
        return CipherVector.from_bytes(public_key, data)

    def concat(self, parts: Sequence[Any]) -> CipherVector:
        return CipherVector.concat(parts)

    def ciphertext_modulus(self, public_key: PublicKey) -> mpz:
        return public_key.nsquare

    def matvec_t(self, cv: CipherVector, X: np.ndarray) -> CipherVector:
        return matvec_t(cv, X)

    def rerandomize(self, cv: CipherVector, noise: NoisePool) -> CipherVector:
        return cv.rerandomize(pool=noise)

    def slots_per_plaintext(self, public_key: PublicKey, slot_bits: int) -> int:
        return slots_per_plaintext(public_key, slot_bits)

    def pack_ciphertexts(self, cv: CipherVector, layout: SlotLayout) -> CipherVector:
        return layout.pack_ciphertexts(cv)

    def decrypt(self, private_key: PrivateKey, cv: CipherVector) -> list[int]:
        return private_key.decrypt(cv)


__all__ = ["PAILLIER", "PaillierScheme"]
