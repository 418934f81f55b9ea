"""Okamoto-Uchiyama behind the HE seam (protocols.he.ou): known answers on a fixed small key computed with plain
``pow``, cross-checks against SecretFlow HEU's OU on HEU's own key material, property tests for packing, and
every refusal of a received key or ciphertext."""

from __future__ import annotations

import re

import gmpy2
import numpy as np
import pytest
from gmpy2 import mpz
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import InvalidCiphertext, InvalidKey, PlaintextOverflow
from protocols.he import HEScheme, get_scheme, ou_math
from protocols.he.ou_keys import KEY_FORMAT, CipherVector, NoisePool, PrivateKey, PublicKey
from protocols.packing import SlotLayout, SlotOverflow, pack_signed, unpack_signed
from protocols.paillier_math import SMALL_FACTOR_BOUND

BITS = 1024
# The fixed known-answer key: p, q of 128 bits each, n = p^2 q of 384 bits.
KAT_P = mpz(0xC00000000000000000000000000000B5)
KAT_Q = mpz(0xF0000000000000000000000000000047)


@pytest.fixture(scope="module")
def scheme() -> HEScheme:
    return get_scheme("ou")


@pytest.fixture(scope="module")
def keys(scheme):
    return scheme.generate_keypair(BITS, allow_insecure=True)


def _serialised(n: int) -> bytes:
    nb = (int(n).bit_length() + 7) // 8
    return KEY_FORMAT + nb.to_bytes(2, "big") + int(n).to_bytes(nb, "big")


# ---- known answers ----


