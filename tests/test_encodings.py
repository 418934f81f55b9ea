"""Encodings under the ciphertexts: fixed point, quantisation, slot packing (also of ciphertexts), shipping to workers.

Property tests (hypothesis) for every encoding; keys are a 1024-bit pair made once (allowed as insecure).
"""

from __future__ import annotations

import pickle
from fractions import Fraction

import numpy as np
import pytest
from gmpy2 import mpz
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.fixedpoint import decode, encode, quantise
from protocols.packing import SlotLayout, SlotOverflow, pack_signed, slots_per_plaintext, unpack_signed
from protocols.paillier import (
    PrivateKey,
    PublicKey,
    generate_keypair,
)

FAST = settings(max_examples=25, deadline=None)


@pytest.fixture(scope="module")
def keys() -> tuple[PublicKey, PrivateKey]:
    return generate_keypair(1024, allow_insecure=True)


# ---- fixed point ----


def _check_encoding(values: list[float], scale: int) -> None:
    ints = encode(values, scale)
    assert len(ints) == len(values) and all(isinstance(k, int) for k in ints)
    half_ulp = Fraction(1, 2 ** (scale + 1))
    for v, k in zip(values, ints, strict=True):
        assert abs(Fraction(v) - Fraction(k, 2**scale)) <= half_ulp  # exact: the rounding bound itself
    back = decode(ints, scale)
    for v, b in zip(values, back.tolist(), strict=True):
        # decode rounds the int to a float once more: half an ulp of the value on top of the bound
        assert abs(b - v) <= 2.0 ** -(scale + 1) + abs(v) * 2.0**-52


@FAST
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=20), st.integers(0, 40))
def test_fixed_point_round_trip_int64_path(values, scale):
    _check_encoding(values, scale)


@FAST
@given(st.lists(st.floats(-1e30, 1e30, allow_nan=False), min_size=1, max_size=20), st.integers(0, 64))
def test_fixed_point_round_trip_large(values, scale):
    _check_encoding(values + [1e30, -3.5e29], scale)  # beyond int64: the exact per-value path


def test_fixed_point_edges():
    assert encode([1e30], 40) == [int(Fraction(1e30) * 2**40)]
    assert decode(encode([1e30], 40), 40)[0] == 1e30
    assert encode([0.5, -0.5, 1.5, 2**-60, -(2**-60)], 0) in ([0, 0, 2, 0, 0], [1, -1, 2, 0, 0])
    assert encode([], 10) == [] and decode([], 10).shape == (0,)
    assert encode([5e-324, -5e-324], 100) == [0, 0]
    assert encode(np.array([[1.0, 2.0]]), 1) == [2, 4]
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError):
            encode([1.0, bad], 10)
    with pytest.raises(ValueError):
        encode([1.0], -1)


@FAST
@given(st.integers(2, 16), st.integers(1, 30), st.integers(1, 5), st.integers(0, 2**32 - 1),
       st.floats(1e-6, 1e6))
def test_quantisation_error_bound(bits, rows, cols, seed, spread):
    X = np.random.default_rng(seed).normal(size=(rows, cols)) * spread
    X[:, 0] = 0
    Xq, scale = quantise(X, bits)
    assert Xq.dtype == np.int64 and Xq.shape == X.shape and scale.shape == (cols,)
    assert np.all(np.abs(Xq) <= 2 ** (bits - 1) - 1)
    assert np.all(np.abs(X - Xq * scale) <= scale / 2 * (1 + 1e-12))
    assert scale[0] == 1.0 and not Xq[:, 0].any()


def test_quantise_refuses_bad_input():
    for bits in (0, 1, 17, 64):
        with pytest.raises(ValueError):
            quantise(np.zeros((2, 2)), bits)
    with pytest.raises(ValueError):
        quantise(np.zeros(3), 8)
    with pytest.raises(ValueError):
        quantise(np.array([[1.0, float("nan")]]), 8)


# ---- packing ----


@FAST
@given(st.integers(1, 120), st.data())
def test_slot_layout_round_trip(slot_bits, data):
    layout = SlotLayout(slot_bits, data.draw(st.integers(1, 8)))
    values = st.integers(0, 2**slot_bits - 1)
    rows = data.draw(st.lists(st.lists(values, min_size=1, max_size=layout.n_slots), min_size=1, max_size=4))
    packed = layout.pack(rows)
    assert all(0 <= v < 2**layout.total_bits for v in packed)
    back = [row[:len(orig)] for row, orig in zip(layout.unpack(packed), rows, strict=True)]
    assert back == rows
    assert all(not any(row[len(orig):]) for row, orig in zip(layout.unpack(packed), rows, strict=True))
    with pytest.raises(SlotOverflow):
        layout.pack([[2**slot_bits]])
    with pytest.raises(SlotOverflow):
        layout.pack([[-1]])
    with pytest.raises(SlotOverflow):
        layout.pack([[0] * (layout.n_slots + 1)])
    with pytest.raises(SlotOverflow):
        layout.unpack([2**layout.total_bits])


def test_slot_layout_for_key(keys):
    pk, _ = keys
    bits = pk.max_int.bit_length()
    layout = SlotLayout.for_key(pk, 70)
    assert layout.n_slots == (bits - 1) // 70 and layout.fits(pk) and layout.offset() == 2**68
    assert not SlotLayout(70, layout.n_slots + 1).fits(pk)
    assert SlotLayout.for_key(pk, 70, below=2**141).n_slots == 2
    with pytest.raises(SlotOverflow):
        SlotLayout.for_key(pk, bits)
    with pytest.raises(ValueError):
        SlotLayout(0, 1)
    assert slots_per_plaintext(pk, 70) == layout.n_slots
    assert slots_per_plaintext(pk, bits - 1) == 1
    with pytest.raises(SlotOverflow):
        slots_per_plaintext(pk, bits)


