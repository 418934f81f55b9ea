"""The number theory under Paillier, apart from the key and ciphertext objects: primes, the noise base
derived from a modulus, fixed-base exponentiation with window tables, and the bucket multi-exponentiation."""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Sequence

import gmpy2
import numpy as np
from gmpy2 import mpz

from protocols.errors import InvalidKey

WINDOW_BITS = 8
MASK_EXTRA_BITS = 128  # mask noise: r of n_bits + 128 bits, within 2^-128 of uniform mod the order of h_s
NOISE_BASE_DOMAIN = b"fedprofile/paillier/v2/noise-base"
_NOISE_BASE_TRIES = 256
# A received modulus must have no prime factor below this bound: one gcd with the product of the odd primes
# under it (docs/security.md, "Keys": about 1 ms at 2048 and 3072 bits; the product, 190 KB, is built once).
SMALL_FACTOR_BOUND = 2**20


@functools.cache
def small_prime_product() -> mpz:
    """The product of the odd primes below :data:`SMALL_FACTOR_BOUND` (built on first use, about 20 ms)."""
    return gmpy2.primorial(SMALL_FACTOR_BOUND - 1) // 2  # primorial(x): the product of the primes <= x


def has_small_factor(n: mpz) -> bool:
    """Whether the odd number ``n`` has a prime factor below :data:`SMALL_FACTOR_BOUND` (one reduction, one
    gcd; reducing the product mod n first is faster than GMP's gcd on the unbalanced pair)."""
    return gmpy2.gcd(small_prime_product() % n, n) != 1


def first_non_unit(values: Sequence[mpz], n: mpz) -> int | None:
    """The index of the first value sharing a factor with ``n``, or None when every value is a unit mod n.

    A prime factor of n divides the product of the values iff it divides one of them, so one product mod n
    and one gcd check the whole list (a multiplication a value: six times cheaper than a gcd each at
    2048 bits); only a list that fails is scanned value by value, to name the culprit.
    """
    acc = mpz(1)
    for c in values:
        acc = acc * c % n
    if gmpy2.gcd(acc, n) == 1:
        return None
    return next(i for i, c in enumerate(values) if gmpy2.gcd(c, n) != 1)


MIN_SECURE_BITS = 2048
# The largest key any job uses (TrainParams.key_bits); a larger received key is refused before any test on it,
# which for a 65,535-byte modulus (the most the format can carry) would take hours.
MAX_KEY_BITS = 4096


def check_key_size(bits: int, *, key_bits: int | None, allow_insecure: bool) -> None:
    """The cheap checks, before any test whose cost grows with the modulus: the job's size, then the bounds."""
    if key_bits is not None and bits != key_bits:
        raise InvalidKey(f"key of {bits} bits; this job uses keys of exactly {key_bits} bits (key_bits)")
    if bits > MAX_KEY_BITS:
        raise InvalidKey(f"key of {bits} bits; at most {MAX_KEY_BITS} are accepted")
    if bits < MIN_SECURE_BITS and not allow_insecure:
        raise InvalidKey(f"key of {bits} bits; at least {MIN_SECURE_BITS} are required")


def check_modulus(n: mpz, *, allow_insecure: bool, key_bits: int | None = None) -> None:
    """Size first (:func:`check_key_size`), then odd, no prime factor below SMALL_FACTOR_BOUND, not a prime or a
    perfect power. Cannot tell a product of two large primes from one with a factor of, say, 200 bits (that
    takes a proof of correct key generation; docs/security.md)."""
    bits = n.bit_length()
    check_key_size(bits, key_bits=key_bits, allow_insecure=allow_insecure)
    if bits < 256 or n % 2 == 0:
        raise InvalidKey("modulus is too small or even")
    if has_small_factor(n):
        raise InvalidKey(f"modulus has a small factor (a prime below {SMALL_FACTOR_BOUND:,})")
    if gmpy2.is_power(n) or gmpy2.is_prime(n):
        raise InvalidKey("modulus is a prime or a perfect power")


def random_blum_prime(bits: int) -> mpz:
    while True:
        candidate = mpz(secrets.randbits(bits)) | (mpz(3) << (bits - 2)) | 3  # top two bits set, = 3 mod 4
        p = gmpy2.next_prime(candidate)
        while p % 4 != 3:
            p = gmpy2.next_prime(p)
        if p.bit_length() == bits:
            return p