def test_known_answers_on_a_fixed_key():
    n = KAT_P * KAT_P * KAT_Q
    pk = PublicKey(n)
    sk = PrivateKey(pk, KAT_P, KAT_Q)
    assert pk.n_bits == 384 and pk.max_int == 2**126 - 1 and pk.byte_len == 48
    g, h = int(pk.g), int(pk.h)
    # The bases: squares, H an n-th power (its order mod p^2 divides p - 1), both derived from n alone.
    assert gmpy2.jacobi(g, int(n)) == 1 and gmpy2.jacobi(h, int(n)) == 1
    assert pow(h, int(KAT_P) - 1, int(KAT_P) ** 2) == 1
    assert (pk.g, pk.h) == ou_math.derive_bases(n)
    pool = NoisePool(pk)
    r = [12345, 2**200 + 7, 1]
    pool.extend([mpz(pow(h, x, int(n))) for x in r])
    values = [42, -42, 2**126 - 1]
    cv = get_scheme("ou").encrypt(pk, values, pool)
    expected = [pow(g, m, int(n)) * pow(h, x, int(n)) % int(n) for m, x in zip(values, r, strict=True)]
    assert [int(c) for c in cv.values] == expected
    # Decryption by hand: L(c^(p-1) mod p^2) / L(g^(p-1) mod p^2) mod p, signed around p/2.
    p, p2 = int(KAT_P), int(KAT_P) ** 2
    unit = pow((pow(g, p - 1, p2) - 1) // p, -1, p)
    by_hand = [(pow(c, p - 1, p2) - 1) // p * unit % p for c in expected]
    assert [m if m < p // 2 else m - p for m in by_hand] == values == sk.decrypt(cv)
    # Homomorphic operations against plain pow.
    a = CipherVector(pk, [mpz(expected[0])])
    assert sk.decrypt(CipherVector(pk, [mpz(expected[0] * expected[1] % int(n))])) == [0]
    assert a.mul_plain([-3]).values == [mpz(pow(pow(expected[0], -1, int(n)), 3, int(n)))]
    assert sk.decrypt(a.mul_plain([-3])) == [-126] and sk.decrypt(a.add_plain([8])) == [50]


def test_noise_decrypts_to_zero_on_every_path(keys):
    pk, sk = keys
    for key, mask in ((pk, False), (pk, True), (sk, False), (sk, True)):
        pool = NoisePool(pk, sk if key is sk else None, mask=mask)
        pool.fill(4)
        values = pool.take(4)
        assert sk.decrypt(CipherVector(pk, values)) == [0, 0, 0, 0]
        assert len(set(values)) == 4
    # The key owner's CRT path computes the public path's H^r for the same exponent.
    assert sk._h_pow(2**300 + 5) == gmpy2.powmod(pk.h, 2**300 + 5, pk.n)


def test_through_the_seam(scheme, keys):
    pk, sk = keys
    pool = scheme.noise_pool(pk, sk)
    with scheme.kernels(1) as kernels:
        kernels.fill(pool, 8)
        a = scheme.encrypt(pk, [5, -7, 0, 123], pool)
        b = scheme.encrypt(pk, [1, 2, 3, -4], pool)
        assert pool.made_online == 0
        assert scheme.decrypt(sk, scheme.add(a, b)) == [6, -5, 3, 119]
        assert scheme.decrypt(sk, scheme.add_plain(a, [1, 1, 1, 1])) == [6, -6, 1, 124]
        assert scheme.decrypt(sk, scheme.mul_plain(a, [3, -2, 9, 0])) == [15, 14, 0, 0]
        X = np.array([[1, -2], [3, 0], [-128, 127], [5, 1]])
        assert scheme.decrypt(sk, scheme.matvec_t(a, X)) == [5 - 21 + 615, -10 + 123]
        assert kernels.decrypt(sk, kernels.matvec_t(a, X)) == [5 - 21 + 615, -10 + 123]
        wire = scheme.ciphertexts_from_bytes(pk, a.to_bytes())
        assert wire.values == a.values and len(a.to_bytes()) == 4 * pk.byte_len
        assert scheme.ciphertext_modulus(pk) == pk.n
    with scheme.kernels(2) as kernels:  # worker processes: the same plaintexts
        noise = scheme.noise_pool(pk, sk)
        kernels.fill(noise, 300)
        values = list(range(-150, 150))
        cv = kernels.encrypt(pk, values, noise=noise)
        assert kernels.decrypt(sk, cv) == values
        X = np.arange(600).reshape(300, 2) % 7 - 3
        assert kernels.decrypt(sk, kernels.matvec_t(cv, X)) == [int(v) for v in np.array(values) @ X]


# ---- SecretFlow HEU's OU ----


def _heu_kit():
    phe = pytest.importorskip("heu.phe", reason="sf-heu is not installed")
    kit = phe.setup(phe.SchemaType.OU, 2048)
    fields = dict(re.findall(r"(\w+)=([0-9A-F]+)\[", str(kit.public_key()) + " " + str(kit.secret_key())))
    return kit, {k: mpz(int(v, 16)) for k, v in fields.items()}


def _from_heu(ciphertext, n: mpz) -> mpz:
    """HEU prints a ciphertext in Montgomery form, c R mod n with R = 2^(60 k) for k 60-bit digits of n."""
    r = mpz(2) ** (60 * -(-n.bit_length() // 60))
    return mpz(int(str(ciphertext))) * gmpy2.invert(r, n) % n


def test_heu_ciphertexts_decrypt_under_our_decryption_and_ours_add_to_theirs():
    """HEU's key material (n, G, H, p, q, read from its printed keys) in our objects: our decryption opens HEU's
    ciphertexts and HEU's homomorphic results, and our encryption under HEU's bases adds to HEU's ciphertexts."""
    kit, f = _heu_kit()
    n, p = f["n"], f["p"]
    assert p * p * f["q"] == n
    pk = PublicKey(n, bases=(f["G"], f["H"]))
    sk = PrivateKey(pk, p, f["q"])
    encryptor, evaluator = kit.encryptor(), kit.evaluator()
    values = [0, 1, -1, 123456789, -(2**60), 2**300]
    theirs = [encryptor.encrypt_raw(v) for v in values]
    as_ours = CipherVector(pk, [_from_heu(c, n) for c in theirs])
    assert sk.decrypt(as_ours) == values
    total = evaluator.add(theirs[3], theirs[4])
    scaled = evaluator.mul(theirs[3], kit.plaintext(-7))
    opened = sk.decrypt(CipherVector(pk, [_from_heu(total, n), _from_heu(scaled, n)]))
    assert opened == [123456789 - 2**60, -7 * 123456789]
    pool = NoisePool(pk, sk)
    pool.fill(2)
    ours = get_scheme("ou").encrypt(pk, [1000, -5], pool)
    mixed = CipherVector(pk, [a * b % n for a, b in zip(ours.values, as_ours.values[2:4], strict=True)])
    assert sk.decrypt(mixed) == [999, 123456784]
    # The same plaintexts under HEU and under us give the same homomorphic sums.
    heu_sum = kit.decryptor().decrypt_raw(evaluator.add(theirs[1], theirs[3]))
    assert heu_sum == sk.decrypt(CipherVector(pk, [as_ours.values[1] * as_ours.values[3] % n]))[0] == 123456790


# ---- packing ----


def test_slot_counts(scheme, keys):
    pk, _ = keys
    assert pk.max_int == 2**340 - 1  # 1024-bit n: p of 342 bits
    assert scheme.slots_per_plaintext(pk, 69) == 339 // 69
    big = PublicKey(mpz(2) ** 2047 + 1, bases=(mpz(4), mpz(9)))  # sizes only: 2048 bits
    assert [scheme.slots_per_plaintext(big, w) for w in (42, 69, 120)] == [16, 9, 5]
    with pytest.raises(SlotOverflow):
        scheme.slots_per_plaintext(pk, 340)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_horner_packing_round_trips(scheme, keys, data):
    pk, sk = keys
    width = data.draw(st.integers(2, 120))
    slots = scheme.slots_per_plaintext(pk, width)
    count = data.draw(st.integers(1, 2 * slots + 1))
    values = data.draw(st.lists(st.integers(0, 2**width - 1), min_size=count, max_size=count))
    pool = scheme.noise_pool(pk, sk)
    layout = SlotLayout(width, slots)
    packed = scheme.pack_ciphertexts(scheme.encrypt(pk, values, pool), layout)
    assert len(packed) == -(-count // slots)
    opened = [v for row in layout.unpack(scheme.decrypt(sk, packed)) for v in row]
    assert opened[:count] == values and not any(opened[count:])


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_signed_slots_survive_encryption_sums_and_scalars(scheme, keys, data):
    pk, sk = keys
    width = data.draw(st.integers(8, 100))
    slots = scheme.slots_per_plaintext(pk, width)
    quarter = 2 ** (width - 3)
    a = data.draw(st.lists(st.integers(-quarter, quarter - 1), min_size=slots, max_size=slots))
    b = data.draw(st.lists(st.integers(-quarter, quarter - 1), min_size=slots, max_size=slots))
    k = data.draw(st.sampled_from([-2, -1, 0, 1, 2]))
    pool = scheme.noise_pool(pk, sk)
    ca = scheme.encrypt(pk, [pack_signed(a, width)], pool)
    cb = scheme.encrypt(pk, [pack_signed(b, width)], pool)
    combined = scheme.add(scheme.mul_plain(ca, [k]), cb)
    assert unpack_signed(scheme.decrypt(sk, combined)[0], slots, width) == [k * x + y for x, y in zip(a, b, strict=True)]


def test_a_layout_beyond_the_plaintext_is_refused(scheme, keys):
    pk, sk = keys
    pool = scheme.noise_pool(pk, sk)
    with pytest.raises(SlotOverflow, match="does not fit"):
        scheme.pack_ciphertexts(scheme.encrypt(pk, [1, 2], pool), SlotLayout(170, 2))


# ---- refusals ----


def test_received_key_refusals(scheme, keys):
    pk, _ = keys
    data = pk.to_bytes()
    assert scheme.public_key_from_bytes(data, key_bits=BITS, allow_insecure=True) == pk
    with pytest.raises(InvalidKey, match="not a serialised Okamoto-Uchiyama"):
        scheme.public_key_from_bytes(b"PK2" + data[3:], key_bits=BITS, allow_insecure=True)
    with pytest.raises(InvalidKey, match="exactly 2048 bits"):
        scheme.public_key_from_bytes(data, key_bits=2048)
    with pytest.raises(InvalidKey, match="at least 2048"):
        scheme.public_key_from_bytes(data, key_bits=None)
    with pytest.raises(InvalidKey, match="wrong length"):
        scheme.public_key_from_bytes(data + b"\x01", key_bits=BITS, allow_insecure=True)
    with pytest.raises(InvalidKey, match="at most 4096"):
        scheme.public_key_from_bytes(_serialised(2**5000 + 1), key_bits=None, allow_insecure=True)
    padded = KEY_FORMAT + (pk.byte_len + 1).to_bytes(2, "big") + b"\x00" + int(pk.n).to_bytes(pk.byte_len, "big")
    with pytest.raises(InvalidKey, match="minimally encoded"):
        scheme.public_key_from_bytes(padded, key_bits=None, allow_insecure=True)
    top = mpz(1) << (BITS - 1)
    with pytest.raises(InvalidKey, match="too small or even"):
        scheme.public_key_from_bytes(_serialised(top + 2), key_bits=BITS, allow_insecure=True)
    small_factor = gmpy2.next_prime(SMALL_FACTOR_BOUND // 2) * (gmpy2.next_prime(top // 600_000) | 1)
    small_factor = small_factor if small_factor.bit_length() == BITS else small_factor * 3
    with pytest.raises(InvalidKey, match="small factor"):
        scheme.public_key_from_bytes(_serialised(small_factor), key_bits=None, allow_insecure=True)
    with pytest.raises(InvalidKey, match="prime or a perfect power"):
        scheme.public_key_from_bytes(_serialised(gmpy2.next_prime(top)), key_bits=BITS, allow_insecure=True)
    square = gmpy2.next_prime(mpz(1) << (BITS // 2 - 1)) ** 2
    with pytest.raises(InvalidKey, match="prime or a perfect power"):
        scheme.public_key_from_bytes(_serialised(square), key_bits=None, allow_insecure=True)


def test_key_object_refusals(scheme, keys):
    pk, sk = keys
    scheme.validate_public_key(pk, key_bits=BITS, allow_insecure=True)
    with pytest.raises(InvalidKey, match="exactly 2048"):
        scheme.validate_public_key(pk, key_bits=2048, allow_insecure=True)
    forged = PublicKey(pk.n, bases=(pk.g, mpz(pk.n - 1)))  # a noise base chosen by the sender
    with pytest.raises(InvalidKey, match="not the ones derived"):
        scheme.validate_public_key(forged, key_bits=BITS, allow_insecure=True)
    p, q = sk.p, sk.q
    one_mod_q = gmpy2.invert(p * p, q) * p * p % pk.n  # 1 mod q, 0 mod p^2: not a unit
    for base in (mpz(1), one_mod_q, 1 + p * q):  # 1; 0 mod p^2; 1 mod p and mod q
        with pytest.raises(InvalidKey, match="not a unit of order > 1"):
            ou_math.check_bases(pk.n, base, pk.h)
    with pytest.raises(InvalidKey, match="p\\^2 q does not equal"):
        PrivateKey(pk, p, q + 2)
    with pytest.raises(InvalidKey, match="does not belong to the pool.s public key"):
        NoisePool(pk, scheme.generate_keypair(BITS, allow_insecure=True)[1])
    with pytest.raises(InvalidKey, match="at least 2048"):
        scheme.generate_keypair(1024)


def test_ciphertext_and_plaintext_refusals(scheme, keys):
    pk, sk = keys
    pool = scheme.noise_pool(pk, sk)
    width = pk.byte_len
    for bad in (0, int(pk.n), int(sk.p) * 5):
        with pytest.raises(InvalidCiphertext, match="not in Z\\*_n"):
            scheme.ciphertexts_from_bytes(pk, bad.to_bytes(width, "big"))
    with pytest.raises(InvalidCiphertext, match="whole number"):
        scheme.ciphertexts_from_bytes(pk, b"\x01" * (width + 1))
    with pytest.raises(PlaintextOverflow):
        scheme.encrypt(pk, [pk.max_int + 1], pool)
    big = scheme.encrypt(pk, [pk.max_int], pool)
    with pytest.raises(PlaintextOverflow, match="overflow band"):
        scheme.decrypt(sk, scheme.mul_plain(big, [2]))
    other_pk, other_sk = scheme.generate_keypair(BITS, allow_insecure=True)
    with pytest.raises(InvalidCiphertext, match="another key"):
        scheme.decrypt(other_sk, big)
    with pytest.raises(InvalidCiphertext, match="different keys"):
        scheme.add(big, scheme.encrypt(other_pk, [1], scheme.noise_pool(other_pk, other_sk)))
    with pytest.raises(ValueError, match="mask noise"):
        scheme.rerandomize(big, pool)
    mask = scheme.noise_pool(pk, mask=True)
    assert scheme.decrypt(sk, scheme.rerandomize(big, mask)) == [pk.max_int]


def test_encrypted_histogram_under_ou(scheme, keys):
    pk, sk = keys
    rng = np.random.default_rng(1)
    values = [int(v) for v in rng.integers(-1000, 1000, size=40)]
    bins = rng.integers(0, 4, size=(40, 2))
    cv = scheme.encrypt(pk, values, scheme.noise_pool(pk, sk))
    mask = scheme.noise_pool(pk, mask=True)
    hist = scheme.encrypted_histogram(cv, bins, [4, 4], noise=mask)
    expected = [sum(v for v, b in zip(values, bins[:, j], strict=True) if b == k) for j in range(2) for k in range(4)]
    assert scheme.decrypt(sk, hist) == expected
    with scheme.kernels(2) as kernels:
        spread = scheme.encrypted_histogram(cv, bins, [4, 4], kernels=kernels)
    assert scheme.decrypt(sk, spread) == expected
