"""The HE seam (protocols.he): the registry, Paillier through the interface, and the encrypted histogram
against a plaintext histogram."""

from __future__ import annotations

import numpy as np
import pytest

from protocols.errors import InvalidCiphertext, InvalidKey, PlaintextOverflow, UserError
from protocols.he import DEFAULT_SCHEME, SCHEMES, HEScheme, get_scheme, scheme_names
from protocols.he.histogram import histogram_values
from protocols.packing import SlotLayout, pack_signed, unpack_signed
from protocols.paillier import CipherVector, PublicKey

BITS = 1024


@pytest.fixture(scope="module")
def scheme() -> HEScheme:
    return get_scheme("paillier")


@pytest.fixture(scope="module")
def keys(scheme):
    return scheme.generate_keypair(BITS, allow_insecure=True)


def test_registry_names_the_schemes(scheme):
    assert DEFAULT_SCHEME == "paillier" and scheme_names() == ["ou", "paillier"]
    assert get_scheme() is scheme is SCHEMES["paillier"] and scheme.name == "paillier"
    with pytest.raises(UserError, match=r"unknown HE scheme 'rsa' \(he_scheme\); known: ou, paillier"):
        get_scheme("rsa")


def test_keys_through_the_seam(scheme, keys):
    pk, _ = keys
    received = scheme.public_key_from_bytes(pk.to_bytes(), key_bits=BITS, allow_insecure=True)
    assert isinstance(received, PublicKey) and received == pk
    assert scheme.fingerprint(received) == scheme.fingerprint(pk) == pk.fingerprint()
    scheme.validate_public_key(received, key_bits=BITS, allow_insecure=True)
    with pytest.raises(InvalidKey, match="exactly 2048 bits"):
        scheme.public_key_from_bytes(pk.to_bytes(), key_bits=2048)
    with pytest.raises(InvalidKey, match="at least 2048"):
        scheme.public_key_from_bytes(pk.to_bytes(), key_bits=None)
    with pytest.raises(InvalidKey):
        scheme.validate_public_key(pk, key_bits=2048, allow_insecure=True)


def test_encrypt_add_multiply_decrypt(scheme, keys):
    pk, sk = keys
    pool = scheme.noise_pool(pk, sk)
    with scheme.kernels(1) as kernels:
        kernels.fill(pool, 8)
        assert len(pool) == 8
        a = scheme.encrypt(pk, [5, -7, 0, 123], pool)
        b = scheme.encrypt(pk, [1, 2, 3, -4], pool)
        assert len(pool) == 0 and pool.made_online == 0
        assert scheme.decrypt(sk, scheme.add(a, b)) == [6, -5, 3, 119]
        assert scheme.decrypt(sk, scheme.add_plain(a, [1, 1, 1, 1])) == [6, -6, 1, 124]
        assert scheme.decrypt(sk, scheme.mul_plain(a, [3, -2, 9, 0])) == [15, 14, 0, 0]
        X = np.array([[1, 0], [2, -1], [0, 5], [-3, 4]], dtype=np.int64)
        product = scheme.matvec_t(a, X)
        expected = (X.T @ np.array([5, -7, 0, 123])).tolist()
        assert scheme.decrypt(sk, product) == expected
        assert kernels.decrypt(sk, kernels.matvec_t(a, X)) == expected
        # Bytes: a peer's ciphertexts are checked; a ciphertext of 0 is not in the group.
        restored = scheme.ciphertexts_from_bytes(pk, a.to_bytes())
        assert restored.values == a.values
        with pytest.raises(InvalidCiphertext):
            scheme.ciphertexts_from_bytes(pk, bytes(pk.byte_len))
        joined = scheme.concat([a, b])
        assert scheme.decrypt(sk, joined) == [5, -7, 0, 123, 1, 2, 3, -4]
        assert scheme.ciphertext_modulus(pk) == pk.nsquare
        with pytest.raises(PlaintextOverflow):
            scheme.encrypt(pk, [pk.max_int + 1], pool)


def test_rerandomize_and_pack(scheme, keys):
    pk, sk = keys
    mask = scheme.noise_pool(pk, mask=True)
    ordinary = scheme.noise_pool(pk, sk)
    with scheme.kernels(1) as kernels:
        kernels.fill(mask, 2)
        kernels.fill(ordinary, 6)
        cv = scheme.encrypt(pk, [11, 22], ordinary)
        fresh = scheme.rerandomize(cv, mask)
        assert fresh.values != cv.values and scheme.decrypt(sk, fresh) == [11, 22]
        with pytest.raises(ValueError, match="mask noise"):
            scheme.rerandomize(cv, ordinary)  # ordinary noise does not re-randomise against the key holder
        layout = SlotLayout(16, 4)
        packed = scheme.pack_ciphertexts(scheme.encrypt(pk, [1, 2, 3, 4], ordinary), layout)
        assert len(packed) == 1 and layout.unpack(scheme.decrypt(sk, packed)) == [[1, 2, 3, 4]]
    assert scheme.slots_per_plaintext(pk, 32) == (pk.max_int.bit_length() - 1) // 32


