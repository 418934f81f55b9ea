"""Okamoto-Uchiyama keys, ciphertext vectors and noise pools (the scheme object is in :mod:`protocols.he.ou`).

Keys. ``n = p^2 q``, p of ceil(n_bits / 3) bits, q the rest, from ``secrets``; the plaintext base G and the
noise base H are derived from n (:mod:`protocols.he.ou_math`), so a serialised key ("OU1") is n alone.

Encryption. ``c = G^m * H^r mod n``: G^m by fixed-base windows (a table for G and one for G^-1, so a negative
m costs what a positive one does), H^r made ahead of time. Two kinds of noise, as for Paillier
(``protocols.paillier``), differing in the length of r:

* ordinary noise, r of :data:`NOISE_BITS` = 256 bits: generic attacks on the exponent (Pollard's kangaroo)
  cost 2^128 group operations; against anyone without the factors, ``H^r`` is then as good as a uniform
  element of ``<H>`` under the short-exponent assumption. Not against the key holder, who can take discrete
  logarithms mod p and q (fields of about 683 bits at 2048-bit n).
* mask noise, r of n_bits + 128 bits: the order of H divides lcm(p - 1, q - 1) < n, so ``H^r`` is within
  2^-128 of uniform in ``<H>`` whatever the key holder computes. Use it for every re-randomisation of a value
  the key holder will decrypt.

The key owner makes noise by CRT, mod p^2 and mod q, with the exponent reduced mod p - 1 and q - 1 (H's
order mod p^2 divides p - 1: H is an n-th power), so its mask noise costs what ordinary noise does.

Plaintexts are signed integers in ``[-max_int, max_int]``, ``max_int = 2^(pb - 2) - 1`` (pb the bits of p,
known from n's size: 2^681 - 1 at 2048 bits). Decryption works mod p^2 only: ``m = L(c^(p-1) mod p^2) /
L(G^(p-1) mod p^2) mod p``; residues between max_int and p - max_int are an overflow.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence
from typing import Any

import gmpy2
import numpy as np
from gmpy2 import mpz

from protocols.errors import InvalidCiphertext, InvalidKey, PlaintextOverflow
from protocols.he.ou_math import (
    check_bases,
    check_ou_modulus,
    decrypt_residue,
    derive_bases,
    generate_modulus,
    max_plaintext,
    plaintext_unit,
)
from protocols.noise_pool import NoisePool
from protocols.paillier_math import MASK_EXTRA_BITS, MAX_KEY_BITS, FixedBase, first_non_unit

KEY_FORMAT = b"OU1"  # b"OU1" || byte length of n (2 bytes) || n; both bases are derived from n
NOISE_BITS = 256


class PublicKey:
    """An OU public key: n, and the bases G and H derived from it on construction."""

    def __init__(self, n: int | mpz, *, bases: tuple[mpz, mpz] | None = None) -> None:
        self.n = mpz(n)
        self.g, self.h = bases if bases is not None else derive_bases(self.n)
        self._derived = bases is None  # bases given (a worker process, a test): validate derives them again
        self._sizes()

    def _sizes(self) -> None:
        self.n_bits = self.n.bit_length()
        self.byte_len = (self.n_bits + 7) // 8
        self.max_int = max_plaintext(self.n_bits)
        self.r_bits = NOISE_BITS
        self.mask_bits = self.n_bits + MASK_EXTRA_BITS
        self._tables: dict[str, FixedBase] = {}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and (self.n, self.g, self.h) == (other.n, other.g, other.h)

    def __hash__(self) -> int:
        return hash((int(self.n), int(self.g), int(self.h)))

    def __getstate__(self) -> dict[str, Any]:
        return {"n": self.n, "g": self.g, "h": self.h}  # no tables: workers rebuild them once

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.n, self.g, self.h = mpz(state["n"]), mpz(state["g"]), mpz(state["h"])
        self._derived = False
        self._sizes()

    # ---- serialisation and validation ----

    def to_bytes(self) -> bytes:
        return KEY_FORMAT + self.byte_len.to_bytes(2, "big") + int(self.n).to_bytes(self.byte_len, "big")

    @classmethod
    def from_bytes(cls, data: bytes, *, allow_insecure: bool = False, key_bits: int | None = None) -> PublicKey:
        """A peer's key, validated: the size from the length field first, then n, then the derived bases."""
        if len(data) < 5 or data[:3] != KEY_FORMAT:
            raise InvalidKey("not a serialised Okamoto-Uchiyama public key")
        nb = int.from_bytes(data[3:5], "big")
        if key_bits is not None and nb != (key_bits + 7) // 8:
            raise InvalidKey(f"key of {nb} bytes ({8 * nb} bits at most); this job uses keys of exactly "
                             f"{key_bits} bits (key_bits)")
        if nb == 0 or len(data) != 5 + nb:
            raise InvalidKey("public key has the wrong length")
        if nb > (MAX_KEY_BITS + 7) // 8:
            raise InvalidKey(f"key of {nb} bytes; at most {MAX_KEY_BITS} bits are accepted")
        if data[5] == 0:
            raise InvalidKey("public key modulus is not minimally encoded")
        n = mpz(int.from_bytes(data[5:], "big"))
        check_ou_modulus(n, allow_insecure=allow_insecure, key_bits=key_bits)
        key = cls(n)
        check_bases(key.n, key.g, key.h)
        return key

    def validate(self, *, allow_insecure: bool = False, key_bits: int | None = None) -> None:
        """n as :meth:`from_bytes` checks it; G and H the bases derived from n, units of order > 1."""
        check_ou_modulus(self.n, allow_insecure=allow_insecure, key_bits=key_bits)
        if not self._derived and (self.g, self.h) != derive_bases(self.n):
            raise InvalidKey("the bases are not the ones derived from the modulus")
        check_bases(self.n, self.g, self.h)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    # ---- encoding ----

    def encode(self, values: Iterable[int]) -> list[mpz]:
        """Signed plaintexts, range-checked (G^m is computed from the signed value itself)."""
        out = []
        limit = self.max_int
        for v in values:
            v = int(v)
            if -limit > v or v > limit:
                raise PlaintextOverflow(f"plaintext of {v.bit_length()} bits exceeds the key's signed range")
            out.append(mpz(v))
        return out

    def decode(self, residues: Iterable[int]) -> list[int]:
        """Signed values from residues already mapped to (-p/2, p/2) by the private key (range-checked)."""
        out = []
        limit = self.max_int
        for r in residues:
            if -limit > r or r > limit:
                raise PlaintextOverflow("decrypted value lies in the overflow band: a result exceeded the key's range")
            out.append(int(r))
        return out

    # ---- encryption ----

    def _table(self, name: str) -> FixedBase:
        table = self._tables.get(name)
        if table is None:
            base, bits = {"g": (self.g, self.max_int.bit_length()),
                          "g_inv": (gmpy2.invert(self.g, self.n), self.max_int.bit_length()),
                          "noise": (self.h, self.r_bits), "mask": (self.h, self.mask_bits)}[name]
            table = self._tables[name] = FixedBase(base, self.n, bits)
        return table

    def g_pow(self, m: mpz) -> mpz:
        """``G^m mod n`` for a signed m within the plaintext range (fixed-base windows)."""
        return self._table("g").pow(m) if m >= 0 else self._table("g_inv").pow(-m)

    def noise(self) -> mpz:
        """One ordinary ``H^r``, r of :data:`NOISE_BITS` bits (the public path: fixed-base windows mod n)."""
        return self._table("noise").pow(secrets.randbits(self.r_bits))

    def mask_noise(self) -> mpz:
        """One ``H^r`` with r of n_bits + 128 bits: within 2^-128 of uniform in <H>."""
        return self._table("mask").pow(secrets.randbits(self.mask_bits))

    def raw_encrypt(self, residues: Sequence[mpz], noise: Sequence[mpz]) -> list[mpz]:
        """``G^m * noise mod n`` for encoded (signed, range-checked) m."""
        if len(noise) < len(residues):
            raise ValueError("not enough noise values")
        n = self.n
        return [self.g_pow(m) * s % n for m, s in zip(residues, noise, strict=False)]


