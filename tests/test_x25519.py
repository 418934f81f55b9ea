"""The X25519 kernels: RFC 7748 vectors, the multi-buffer kernel against cryptography, the start-up choice."""

from __future__ import annotations

import secrets

import pytest

from protocols.errors import ProtocolError
from protocols.psi import x25519
from protocols.psi.ids import normalise_id
from protocols.psi.kernel import blind_chunk

P = 2**255 - 19


def multi_buffer() -> x25519.MultiBufferKernel:
    try:
        return x25519.load_multi_buffer()
    except OSError as err:
        pytest.skip(f"multi-buffer X25519 not usable on this machine: {err}")


def kernels() -> list[x25519.Kernel]:
    return [x25519.CryptographyKernel(), multi_buffer()]


@pytest.fixture(params=["cryptography", "multi-buffer"])
def kernel(request: pytest.FixtureRequest) -> x25519.Kernel:
    return x25519.CryptographyKernel() if request.param == "cryptography" else multi_buffer()


def test_rfc7748_vectors(kernel: x25519.Kernel) -> None:
    for scalar, u, expected in x25519.RFC7748_VECTORS:
        assert kernel.multiply(bytes.fromhex(scalar), bytes.fromhex(u)).hex() == expected


def test_rfc7748_iterated(kernel: x25519.Kernel) -> None:
    """RFC 7748 5.2: k = u = 9; repeatedly k, u = X25519(k, u), k; after 1 and 1,000 iterations."""
    k = u = (9).to_bytes(32, "little")
    for i in range(1, 1001):
        k, u = kernel.multiply(k, u), k
        if i == 1:
            assert k.hex() == "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"
    assert k.hex() == "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"


def test_rfc7748_diffie_hellman(kernel: x25519.Kernel) -> None:
    """RFC 7748 6.1: both sides reach the same shared secret."""
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    base = (9).to_bytes(32, "little")
    alice_public, bob_public = kernel.multiply(alice, base), kernel.multiply(bob, base)
    assert alice_public.hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    assert bob_public.hex() == "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert kernel.multiply(alice, bob_public).hex() == kernel.multiply(bob, alice_public).hex() == shared


@pytest.mark.parametrize("count", [1, 7, 8, 9, 17, 333])
def test_kernels_agree_on_random_inputs(count: int) -> None:
    """Byte-identical on random scalars and points, any count (the last call pads its unused lanes)."""
    reference, fast = kernels()
    secret = secrets.token_bytes(32)
    points = secrets.token_bytes(32 * count)
    assert fast.multiply(secret, points) == reference.multiply(secret, points)


def test_kernels_agree_on_edge_inputs() -> None:
    """The top bit of u is masked and non-canonical u (p <= u < 2^255) is reduced, by both kernels alike."""
    reference, fast = kernels()
    secret = secrets.token_bytes(32)
    edges = [P + 9, P + 18, 2**255 - 1, 2**256 - 1, 9 + 2**255, 2**255 - 21]
    points = b"".join(v.to_bytes(32, "little") for v in edges) + secrets.token_bytes(32 * 5)
    out = fast.multiply(secret, points)
    assert out == reference.multiply(secret, points)
    masked = fast.multiply(secret, (9 + 2**255).to_bytes(32, "little"))
    assert masked == fast.multiply(secret, (9).to_bytes(32, "little"))


def rfc7748_x25519(scalar: bytes, u: bytes) -> bytes:
    """RFC 7748 section 5, written out (the Montgomery ladder in Python ints): the oracle for edge inputs."""
    k = int.from_bytes(scalar, "little")
    k = (k & ~7 & ((1 << 255) - 1)) | (1 << 254)
    x1 = (int.from_bytes(u, "little") & ((1 << 255) - 1)) % P
    x2, z2, x3, z3, swap = 1, 0, x1, 1, 0
    for t in reversed(range(255)):
        bit = (k >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = (x2 + z2) % P, (x2 - z2) % P
        aa, bb = a * a % P, b * b % P
        e = (aa - bb) % P
        c, d = (x3 + z3) % P, (x3 - z3) % P
        da, cb = d * a % P, c * b % P
        x3, z3 = (da + cb) ** 2 % P, x1 * (da - cb) ** 2 % P
        x2, z2 = aa * bb % P, e * (aa + 121665 * e) % P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, P - 2, P) % P).to_bytes(32, "little")


def edge_inputs() -> list[int]:
    """Long runs of one bits and values near p: where mbx_x25519_mb8 itself goes wrong (see x25519._risky)."""
    values = [2**85 - 2, 2**86 - 1, 2**128 - 1, 2**136 - 1, 2**172 - 1, P - 1, P - 6, P - 200, P - 2**16,
              P - 2**128 + 1, P - 2**86, (2**255 - 1) ^ (2**87 - 1), 2**255 - 1, 2**256 - 1]
    return values + [P - d for d in range(2, 40)]


