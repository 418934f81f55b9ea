"""Paillier, g = n + 1, Damgard-Jurik-Nielsen noise from a base derived from n, on gmpy2; whole vectors.

Keys. ``n = p q`` with p, q Blum primes (p = q = 3 mod 4) of n_bits/2 bits each, from ``secrets``; 2048
or 3072-bit n (factoring n: about 112 and 128 bits of security, NIST SP 800-57). The noise base is not
chosen by the key holder but derived from n (:func:`derive_noise_base`): ``x`` = SHAKE-256 over a domain
tag, n and a counter, reduced mod n (re-drawn until ``1 < x < n - 1`` and ``gcd(x, n) = 1``), ``h = -x^2
mod n``, ``h_s = h^n mod n^2``. h generates (up to a small index) the subgroup of Jacobi-symbol-1 elements,
as in DJN. A serialised key ("PK2") is n alone and the receiver recomputes h_s, so a peer cannot hand over
a base without randomness (``h_s = n^2 - 1`` makes every "fresh" encryption deterministic); ``validate``
refuses a key object whose h_s is not the derived one, and the old format "PK1" (which carried h_s) is
refused.

Encryption. ``c = (1 + m n) * h_s^r mod n^2``: the noise ``h_s^r = (h^r)^n`` is an n-th residue, so c is an
ordinary Paillier ciphertext (phe decrypts it). Two kinds of noise, differing in the length of r:

* ordinary noise, r of ceil(n_bits/2) bits (DJN section 4.2; the length SecretFlow HEU uses for
  ZPaillier). Against anyone *without* the private key it is as good as random noise under the DJN
  short-exponent assumption: ``h_s^r`` with such a short r cannot be told from a uniform element of
  ``<h_s>`` (generic attacks on the exponent cost 2^(n_bits/4); here x is public, so the assumption is
  the usual one for a publicly sampled random base), and the scheme is then as strong as factoring n.
  It is *not* enough against the *key holder*: who knows p and q can take discrete logarithms mod p and
  q (1024-bit primes for a 2048-bit n: about 80 bits of work, NIST's figure for 1024-bit fields) and so
  learn r, and with it a multiplier hidden in the noise of a product of his own ciphertexts.
* mask noise (:meth:`PublicKey.mask_noise`), r of n_bits + 128 bits. The order of h_s divides lambda(n)
  < n, so r mod that order is within 2^-128 of uniform, and ``h_s^r`` is within 2^-128 of uniform in
  ``<h_s>``. Multiplying any ciphertext whose noise lies in ``<h_s>`` (every ciphertext an honest key
  holder or this module makes) by ``Enc_mask(R)`` therefore leaves noise statistically independent of
  the ciphertext's own noise, whatever the key holder can compute: use it for every re-randomisation of
  a value the key holder will decrypt (:meth:`CipherVector.rerandomize`, ``NoisePool(..., mask=True)``).

Noise is made ahead of time (:class:`NoisePool`) with fixed-base window tables (a second, longer table for
mask noise), and via CRT mod p^2 and q^2 when the key owner makes it: there the exponent is reduced mod
p - 1 and q - 1 (the order of h_s mod p^2 divides p - 1), so the owner's mask noise costs what ordinary
noise does. Online encryption is one modular multiplication. Every ciphertext gets its own noise; a pool
hands each value out once. docs/security.md has the security levels and the measured costs.

Decryption uses CRT (mod p^2 and q^2, as phe does). Plaintexts are signed: x is encoded as x mod n, and
residues between ``max_int`` and ``n - max_int`` mean an overflow and raise :class:`PlaintextOverflow`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gmpy2
import numpy as np
from gmpy2 import mpz

from protocols.errors import InvalidCiphertext, InvalidKey, PlaintextOverflow
from protocols.noise_pool import NoisePool
from protocols.paillier_math import (
    MASK_EXTRA_BITS,
    MAX_KEY_BITS,
    MIN_SECURE_BITS,
    NOISE_BASE_DOMAIN,
    SMALL_FACTOR_BOUND,
    FixedBase,
    check_modulus,
    derive_noise_base,
    first_non_unit,
    matvec_t_values,
    noise_base_seed,
    random_blum_prime,
)

KEY_FORMAT = b"PK2"  # b"PK2" || byte length of n (2 bytes) || n; the noise base is derived, never sent
RETIRED_KEY_FORMATS = (b"PK1",)  # carried a sender-chosen h_s


@dataclass(eq=False)
class PublicKey:
    """A Paillier public key: the modulus n, and the noise base h_s derived from it on construction."""

    n: mpz
    hs: mpz = field(init=False)
    n_bits: int = field(init=False)
    nsquare: mpz = field(init=False)
    byte_len: int = field(init=False)
    max_int: int = field(init=False)
    r_bits: int = field(init=False)
    mask_bits: int = field(init=False)
    _fixed: FixedBase | None = field(default=None, init=False, repr=False)
    _fixed_mask: FixedBase | None = field(default=None, init=False, repr=False)
    _derived: tuple[mpz, mpz] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.n = mpz(self.n)
        self.hs = derive_noise_base(self.n)
        self._derived = (self.n, self.hs)  # validate need not derive it again
        self._sizes()

    def _sizes(self) -> None:
        self.n_bits = self.n.bit_length()
        self.nsquare = self.n * self.n
        self.byte_len = (self.nsquare.bit_length() + 7) // 8
        self.max_int = int((self.n - 1) // 3)
        self.r_bits = -(-self.n_bits // 2)
        self.mask_bits = self.n_bits + MASK_EXTRA_BITS

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and self.n == other.n and self.hs == other.hs

    def __getstate__(self) -> dict[str, Any]:
        # Window tables are large and cheap to rebuild: never pickle them to worker processes. h_s travels
        # (worker processes trust their parent), so a worker does not pay an exponentiation per call.
        return {"n": self.n, "hs": self.hs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.n, self.hs = mpz(state["n"]), mpz(state["hs"])
        self._fixed = self._fixed_mask = None
        self._derived = None  # not derived here: validate recomputes it
        self._sizes()

    def __hash__(self) -> int:
        return hash((int(self.n), int(self.hs)))

    # ---- serialisation and validation ----

    def to_bytes(self) -> bytes:
        """``b"PK2" || len(n) (2 bytes) || n``: the receiver derives h_s itself."""
        nb = (self.n_bits + 7) // 8
        return KEY_FORMAT + nb.to_bytes(2, "big") + int(self.n).to_bytes(nb, "big")

    @classmethod
    def from_bytes(cls, data: bytes, *, allow_insecure: bool = False, key_bits: int | None = None) -> PublicKey:
        """A peer's key, validated: the modulus is checked before the noise base is derived from it.

        ``key_bits``: the size the job agreed on; a key of any other size is refused from its length field,
        before the modulus is read or tested (the receiver's work then does not grow with what it is sent).
        """
        if data[:3] in RETIRED_KEY_FORMATS:
            raise InvalidKey(f"public key in the retired format {data[:3].decode()} (it carried a noise base "
                             f"chosen by the sender); the peer must upgrade to {KEY_FORMAT.decode()}")
        if len(data) < 5 or data[:3] != KEY_FORMAT:
            raise InvalidKey("not a serialised public key")
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
        check_modulus(n, allow_insecure=allow_insecure, key_bits=key_bits)
        return cls(n)

    def validate(self, *, allow_insecure: bool = False, key_bits: int | None = None) -> None:
        """Checks a key: size (exactly ``key_bits`` when given), odd, not a prime or perfect power, no small
        factors; h_s the derived base."""
        check_modulus(self.n, allow_insecure=allow_insecure, key_bits=key_bits)
        if self._derived != (self.n, self.hs) and self.hs != derive_noise_base(self.n):
            raise InvalidKey("noise base is not the one derived from the modulus")

    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    # ---- encoding ----

    def encode(self, values: Iterable[int]) -> list[mpz]:
        out = []
        n, limit = self.n, self.max_int
        for v in values:
            v = int(v)
            if -limit > v or v > limit:
                raise PlaintextOverflow(f"plaintext of {v.bit_length()} bits exceeds the key's signed range")
            out.append(mpz(v) % n)
        return out

    def decode(self, residues: Iterable[mpz]) -> list[int]:
        out = []
        n, limit = self.n, self.max_int
        for r in residues:
            if r <= limit:
                out.append(int(r))
            elif r >= n - limit:
                out.append(int(r - n))
            else:
                raise PlaintextOverflow("decrypted value lies in the overflow band: a result exceeded the key's range")
        return out

    # ---- encryption ----

    def noise(self) -> mpz:
        """One fresh ordinary ``h_s^r``, r of ``r_bits`` bits (slow path: fixed-base tables mod n^2).

        Hides plaintexts from anyone without the private key; not from the key holder (see the module
        docstring): re-randomise what the key holder decrypts with :meth:`mask_noise`.
        """
        if self._fixed is None:
            self._fixed = FixedBase(self.hs, self.nsquare, self.r_bits)
        return self._fixed.pow(secrets.randbits(self.r_bits))

    def mask_noise(self) -> mpz:
        """One fresh ``h_s^r`` with r of ``mask_bits`` = n_bits + 128 bits: within 2^-128 of uniform in <h_s>.

        Its own fixed-base table (about ``mask_bits / r_bits`` times the ordinary one's size and cost).
        """
        if self._fixed_mask is None:
            self._fixed_mask = FixedBase(self.hs, self.nsquare, self.mask_bits)
        return self._fixed_mask.pow(secrets.randbits(self.mask_bits))

    def raw_encrypt(self, residues: Sequence[mpz], noise: Sequence[mpz]) -> list[mpz]:
        """``(1 + m n) * noise mod n^2`` for residues m in [0, n): one multiplication each."""
        if len(noise) < len(residues):
            raise ValueError("not enough noise values")
        n, n2 = self.n, self.nsquare
        return [(1 + m * n) * s % n2 for m, s in zip(residues, noise, strict=False)]

    def encrypt(self, plaintexts: Sequence[int] | np.ndarray, *, pool: NoisePool | None = None,
                mask: bool = False) -> CipherVector:
        """Encryptions of signed integers; ``mask``: mask noise (a pool given must then be a mask pool)."""
        residues = self.encode(plaintexts)
        if pool is not None:
            pool.check(self, mask=mask)
            noise = pool.take(len(residues))
        else:
            make = self.mask_noise if mask else self.noise
            noise = [make() for _ in residues]
        return CipherVector(self, self.raw_encrypt(residues, noise))


@dataclass(eq=False)
class PrivateKey:
    public_key: PublicKey
    p: mpz
    q: mpz

    def __post_init__(self) -> None:
        self.p, self.q = mpz(min(self.p, self.q)), mpz(max(self.p, self.q))
        if self.p * self.q != self.public_key.n:
            raise InvalidKey("p * q does not equal the public modulus")
        self.psquare, self.qsquare = self.p * self.p, self.q * self.q
        self.p_inverse = gmpy2.invert(self.p, self.q)
        n = self.public_key.n
        self.hp = gmpy2.invert(self._l(gmpy2.powmod(n + 1, self.p - 1, self.psquare), self.p), self.p)
        self.hq = gmpy2.invert(self._l(gmpy2.powmod(n + 1, self.q - 1, self.qsquare), self.q), self.q)
        self._fixed_p: FixedBase | None = None
        self._fixed_q: FixedBase | None = None
        # CRT coefficients for recombining mod n^2: x = xp + p^2 * ((xq - xp) * inv(p^2, q^2) mod q^2)
        self.psq_inverse = gmpy2.invert(self.psquare, self.qsquare)

    def __getstate__(self) -> dict[str, object]:
        return {"public_key": self.public_key, "p": self.p, "q": self.q}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.public_key, self.p, self.q = state["public_key"], state["p"], state["q"]  # type: ignore[assignment]
        self.__post_init__()

    @staticmethod
    def _l(x: mpz, d: mpz) -> mpz:
        return (x - 1) // d

    def _check_key(self, cv: CipherVector) -> None:
        if cv.public_key != self.public_key:
            raise InvalidCiphertext("ciphertexts are under another key")

    def decrypt_raw(self, cv: CipherVector) -> list[mpz]:
        """Residues in [0, n) by CRT."""
        self._check_key(cv)
        p, q, p2, q2 = self.p, self.q, self.psquare, self.qsquare
        pm1, qm1, hp, hq, pinv = self.p - 1, self.q - 1, self.hp, self.hq, self.p_inverse
        out = []
        for c in cv.values:
            mp = (gmpy2.powmod(c % p2, pm1, p2) - 1) // p * hp % p
            mq = (gmpy2.powmod(c % q2, qm1, q2) - 1) // q * hq % q
            out.append(mp + p * ((mq - mp) * pinv % q))
        return out

    def decrypt(self, cv: CipherVector) -> list[int]:
        return self.public_key.decode(self.decrypt_raw(cv))

    def decrypt_small(self, cv: CipherVector) -> list[mpz]:
        """Residues known to be below p (e.g. packed non-negative slots sized for it): half the work."""
        self._check_key(cv)
        p, p2, pm1, hp = self.p, self.psquare, self.p - 1, self.hp
        return [(gmpy2.powmod(c % p2, pm1, p2) - 1) // p * hp % p for c in cv.values]

    def _hs_pow(self, e: int) -> mpz:
        """``h_s^e mod n^2`` for any e >= 0, mod p^2 and q^2 with fixed-base tables.

        The order of h_s = h^n mod p^2 divides p - 1 (Z*_{p^2} has order p (p - 1) and n is a multiple of
        p), so e is reduced mod p - 1 and q - 1 first: tables of half the modulus's bits serve any length.
        """
        if self._fixed_p is None or self._fixed_q is None:
            pk, p2, q2 = self.public_key, self.psquare, self.qsquare
            bits = max(pk.r_bits, self.p.bit_length(), self.q.bit_length())
            self._fixed_p = FixedBase(pk.hs % p2, p2, bits)
            self._fixed_q = FixedBase(pk.hs % q2, q2, bits)
        xp, xq = self._fixed_p.pow(e % (self.p - 1)), self._fixed_q.pow(e % (self.q - 1))
        return xp + self.psquare * ((xq - xp) * self.psq_inverse % self.qsquare)

    def noise(self) -> mpz:
        """Ordinary ``h_s^r mod n^2`` (r of ``r_bits`` bits) by CRT: the key owner's fast path."""
        return self._hs_pow(secrets.randbits(self.public_key.r_bits))

    def mask_noise(self) -> mpz:
        """Mask noise ``h_s^r`` (r of ``mask_bits`` bits), the same distribution as the public key's, by CRT.

        The exponent is reduced mod p - 1 and q - 1, so it costs the same as :meth:`noise`.
        """
        return self._hs_pow(secrets.randbits(self.public_key.mask_bits))


def generate_keypair(n_bits: int = 2048, *, allow_insecure: bool = False) -> tuple[PublicKey, PrivateKey]:
    if n_bits < MIN_SECURE_BITS and not allow_insecure:
        raise InvalidKey(f"keys of {n_bits} bits are insecure; use at least {MIN_SECURE_BITS}")
    if n_bits % 2 or n_bits < 256:
        raise InvalidKey("n_bits must be even and at least 256")
    while True:
        p, q = random_blum_prime(n_bits // 2), random_blum_prime(n_bits // 2)
        n = p * q
        if p != q and n.bit_length() == n_bits:
            break
    public = PublicKey(n)  # the noise base is derived from n
    return public, PrivateKey(public, p, q)


class CipherVector:
    """A vector of ciphertexts under one public key."""

    __slots__ = ("public_key", "values")

    def __init__(self, public_key: PublicKey, values: list[mpz]) -> None:
        self.public_key = public_key
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: slice) -> CipherVector:
        if not isinstance(index, slice):
            raise TypeError("index a CipherVector with a slice")
        return CipherVector(self.public_key, self.values[index])

    def _same_key(self, other: CipherVector) -> None:
        if other.public_key != self.public_key:
            raise InvalidCiphertext("ciphertexts are under different keys")
        if len(other) != len(self):
            raise ValueError(f"vectors of lengths {len(self)} and {len(other)}")

    def add(self, other: CipherVector) -> CipherVector:
        self._same_key(other)
        n2 = self.public_key.nsquare
        return CipherVector(self.public_key, [a * b % n2 for a, b in zip(self.values, other.values, strict=True)])

    def add_plain(self, ints: Sequence[int] | np.ndarray) -> CipherVector:
        pk = self.public_key
        if len(ints) != len(self):
            raise ValueError(f"{len(ints)} plaintexts for {len(self)} ciphertexts")
        n, n2 = pk.n, pk.nsquare
        return CipherVector(pk, [c * (1 + m * n) % n2 for c, m in zip(self.values, pk.encode(ints), strict=True)])

    def mul_plain(self, ints: Sequence[int] | np.ndarray) -> CipherVector:
        pk = self.public_key
        if len(ints) != len(self):
            raise ValueError(f"{len(ints)} scalars for {len(self)} ciphertexts")
        n2 = pk.nsquare
        out = []
        for c, k in zip(self.values, ints, strict=True):
            k = int(k)
            out.append(gmpy2.powmod(c, k, n2) if k >= 0 else gmpy2.powmod(gmpy2.invert(c, n2), -k, n2))
        return CipherVector(pk, out)

    def sum(self) -> CipherVector:
        n2 = self.public_key.nsquare
        acc = mpz(1)
        for c in self.values:
            acc = acc * c % n2
        return CipherVector(self.public_key, [acc])

    def rerandomize(self, *, pool: NoisePool | None = None) -> CipherVector:
        """The same plaintexts under mask noise: the result's noise is independent of this vector's, up to
        2^-128, even for the key holder. ``pool`` must be a mask pool (``NoisePool(..., mask=True)``)."""
        if pool is not None:
            pool.check(self.public_key, mask=True)
            noise = pool.take(len(self))
        else:
            noise = [self.public_key.mask_noise() for _ in self.values]
        n2 = self.public_key.nsquare
        return CipherVector(self.public_key, [c * s % n2 for c, s in zip(self.values, noise, strict=True)])

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
        return b"".join(gmpy2.to_binary(c)[2:][::-1].rjust(width, b"\x00") if c else bytes(width)
                        for c in self.values)

    @classmethod
    def from_bytes(cls, public_key: PublicKey, data: bytes) -> CipherVector:
        width = public_key.byte_len
        if len(data) % width:
            raise InvalidCiphertext(f"{len(data)} bytes is not a whole number of {width}-byte ciphertexts")
        n, n2 = public_key.n, public_key.nsquare
        values = []
        for i in range(0, len(data), width):
            c = mpz(int.from_bytes(data[i:i + width], "big"))
            if not 0 < c < n2:
                raise InvalidCiphertext(f"ciphertext {i // width} is not in Z*_(n^2)")
            values.append(c)
        bad = first_non_unit(values, n)  # one product and one gcd for the vector
        if bad is not None:
            raise InvalidCiphertext(f"ciphertext {bad} is not in Z*_(n^2)")
        return cls(public_key, values)


def matvec_t(cv: CipherVector, X: np.ndarray) -> CipherVector:
    """``[[X^T d]]``: k ciphertexts ``[[sum_i X[i, j] d_i]]`` for an integer matrix X of shape (m, k)
    (bucket multi-exponentiation for small scalars: :func:`protocols.paillier_math.matvec_t_values`)."""
    return CipherVector(cv.public_key, matvec_t_values(cv.values, X, cv.public_key.nsquare))


__all__ = ["KEY_FORMAT", "MASK_EXTRA_BITS", "MAX_KEY_BITS", "MIN_SECURE_BITS", "NOISE_BASE_DOMAIN", "SMALL_FACTOR_BOUND",
           "CipherVector", "InvalidCiphertext",
           "InvalidKey", "NoisePool", "PlaintextOverflow", "PrivateKey", "PublicKey", "derive_noise_base",
           "generate_keypair", "matvec_t", "noise_base_seed"]