class PrivateKey:
    """p and q; decryption mod p^2, noise by CRT (mod p^2 and q)."""

    def __init__(self, public_key: PublicKey, p: int | mpz, q: int | mpz) -> None:
        self.public_key, self.p, self.q = public_key, mpz(p), mpz(q)
        if self.p * self.p * self.q != public_key.n or self.p == self.q:
            raise InvalidKey("p^2 q does not equal the public modulus")
        self.psquare = self.p * self.p
        unit = plaintext_unit(public_key.g, self.p)
        if unit is None:
            raise InvalidKey("the plaintext base does not decrypt under this key")
        self.g_unit = unit
        self.half = self.p // 2
        self.psq_inverse = gmpy2.invert(self.psquare, self.q)
        self._tables: tuple[FixedBase, FixedBase] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"public_key": self.public_key, "p": self.p, "q": self.q}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["public_key"], state["p"], state["q"])  # type: ignore[misc]

    def _check_key(self, cv: CipherVector) -> None:
        if cv.public_key != self.public_key:
            raise InvalidCiphertext("ciphertexts are under another key")

    def decrypt_raw(self, cv: CipherVector) -> list[mpz]:
        """Plaintexts mapped to (-p/2, p/2): one exponentiation mod p^2 each."""
        self._check_key(cv)
        p, p2, unit, half = self.p, self.psquare, self.g_unit, self.half
        out = []
        for c in cv.values:
            m = decrypt_residue(c, p, p2, unit)
            out.append(m - p if m > half else m)
        return out

    def decrypt(self, cv: CipherVector) -> list[int]:
        return self.public_key.decode(self.decrypt_raw(cv))

    def _h_pow(self, e: int) -> mpz:
        """``H^e mod n`` for any e >= 0 by CRT: e mod p - 1 at p^2, e mod q - 1 at q, fixed-base tables."""
        if self._tables is None:
            pk, p2, q = self.public_key, self.psquare, self.q
            self._tables = (FixedBase(pk.h % p2, p2, self.p.bit_length()), FixedBase(pk.h % q, q, q.bit_length()))
        xp, xq = self._tables[0].pow(e % (self.p - 1)), self._tables[1].pow(e % (self.q - 1))
        return xp + self.psquare * ((xq - xp) * self.psq_inverse % self.q)

    def noise(self) -> mpz:
        return self._h_pow(secrets.randbits(self.public_key.r_bits))

    def mask_noise(self) -> mpz:
        return self._h_pow(secrets.randbits(self.public_key.mask_bits))


