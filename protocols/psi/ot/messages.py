"""What both parties of the OT-based PSI agree on: version, modes, steps, fields and sizes."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from protocols.channel import Message
from protocols.errors import ProtocolError
from protocols.psi.ids import job_salt
from protocols.psi.ot.kkrt import ROW

VERSION = "psi-kkrt-v1"
# "cardinality" is not offered: in an OPRF-based PSI the receiver evaluates the OPRF on its own items, so it
# learns which of them are members; hiding that needs a circuit-PSI, not this protocol (docs/psi.md).
MODES: tuple[str, ...] = ("both", "bank_only")
# Messages travel in 2 MiB chunks (party_common.transport) up to the nodes' payload limit (max_payload_mb);
# a few MiB per step keeps the round trips few and the memory per step small.
BLOCK_BINS = 65_536  # bins per psi.ot.extend message: 4 MiB of u rows; at most 2^16 (offsets are uint16)
VALUE_BYTES_PER_MESSAGE = 8 * 2**20  # psi.ot.values
POSITIONS_PER_MESSAGE = 2**20  # psi.ot.members: int64 positions, 8 MiB

HELLO = "psi.ot.hello"
EXTEND = "psi.ot.extend"
VALUES = "psi.ot.values"
MEMBERS = "psi.ot.members"  # mode "both" only
FINISH = "psi.finish"

BANK_NONCE = "bank_nonce"  # hello
BANK_SIZE = "bank_size"  # hello
BASE_OT_SENDER = "base_ot_a"  # hello: the bank's base-OT point A
PLATFORM_NONCE = "platform_nonce"  # hello reply
PLATFORM_SIZE = "platform_size"  # hello reply
BASE_OT_POINTS = "base_ot_points"  # hello reply: the platform's 512 base-OT points B_i
BASE_OT_SIGNS = "base_ot_signs"  # hello reply: the parity of each B_i's v-coordinate
INDEX = "index"  # extend, values, members
U_ROWS = "u"  # extend: the bank's u rows for one block of bins
VALUES_FIELD = "values"  # values reply: the platform's OPRF values, shuffled
POSITIONS = "positions"  # members: positions of matched values, in the agreed order
SIZE = "size"  # finish and its reply
CONTENT_HASH = "content_hash"  # finish and its reply

_KEY_TAG = b"fedprofile/psi/kkrt/v1/"


def item_salt(job_id: str, bank_nonce: bytes) -> bytes:
    """The salt of the ID hash (items and their bins): the job ID and the bank's nonce, so the bank hashes its
    IDs while ``psi.ot.hello`` travels. The items never leave a party (only codes of them, masked by the OT
    extension, and OPRF values); the code and hash keys use both nonces (:func:`derived_key` of the job salt)."""
    return job_salt(job_id, bank_nonce, b"")


def derived_key(salt: bytes, name: str, index: int = 0) -> bytes:
    """A 16-byte public parameter (a code key, the hash key) both sides derive from the job salt."""
    return hashlib.sha256(_KEY_TAG + name.encode() + index.to_bytes(4, "big") + salt).digest()[:16]


def value_batches(count: int, out_bytes: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` of the platform's values in each ``psi.ot.values`` reply."""
    per = max(1, VALUE_BYTES_PER_MESSAGE // out_bytes)
    return [(i, min(i + per, count)) for i in range(0, count, per)]


def bytes_field(message: Message, field: str, size: int, what: str) -> bytes:
    """``message[field]`` if it is exactly ``size`` bytes; otherwise a :class:`ProtocolError`."""
    value = message.get(field)
    if not isinstance(value, bytes) or len(value) != size:
        raise ProtocolError(f"{what} must be {size} bytes")
    return value


def rows_field(message: Message, count: int, what: str) -> np.ndarray:
    """The ``u`` rows of an extend message as ``(count, 64)`` uint8."""
    return np.frombuffer(bytes_field(message, U_ROWS, count * ROW, what), dtype=np.uint8).reshape(count, ROW)


def sort_by_value(values: np.ndarray) -> np.ndarray:
    """The order of ``(k, out_bytes)`` values, ascending as big-endian numbers (the agreed alignment order)."""
    if len(values) == 0:
        return np.empty(0, dtype=np.int64)
    padded = np.zeros((len(values), 16), dtype=np.uint8)
    padded[:, :values.shape[1]] = values
    words = padded.view(">u8")
    order = np.argsort(words[:, 0], kind="stable")
    first = words[order, 0]
    if np.any(first[1:] == first[:-1]):  # two values share their first 8 bytes: order by all of them
        return np.lexsort((words[:, 1], words[:, 0]))
    return order


def strictly_ascending(values: np.ndarray) -> bool:
    """Whether ``(k, out_bytes)`` values are in strictly ascending order as big-endian numbers (one pass)."""
    if len(values) < 2:
        return True
    padded = np.zeros((len(values), 16), dtype=np.uint8)
    padded[:, :values.shape[1]] = values
    words = padded.view(">u8")
    high_a, high_b = words[:-1, 0], words[1:, 0]
    return bool(np.all((high_a < high_b) | ((high_a == high_b) & (words[:-1, 1] < words[1:, 1]))))


def all_distinct(rows: np.ndarray, size: int) -> bool:
    """Whether row numbers in ``0..size-1`` are all different (one byte per possible row, no sort)."""
    seen = np.zeros(size, dtype=bool)
    seen[rows] = True
    return int(np.count_nonzero(seen)) == len(rows)


def take_ids(ids: Sequence[str], rows: np.ndarray) -> list[str]:
    """``ids[r]`` for each row, as a list of str (one gather for a numpy array of IDs)."""
    if isinstance(ids, np.ndarray):
        return [str(v) for v in ids[rows].tolist()] if ids.dtype == object else ids[rows].tolist()
    return [ids[r] for r in rows.tolist()]


def content_hash(sorted_values: np.ndarray) -> str:
    """SHA-256 over the version and the sorted OPRF values of the intersection, in hex."""
    return hashlib.sha256(VERSION.encode() + np.ascontiguousarray(sorted_values).tobytes()).hexdigest()


__all__ = [
    "BANK_NONCE", "BANK_SIZE", "BASE_OT_POINTS", "BASE_OT_SENDER", "BASE_OT_SIGNS", "BLOCK_BINS", "CONTENT_HASH",
    "EXTEND", "FINISH", "HELLO", "INDEX", "MEMBERS", "MODES", "PLATFORM_NONCE", "PLATFORM_SIZE", "POSITIONS",
    "POSITIONS_PER_MESSAGE", "SIZE", "all_distinct", "strictly_ascending", "take_ids", "U_ROWS", "VALUES", "VALUES_FIELD", "VERSION", "bytes_field", "content_hash",
    "derived_key", "item_salt", "rows_field", "sort_by_value", "value_batches",
]
