"""A non-interactive zero-knowledge proof that a modulus N is a Paillier-Blum modulus: ``N = p q`` with p and q
primes ``= 3 mod 4`` and ``gcd(N, phi(N)) = 1``. The proof of CGGMP (Canetti, Gennaro, Goldfeder, Makriyannis,
Peled, "UC Non-Interactive, Proactive, Threshold ECDSA with Identifiable Aborts", CCS 2020, ePrint 2021/060,
section 6.3, figure 16: ``Pi^mod``), made non-interactive by Fiat-Shamir with SHAKE-256, and with the
``N``-th-root rounds cut as in Goldberg, Reyzin, Sagga and Baldimtsi ("Efficient noninteractive certification of
RSA moduli and beyond", ASIACRYPT 2019) because the verifier also trial-divides N.

The prover picks ``w`` with Jacobi symbol ``(w/N) = -1``. The challenges ``y_i`` (in ``Z_N^*``) are hashed from a
domain tag, the context (what the proof is for: the job, the protocol version, the key's role), N and w. Then:

* ``FOURTH_ROOT_ROUNDS`` = 80 rounds: bits ``a_i, b_i`` and ``x_i`` with ``x_i^4 = (-1)^a_i w^b_i y_i mod N``.
  For a Blum ``N = p q`` exactly one of ``+-y, +-w y`` is a quadratic residue, and its principal square root is
  one too, so a fourth root exists. If N is square-free with more than two prime factors, or with a factor
  ``= 1 mod 4``, at most half of all y have one (CGGMP, proof of Pi^mod): soundness 2^-80.
* ``NTH_ROOT_ROUNDS`` = 4 rounds: ``z_j`` with ``z_j^N = y_j mod N``. If a prime r divides both N and phi(N),
  the N-th powers are at most a 1/r share of ``Z_N^*``; the verifier refuses N with a prime factor below
  ``SMALL_FACTOR_BOUND`` = 2^20 first (:func:`protocols.paillier_math.has_small_factor`), so r > 2^20 and four
  rounds give 2^-80 (CGGMP use 80 rounds here as well; GRSB, section 3, show the trial division buys the rest).
  ``gcd(N, phi(N)) = 1`` makes N square-free, which the fourth-root rounds need.

What it does not show: that p and q are of similar size (a 200-bit p times a 1848-bit q passes). That takes
CGGMP's no-small-factor proof ``Pi^fac``, which needs ring-Pedersen parameters from the verifier (docs/security.md).

Wire format (all integers big-endian, each ``nb`` = byte length of N bytes)::

    b"PBM1" || nb (2 bytes) || FOURTH_ROOT_ROUNDS (2 bytes) || NTH_ROOT_ROUNDS (2 bytes) || w
            || FOURTH_ROOT_ROUNDS x (a_i + 2 b_i as 1 byte || x_i) || NTH_ROOT_ROUNDS x z_j

Challenge i (rounds share them: ``y_0 .. y_79``; the N-th-root rounds use ``y_0 .. y_3``)::

    SHAKE-256(DOMAIN || len(context) (4 bytes) || context || nb (2 bytes) || N || w || i (4 bytes) || k (4 bytes))
    read as nb + 16 bytes, mod N, for k = 0, 1, ... until the value is in Z_N^* (not 0, coprime to N)
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import weakref
from collections.abc import Sequence
from typing import Any

import gmpy2
from gmpy2 import mpz

from protocols.errors import InvalidKey
from protocols.paillier_math import SMALL_FACTOR_BOUND, has_small_factor

PROOF_FORMAT = b"PBM1"
DOMAIN = b"fedprofile/paillier-blum-modulus/v1"
SOUNDNESS_BITS = 80  # a false statement passes with probability at most 2^-80 per hash evaluation
FOURTH_ROOT_ROUNDS = SOUNDNESS_BITS  # soundness 1/2 each
NTH_ROOT_ROUNDS = -(-SOUNDNESS_BITS // (SMALL_FACTOR_BOUND.bit_length() - 1))  # 1/2^20 each: 4
_EXTRA_BYTES = 16  # 128 bits of slack: a challenge is within 2^-128 of uniform mod N
_HEADER = 4 + 2 + 2 + 2


def proof_context(*parts: str) -> bytes:
    """An unambiguous encoding of what a proof is bound to: each part as its UTF-8 length (4 bytes) and bytes."""
    out = bytearray()
    for part in parts:
        data = part.encode()
        out += len(data).to_bytes(4, "big") + data
    return bytes(out)


def _byte_len(n: mpz) -> int:
    return (n.bit_length() + 7) // 8


def challenges(n: mpz, w: mpz, context: bytes, count: int) -> list[mpz]:
    """The challenges ``y_0 .. y_(count-1)`` in ``Z_N^*`` (module docstring)."""
    nb = _byte_len(n)
    prefix = (DOMAIN + len(context).to_bytes(4, "big") + context + nb.to_bytes(2, "big")
              + int(n).to_bytes(nb, "big") + int(w).to_bytes(nb, "big"))
    out = []
    for i in range(count):
        for k in range(1 << 16):  # k > 0 only when a draw shares a factor with N: never for an honest N
            digest = hashlib.shake_256(prefix + i.to_bytes(4, "big") + k.to_bytes(4, "big")).digest(nb + _EXTRA_BYTES)
            y = mpz(int.from_bytes(digest, "big")) % n
            if y != 0 and gmpy2.gcd(y, n) == 1:
                out.append(y)
                break
        else:
            raise InvalidKey("modulus proof: no challenge in Z_N^* could be drawn (the modulus has tiny factors)")
    return out


def encode_proof(n: mpz, w: mpz, fourth_roots: Sequence[tuple[int, int, mpz]], nth_roots: Sequence[mpz]) -> bytes:
    """The wire format (module docstring) of ``w``, the (a, b, x) rounds and the z rounds."""
    nb = _byte_len(n)
    out = bytearray(PROOF_FORMAT + nb.to_bytes(2, "big") + len(fourth_roots).to_bytes(2, "big")
                    + len(nth_roots).to_bytes(2, "big") + int(w).to_bytes(nb, "big"))
    for a, b, x in fourth_roots:
        out += bytes([a | (b << 1)]) + int(x).to_bytes(nb, "big")
    for z in nth_roots:
        out += int(z).to_bytes(nb, "big")
    return bytes(out)


def _fourth_root_exponent(prime: mpz) -> mpz:
    """For a prime ``= 3 mod 4``: y^e is the principal fourth root of a quadratic residue y (square root
    ``y^((p+1)/4)`` twice; the principal square root of a residue is itself a residue)."""
    return pow((prime + 1) // 4, 2, prime - 1)


def _crt(xp: mpz, xq: mpz, p: mpz, q: mpz, p_inverse: mpz) -> mpz:
    """x mod pq from x mod p and x mod q (``p_inverse`` = p^-1 mod q)."""
    return xp + p * ((xq - xp) * p_inverse % q)


def _prove(p: mpz, q: mpz, context: bytes) -> bytes:
    n = p * q
    if p % 4 != 3 or q % 4 != 3 or p == q:
        raise InvalidKey("modulus proof: the key's primes are not two distinct primes = 3 mod 4")
    phi = (p - 1) * (q - 1)
    if gmpy2.gcd(n, phi) != 1:
        raise InvalidKey("modulus proof: gcd(N, phi(N)) is not 1")
    while True:  # w with Jacobi symbol -1: a non-residue mod exactly one of p and q
        w = mpz(secrets.randbelow(int(n) - 2) + 2)
        if gmpy2.jacobi(w, n) == -1:
            break
    ys = challenges(n, w, context, max(FOURTH_ROOT_ROUNDS, NTH_ROOT_ROUNDS))
    p_inverse = gmpy2.invert(p, q)
    ep, eq = _fourth_root_exponent(p), _fourth_root_exponent(q)
    fourth_roots = []
    for y in ys[:FOURTH_ROOT_ROUNDS]:
        # b makes the Legendre symbols mod p and q equal, a makes them both 1 (-1 is a non-residue mod both).
        b = int(gmpy2.legendre(y, p) != gmpy2.legendre(y, q))
        v = y * w % n if b else y
        a = int(gmpy2.legendre(v, p) == -1)
        v = n - v if a else v
        fourth_roots.append((a, b, _crt(gmpy2.powmod(v, ep, p), gmpy2.powmod(v, eq, q), p, q, p_inverse)))
    n_inverse_p, n_inverse_q = gmpy2.invert(n, p - 1), gmpy2.invert(n, q - 1)
    nth_roots = [_crt(gmpy2.powmod(y, n_inverse_p, p), gmpy2.powmod(y, n_inverse_q, q), p, q, p_inverse)
                 for y in ys[:NTH_ROOT_ROUNDS]]
    return encode_proof(n, w, fourth_roots, nth_roots)


# Proofs made, per private key object, per context: kept with the key and gone with it (a cache keyed by the
# factors would keep them in memory after the session dropped its key).
_PROOFS: weakref.WeakKeyDictionary[Any, dict[bytes, bytes]] = weakref.WeakKeyDictionary()


def prove(private_key: Any, context: bytes) -> bytes:
    """The proof that ``private_key``'s modulus is a Paillier-Blum modulus, bound to ``context``
    (:func:`proof_context`). The key needs ``p`` and ``q``; the same key object and context give the same proof
    again without new work."""
    made = _PROOFS.setdefault(private_key, {})
    context = bytes(context)
    if context not in made:
        made[context] = _prove(mpz(private_key.p), mpz(private_key.q), context)
    return made[context]


def _read(data: bytes, nb: int, offset: int) -> mpz:
    return mpz(int.from_bytes(data[offset:offset + nb], "big"))


@functools.lru_cache(maxsize=64)
def _verify(n: mpz, proof: bytes, context: bytes) -> bool:
    nb = _byte_len(n)
    if len(proof) < _HEADER or proof[:4] != PROOF_FORMAT:
        raise InvalidKey("modulus proof: not a Paillier-Blum modulus proof (format)")
    if int.from_bytes(proof[4:6], "big") != nb:
        raise InvalidKey("modulus proof: made for a modulus of another size")
    # The round counts are this verifier's, never the prover's: fewer rounds would be weaker soundness.
    rounds = (int.from_bytes(proof[6:8], "big"), int.from_bytes(proof[8:10], "big"))
    if rounds != (FOURTH_ROOT_ROUNDS, NTH_ROOT_ROUNDS):
        raise InvalidKey(f"modulus proof: {rounds[0]} + {rounds[1]} rounds; {FOURTH_ROOT_ROUNDS} + "
                         f"{NTH_ROOT_ROUNDS} are required")
    if len(proof) != _HEADER + nb + FOURTH_ROOT_ROUNDS * (1 + nb) + NTH_ROOT_ROUNDS * nb:
        raise InvalidKey("modulus proof: wrong length")
    # The statement's side conditions, checked here whatever the caller checked before.
    if n % 2 == 0 or n.bit_length() < 256 or gmpy2.is_prime(n):
        raise InvalidKey("modulus proof: the modulus is even, tiny or a prime")
    if has_small_factor(n):  # the N-th-root rounds count on it (module docstring)
        raise InvalidKey(f"modulus proof: the modulus has a prime factor below {SMALL_FACTOR_BOUND:,}")
    offset = _HEADER
    w = _read(proof, nb, offset)
    offset += nb
    if not 0 < w < n or gmpy2.jacobi(w, n) != -1:
        raise InvalidKey("modulus proof: w does not have Jacobi symbol -1 modulo N (or the proof was made for "
                         "another key)")
    ys = challenges(n, w, context, max(FOURTH_ROOT_ROUNDS, NTH_ROOT_ROUNDS))
    for i in range(FOURTH_ROOT_ROUNDS):
        flags, x = proof[offset], _read(proof, nb, offset + 1)
        offset += 1 + nb
        if flags > 3 or not 0 < x < n:
            raise InvalidKey(f"modulus proof: round {i} is malformed")
        target = ys[i] * w % n if flags & 2 else ys[i]
        target = (n - target) % n if flags & 1 else target
        if gmpy2.powmod(x, 4, n) != target:
            raise InvalidKey(f"modulus proof: fourth-root round {i} fails (N is not a product of two primes "
                             "= 3 mod 4, or the proof was made for another key or context)")
    for j in range(NTH_ROOT_ROUNDS):
        z = _read(proof, nb, offset)
        offset += nb
        if not 0 < z < n or gmpy2.powmod(z, n, n) != ys[j]:
            raise InvalidKey(f"modulus proof: N-th-root round {j} fails (gcd(N, phi(N)) is not 1, or the proof was "
                             "made for another key or context)")
    return True


def verify(n: int | mpz, proof: bytes | None, context: bytes) -> None:
    """Checks that ``proof`` shows ``n`` is a Paillier-Blum modulus, for ``context``; :class:`InvalidKey` naming
    what failed otherwise. A proof verified before (same modulus, proof and context) is not checked again."""
    if not isinstance(proof, bytes | bytearray):
        raise InvalidKey("modulus proof: missing")
    _verify(mpz(n), bytes(proof), bytes(context))


def clear_caches() -> None:
    """Forget proofs made and checked (for timing the work itself)."""
    _PROOFS.clear()
    _verify.cache_clear()


__all__ = ["DOMAIN", "FOURTH_ROOT_ROUNDS", "NTH_ROOT_ROUNDS", "PROOF_FORMAT", "SOUNDNESS_BITS", "challenges",
           "clear_caches", "encode_proof", "proof_context", "prove", "verify"]
