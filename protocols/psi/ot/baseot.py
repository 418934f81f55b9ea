"""Base OTs: Chou and Orlandi's "Simplest OT" (Latincrypt 2015) on Curve25519, semi-honest, one sender key for
all of them.

Sender: secret ``a``, sends ``A = aG``. Receiver, for choice bit ``c`` of OT ``i``: secret ``b_i``, sends
``B_i = b_i G`` (c = 0) or ``B_i = A + b_i G`` (c = 1) and keeps ``k_i = KDF(i, A, B_i, b_i A)``. The sender
derives ``k_i^0 = KDF(i, A, B_i, a B_i)`` and ``k_i^1 = KDF(i, A, B_i, a (B_i - A))``; ``k_i^c`` is the
receiver's key and ``k_i^{1-c}`` needs ``ab_i G`` without ``b_i`` or ``a`` (CDH, with KDF a random oracle).
``B_i`` is uniform in the group whatever ``c`` is, so the sender learns nothing about the choice bits.

Every scalar multiplication is RFC 7748 X25519 from ``cryptography`` (clamped scalars; a point of small order
gives an all-zero output, which ``cryptography`` refuses). X25519 works on u-coordinates only; the two point
additions (``A + b_i G`` and ``B_i - A``) need the v-coordinate, so this module recovers it (a square root
in GF(2^255 - 19)) and adds in affine coordinates on the Montgomery curve ``v^2 = u^3 + 486662 u^2 + u``.
Both sides take ``A``'s root with even v; ``B_i`` travels with the parity of its v. A u-coordinate that
is not on the curve (its twist, or not reduced mod p) is refused.
"""

from __future__ import annotations

import hashlib
import secrets

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from protocols.errors import ProtocolError

P = 2**255 - 19
A24 = 486662  # the Montgomery coefficient A of Curve25519
SQRT_M1 = pow(2, (P - 1) // 4, P)
POINT = 32
KEY = 16  # bytes of each OT key (an AES-128 key)
_KDF_TAG = b"fedprofile/psi/kkrt/v1/base-ot"


def _u_bytes(u: int) -> bytes:
    return u.to_bytes(POINT, "little")


def _u_int(data: bytes, what: str) -> int:
    if len(data) != POINT:
        raise ProtocolError(f"{what} must be a {POINT}-byte u-coordinate")
    u = int.from_bytes(data, "little")
    if u >= P:
        raise ProtocolError(f"{what} is not reduced modulo 2^255 - 19")
    return u


def v_of(u: int, what: str = "a point") -> int:
    """The even v with ``v^2 = u^3 + A u^2 + u``, or a ProtocolError if ``u`` is not on the curve."""
    rhs = (u * u % P * u + A24 * u * u + u) % P
    v = pow(rhs, (P + 3) // 8, P)
    if v * v % P != rhs:
        v = v * SQRT_M1 % P
        if v * v % P != rhs:
            raise ProtocolError(f"{what} is not on Curve25519")
    return P - v if v & 1 else v


def add(p1: tuple[int, int], p2: tuple[int, int]) -> tuple[int, int]:
    """Affine addition of two points with different u-coordinates."""
    (u1, v1), (u2, v2) = p1, p2
    if u1 == u2:
        raise ProtocolError("base OT: a point equal to the sender's (or its negative) was received")
    lam = (v2 - v1) * pow(u2 - u1, P - 2, P) % P
    u3 = (lam * lam - A24 - u1 - u2) % P
    return u3, (lam * (u1 - u3) - v1) % P


def _public(secret: bytes) -> int:
    return int.from_bytes(X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw(), "little")


def _shared(secret: bytes, u: int) -> bytes:
    try:
        return X25519PrivateKey.from_private_bytes(secret).exchange(X25519PublicKey.from_public_bytes(_u_bytes(u)))
    except ValueError:  # all-zero output: a point of small order
        raise ProtocolError("base OT: a point of small order was received; refusing it") from None


def kdf(salt: bytes, index: int, a_u: bytes, b_u: bytes, shared: bytes) -> bytes:
    """The key of OT ``index``: SHA-256 over a tag, the job salt, the index, both public points and the shared
    point, cut to 16 bytes."""
    return hashlib.sha256(_KDF_TAG + salt + index.to_bytes(4, "big") + a_u + b_u + shared).digest()[:KEY]


class BaseOtSender:
    """The sender of ``count`` OTs (the bank, KKRT's OPRF receiver): :attr:`message` goes out first."""

    def __init__(self) -> None:
        self._a = secrets.token_bytes(POINT)
        a_u = _public(self._a)
        self._a_point = (a_u, v_of(a_u))
        self.message = _u_bytes(a_u)

    def keys(self, salt: bytes, points: bytes, signs: bytes) -> tuple[list[bytes], list[bytes]]:
        """``(k^0, k^1)`` for every OT, from the receiver's points (32 bytes each) and their v parities."""
        count = len(signs)
        if len(points) != POINT * count:
            raise ProtocolError(f"base OT: {count} points expected")
        keys0, keys1 = [], []
        neg_a = (self._a_point[0], (P - self._a_point[1]) % P)
        for i in range(count):
            b_bytes = points[POINT * i:POINT * (i + 1)]
            b_u = _u_int(b_bytes, f"base OT point {i}")
            if signs[i] not in (0, 1):
                raise ProtocolError(f"base OT sign {i} must be 0 or 1")
            v = v_of(b_u, f"base OT point {i}")
            b_point = (b_u, (P - v) % P if (v & 1) != signs[i] else v)
            keys0.append(kdf(salt, i, self.message, b_bytes, _shared(self._a, b_u)))
            keys1.append(kdf(salt, i, self.message, b_bytes, _shared(self._a, add(b_point, neg_a)[0])))
        self._a = b""
        return keys0, keys1


class BaseOtReceiver:
    """The receiver of OTs with the given choice bits (the platform, KKRT's OPRF sender)."""

    def __init__(self, choices: list[int], sender_message: bytes) -> None:
        a_u = _u_int(sender_message, "base OT sender point")
        a_point = (a_u, v_of(a_u, "base OT sender point"))
        self._a_bytes = sender_message
        self._a_u = a_u
        self._secrets: list[bytes] = []
        points, signs = bytearray(), bytearray()
        for c in choices:
            b = secrets.token_bytes(POINT)
            bg_u = _public(b)
            point = (bg_u, v_of(bg_u))
            if c:
                point = add(a_point, point)
            self._secrets.append(b)
            points += _u_bytes(point[0])
            signs.append(point[1] & 1)
        self.points, self.signs = bytes(points), bytes(signs)

    def keys(self, salt: bytes) -> list[bytes]:
        """``k^{c_i}`` for every OT."""
        out = [kdf(salt, i, self._a_bytes, self.points[POINT * i:POINT * (i + 1)], _shared(b, self._a_u))
               for i, b in enumerate(self._secrets)]
        self._secrets = []
        return out


__all__ = ["KEY", "BaseOtReceiver", "BaseOtSender", "add", "kdf", "v_of"]
