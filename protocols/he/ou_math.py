"""The number theory under Okamoto-Uchiyama (OU), apart from the key and ciphertext objects: the modulus
n = p^2 q, the two bases derived from n, the checks a receiver makes on n, and decryption mod p^2.

Bases. Neither base is chosen by the key holder: both are derived from n (:func:`derive_bases`), as the
Paillier noise base is (``protocols.paillier_math.noise_base_seed``), with SHAKE-256 over a domain tag, n
and a counter. The plaintext base is ``G = x^2 mod n`` and the noise base ``H = (y^2)^n mod n``. Both are
squares, so every ciphertext's Jacobi symbol (the one residue character anyone can compute without the
factors: ``(c|n) = (c|q)``) is 1 whatever it encrypts; with a G of symbol -1 and an H of symbol 1 it would
give away each plaintext's parity. H is an n-th power, so its order mod p^2 divides p - 1 and decryption
(raising to p - 1 mod p^2) removes it. The key holder checks that G can decrypt (``G^(p-1) != 1 mod p^2``,
true but with probability about 1/p) and draws another key otherwise.
"""

from __future__ import annotations

import hashlib
import secrets

import gmpy2
from gmpy2 import mpz

from protocols.errors import InvalidKey
from protocols.paillier_math import MASK_EXTRA_BITS, check_modulus

PLAINTEXT_BASE_DOMAIN = b"fedprofile/ou/v1/plaintext-base"
NOISE_BASE_DOMAIN = b"fedprofile/ou/v1/noise-base"
_BASE_TRIES = 256


def prime_bits(n_bits: int) -> tuple[int, int]:
    """Bits of p and of q for an n of ``n_bits`` bits: p of ceil(n_bits / 3) bits, q the rest."""
    pb = (n_bits + 2) // 3
    return pb, n_bits - 2 * pb


def max_plaintext(n_bits: int) -> int:
    """The signed plaintext bound a receiver derives from n's size alone: ``2^(pb - 2) - 1``.

    p has its top two bits set (p > 2^(pb-1)), so ``[-max_int, max_int]`` lies inside (-p/2, p/2) and a
    residue mod p decodes to exactly one signed value."""
    return (1 << (prime_bits(n_bits)[0] - 2)) - 1


def random_prime(bits: int) -> mpz:
    """A prime of exactly ``bits`` bits with its top two bits set, from ``secrets``."""
    while True:
        p = gmpy2.next_prime(mpz(secrets.randbits(bits)) | (mpz(3) << (bits - 2)))
        if p.bit_length() == bits:
            return p


def _derive(n: mpz, domain: bytes) -> mpz:
    """x in Z*_n, 1 < x < n - 1: SHAKE-256 over ``domain || len(n) (2 bytes) || n || counter (4 bytes)``,
    ``len(n) + 16`` bytes reduced mod n (uniform up to 2^-128), redrawn until it qualifies."""
    nb = (n.bit_length() + 7) // 8
    prefix = domain + nb.to_bytes(2, "big") + int(n).to_bytes(nb, "big")
    for counter in range(_BASE_TRIES):
        digest = hashlib.shake_256(prefix + counter.to_bytes(4, "big")).digest(nb + MASK_EXTRA_BITS // 8)
        x = mpz(int.from_bytes(digest, "big")) % n
        if 1 < x < n - 1 and gmpy2.gcd(x, n) == 1:
            return x
    raise InvalidKey("no base could be derived from the modulus")  # only for a modulus of tiny factors


def derive_bases(n: int | mpz) -> tuple[mpz, mpz]:
    """``(G, H)``: the plaintext base ``x^2 mod n`` and the noise base ``(y^2)^n mod n`` for modulus n."""
    n = mpz(n)
    if n < 5:
        raise InvalidKey("modulus is too small")
    x, y = _derive(n, PLAINTEXT_BASE_DOMAIN), _derive(n, NOISE_BASE_DOMAIN)
    return x * x % n, gmpy2.powmod(y * y % n, n, n)


def check_bases(n: mpz, g: mpz, h: mpz) -> None:
    """What a receiver can check of the bases beyond their derivation: each a unit other than 1 modulo
    every factor of n (``gcd(b - 1, n) = 1``: a base that is 1 mod p or mod q would leave that part of
    every ciphertext fixed)."""
    for name, base in (("plaintext base", g), ("noise base", h)):
        if not 1 < base < n or gmpy2.gcd(base, n) != 1 or gmpy2.gcd(base - 1, n) != 1:
            raise InvalidKey(f"the {name} is not a unit of order > 1 modulo every factor of n")


def check_ou_modulus(n: mpz, *, allow_insecure: bool, key_bits: int | None = None) -> None:
    """The Paillier modulus checks (:func:`protocols.paillier_math.check_modulus`: size exactly ``key_bits``,
    bounds, odd, no prime factor below 2^20, not a prime or a perfect power), then room for a plaintext."""
    check_modulus(n, allow_insecure=allow_insecure, key_bits=key_bits)
    if prime_bits(n.bit_length())[0] < 64:
        raise InvalidKey("modulus is too small for Okamoto-Uchiyama")


def generate_modulus(n_bits: int) -> tuple[mpz, mpz, mpz]:
    """``(n, p, q)`` with n = p^2 q of exactly ``n_bits`` bits, p and q distinct primes of
    :func:`prime_bits` bits whose bases (:func:`derive_bases`) decrypt."""
    pb, qb = prime_bits(n_bits)
    if qb < 2:
        raise ValueError(f"{n_bits}-bit keys are too small for Okamoto-Uchiyama")
    while True:
        p = random_prime(pb)
        for _ in range(64):
            q = random_prime(qb)
            n = p * p * q
            if n.bit_length() == n_bits and p != q:
                break
        else:
            continue
        g, _ = derive_bases(n)
        if plaintext_unit(g, p) is not None:
            return n, p, q


def L(x: mpz, p: mpz) -> mpz:
    return (x - 1) // p


def plaintext_unit(g: mpz, p: mpz) -> mpz | None:
    """``L(g^(p-1) mod p^2)^-1 mod p``, the constant decryption divides by; None if g cannot decrypt."""
    p2 = p * p
    unit = L(gmpy2.powmod(g % p2, p - 1, p2), p) % p
    return None if unit == 0 else gmpy2.invert(unit, p)


def decrypt_residue(c: mpz, p: mpz, p2: mpz, g_unit: mpz) -> mpz:
    """The plaintext of c mod p: ``L(c^(p-1) mod p^2) * g_unit mod p`` (one exponentiation mod p^2)."""
    return L(gmpy2.powmod(c % p2, p - 1, p2), p) * g_unit % p


__all__ = ["NOISE_BASE_DOMAIN", "PLAINTEXT_BASE_DOMAIN", "L", "check_bases", "check_ou_modulus",
           "decrypt_residue", "derive_bases", "generate_modulus", "max_plaintext", "plaintext_unit",
           "prime_bits", "random_prime"]
