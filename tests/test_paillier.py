"""Paillier kernels: known answers, interop with phe, homomorphic identities, keys, noise, errors.

Keys are made once per module: a 1024-bit pair (allowed as insecure) for almost everything, 2048 and
3072-bit pairs only where the secure sizes themselves are what is tested.
"""

from __future__ import annotations

import copy
import hashlib
import math
import pickle
import secrets

import gmpy2
import numpy as np
import pytest
from gmpy2 import mpz
from hypothesis import given, settings
from hypothesis import strategies as st
from phe import paillier as phe

from protocols import paillier, paillier_math
from protocols.packing import SlotLayout, pack_signed, slots_per_plaintext, unpack_signed
from protocols.paillier import (
    MASK_EXTRA_BITS,
    CipherVector,
    InvalidCiphertext,
    InvalidKey,
    NoisePool,
    PlaintextOverflow,
    PrivateKey,
    PublicKey,
    derive_noise_base,
    generate_keypair,
    matvec_t,
    noise_base_seed,
)
from protocols.paillier_pool import PaillierPool

FAST = settings(max_examples=25, deadline=None)
INTS = st.integers(-(2**60), 2**60)


@pytest.fixture(scope="module")
def keys() -> tuple[PublicKey, PrivateKey]:
    return generate_keypair(1024, allow_insecure=True)


@pytest.fixture(scope="module")
def other_keys() -> tuple[PublicKey, PrivateKey]:
    return generate_keypair(1024, allow_insecure=True)


@pytest.fixture(scope="module")
def secure_keys() -> tuple[PublicKey, PrivateKey]:
    return generate_keypair(2048)


@pytest.fixture(scope="module")
def keys_3072() -> tuple[PublicKey, PrivateKey]:
    return generate_keypair(3072)  # two 1536-bit Blum primes: well under a second


def _blum(start: int) -> mpz:
    p = gmpy2.next_prime(mpz(start))
    while p % 4 != 3:
        p = gmpy2.next_prime(p)
    return p


def _phe_pair(pk: PublicKey, sk: PrivateKey) -> tuple[phe.PaillierPublicKey, phe.PaillierPrivateKey]:
    pub = phe.PaillierPublicKey(int(pk.n))
    return pub, phe.PaillierPrivateKey(pub, int(sk.p), int(sk.q))


def _exact(d: list[int], X: np.ndarray) -> list[int]:
    """X^T d in exact Python integers."""
    return [int(v) for v in np.array(d, dtype=object) @ np.asarray(X).astype(object)]


# ---- known answers and interop ----

P_FIXED, Q_FIXED = _blum(2**255 + 12345), _blum(2**255 + 99991 * 2**40)
# Pinned for the PK2 format (n only) and the noise base derived from n (noise-base v2). They changed from
# the PK1 values, whose bytes carried an h_s made from a fixed x (1234567891011) instead.
FINGERPRINT_FIXED = "a315dbb4649ad3c6ba625a3ca19f2aa221b2b608557bd56710a7ed1ad65ebce9"
HS_FIXED_SHA256 = "30c92f893d1b7b5979f689f92f4e93aec5b4817653c1e5b2e420e32e875d00a4"


def _fixed_key() -> tuple[PublicKey, PrivateKey]:
    pk = PublicKey(P_FIXED * Q_FIXED)
    return pk, PrivateKey(pk, P_FIXED, Q_FIXED)


def _spec_noise_base(n: int) -> tuple[int, int]:
    """x and h_s by the written rule, in plain Python integers (no code shared with the module)."""
    nb = (n.bit_length() + 7) // 8
    for counter in range(256):
        data = b"fedprofile/paillier/v2/noise-base" + nb.to_bytes(2, "big") + n.to_bytes(nb, "big")
        x = int.from_bytes(hashlib.shake_256(data + counter.to_bytes(4, "big")).digest(nb + 16), "big") % n
        if 1 < x < n - 1 and math.gcd(x, n) == 1:
            return x, pow(-x * x % n, n, n * n)
    raise AssertionError("no x")