@FAST
@given(st.integers(8, 120), st.integers(2, 4), st.data())
def test_packed_sums_do_not_bleed(keys, slot_bits, n_terms, data):
    pk, sk = keys
    layout = SlotLayout.for_key(pk, slot_bits)
    k = min(layout.n_slots, 6)
    # Each slot's sum just fits: the last term tops the slot up to at most 2^slot_bits - 1.
    top = (2**slot_bits - 1) // n_terms
    rows = [data.draw(st.lists(st.integers(0, top), min_size=k, max_size=k)) for _ in range(n_terms)]
    rows[0] = [2**slot_bits - 1 - top * (n_terms - 1) if j == 0 else v for j, v in enumerate(rows[0])]
    rows[1:] = [[top] + row[1:] for row in rows[1:]]
    sums = [sum(col) for col in zip(*rows, strict=True)]
    assert sums[0] == 2**slot_bits - 1 and max(sums) < 2**slot_bits
    total = pk.encrypt(layout.pack(rows)).sum()
    assert layout.unpack(sk.decrypt(total), k) == [sums]


@FAST
@given(st.integers(8, 120), st.data())
def test_horner_packing_of_ciphertexts(keys, slot_bits, data):
    pk, sk = keys
    layout = SlotLayout.for_key(pk, slot_bits)
    count = data.draw(st.integers(1, 2 * layout.n_slots + 1))  # several groups, the last one partial
    values = data.draw(st.lists(st.integers(0, 2**slot_bits - 1), min_size=count, max_size=count))
    values[0] = 2**slot_bits - 1
    packed = layout.pack_ciphertexts(pk.encrypt(values))
    assert len(packed) == -(-count // layout.n_slots)
    flat = [v for row in layout.unpack(sk.decrypt(packed)) for v in row]
    assert flat[:count] == values and not any(flat[count:])  # the partial group's empty slots stay 0


def test_horner_packing_fixed(keys):
    pk, sk = keys
    layout = SlotLayout(120, 5)
    values = [1, 2**119 - 1, 0, 12345, 2**120 - 1, 7]
    packed = layout.pack_ciphertexts(pk.encrypt(values))
    assert len(packed) == 2
    assert layout.unpack(sk.decrypt(packed)) == [values[:5], values[5:] + [0] * 4]
    assert sk.decrypt(packed) == layout.pack([values[:5], values[5:]])
    too_wide = SlotLayout(120, pk.n.bit_length() // 120 + 1)
    with pytest.raises(SlotOverflow, match="does not fit"):
        too_wide.pack_ciphertexts(pk.encrypt(values))


@FAST
@given(st.integers(2, 120), st.integers(1, 4), st.data())
def test_signed_slots(keys, slot_bits, n_terms, data):
    pk, sk = keys
    k = min(slots_per_plaintext(pk, slot_bits), 8)
    half = 2 ** (slot_bits - 1)
    single = st.integers(-half, half - 1)
    a = data.draw(st.lists(single, min_size=k, max_size=k))
    assert unpack_signed(pack_signed(a, slot_bits), k, slot_bits) == a
    assert pk.decode(pk.encode([pack_signed(a, slot_bits)])) == [pack_signed(a, slot_bits)]
    # Sums of n_terms signed values whose slot-wise sums stay in [-half, half).
    term = st.integers(-(half // n_terms), (half - 1) // n_terms)
    rows = [data.draw(st.lists(term, min_size=k, max_size=k)) for _ in range(n_terms)]
    sums = [sum(col) for col in zip(*rows, strict=True)]
    assert all(-half <= s < half for s in sums)
    total = pk.encrypt([pack_signed(row, slot_bits) for row in rows]).sum()
    assert unpack_signed(sk.decrypt(total)[0], k, slot_bits) == sums
    with pytest.raises(SlotOverflow):
        pack_signed([half], slot_bits)
    with pytest.raises(SlotOverflow):
        pack_signed([-half - 1], slot_bits)


def test_signed_slot_overflow_is_detected(keys):
    pk, sk = keys
    s, k = 16, 4
    half = 2 ** (s - 1)
    extremes = [half - 1, -half, -1, 0]
    assert unpack_signed(pack_signed(extremes, s), k, s) == extremes
    # One slot's sum leaves the range: the carry runs past the last slot and is caught.
    overflow = pk.encrypt([pack_signed([0, 0, 0, half - 1], s), pack_signed([0, 0, 0, 1], s)]).sum()
    with pytest.raises(SlotOverflow):
        unpack_signed(sk.decrypt(overflow)[0], k, s)
    with pytest.raises(SlotOverflow):
        unpack_signed(pack_signed([0, 0, 0, -half], s) - (1 << (s * 3)), k, s)
    with pytest.raises(SlotOverflow):
        unpack_signed(1 << (s * k), k, s)
    assert unpack_signed(0, k, s) == [0] * k


@FAST
@given(st.lists(st.integers(0, 2**64), min_size=0, max_size=20), st.integers(65, 200))
def test_shipping_ciphertexts_to_workers_keeps_every_value(values, bits):

    from protocols.paillier_pool import Shipped

    shipped = pickle.loads(pickle.dumps(Shipped([mpz(v) for v in values], bits)))
    assert shipped.values() == values  # zeros at the top included