def generate_keypair(n_bits: int = 2048, *, allow_insecure: bool = False) -> tuple[PublicKey, PrivateKey]:
    """A fresh OU key pair with an n of exactly ``n_bits`` bits (at least 2048 unless ``allow_insecure``)."""
    if n_bits < 2048 and not allow_insecure:
        raise InvalidKey(f"key of {n_bits} bits; at least 2048 are required")
    n, p, q = generate_modulus(n_bits)
    pk = PublicKey(n)
    return pk, PrivateKey(pk, p, q)


class CipherVector:
    """OU ciphertexts under one public key: integers in Z*_n."""

    __slots__ = ("public_key", "values")

    def __init__(self, public_key: PublicKey, values: list[mpz]) -> None:
        self.public_key, self.values = public_key, values

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: slice) -> CipherVector:
        if not isinstance(index, slice):
            raise TypeError("index a CipherVector with a slice")
        return CipherVector(self.public_key, self.values[index])

    def _same(self, other: CipherVector) -> None:
        if other.public_key != self.public_key:
            raise InvalidCiphertext("ciphertexts are under different keys")
        if len(other) != len(self):
            raise ValueError(f"vectors of lengths {len(self)} and {len(other)}")

    def add(self, other: CipherVector) -> CipherVector:
        self._same(other)
        n = self.public_key.n
        return CipherVector(self.public_key, [a * b % n for a, b in zip(self.values, other.values, strict=True)])

    def add_plain(self, ints: Sequence[int] | np.ndarray) -> CipherVector:
        pk = self.public_key
        if len(ints) != len(self):
            raise ValueError(f"{len(ints)} plaintexts for {len(self)} ciphertexts")
        n = pk.n
        return CipherVector(pk, [c * pk.g_pow(m) % n for c, m in zip(self.values, pk.encode(ints), strict=True)])

    def mul_plain(self, ints: Sequence[int] | np.ndarray) -> CipherVector:
        if len(ints) != len(self):
            raise ValueError(f"{len(ints)} scalars for {len(self)} ciphertexts")
        n = self.public_key.n
        out = []
        for c, k in zip(self.values, ints, strict=True):
            k = int(k)
            out.append(gmpy2.powmod(c, k, n) if k >= 0 else gmpy2.powmod(gmpy2.invert(c, n), -k, n))
        return CipherVector(self.public_key, out)

    def rerandomize(self, pool: NoisePool) -> CipherVector:
        pool.check(self.public_key, mask=True)
        n = self.public_key.n
        noise = pool.take(len(self))
        return CipherVector(self.public_key, [c * s % n for c, s in zip(self.values, noise, strict=True)])

    @staticmethod
    def concat(parts: Sequence[CipherVector]) -> CipherVector:
        if not parts:
            raise ValueError("nothing to concatenate")
        key = parts[0].public_key
        values: list[mpz] = []
        for part in parts:
            if part.public_key != key:
                raise InvalidCiphertext("ciphertexts are under different keys")
            values.extend(part.values)
        return CipherVector(key, values)

    def to_bytes(self) -> bytes:
        width = self.public_key.byte_len
        return b"".join(int(c).to_bytes(width, "big") for c in self.values)

    @classmethod
    def from_bytes(cls, public_key: PublicKey, data: bytes) -> CipherVector:
        width = public_key.byte_len
        if len(data) % width:
            raise InvalidCiphertext(f"{len(data)} bytes is not a whole number of {width}-byte ciphertexts")
        n = public_key.n
        values = []
        for i in range(0, len(data), width):
            c = mpz(int.from_bytes(data[i:i + width], "big"))
            if not 0 < c < n:
                raise InvalidCiphertext(f"ciphertext {i // width} is not in Z*_n")
            values.append(c)
        bad = first_non_unit(values, n)  # one product and one gcd for the vector
        if bad is not None:
            raise InvalidCiphertext(f"ciphertext {bad} is not in Z*_n")
        return cls(public_key, values)


__all__ = ["KEY_FORMAT", "NOISE_BITS", "CipherVector", "NoisePool", "PrivateKey", "PublicKey", "generate_keypair"]
