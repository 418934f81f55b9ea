"""What both PSI parties agree on: version, modes, step and field names, results, and batch arithmetic."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from protocols.channel import Message
from protocols.errors import ProtocolError, UserError

PsiMode = Literal["both", "bank_only", "cardinality"]
MODES: tuple[str, ...] = ("both", "bank_only", "cardinality")
VERSION = "psi-x25519-v2"
POINT = 32  # bytes in an X25519 u-coordinate
NONCE = 32  # bytes in each party's nonce
DOMAIN = b"fedprofile/psi/v1/id-to-point\x00"
MAX_BATCH_SIZE = 1_000_000
# A peer-declared set size above this is refused before anything is allocated for it.
MAX_SET_SIZE = 2_000_000_000

# The session kind the bank opens, and the fields of its parameters.
KIND = "psi"
PARAM_VERSION = "version"
PARAM_MODE = "mode"
PARAM_BATCH_SIZE = "batch_size"

# The steps, in order.
HELLO = "psi.hello"
EXCHANGE = "psi.exchange"
CARDINALITY_BATCH = "psi.cardinality_batch"  # cardinality mode only
FINISH = "psi.finish"

# Message fields.
BANK_NONCE = "bank_nonce"  # hello
BANK_SIZE = "bank_size"  # hello
PLATFORM_NONCE = "platform_nonce"  # hello reply
PLATFORM_SIZE = "platform_size"  # hello reply
INDEX = "index"  # exchange, cardinality_batch: the batch number
POINTS = "points"  # exchange and its reply: a party's own singly blinded batch
PLATFORM_DOUBLE = "platform_double"  # exchange, mode "both": the platform's previous batch, doubly blinded
DOUBLE = "double"  # exchange reply: the bank's batch doubly blinded; cardinality_batch: shuffled doubles
SIZE = "size"  # finish and its reply
CONTENT_HASH = "content_hash"  # finish and its reply

Progress = Callable[[str, int, int], None]  # (what, done, total)


class PsiError(UserError):
    """Bad PSI input (duplicates after normalisation, empty IDs, an empty side, unknown mode)."""


@dataclass
class PsiResult:
    mode: str
    size: int
    ids: list[str] | None  # the intersection in the agreed order; None where this party learns only the size
    content_hash: str
    own_count: int
    peer_count: int
    seconds: float
    protocol: str = "ecdh"  # "ecdh" (this package) or "ot" (protocols.psi.ot)


def batches(n: int, size: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` bounds of consecutive batches of at most ``size`` over ``n`` items."""
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def exchange_rounds(bank_batches: int, platform_batches: int, mode: str) -> int:
    """How many ``psi.exchange`` steps a run takes: in mode "both" the platform's batch k comes back
    doubly blinded in exchange k + 1, so the last one may need an exchange of its own."""
    return max(bank_batches, platform_batches + 1 if mode == "both" else platform_batches)


def read_count(value: object, what: str, *, most: int = MAX_SET_SIZE) -> int:
    """A size or batch size from the peer: an int (not a bool) in 1..``most``, or a :class:`ProtocolError`."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
        raise ProtocolError(f"{what} must be an integer between 1 and {most:,}")
    return value


def points_field(message: Message, field: str, count: int, what: str) -> bytes:
    """``message[field]`` if it holds exactly ``count`` points; otherwise a :class:`ProtocolError`."""
    value = message.get(field)
    if not isinstance(value, bytes) or len(value) != count * POINT:
        raise ProtocolError(f"{what} must hold {count} points")
    return value


__all__ = [
    "BANK_NONCE", "BANK_SIZE", "CARDINALITY_BATCH", "CONTENT_HASH", "DOMAIN", "DOUBLE", "EXCHANGE", "FINISH",
    "HELLO", "INDEX", "KIND", "MAX_BATCH_SIZE", "MAX_SET_SIZE", "MODES", "NONCE", "PARAM_BATCH_SIZE", "PARAM_MODE",
    "PARAM_VERSION", "PLATFORM_DOUBLE", "PLATFORM_NONCE", "PLATFORM_SIZE", "POINT", "POINTS", "SIZE", "read_count",
    "VERSION", "Progress", "PsiError", "PsiMode", "PsiResult", "batches", "exchange_rounds", "points_field",
]
