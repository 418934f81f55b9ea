"""The vector kernels of protocols.paillier_math against their definitions, on raw values: the bucket
multi-exponentiation (``matvec_t_values``: every output exactly ``prod_i values[i]^X[i, j] mod m``, whatever the
scheme on top) and the batched unit check of received ciphertexts (``first_non_unit``)."""

from __future__ import annotations

import gmpy2
import numpy as np
from gmpy2 import mpz
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.paillier_math import bucket_product, first_non_unit, matvec_t_values

# A fixed odd modulus, a product of two 128-bit primes, so every value below is a unit (inversions exist).
P = gmpy2.next_prime(mpz(2) ** 127 + 12345)
Q = gmpy2.next_prime(mpz(2) ** 127 + 98765)
M = P * Q


def naive(values: list[mpz], X: np.ndarray, m: mpz) -> list[mpz]:
    out = []
    for j in range(X.shape[1]):
        acc = mpz(1)
        for i in range(X.shape[0]):
            acc = acc * gmpy2.powmod(values[i], int(X[i, j]), m) % m  # powmod inverts for negative exponents
        out.append(acc)
    return out


def units(seed: int, count: int) -> list[mpz]:
    rng = np.random.default_rng(seed)
    return [mpz(int.from_bytes(rng.bytes(32), "big")) % (M - 2) + 2 for _ in range(count)]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 60), st.integers(1, 4), st.integers(0, 2**32 - 1), st.sampled_from([1, 3, 8, 127, 2**15]),
       st.floats(0.0, 0.95))
def test_matvec_equals_definition(rows, cols, seed, bound, zero_share):
    rng = np.random.default_rng(seed)
    X = rng.integers(-bound, bound + 1, size=(rows, cols))
    X[rng.random((rows, cols)) < zero_share] = 0
    values = units(seed, rows)
    assert matvec_t_values(values, X, M) == naive(values, X, M)


def test_known_answers():
    values = [mpz(2), mpz(3), mpz(5), mpz(7)]
    X = np.array([[1, 0, -1], [2, 0, 0], [0, 0, 3], [-1, 0, 127]], dtype=np.int8)
    inv7, inv2 = gmpy2.invert(7, M), gmpy2.invert(2, M)
    assert matvec_t_values(values, X, M) == [2 * 9 * inv7 % M, mpz(1), inv2 * 125 * gmpy2.powmod(7, 127, M) % M]
    # One column: equal values in one bucket, gaps between buckets, only negative entries.
    col = np.array([-3, -3, -1, 0])
    assert bucket_product(values, col, M) == gmpy2.invert(2**3 * 3**3 * 5, M)
    assert bucket_product(values, np.zeros(4, dtype=np.int64), M) == 1


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 30), st.integers(0, 2**32 - 1), st.lists(st.tuples(st.integers(0, 29), st.sampled_from(["p", "q", "m", "0"])),
                                                                max_size=3))
def test_first_non_unit_equals_a_gcd_each(count, seed, planted):
    values = units(seed, count)
    factor = {"p": P, "q": Q, "m": M, "0": mpz(0)}
    for index, kind in planted:
        if index < count:
            values[index] = factor[kind] * (index + 1) % (M * M) if kind != "0" else mpz(0)
    expected = next((i for i, c in enumerate(values) if gmpy2.gcd(c, M) != 1), None)
    assert first_non_unit(values, M) == expected
    assert first_non_unit(values, M) is None or gmpy2.gcd(values[first_non_unit(values, M)], M) != 1