def test_edge_inputs_match_rfc7748(kernel: x25519.Kernel) -> None:
    """Inputs the raw multi-buffer call gets wrong come out as RFC 7748 says (or are refused, as there)."""
    secret = secrets.token_bytes(32)
    for value in edge_inputs():
        u = value.to_bytes(32, "little")
        expected = rfc7748_x25519(secret, u)
        if expected == bytes(32):
            with pytest.raises(x25519.LowOrderPoint):
                kernel.multiply(secret, u)
        else:
            assert kernel.multiply(secret, u) == expected, hex(value)


def test_risky_inputs_found_among_ordinary_ones() -> None:
    """Mixed in a batch, the edge inputs still come out right, in their places."""
    reference, fast = kernels()
    secret = secrets.token_bytes(32)
    values = [v for v in edge_inputs() if rfc7748_x25519(secret, v.to_bytes(32, "little")) != bytes(32)]
    points = b"".join(secrets.token_bytes(32 * 3) + v.to_bytes(32, "little") for v in values)
    assert fast.multiply(secret, points) == reference.multiply(secret, points)


def test_low_order_points_refused_at_their_index(kernel: x25519.Kernel) -> None:
    secret = secrets.token_bytes(32)
    points = secrets.token_bytes(32 * 10) + bytes(32) + secrets.token_bytes(32 * 4)
    with pytest.raises(x25519.LowOrderPoint) as caught:
        kernel.multiply(secret, points)
    assert caught.value.index == 10
    for u in (1, P, P + 1):  # order 4, and 0 and 1 written non-canonically
        with pytest.raises(x25519.LowOrderPoint):
            kernel.multiply(secret, u.to_bytes(32, "little"))


def test_bad_lengths_refused(kernel: x25519.Kernel) -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        kernel.multiply(secrets.token_bytes(32), b"\x09" * 33)
    with pytest.raises(ValueError, match="scalar is 32 bytes"):
        kernel.multiply(b"\x01" * 31, b"\x09" * 32)
    assert kernel.multiply(secrets.token_bytes(32), b"") == b""


def test_blind_chunk_names_the_small_order_point_as_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="small order"):
        blind_chunk(secrets.token_bytes(32), b"\x09" * 64 + bytes(32))


def test_kernel_choice_and_report(monkeypatch: pytest.MonkeyPatch) -> None:
    x25519.kernel.cache_clear()
    try:
        monkeypatch.setenv(x25519.ENV, "cryptography")
        assert x25519.describe()["name"] == "cryptography"
        assert x25519.ENV in x25519.describe()["note"]
        x25519.kernel.cache_clear()
        monkeypatch.setenv(x25519.ENV, "fastest")
        with pytest.raises(ValueError, match="use one of auto, multi-buffer, cryptography"):
            x25519.kernel()
        # The library missing: "auto" falls back and says why; "multi-buffer" refuses to start.
        monkeypatch.setattr(x25519, "_find", lambda dist, name: None)
        x25519.kernel.cache_clear()
        monkeypatch.setenv(x25519.ENV, "auto")
        chosen = x25519.describe()
        assert chosen["name"] == "cryptography"
        assert "multi-buffer unavailable" in chosen["note"] and "not found" in chosen["note"]
        x25519.kernel.cache_clear()
        monkeypatch.setenv(x25519.ENV, "multi-buffer")
        with pytest.raises(OSError, match="not found"):
            x25519.kernel()
    finally:
        x25519.kernel.cache_clear()


def test_auto_prefers_multi_buffer_where_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    multi_buffer()
    monkeypatch.delenv(x25519.ENV, raising=False)
    x25519.kernel.cache_clear()
    try:
        assert x25519.describe()["name"] == "multi-buffer"
        assert "mbx_x25519_mb8" in x25519.describe()["note"]
    finally:
        x25519.kernel.cache_clear()


@pytest.mark.parametrize(("raw", "expected"), [
    ("+447700900123", "+447700900123"),  # the fast path: digits only
    ("00447700900123", "+447700900123"),
    ("1234567", "1234567"),
    ("123456", "123456"),  # too short for a phone number
    ("+123456", "+123456"),
    ("++1234567", "++1234567"),
    ("٣٣٣٣٣٣٣٣", "٣٣٣٣٣٣٣٣"),  # Arabic-Indic digits are not phone digits (the regex wants 0-9)
    ("１２３４５６７８", "12345678"),  # full-width digits become ASCII under NFKC
    ("²²²²²²²", "2222222"),
    (" +44 (7700) 900-123\n", "+447700900123"),
    ("Alice@Example.COM", "alice@example.com"),
    ("0012345", "+12345"),
])
def test_normalise_fast_path_matches_the_rules(raw: str, expected: str) -> None:
    assert normalise_id(raw) == expected


def test_multi_buffer_refused_off_x86_64_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(x25519.platform, "machine", lambda: "aarch64")
    with pytest.raises(OSError, match="built for x86_64 Linux"):
        x25519.load_multi_buffer()
