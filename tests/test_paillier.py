"""Paillier kernels: known answers, interop with phe, homomorphic identities, packing, errors."""

from __future__ import annotations

import pickle

import gmpy2
import numpy as np
import pytest
from gmpy2 import mpz
from hypothesis import given, settings
from hypothesis import strategies as st
from phe import paillier as phe

from protocols.fixedpoint import decode, encode, quantise
from protocols.packing import SlotLayout, SlotOverflow, pack_signed, slots_per_plaintext, unpack_signed
from protocols.paillier import (
    CipherVector,
    InvalidCiphertext,
    InvalidKey,
    NoisePool,
    PlaintextOverflow,
    PrivateKey,
    PublicKey,
    generate_keypair,
    matvec_t,
)
from protocols.paillier_pool import PaillierPool

FAST = settings(max_examples=25, deadline=None)


@pytest.fixture(scope="module")
def keys() -> tuple[PublicKey, PrivateKey]:
    return generate_keypair(1024, allow_insecure=True)


def _blum(start: int) -> mpz:
    p = gmpy2.next_prime(mpz(start))
    while p % 4 != 3:
        p = gmpy2.next_prime(p)
    return p


def test_known_answer():
    p, q = _blum(2**255 + 12345), _blum(2**255 + 99991 * 2**40)
    n = p * q
    x = mpz(1234567891011)
    hs = gmpy2.powmod(-x * x % n, n, n * n)
    pk = PublicKey(n, hs)
    sk = PrivateKey(pk, p, q)
    noise = gmpy2.powmod(hs, 987654321, n * n)
    m = 42
    c = pk.raw_encrypt(pk.encode([m]), [noise])[0]
    assert c == (1 + m * n) * noise % (n * n)
    assert sk.decrypt(CipherVector(pk, [c])) == [m]
    assert sk.decrypt(CipherVector(pk, [pk.raw_encrypt(pk.encode([-7]), [noise])[0]])) == [-7]


def test_interop_with_phe(keys):
    pk, sk = keys
    phe_pub = phe.PaillierPublicKey(int(pk.n))
    phe_priv = phe.PaillierPrivateKey(phe_pub, int(sk.p), int(sk.q))
    ours = pk.encrypt([123456789, 5])
    assert [phe_priv.raw_decrypt(int(c)) for c in ours.values] == [123456789, 5]
    theirs = CipherVector(pk, [mpz(phe_pub.raw_encrypt(777)), mpz(phe_pub.raw_encrypt(3))])
    assert sk.decrypt(theirs) == [777, 3]
    assert sk.decrypt(theirs.add(ours)) == [777 + 123456789, 8]


@FAST
@given(st.lists(st.integers(-(2**60), 2**60), min_size=1, max_size=6), st.data())
def test_homomorphic_identities(keys, values, data):
    pk, sk = keys
    others = data.draw(st.lists(st.integers(-(2**60), 2**60), min_size=len(values), max_size=len(values)))
    scalars = data.draw(st.lists(st.integers(-(2**20), 2**20), min_size=len(values), max_size=len(values)))
    a, b = pk.encrypt(values), pk.encrypt(others)
    assert sk.decrypt(a.add(b)) == [x + y for x, y in zip(values, others, strict=True)]
    assert sk.decrypt(a.add_plain(others)) == [x + y for x, y in zip(values, others, strict=True)]
    assert sk.decrypt(a.mul_plain(scalars)) == [x * k for x, k in zip(values, scalars, strict=True)]
    assert sk.decrypt(a.sum()) == [sum(values)]
    fresh = a.rerandomize()
    assert fresh.values != a.values and sk.decrypt(fresh) == values
    assert sk.decrypt(CipherVector.concat([a, b])) == values + others
    assert sk.decrypt(CipherVector.from_bytes(pk, a.to_bytes())) == values


def test_matvec_small_and_general_paths(keys):
    pk, sk = keys
    rng = np.random.default_rng(1)
    d = [int(v) for v in rng.integers(-(2**30), 2**30, size=50)]
    cv = pk.encrypt(d)
    X = rng.integers(-127, 128, size=(50, 5))
    X[:, 2] = 0
    X[rng.random((50, 5)) < 0.3] = 0
    expected = (np.array(d, dtype=object) @ X.astype(object)).tolist()
    assert sk.decrypt(matvec_t(cv, X)) == expected
    big = rng.integers(-(2**20), 2**20, size=(50, 3))
    assert sk.decrypt(matvec_t(cv, big)) == (np.array(d, dtype=object) @ big.astype(object)).tolist()
    with pytest.raises(TypeError):
        matvec_t(cv, X.astype(float))
    with PaillierPool(2) as pool:
        assert sk.decrypt(pool.matvec_t(cv, X)) == expected
        assert pool.decrypt(sk, cv) == d
        noise = NoisePool(pk, sk)
        pool.fill(noise, 40)
        assert sk.decrypt(pk.encrypt(list(range(40)), pool=noise)) == list(range(40))


def test_noise_pool_hands_each_value_out_once(keys):
    pk, sk = keys
    pool = NoisePool(pk, sk)
    pool.fill(10)
    taken = pool.take(6) + pool.take(4)
    assert len(pool) == 0 and len({int(v) for v in taken}) == 10
    pool.take(3)
    assert pool.made_online == 3


def test_encoding_range(keys):
    pk, sk = keys
    assert sk.decrypt(pk.encrypt([pk.max_int, -pk.max_int])) == [pk.max_int, -pk.max_int]
    with pytest.raises(PlaintextOverflow):
        pk.encode([pk.max_int + 1])
    with pytest.raises(PlaintextOverflow):
        pk.decode([mpz(pk.max_int + 5)])