def _plain_histogram(values: np.ndarray, bins: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Per feature, (bins x tags) sums of the rows' values: what the encrypted histogram must decrypt to."""
    out = []
    for j, size in enumerate(sizes):
        h = np.zeros((size, values.shape[1]), dtype=np.int64)
        np.add.at(h, bins[:, j], values)
        out.append(h)
    return out


def _decrypted_histogram(scheme, sk, cv, sizes, n_tags, slot_bits) -> list[np.ndarray]:
    opened = scheme.decrypt(sk, cv)
    out, start = [], 0
    for size in sizes:
        out.append(np.array([unpack_signed(v, n_tags, slot_bits) for v in opened[start:start + size]]))
        start += size
    return out


def test_encrypted_histogram_matches_the_plaintext_histogram(scheme, keys):
    """Per-row label values for 3 tags packed in signed slots (one ciphertext a row), 4 features of 2..5
    bins, some empty: the decrypted bins are the plaintext histogram's sums, slot by slot."""
    pk, sk = keys
    rng = np.random.default_rng(7)
    rows, n_tags, slot_bits = 300, 3, 24
    values = rng.integers(-1, 2, size=(rows, n_tags))  # -1, 0, 1: say unknown, negative, positive
    sizes = [2, 3, 5, 4]
    bins = np.column_stack([rng.integers(0, s, rows) for s in sizes])
    bins[:, 2] = np.where(bins[:, 2] == 4, 3, bins[:, 2])  # feature 2's last bin is empty
    noise = scheme.noise_pool(pk, sk)
    mask = scheme.noise_pool(pk, mask=True)
    with scheme.kernels(1) as kernels:
        kernels.fill(noise, rows)
        kernels.fill(mask, sum(sizes))
        cv = scheme.encrypt(pk, [pack_signed(v, slot_bits) for v in values], noise)
        hist = scheme.encrypted_histogram(cv, bins, sizes)
        assert len(hist) == sum(sizes)
        got = _decrypted_histogram(scheme, sk, hist, sizes, n_tags, slot_bits)
        for g, want in zip(got, _plain_histogram(values, bins, sizes), strict=True):
            np.testing.assert_array_equal(g, want)
        assert got[2][4].tolist() == [0, 0, 0]
        # Re-randomised for the key holder: other ciphertexts, the same sums, even the empty bin's.
        fresh = scheme.encrypted_histogram(cv, bins, sizes, noise=mask)
        assert all(a != b for a, b in zip(fresh.values, hist.values, strict=True))
        assert scheme.decrypt(sk, fresh) == scheme.decrypt(sk, hist)


def test_encrypted_histogram_on_workers_gives_the_same_ciphertexts(scheme, keys):
    """Split by features (4 features, 2 workers) and by rows (1 feature): bit-identical to inline."""
    pk, sk = keys
    rng = np.random.default_rng(3)
    rows = 600
    noise = scheme.noise_pool(pk, sk)
    with scheme.kernels(2) as kernels:
        kernels.fill(noise, rows)
        cv = scheme.encrypt(pk, rng.integers(0, 2, rows).tolist(), noise)
        bins = rng.integers(0, 6, size=(rows, 4))
        inline = scheme.encrypted_histogram(cv, bins, 6)
        spread = scheme.encrypted_histogram(cv, bins, 6, kernels=kernels)
        assert spread.values == inline.values
        one = scheme.encrypted_histogram(cv, bins[:, 0], 6, kernels=kernels)
        assert one.values == inline.values[:6]
        assert scheme.decrypt(sk, one) == np.bincount(bins[:, 0], weights=scheme.decrypt(sk, cv),
                                                      minlength=6).astype(int).tolist()


def test_encrypted_histogram_refuses_bad_bins(scheme, keys):
    pk, _ = keys
    cv = CipherVector(pk, [pk.n + 1] * 4)  # Enc(1) without noise: enough for the checks
    modulus = scheme.ciphertext_modulus(pk)
    with pytest.raises(ValueError, match=r"feature 1: bin indices must lie in 0..2"):
        histogram_values(cv.values, np.array([[0, 0], [1, 3], [0, 1], [1, 2]]), 3, modulus)
    with pytest.raises(ValueError, match="expected \\(4,\\) or \\(4, features\\)"):
        scheme.encrypted_histogram(cv, np.zeros(5, dtype=np.int64), 2)
    with pytest.raises(ValueError, match="2 bin counts for 1 features"):
        scheme.encrypted_histogram(cv, np.zeros(4, dtype=np.int64), [2, 2])
    with pytest.raises(ValueError, match="must be integers"):
        scheme.encrypted_histogram(cv, np.zeros(4), 2)