def test_known_answer():
    pk, sk = _fixed_key()
    p, q = P_FIXED, Q_FIXED
    assert p % 4 == 3 and q % 4 == 3 and gmpy2.is_prime(p) and gmpy2.is_prime(q)
    n, n2 = int(p * q), int(p * q) ** 2
    x, hs = _spec_noise_base(n)
    assert int(noise_base_seed(n)) == x and int(pk.hs) == hs == int(derive_noise_base(n))
    assert hashlib.sha256(hs.to_bytes(2 * 64, "big")).hexdigest() == HS_FIXED_SHA256
    noise = pow(int(pk.hs), 987654321, n2)
    for m in (0, 1, 42, 2**200 + 7, -7, -(2**100)):
        c = pk.raw_encrypt(pk.encode([m]), [mpz(noise)])[0]
        assert int(c) == (1 + (m % n) * n) * noise % n2  # the formula, in plain Python integers
        assert sk.decrypt(CipherVector(pk, [c])) == [m]
    # Decryption from the definition: L(c^lambda mod n^2) * mu mod n, lambda = lcm(p-1, q-1).
    lam = int(gmpy2.lcm(p - 1, q - 1))
    mu = pow((pow(n + 1, lam, n2) - 1) // n, -1, n)
    c = int(pk.raw_encrypt(pk.encode([123456789]), [mpz(noise)])[0])
    assert (pow(c, lam, n2) - 1) // n * mu % n == 123456789
    assert pk.to_bytes() == b"PK2" + (64).to_bytes(2, "big") + n.to_bytes(64, "big")
    assert pk.fingerprint() == FINGERPRINT_FIXED == hashlib.sha256(pk.to_bytes()).hexdigest()


class _Recorder:
    """Stands in for ``secrets.randbits``: a fixed odd value of the asked length, and the lengths asked."""

    def __init__(self) -> None:
        self.asked: list[int] = []
        self.given: list[int] = []

    def __call__(self, bits: int) -> int:
        value = (1 << (bits - 1)) | (0x5DEECE66D * 2**40 + 11)  # top bit set: the full length is used
        self.asked.append(bits)
        self.given.append(value)
        return value


def test_noise_is_an_nth_residue_of_the_right_form(monkeypatch):
    pk, sk = _fixed_key()
    n, n2 = int(pk.n), int(pk.nsquare)
    assert pk.n_bits == 511 and pk.r_bits == 256 and pk.mask_bits == 511 + MASK_EXTRA_BITS
    lam = int(gmpy2.lcm(sk.p - 1, sk.q - 1))
    for noise in (pk.noise(), sk.noise(), pk.mask_noise(), sk.mask_noise()):
        # An n-th residue mod n^2 encrypts 0: decrypting it as a ciphertext gives 0.
        assert sk.decrypt(CipherVector(pk, [noise])) == [0]
        assert gmpy2.jacobi(noise % n, n) == 1 and pow(int(noise), lam, n2) == 1
    assert pk.noise() != pk.noise() and sk.noise() != sk.noise()
    assert pk.mask_noise() != pk.mask_noise() and sk.mask_noise() != sk.mask_noise()
    # The exact form: h_s^r with r drawn at r_bits (ordinary) or n_bits + 128 bits (mask), on the public
    # tables and by CRT (exponent reduced mod p - 1 and q - 1) alike.
    recorder = _Recorder()
    monkeypatch.setattr(paillier.secrets, "randbits", recorder)
    made = [pk.noise(), sk.noise(), pk.mask_noise(), sk.mask_noise()]
    assert recorder.asked == [pk.r_bits, pk.r_bits, pk.mask_bits, pk.mask_bits]
    assert [int(v) for v in made] == [pow(int(pk.hs), r, n2) for r in recorder.given]
    # The order of h_s divides lambda(n) < n, and mask exponents range over 2^128 times more than n: so
    # r mod that order is within 2^-128 of uniform.
    assert pow(int(pk.hs), lam, n2) == 1
    assert 2**pk.mask_bits > n * 2**MASK_EXTRA_BITS > lam * 2**MASK_EXTRA_BITS
    # Encrypting 0 with mask noise decrypts to 0; with a value, to the value.
    assert sk.decrypt(pk.encrypt([0, 5, -5], mask=True)) == [0, 5, -5]


def test_noise_base_is_derived_from_the_modulus(keys, other_keys):
    pk, sk = keys
    n = pk.n
    assert derive_noise_base(n) == derive_noise_base(int(n)) == pk.hs  # deterministic
    assert PublicKey(n).hs == pk.hs and PublicKey(n) == pk
    assert other_keys[0].hs != pk.hs
    x = noise_base_seed(n)
    assert 1 < x < n - 1 and gmpy2.gcd(x, n) == 1 and pk.hs == gmpy2.powmod(-x * x % n, n, n * n)
    # The receiver recomputes it: the serialised key carries n only.
    data = pk.to_bytes()
    assert len(data) == 5 + (pk.n_bits + 7) // 8 and int(pk.hs).to_bytes(pk.byte_len, "big") not in data
    received = PublicKey.from_bytes(data, allow_insecure=True)
    assert received.hs == pk.hs and received == pk
    assert sk.decrypt(received.encrypt([3, -4])) == [3, -4]
    # A key that came through a pickle did not derive its h_s: validate recomputes it.
    restored = pickle.loads(pickle.dumps(pk))
    assert restored._derived is None
    restored.validate(allow_insecure=True)
    assert _spec_noise_base(int(n))[1] == int(pk.hs)


def _with_noise_base(pk: PublicKey, hs: int | mpz) -> PublicKey:
    """A copy of pk whose h_s was replaced (as a tampered pickle or attribute would do)."""
    bad = copy.copy(pk)
    bad.__setstate__({"n": pk.n, "hs": mpz(hs)})
    return bad


def test_any_other_noise_base_is_refused(keys, other_keys):
    pk, sk = keys
    nb = (pk.n_bits + 7) // 8
    other_hs = other_keys[0].hs % pk.nsquare
    forged_r = mpz(secrets.randbelow(int(pk.n) - 2) + 2)
    random_element = secrets.randbelow(int(pk.nsquare) - 2) + 2
    forged_nth_residue = gmpy2.powmod(forged_r, pk.n, pk.nsquare)  # an n-th residue, just not the derived one
    for bad in (pk.nsquare - 1, 1, random_element, other_hs, forged_nth_residue, pk.hs + 1, 0, pk.nsquare):
        tampered = _with_noise_base(pk, bad)
        with pytest.raises(InvalidKey, match="noise base is not the one derived from the modulus"):
            tampered.validate(allow_insecure=True)
        # On the wire: the old format, which carried h_s, is refused whatever h_s it carries.
        with pytest.raises(InvalidKey, match="retired format PK1"):
            PublicKey.from_bytes(_serialised_pk1(pk.n, bad, nb), allow_insecure=True)
    with pytest.raises(InvalidKey, match="retired format PK1"):
        PublicKey.from_bytes(_serialised_pk1(pk.n, pk.hs, nb), allow_insecure=True)
    # With h_s = n^2 - 1 = -1 the "fresh" noise is +-1: a product re-randomised under it would carry no
    # randomness. Such a key object is refused before it is used.
    minus_one = _with_noise_base(pk, pk.nsquare - 1)
    assert {int(minus_one.noise()) for _ in range(8)} <= {1, int(pk.nsquare) - 1}
    pk.validate(allow_insecure=True)  # the genuine key passes
    _with_noise_base(pk, pk.hs).validate(allow_insecure=True)  # and so does a copy that recomputes it


def test_interop_with_phe(keys):
    pk, sk = keys
    phe_pub, phe_priv = _phe_pair(pk, sk)
    values = [123456789, 5, 0, -3, pk.max_int]
    ours = pk.encrypt(values)
    assert [phe_priv.raw_decrypt(int(c)) for c in ours.values] == [v % int(pk.n) for v in values]
    theirs = CipherVector(pk, [mpz(phe_pub.raw_encrypt(v % int(pk.n))) for v in (777, 3, 1, 2, -5)])
    assert sk.decrypt(theirs) == [777, 3, 1, 2, -5]
    assert sk.decrypt(theirs[:4].add(ours[:4])) == [777 + 123456789, 8, 1, -1]
    # phe's homomorphic add over one of ours and one of theirs.
    mine, yours = int(ours.values[0]), phe_pub.raw_encrypt(11)
    mixed = phe.EncryptedNumber(phe_pub, mine) + phe.EncryptedNumber(phe_pub, yours)
    assert phe_priv.raw_decrypt(mixed.ciphertext(be_secure=False)) == 123456789 + 11
    # Same n: our noise-free parts agree with phe's (g = n + 1) before obfuscation.
    assert phe_pub.raw_encrypt(42, r_value=1) == int(pk.raw_encrypt(pk.encode([42]), [mpz(1)])[0])


# ---- homomorphic identities ----


@FAST
@given(st.lists(INTS, min_size=1, max_size=6), st.data())
def test_homomorphic_identities(keys, values, data):
    pk, sk = keys
    k = len(values)
    others = data.draw(st.lists(INTS, min_size=k, max_size=k))
    scalars = data.draw(st.lists(st.integers(-(2**20), 2**20), min_size=k, max_size=k))
    a, b = pk.encrypt(values), pk.encrypt(others)
    assert sk.decrypt(a.add(b)) == [x + y for x, y in zip(values, others, strict=True)]
    assert sk.decrypt(a.add_plain(others)) == [x + y for x, y in zip(values, others, strict=True)]
    assert sk.decrypt(a.mul_plain(scalars)) == [x * s for x, s in zip(values, scalars, strict=True)]
    assert sk.decrypt(a.mul_plain([-1] * k)) == [-x for x in values]
    assert sk.decrypt(a.sum()) == [sum(values)]
    fresh = a.rerandomize()
    assert all(x != y for x, y in zip(fresh.values, a.values, strict=True)) and sk.decrypt(fresh) == values
    assert sk.decrypt(CipherVector.concat([a, b, a[:1]])) == values + others + values[:1]
    data_bytes = a.to_bytes()
    assert len(data_bytes) == k * pk.byte_len
    back = CipherVector.from_bytes(pk, data_bytes)
    assert back.values == a.values and sk.decrypt(back) == values


def test_homomorphic_edge_cases(keys):
    pk, sk = keys
    pool = NoisePool(pk, sk)
    a = pk.encrypt([5, -5, 0], pool=pool)
    assert sk.decrypt(a.mul_plain([0, 0, 0])) == [0, 0, 0]
    with pytest.raises(ValueError, match="mask noise"):
        a.rerandomize(pool=pool)  # ordinary noise does not hide anything from the key holder
    with pytest.raises(ValueError, match="mask noise"):
        pk.encrypt([1], pool=pool, mask=True)
    masks = NoisePool(pk, mask=True)  # the other party's path: the public key only
    fresh = a.rerandomize(pool=masks)
    assert sk.decrypt(fresh) == [5, -5, 0] and masks.made_online == 3
    assert all(x != y for x, y in zip(fresh.values, a.values, strict=True))
    # The re-randomising factor is exactly mask noise, an encryption of 0.
    n2 = pk.nsquare
    factors = [f * gmpy2.invert(c, n2) % n2 for f, c in zip(fresh.values, a.values, strict=True)]
    assert sk.decrypt(CipherVector(pk, factors)) == [0, 0, 0]
    assert sk.decrypt(a.rerandomize(pool=NoisePool(pk, sk, mask=True))) == [5, -5, 0]
    assert sk.decrypt(pk.encrypt([7], pool=masks)) == [7]  # a mask pool serves ordinary requests too
    assert sk.decrypt(a[:0].sum()) == [0]
    assert len(CipherVector.from_bytes(pk, b"")) == 0
    with pytest.raises(ValueError):
        a.add(a[:2])
    with pytest.raises(ValueError):
        a.add_plain([1])
    with pytest.raises(ValueError):
        a.mul_plain([1, 2])
    with pytest.raises(ValueError):
        CipherVector.concat([])
    with pytest.raises(TypeError):
        a[0]  # type: ignore[index]
    with pytest.raises(PlaintextOverflow):
        a.add_plain([pk.max_int + 1, 0, 0])
    with pytest.raises(ValueError):
        pk.raw_encrypt(pk.encode([1, 2]), [mpz(1)])


# ---- X^T [[d]]: bucket (small scalars) and general (large scalars) paths, and the process pool ----


@pytest.fixture(scope="module")
def encrypted_d(keys) -> tuple[list[int], CipherVector]:
    pk, sk = keys
    rng = np.random.default_rng(1)
    d = [int(v) for v in rng.integers(-(2**30), 2**30, size=600)]
    pool = NoisePool(pk, sk)
    pool.fill(len(d))
    return d, pk.encrypt(d, pool=pool)


@FAST
@given(st.integers(1, 40), st.integers(1, 5), st.integers(0, 2**32 - 1), st.floats(0.0, 0.9))
def test_matvec_small_scalars(keys, encrypted_d, rows, cols, seed, zero_share):
    pk, sk = keys
    d, cv = encrypted_d
    rng = np.random.default_rng(seed)
    X = rng.integers(-127, 128, size=(rows, cols))
    X[rng.random((rows, cols)) < zero_share] = 0
    X[:, rng.integers(cols)] = 0  # an all-zero column
    assert int(np.abs(X).max(initial=0)) < 2**7
    assert sk.decrypt(matvec_t(cv[:rows], X)) == _exact(d[:rows], X)


def test_matvec_paths_and_shapes(keys, encrypted_d):
    pk, sk = keys
    d, cv = encrypted_d
    rng = np.random.default_rng(2)
    big = rng.integers(-(2**20), 2**20, size=(40, 3))
    big[0, 0] = 2**16  # the general path: some |x| >= 2^16
    big[1, 1] = -(2**16)
    big[:, 2] = 0
    assert sk.decrypt(matvec_t(cv[:40], big)) == _exact(d[:40], big)
    huge = np.array([[2**40], [-(2**40) + 3], [0]], dtype=object).astype(np.int64)
    assert sk.decrypt(matvec_t(cv[:3], huge)) == _exact(d[:3], huge)
    # Scalars at the bucket path's edges: 2^16 - 1, repeated values, single rows, one distinct value.
    edge = np.array([[2**16 - 1, 1, 5], [-(2**16 - 1), 1, 5], [2**16 - 1, -1, 5], [3, 1, 5]])
    assert sk.decrypt(matvec_t(cv[:4], edge)) == _exact(d[:4], edge)
    assert sk.decrypt(matvec_t(cv[:1], np.array([[7, -7, 0]]))) == [7 * d[0], -7 * d[0], 0]
    for dtype in (np.int16, np.int32, np.int64):
        X = rng.integers(-100, 100, size=(20, 2)).astype(dtype)
        assert sk.decrypt(matvec_t(cv[:20], X)) == _exact(d[:20], X)
    assert len(matvec_t(cv[:5], np.zeros((5, 0), dtype=np.int64))) == 0
    with pytest.raises(TypeError):
        matvec_t(cv[:5], np.zeros((5, 2)))
    with pytest.raises(ValueError):
        matvec_t(cv[:5], np.zeros((4, 2), dtype=np.int64))
    with pytest.raises(ValueError):
        matvec_t(cv[:5], np.zeros(5, dtype=np.int64))


@pytest.mark.parametrize("column", [np.array([1, -128, 2], dtype=np.int8),
                                    np.array([1, 200, 2], dtype=np.uint8)])
def test_matvec_narrow_dtypes(keys, encrypted_d, column):
    pk, sk = keys
    d, cv = encrypted_d
    X = column.reshape(3, 1)
    assert sk.decrypt(matvec_t(cv[:3], X)) == _exact(d[:3], X)


def test_process_pool_matches_one_process(keys, encrypted_d):
    pk, sk = keys
    d, cv = encrypted_d
    rng = np.random.default_rng(3)
    X = rng.integers(-127, 128, size=(len(d), 4))
    X[:, 1] = 0
    single = matvec_t(cv, X)
    column = X[:, 2:3]  # one column, >= 2 * 256 rows: split by rows
    with PaillierPool(2) as pool:
        assert pool.matvec_plan(*X.shape) == ("columns", [(0, 2), (2, 4)])
        assert pool.matvec_plan(*column.shape) == ("rows", [(0, 300), (300, 600)])
        assert pool.matvec_plan(600, 3) == ("rows", [(0, 300), (300, 600)])  # 2 + 1 columns would be lopsided
        assert pool.matvec_plan(300, 3) == ("columns", [(0, 1), (1, 3)])  # too few rows to split them
        assert pool.matvec_plan(100, 2)[0] == "none"
        pooled = pool.matvec_t(cv, X)
        assert pooled.values == single.values
        assert sk.decrypt(pooled) == _exact(d, X)
        assert pool.matvec_t(cv, column).values == single.values[2:3]
        assert pool.decrypt(sk, cv[:100]) == d[:100] == sk.decrypt(cv[:100])
        noise = pool.make_noise(sk, 200)  # >= 2 * 64: made in both workers, CRT path
        assert len({int(v) for v in noise}) == 200
        plain = list(range(-100, 100))
        assert sk.decrypt(CipherVector(pk, pk.raw_encrypt(pk.encode(plain), noise))) == plain
        public_noise = pool.make_noise(pk, 130)
        assert sk.decrypt(CipherVector(pk, public_noise)) == [0] * 130
        noise_pool = NoisePool(pk, sk)
        pool.fill(noise_pool, 130)
        assert len(noise_pool) == 130
        assert sk.decrypt(pool.encrypt(pk, plain[:130], noise=noise_pool)) == plain[:130]
        assert len(noise_pool) == 0 and noise_pool.made_online == 0
        # Mask noise in both workers: the public path (the other party's) and the CRT path.
        for key in (pk, sk):
            masks = pool.make_noise(key, 130, mask=True)
            assert len({int(v) for v in masks}) == 130
            assert sk.decrypt(CipherVector(pk, masks)) == [0] * 130
            assert all(pow(int(v), int(gmpy2.lcm(sk.p - 1, sk.q - 1)), int(pk.nsquare)) == 1 for v in masks)
        mask_pool = NoisePool(pk, mask=True)
        pool.fill(mask_pool, 130)  # the pool's kind decides what is made
        assert len(mask_pool) == 130
        fresh = cv[:130].rerandomize(pool=mask_pool)
        assert sk.decrypt(fresh) == d[:130] and len(mask_pool) == 0 and mask_pool.made_online == 0
        assert not {int(v) for v in fresh.values} & {int(v) for v in cv.values[:130]}
        with pytest.raises(ValueError, match="mask noise"):
            pool.encrypt(pk, [1], noise=NoisePool(pk), mask=True)
        assert sk.decrypt(pool.encrypt(pk, plain[:130], mask=True)) == plain[:130]
    with PaillierPool(1) as solo:  # one worker: everything in this process
        assert solo.matvec_t(cv, X).values == single.values
        assert solo.decrypt(sk, cv[:10]) == d[:10]


# ---- noise pool, encoding range ----


def test_noise_pool_hands_each_value_out_once(keys):
    pk, sk = keys
    pool = NoisePool(pk, sk)
    pool.fill(10)
    assert len(pool) == 10
    first = pool.take(6)
    assert len(first) == 6 and len(pool) == 4
    assert pool.take(0) == [] and len(pool) == 4
    second = pool.take(4)
    assert len(pool) == 0 and pool.made_online == 0
    assert len({int(v) for v in first + second}) == 10
    third = pool.take(3)  # empty: made on the spot, and counted
    assert len(third) == 3 and pool.made_online == 3 and len(pool) == 0
    pool.fill(2)
    pool.take(5)
    assert pool.made_online == 6
    assert not {int(v) for v in third} & {int(v) for v in first + second}
    public = NoisePool(pk)  # without the private key: the slow public path
    values = public.take(2)
    assert public.made_online == 2 and sk.decrypt(CipherVector(pk, values)) == [0, 0]
    masks = NoisePool(pk, sk, mask=True)
    masks.fill(3)
    assert masks.mask and masks.noise_key is sk and NoisePool(pk, mask=True).noise_key is pk
    assert sk.decrypt(CipherVector(pk, masks.take(4))) == [0] * 4 and masks.made_online == 1


def test_noise_pool_refuses_another_key(keys, other_keys):
    pk, sk = keys
    other_pk, other_sk = other_keys
    with pytest.raises(InvalidKey, match="does not belong"):
        NoisePool(pk, other_sk)
    theirs = NoisePool(other_pk, mask=True)
    with pytest.raises(InvalidKey, match="another key"):
        pk.encrypt([1], pool=theirs)
    with pytest.raises(InvalidKey, match="another key"):
        pk.encrypt([1]).rerandomize(pool=theirs)


def test_encoding_range(keys):
    pk, sk = keys
    n, top = int(pk.n), pk.max_int
    assert top == (n - 1) // 3
    assert sk.decrypt(pk.encrypt([top, -top, top - 1, -top + 1])) == [top, -top, top - 1, -top + 1]
    assert pk.decode(pk.encode([top, -top, 0, -1])) == [top, -top, 0, -1]
    for bad in (top + 1, -top - 1, 2 * n):
        with pytest.raises(PlaintextOverflow):
            pk.encode([bad])
    for residue in (top + 1, top + 5, n // 2, n - top - 1):
        with pytest.raises(PlaintextOverflow):
            pk.decode([mpz(residue)])
    assert pk.decode([mpz(n - top)]) == [-top]
    # A homomorphic result that leaves the range is caught at decryption.
    with pytest.raises(PlaintextOverflow):
        sk.decrypt(pk.encrypt([top]).add(pk.encrypt([1])))


# ---- keys: errors, validation, serialisation ----


def _serialised(n: mpz | int, nb: int) -> bytes:
    return b"PK2" + nb.to_bytes(2, "big") + int(n).to_bytes(nb, "big")


def _serialised_pk1(n: mpz | int, hs: mpz | int, nb: int) -> bytes:
    """The retired format, which carried the sender's h_s."""
    return b"PK1" + nb.to_bytes(2, "big") + int(n).to_bytes(nb, "big") + int(hs).to_bytes(2 * nb, "big")


def test_key_generation_errors():
    with pytest.raises(InvalidKey):
        generate_keypair(1024)
    with pytest.raises(InvalidKey):
        generate_keypair(128, allow_insecure=True)
    with pytest.raises(InvalidKey):
        generate_keypair(1023, allow_insecure=True)
    pk, _ = _fixed_key()
    with pytest.raises(InvalidKey):
        PrivateKey(pk, P_FIXED, Q_FIXED + 2)


def test_public_key_validation(keys):
    pk, _ = keys
    nb = (pk.n_bits + 7) // 8
    good = pk.to_bytes()
    assert good == _serialised(pk.n, nb)
    with pytest.raises(InvalidKey, match="at least 2048"):
        PublicKey.from_bytes(good)  # 1024 bits: refused unless allowed
    for garbage in (b"", b"PK", b"garbage", b"PK3" + good[3:], bytes(len(good)), b"PK2\x00\x00"):
        with pytest.raises(InvalidKey):
            PublicKey.from_bytes(garbage, allow_insecure=True)
    for wrong_length in (good[:-1], good + b"\x00", good[:5 + nb // 2],
                         good + int(pk.hs).to_bytes(2 * nb, "big")):  # PK2 with an h_s appended
        with pytest.raises(InvalidKey, match="wrong length"):
            PublicKey.from_bytes(wrong_length, allow_insecure=True)
    with pytest.raises(InvalidKey, match="minimally encoded"):
        PublicKey.from_bytes(b"PK2" + (nb + 1).to_bytes(2, "big") + b"\x00" + good[5:], allow_insecure=True)
    with pytest.raises(InvalidKey, match="even"):
        PublicKey.from_bytes(_serialised(pk.n + 1, nb), allow_insecure=True)
    p = _blum(2**511 + 99)
    with pytest.raises(InvalidKey, match="small factor"):  # odd, composite, 1024 bits, divisible by 3 * 5
        PublicKey.from_bytes(_serialised(p * gmpy2.next_prime(2**509) * 15, nb), allow_insecure=True)
    with pytest.raises(InvalidKey, match="prime or a perfect power"):
        PublicKey.from_bytes(_serialised(gmpy2.next_prime(pk.n), nb), allow_insecure=True)
    with pytest.raises(InvalidKey, match="prime or a perfect power"):
        PublicKey.from_bytes(_serialised(p * p, nb), allow_insecure=True)
    with pytest.raises(InvalidKey, match="too small"):
        PublicKey.from_bytes(_serialised(_blum(2**99) * _blum(2**99 + 2**90), 25), allow_insecure=True)
    with pytest.raises(InvalidKey, match="too small"):
        noise_base_seed(3)


def _modulus_of(factors: list[mpz], bits: int = 2048) -> mpz:
    """An odd composite of exactly ``bits`` bits: the product of ``factors`` and one prime that completes it."""
    m = math.prod(factors, start=mpz(1))
    n = m * gmpy2.next_prime((mpz(1) << (bits - 1)) // m + 1)
    assert n.bit_length() == bits and n % 2 == 1
    return n


def _no_costly_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a check whose cost grows with the modulus runs (the gcd, the primality and power
    tests, deriving the noise base): the size checks must have refused the key first."""
    def costly(*args: object) -> None:
        raise AssertionError("a costly test ran before the size check")

    monkeypatch.setattr(paillier_math, "has_small_factor", costly)  # where check_modulus looks it up
    monkeypatch.setattr(paillier, "derive_noise_base", costly)
    monkeypatch.setattr(paillier_math.gmpy2, "is_prime", costly)


def test_a_key_of_another_size_than_the_jobs_is_refused_before_any_costly_test(secure_keys, keys_3072,
                                                                                monkeypatch):
    spk, _ = secure_keys
    assert PublicKey.from_bytes(spk.to_bytes(), key_bits=2048) == spk  # the job's size passes
    big = keys_3072[0]
    four_k = _modulus_of([spk.n], 4096)  # a 4096-bit key sent to a 2048-bit job
    huge = b"PK2" + (65535).to_bytes(2, "big") + b"\xff" * 65535  # the largest modulus the format carries
    _no_costly_test(monkeypatch)
    for data, size in [(big.to_bytes(), "384 bytes"), (_serialised(four_k, 512), "512 bytes"),
                       (huge, "65535 bytes")]:
        with pytest.raises(InvalidKey, match=rf"key of {size} .*this job uses keys of exactly 2048 bits"):
            PublicKey.from_bytes(data, key_bits=2048)
    # A key one bit short in the right number of bytes: refused from the modulus' length, before any test.
    short = _serialised(spk.n >> 1, 256)[:5] + b"\x7f" + _serialised(spk.n >> 1, 256)[6:]
    with pytest.raises(InvalidKey, match="key of 2047 bits; this job uses keys of exactly 2048 bits"):
        PublicKey.from_bytes(short, key_bits=2048)
    with pytest.raises(InvalidKey, match="key of 3072 bits; this job uses keys of exactly 2048 bits"):
        big.validate(key_bits=2048)
    # Without a job's size, the largest size any job uses bounds the work.
    with pytest.raises(InvalidKey, match="key of 65535 bytes; at most 4096 bits"):
        PublicKey.from_bytes(huge)


def test_moduli_with_small_factors_are_refused(secure_keys):
    spk, _ = secure_keys
    just_above_old_bound = gmpy2.next_prime(20000)
    thirty_two_small = [gmpy2.next_prime(20000)]
    while len(thirty_two_small) < 32:
        thirty_two_small.append(gmpy2.next_prime(thirty_two_small[-1]))
    for factors in ([just_above_old_bound], thirty_two_small, [gmpy2.prev_prime(paillier.SMALL_FACTOR_BOUND)],
                    [mpz(3), mpz(3)], [gmpy2.next_prime(2**19), gmpy2.next_prime(2**19 + 2**18)]):
        n = _modulus_of(factors)
        with pytest.raises(InvalidKey, match="modulus has a small factor"):
            PublicKey.from_bytes(_serialised(n, 256), key_bits=2048)
    with pytest.raises(InvalidKey, match=r"small factor \(a prime below 1,048,576\)"):
        PublicKey(_modulus_of([just_above_old_bound])).validate()


def test_what_the_modulus_checks_cannot_catch():
    """The limit docs/security.md states: without a proof of correct key generation, a modulus whose
    factors all lie above the trial bound passes, however many there are or however small n's security."""
    above = gmpy2.next_prime(paillier.SMALL_FACTOR_BOUND)
    prime_64 = [gmpy2.next_prime(mpz(2**63) + i * 2**40) for i in range(31)]
    for factors in ([above], [gmpy2.next_prime(2**199)], prime_64):
        n = _modulus_of(factors)
        assert PublicKey.from_bytes(_serialised(n, 256), key_bits=2048).n == n


def test_key_serialisation_and_pickling(keys, secure_keys):
    pk, sk = keys
    back = PublicKey.from_bytes(pk.to_bytes(), allow_insecure=True)
    assert back == pk and hash(back) == hash(pk) and back.fingerprint() == pk.fingerprint()
    assert back.to_bytes() == pk.to_bytes()
    assert pk.fingerprint() == hashlib.sha256(pk.to_bytes()).hexdigest()
    spk, ssk = secure_keys
    assert spk.n_bits == 2048 and spk.r_bits == 1024
    restored = PublicKey.from_bytes(spk.to_bytes())  # a secure key needs no permission
    assert restored == spk and restored.fingerprint() == spk.fingerprint() != pk.fingerprint()
    assert ssk.decrypt(restored.encrypt([-(2**1000), 17])) == [-(2**1000), 17]
    # Pickles carry the numbers only: window tables are dropped and rebuilt on demand.
    pk.noise()
    pk.mask_noise()
    sk.noise()
    assert pk._fixed is not None and pk._fixed_mask is not None and sk._fixed_p is not None
    pk_bytes, sk_bytes = pickle.dumps(pk), pickle.dumps(sk)
    assert len(pk_bytes) < 3 * pk.byte_len + 500 and len(sk_bytes) < 4 * pk.byte_len + 500
    pk2, sk2 = pickle.loads(pk_bytes), pickle.loads(sk_bytes)
    assert pk2 == pk and pk2._fixed is None and pk2._fixed_mask is None
    assert pk2.nsquare == pk.nsquare and pk2.max_int == pk.max_int and pk2.mask_bits == pk.mask_bits
    assert sk2._fixed_p is None and sk2.p == sk.p and sk2.q == sk.q and sk2.public_key == pk
    assert sk2.decrypt(pk2.encrypt([9, -9])) == [9, -9]
    assert sk.decrypt(CipherVector(pk, [sk2.noise()])) == [0]


def test_3072_bit_keys(keys_3072):
    pk, sk = keys_3072
    assert pk.n_bits == 3072 and sk.p.bit_length() == sk.q.bit_length() == 1536
    assert pk.r_bits == 1536 and pk.mask_bits == 3072 + MASK_EXTRA_BITS and pk.byte_len == 768
    received = PublicKey.from_bytes(pk.to_bytes())  # secure: no permission needed; h_s recomputed
    assert received == pk and received.hs == derive_noise_base(pk.n)
    pk.validate()
    values = [2**3000, -(2**2900) + 5, 0, 17, -1]
    a = received.encrypt(values, pool=NoisePool(pk, sk))
    b = pk.encrypt([1, 2, 3, 4, 5])
    assert sk.decrypt(a) == values
    assert sk.decrypt(a.add(b)) == [v + w for v, w in zip(values, [1, 2, 3, 4, 5], strict=True)]
    assert sk.decrypt(b.mul_plain([3, -3, 0, 2**40, -(2**40)])) == [3, -6, 0, 4 * 2**40, -5 * 2**40]
    d = [secrets.randbits(40) - 2**39 for _ in range(6)]
    cv = pk.encrypt(d, pool=NoisePool(pk, sk))
    X = np.array([[1, -2, 300], [0, 5, -7], [127, -128, 2**17], [3, 3, 3], [-1, 0, 9], [2, 2, -(2**20)]])
    assert sk.decrypt(matvec_t(cv, X)) == _exact(d, X)  # both the bucket and the general path
    assert sk.decrypt(matvec_t(cv, X[:, :2])) == _exact(d, X[:, :2])
    fresh = cv.rerandomize(pool=NoisePool(pk, sk, mask=True))
    assert sk.decrypt(fresh) == d and fresh.values != cv.values
    assert sk.decrypt(CipherVector(pk, [pk.mask_noise(), sk.mask_noise(), sk.noise()])) == [0, 0, 0]
    # Packing: a 3072-bit plaintext holds half again as many slots as a 2048-bit one.
    k = slots_per_plaintext(pk, 69)
    assert k == (pk.max_int.bit_length() - 1) // 69 == 44
    slots = [secrets.randbits(60) - 2**59 for _ in range(k)]
    packed = pk.encrypt([pack_signed(slots, 69)] * 3).sum()
    assert unpack_signed(sk.decrypt(packed)[0], k, 69) == [3 * v for v in slots]
    layout = SlotLayout.for_key(pk, 120)
    masked = [secrets.randbits(120) for _ in range(layout.n_slots + 2)]
    opened = layout.unpack(sk.decrypt(layout.pack_ciphertexts(pk.encrypt(masked))))
    assert [v for row in opened for v in row][:len(masked)] == masked
    assert CipherVector.from_bytes(pk, a.to_bytes()).values == a.values


def test_ciphertext_validation(keys, other_keys):
    pk, sk = keys
    width = pk.byte_len
    p = int(sk.p)
    for bad in (0, int(pk.n), p, 2 * p, int(pk.nsquare), int(pk.nsquare) + 1, 256**width - 1):
        with pytest.raises(InvalidCiphertext):
            CipherVector.from_bytes(pk, bad.to_bytes(width, "big"))
    good = pk.encrypt([1, 2]).to_bytes()
    for wrong_length in (good[:-1], good + b"\x01", b"\x01" * (width + 1)):
        with pytest.raises(InvalidCiphertext):
            CipherVector.from_bytes(pk, wrong_length)
    with pytest.raises(InvalidCiphertext):  # the second of two is bad
        CipherVector.from_bytes(pk, good[:width] + bytes(width))
    other_pk, other_sk = other_keys
    theirs = other_pk.encrypt([1])
    with pytest.raises(InvalidCiphertext):
        sk.decrypt(theirs)
    with pytest.raises(InvalidCiphertext):
        other_sk.decrypt(pk.encrypt([1]))
    with pytest.raises(InvalidCiphertext):
        sk.decrypt_small(theirs)
    with pytest.raises(InvalidCiphertext):
        pk.encrypt([1]).add(theirs)
    with pytest.raises(InvalidCiphertext):
        CipherVector.concat([pk.encrypt([1]), theirs])