def test_key_errors_and_serialisation(keys):
    pk, sk = keys
    with pytest.raises(InvalidKey):
        generate_keypair(1024)
    with pytest.raises(InvalidKey):
        PublicKey.from_bytes(pk.to_bytes())  # 1024 bits: refused unless allowed
    assert PublicKey.from_bytes(pk.to_bytes(), allow_insecure=True) == pk
    assert PublicKey.from_bytes(pk.to_bytes(), allow_insecure=True).fingerprint() == pk.fingerprint()
    with pytest.raises(InvalidKey):
        PublicKey.from_bytes(b"garbage")
    with pytest.raises(InvalidKey):
        PublicKey.from_bytes(pk.to_bytes()[:-1], allow_insecure=True)
    with pytest.raises(InvalidKey, match="small factor|even"):
        PublicKey(pk.n * 3 * 0 + mpz(2**1023 + 1) * 3, pk.hs).validate(allow_insecure=True)
    with pytest.raises(InvalidKey, match="even"):
        PublicKey(pk.n + 1, pk.hs).validate(allow_insecure=True)
    assert pickle.loads(pickle.dumps(pk)) == pk
    restored = pickle.loads(pickle.dumps(sk))
    assert restored.decrypt(pk.encrypt([9])) == [9]


def test_ciphertext_validation(keys):
    pk, sk = keys
    width = pk.byte_len
    for bad in (0, int(pk.n), int(pk.nsquare)):
        with pytest.raises(InvalidCiphertext):
            CipherVector.from_bytes(pk, bad.to_bytes(width + 1, "big")[-width:] if bad < 256**width else b"\xff" * width)
    with pytest.raises(InvalidCiphertext):
        CipherVector.from_bytes(pk, b"\x01" * (width + 1))
    other_pk, _ = generate_keypair(1024, allow_insecure=True)
    with pytest.raises(InvalidCiphertext):
        sk.decrypt(other_pk.encrypt([1]))
    with pytest.raises(InvalidCiphertext):
        pk.encrypt([1]).add(other_pk.encrypt([1]))


@FAST
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=20), st.integers(0, 40))
def test_fixed_point_round_trip(values, scale):
    back = decode(encode(values, scale), scale)
    assert np.all(np.abs(back - np.array(values)) <= 2.0 ** -(scale + 1) * (1 + 1e-9) + 1e-9 * np.abs(values))


def test_fixed_point_large_and_bad():
    assert decode(encode([1e30], 40), 40)[0] == pytest.approx(1e30)
    with pytest.raises(ValueError):
        encode([float("nan")], 10)


@FAST
@given(st.integers(2, 16), st.integers(1, 30), st.integers(1, 5), st.integers(0, 1000))
def test_quantisation_error_bound(bits, rows, cols, seed):
    X = np.random.default_rng(seed).normal(size=(rows, cols)) * 3
    X[:, 0] = 0
    Xq, scale = quantise(X, bits)
    assert np.all(np.abs(Xq) <= 2 ** (bits - 1) - 1)
    assert np.all(np.abs(X - Xq * scale) <= scale / 2 + 1e-12)
    assert scale[0] == 1.0


def test_quantise_refuses_bad_bits():
    with pytest.raises(ValueError):
        quantise(np.zeros((2, 2)), 1)


@FAST
@given(st.integers(8, 80), st.data())
def test_slot_packing_round_trip_and_sums(keys, slot_bits, data):
    pk, sk = keys
    layout = SlotLayout.for_key(pk, slot_bits)
    k = min(layout.n_slots, 6)
    n_terms = 3
    top = (1 << slot_bits) // n_terms  # headroom: the sum of three values fits its slot
    rows = [data.draw(st.lists(st.integers(0, top - 1), min_size=k, max_size=k)) for _ in range(n_terms)]
    assert layout.unpack(layout.pack(rows), k) == rows
    total = pk.encrypt(layout.pack(rows)).sum()
    assert layout.unpack(sk.decrypt(total), k) == [[sum(col) for col in zip(*rows, strict=True)]]
    with pytest.raises(SlotOverflow):
        layout.pack([[1 << slot_bits]])


def test_horner_packing_of_ciphertexts(keys):
    pk, sk = keys
    layout = SlotLayout(70, 5)
    values = [1, 2**69 - 1, 0, 12345, 2**40]
    packed = layout.pack_ciphertexts(pk.encrypt(values))
    assert len(packed) == 1
    assert layout.unpack(sk.decrypt(packed), 5) == [values]


@FAST
@given(st.integers(4, 90), st.data())
def test_signed_slots(keys, slot_bits, data):
    pk, sk = keys
    k = min(slots_per_plaintext(pk, slot_bits), 8)
    quarter = 1 << (slot_bits - 3)
    a = data.draw(st.lists(st.integers(-quarter, quarter - 1), min_size=k, max_size=k))
    b = data.draw(st.lists(st.integers(-quarter, quarter - 1), min_size=k, max_size=k))
    assert unpack_signed(pack_signed(a, slot_bits), k, slot_bits) == a
    total = pk.encrypt([pack_signed(a, slot_bits)]).add(pk.encrypt([pack_signed(b, slot_bits)]))
    assert unpack_signed(sk.decrypt(total)[0], k, slot_bits) == [x + y for x, y in zip(a, b, strict=True)]
    with pytest.raises(SlotOverflow):
        unpack_signed(pack_signed(a, slot_bits) + (1 << (slot_bits * k + 1)), k, slot_bits)
    with pytest.raises(SlotOverflow):
        pack_signed([1 << (slot_bits - 1)], slot_bits)