def noise_base_seed(n: int | mpz) -> mpz:
    """The x of the noise base for modulus n: SHAKE-256 over the domain tag, n and a counter, mod n.

    Input of draw i: ``NOISE_BASE_DOMAIN || len(n) as 2 bytes || n big-endian || i as 4 bytes``; output:
    ``len(n) + 16`` bytes read big-endian and reduced mod n (128 bits of slack, so x is uniform up to
    2^-128). Draws continue until ``1 < x < n - 1`` and ``gcd(x, n) = 1``.
    """
    n = mpz(n)
    if n < 5:
        raise InvalidKey("modulus is too small")
    nb = (n.bit_length() + 7) // 8
    prefix = NOISE_BASE_DOMAIN + nb.to_bytes(2, "big") + int(n).to_bytes(nb, "big")
    for counter in range(_NOISE_BASE_TRIES):
        digest = hashlib.shake_256(prefix + counter.to_bytes(4, "big")).digest(nb + MASK_EXTRA_BITS // 8)
        x = mpz(int.from_bytes(digest, "big")) % n
        if 1 < x < n - 1 and gmpy2.gcd(x, n) == 1:
            return x
    raise InvalidKey("no noise base could be derived from the modulus")  # only for a modulus of tiny factors


def derive_noise_base(n: int | mpz) -> mpz:
    """``h_s = (-x^2 mod n)^n mod n^2`` with x from :func:`noise_base_seed`: the only base a key may use."""
    n = mpz(n)
    x = noise_base_seed(n)
    return gmpy2.powmod((-x * x) % n, n, n * n)


class FixedBase:
    """``base^e mod modulus`` for exponents of at most ``exp_bits`` bits, with window tables.

    table[i][d] = base^(d * 2^(w i)); an exponentiation is one multiplication per w-bit window.
    """

    def __init__(self, base: mpz, modulus: mpz, exp_bits: int, window: int = WINDOW_BITS) -> None:
        self.modulus, self.window = modulus, window
        self.windows = -(-exp_bits // window)
        self.mask = (1 << window) - 1
        self.table: list[list[mpz]] = []
        g = base % modulus
        for _ in range(self.windows):
            row = [mpz(1), g]
            for _ in range(2, 1 << window):
                row.append(row[-1] * g % modulus)
            self.table.append(row)
            g = row[-1] * g % modulus  # g^(2^w)

    def pow(self, e: int) -> mpz:
        acc = mpz(1)
        m, w, mask, table = self.modulus, self.window, self.mask, self.table
        i = 0
        e = int(e)
        while e:
            d = e & mask
            if d:
                acc = acc * table[i][d] % m
            e >>= w
            i += 1
        return acc


def _combine(buckets: list[tuple[int, mpz]], n2: mpz) -> mpz:
    """``prod_v B_v^v`` for buckets ``(v, B_v)`` in descending order of v > 0: the running product S
    accumulates the buckets and R accumulates S, so a value costs two multiplications; a gap of skipped
    values multiplies R by a power of S (S is unchanged across empty buckets)."""
    if not buckets:
        return mpz(1)
    previous, running = buckets[0]
    result = running
    for value, bucket in buckets[1:]:
        gap = previous - value
        if gap > 1:
            result = result * gmpy2.powmod(running, gap - 1, n2) % n2
        running = running * bucket % n2
        result = result * running % n2
        previous = value
    if previous > 1:
        result = result * gmpy2.powmod(running, previous - 1, n2) % n2
    return result


def bucket_product(values: list[mpz], col: np.ndarray, n2: mpz) -> mpz:
    """``prod_i values[i]^col[i] mod n2`` for one column of small signed integers (|x| < 2^16).

    The rows are taken in their own order, each multiplied into the bucket of its value (one
    multiplication a row, a plain Python loop over lists: no NumPy scalars, no sort, and the ciphertexts
    read in memory order, which measured faster than reading them sorted by value); the positive and
    negative buckets are combined apart (:func:`_combine`) and joined by one inversion.
    """
    nz = np.flatnonzero(col)
    if len(nz) == 0:
        return mpz(1)
    rows = values if len(nz) == len(values) else [values[i] for i in nz.tolist()]
    buckets: dict[int, mpz] = {}
    get = buckets.get
    for c, value in zip(rows, col[nz].tolist(), strict=True):
        bucket = get(value)
        buckets[value] = c if bucket is None else bucket * c % n2
    pos = sorted(((v, b) for v, b in buckets.items() if v > 0), key=_first, reverse=True)
    neg = sorted(((-v, b) for v, b in buckets.items() if v < 0), key=_first, reverse=True)
    positive, negative = _combine(pos, n2), _combine(neg, n2)
    return positive if negative == 1 else positive * gmpy2.invert(negative, n2) % n2


def _first(pair: tuple[int, mpz]) -> int:
    return pair[0]


def matvec_t_values(values: list[mpz], X: np.ndarray, n2: mpz) -> list[mpz]:
    """``prod_i values[i]^X[i, j] mod n2`` for each column j of an integer matrix X of shape (m, k).

    Small scalars (|x| < 2^16) use bucket (Pippenger) multi-exponentiation: the ciphertexts of rows with
    the same value in a column are multiplied into one bucket, and the buckets are combined with the
    running-product trick, so a column costs about (non-zero entries + 2 * distinct values)
    multiplications instead of one exponentiation per entry (:func:`bucket_product`). Negative entries go
    to their own buckets, combined with one inversion per column. Larger scalars take the general path
    (one powmod each).
    """
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] != len(values):
        raise ValueError(f"X has shape {X.shape}; expected ({len(values)}, k)")
    if not np.issubdtype(X.dtype, np.integer):
        raise TypeError("X must be an integer matrix (quantise features first)")
    if X.dtype == np.uint64 and X.size and int(X.max()) > 2**63 - 1:
        raise TypeError("X has uint64 entries beyond int64; pass signed integers")
    X = X.astype(np.int64, copy=False)  # negation below must not wrap in a narrow or unsigned dtype
    out = []
    small = X.size == 0 or (int(X.min()) > -(2**16) and int(X.max()) < 2**16)
    for j in range(X.shape[1]):
        col = X[:, j]
        if not small:
            acc = mpz(1)
            for i in np.flatnonzero(col):
                k = int(col[i])
                term = gmpy2.powmod(values[i], k, n2) if k > 0 else gmpy2.powmod(gmpy2.invert(values[i], n2), -k, n2)
                acc = acc * term % n2
            out.append(acc)
            continue
        out.append(bucket_product(values, col, n2))
    return out
