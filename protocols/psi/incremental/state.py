"""What one node keeps of a pair's incremental alignment between runs, and how a run's delta changes it.

A pair's state belongs to one *key epoch*: one secret X25519 scalar per side and one hash salt, both fixed
until the key rotates. Within an epoch the doubly blinded value ``a*b*H(x)`` of an ID is the same in every
alignment, so a re-alignment blinds and sends only the IDs that joined since the last one, and names by
*slot* the ones that left. Each side numbers the items of both lists (the bank's and the platform's) by
slot: new items take the next slots, in the order they were sent (a secret random order); a removed slot is
never used again in the epoch. A rotation (a new epoch) starts both lists from nothing: a full alignment.

Per own slot a side keeps a 128-bit key of the raw ID text (``rawkeys``: to tell new from kept IDs; never the
ID itself, and zero once removed), an 8-byte prefix of its salted hash (to
refuse a new ID equal to a kept one after normalisation before anything of it leaves) and, where it learns
it, the doubly blinded value; per peer slot, whether it is live and, where it learns it, its doubly blinded
value. Nothing here is written to disk: ``party_common.storage.psi_pairs`` does that.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field

import numpy as np

from protocols.psi.messages import POINT

DOUBLE = np.dtype(f"V{POINT}")
# A peer item's value is kept as its first 16 bytes: half the memory of a list that may be 100x this node's
# own, and two different values share 16 bytes with probability 2^-128 per pair.
PEER_BYTES = 16
PEER = np.dtype(f"V{PEER_BYTES}")


def peer_values(doubles: np.ndarray) -> np.ndarray:
    """The kept form of a peer item's doubly blinded value: its first 16 bytes."""
    return np.ascontiguousarray(doubles.view(np.uint8).reshape(-1, POINT)[:, :PEER_BYTES]).view(PEER).reshape(-1)
ROLES = ("bank", "platform")
_DIGEST_TAG = b"fedprofile/psi/incremental/v1/state"


def empty_doubles(n: int = 0) -> np.ndarray:
    return np.zeros(n, dtype=DOUBLE)


@dataclass
class PairState:
    """One node's state of one pair in one key epoch (see the module's docstring)."""

    epoch: str  # 32 hex digits, drawn by the platform when the epoch starts
    created_at: str  # ISO-8601 UTC, when this node started the epoch
    mode: str  # the alignment mode of the epoch ("both" or "bank_only"); another mode starts a new epoch
    role: str  # "bank" or "platform": whose lists are "own"
    salt: bytes  # the hash salt of the epoch
    secret: bytes  # this node's X25519 scalar of the epoch
    own_keys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.uint64))  # raw-text keys per own slot
    own_live: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    own_prefix: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype="<u8"))
    own_double: np.ndarray | None = None  # per own slot, where this node learns it
    peer_live: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    peer_double: np.ndarray | None = None  # per peer slot, where this node learns it
    # Where both lists keep doubles: per own slot, the peer slot holding the same value (-1: none found when
    # either was added; a match stands while both slots are live).
    own_match: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {self.role!r}")

    @property
    def own_slots(self) -> int:
        return len(self.own_live)

    @property
    def peer_slots(self) -> int:
        return len(self.peer_live)

    def age_days(self, now: dt.datetime | None = None) -> float:
        """Days since this node started the epoch."""
        now = now or dt.datetime.now(dt.UTC)
        return (now - dt.datetime.fromisoformat(self.created_at)).total_seconds() / 86_400.0

    def digest(self) -> str:
        """What both nodes hold identically of the epoch: its ID and which slots of both lists are live.
        Equal digests mean both committed the same alignments since the epoch started."""
        bank, platform = (self.own_live, self.peer_live) if self.role == "bank" else (self.peer_live, self.own_live)
        return state_digest(self.epoch, bank, platform)

    def live_own_count(self) -> int:
        return int(np.count_nonzero(self.own_live))

    def live_peer_count(self) -> int:
        return int(np.count_nonzero(self.peer_live))


def state_digest(epoch: str, bank_live: np.ndarray, platform_live: np.ndarray) -> str:
    h = hashlib.sha256(_DIGEST_TAG)
    for part in (epoch.encode(), len(bank_live).to_bytes(8, "big"), np.packbits(bank_live).tobytes(),
                 len(platform_live).to_bytes(8, "big"), np.packbits(platform_live).tobytes()):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def new_state(epoch: str, mode: str, role: str, salt: bytes, secret: bytes, *, own_double: bool,
              peer_double: bool) -> PairState:
    """An epoch's empty state: every ID of either side will be new."""
    return PairState(epoch=epoch, created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), mode=mode,
                     role=role, salt=salt, secret=secret, own_double=empty_doubles() if own_double else None,
                     peer_double=np.zeros(0, dtype=PEER) if peer_double else None)


@dataclass
class SideDelta:
    """How one list changes in one run: the slots that left, and the new items (appended, in send order)."""

    removed: np.ndarray  # int64 slots, ascending
    added: int

    def size_after(self, slots_live: int) -> int:
        return slots_live - len(self.removed) + self.added


def slots_bytes(slots: np.ndarray) -> bytes:
    """Slots as they travel: unsigned 32-bit little-endian."""
    return np.asarray(slots, dtype="<u4").tobytes()


def read_removed(data: object, live: np.ndarray, what: str) -> np.ndarray:
    """Removed slots from the peer: ascending, distinct, each a live slot of ``live``; else a ValueError."""
    if not isinstance(data, bytes) or len(data) % 4:
        raise ValueError(f"{what}: removed slots must be 4-byte integers")
    slots = np.frombuffer(data, dtype="<u4").astype(np.int64)
    if len(slots) and (np.any(slots[1:] <= slots[:-1]) or slots[-1] >= len(live) or not np.all(live[slots])):
        raise ValueError(f"{what}: removed slots must be ascending, distinct and live in this epoch")
    return slots


def apply_delta(live: np.ndarray, doubles: np.ndarray | None, removed: np.ndarray,
                added: np.ndarray | None, added_count: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A list after a run: ``removed`` slots dead, ``added_count`` live slots appended (their doubles
    ``added`` where this list keeps doubles). Returns new arrays; the inputs are not changed."""
    live = np.concatenate([live, np.ones(added_count, dtype=bool)])
    live[removed] = False
    if doubles is not None:
        assert added is not None and len(added) == added_count
        doubles = np.concatenate([doubles, added])
        doubles[removed] = np.zeros(1, dtype=doubles.dtype)[0]  # a dead slot keeps nothing of its item
    return live, doubles


def prefixes(values: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each 32-byte value, as uint64 (a matching key)."""
    return values.view(np.uint8).reshape(-1, POINT)[:, :8].copy().view("<u8")[:, 0]


def screen(small: np.ndarray, large: np.ndarray) -> np.ndarray:
    """Positions in ``large`` whose uint64 value may be in ``small``: a table of the top ``bits`` bits of
    ``small`` passes every true member and about ``len(large) * len(small) / 2**bits`` others (uniform keys),
    in one gather over ``large`` rather than a sort of it (``bits``: 16 to 26, about 16x ``len(small)``)."""
    bits = min(26, max(16, int(len(small)).bit_length() + 4))
    table = np.zeros(1 << bits, dtype=bool)
    table[small >> np.uint64(64 - bits)] = True
    return np.flatnonzero(table[large >> np.uint64(64 - bits)])


def value_order(values: np.ndarray) -> np.ndarray:
    """The order of 32-byte values sorted as byte strings (the agreed order of an intersection): by their
    first 8 bytes read big-endian, and in full only where two share those (about n^2 / 2^64 odds)."""
    keys = words(values)[:, 0].byteswap() if np.little_endian else words(values)[:, 0].copy()
    order = np.argsort(keys, kind="stable")
    if np.any(keys[order][1:] == keys[order][:-1]):
        return np.argsort(values, kind="stable")
    return order


def words(values: np.ndarray) -> np.ndarray:
    """16- or 32-byte values as rows of uint64 words (numpy gathers and compares these far faster than V32)."""
    return np.ascontiguousarray(values).view(np.uint64).reshape(-1, values.dtype.itemsize // 8)


def match_pairs(own: np.ndarray, own_slots: np.ndarray, peer: np.ndarray,
                peer_slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(own slot, peer slot) pairs among ``own_slots`` and ``peer_slots`` holding the same value (checked on all
    32 bytes). The smaller side's 8-byte prefixes are sorted; the larger side's are screened by a bit table of
    them, then searched: a few new items against a whole list cost one gather over the list, no sort of it."""
    none = np.zeros(0, dtype=np.int64)
    if len(own_slots) == 0 or len(peer_slots) == 0:
        return none, none
    own_words, peer_words = words(own), words(peer)
    own_keys, peer_keys = own_words[own_slots, 0], peer_words[peer_slots, 0]  # the first 8 bytes, native order
    own_sorted = len(own_keys) <= len(peer_keys)
    small, large = (own_keys, peer_keys) if own_sorted else (peer_keys, own_keys)
    order = np.argsort(small)
    sorted_keys = small[order]
    width = min(own.dtype.itemsize, peer.dtype.itemsize)  # a peer value may be kept as its first 16 bytes
    if np.any(sorted_keys[1:] == sorted_keys[:-1]):  # a shared prefix (about n^2 / 2^64 odds): compare in full
        at = {own[s].tobytes()[:width]: int(s) for s in own_slots.tolist()}
        found = [(at[peer[p].tobytes()[:width]], int(p)) for p in peer_slots.tolist()
                 if peer[p].tobytes()[:width] in at]
        return (np.array([f[0] for f in found], dtype=np.int64), np.array([f[1] for f in found], dtype=np.int64))
    maybe = screen(small, large)  # most of the larger side is ruled out by one gather
    pos = np.searchsorted(sorted_keys, large[maybe])
    pos[pos == len(sorted_keys)] = 0
    same = sorted_keys[pos] == large[maybe]
    found, at_small = maybe[same], order[pos[same]]  # positions in the larger side, and in the smaller
    own_at, peer_at = (at_small, found) if own_sorted else (found, at_small)
    own_at, peer_at = own_slots[own_at], peer_slots[peer_at]
    hit = (own_words[own_at, :width // 8] == peer_words[peer_at, :width // 8]).all(axis=1)
    return own_at[hit], peer_at[hit]


def match_live(own: np.ndarray, own_live: np.ndarray, peer: np.ndarray, peer_live: np.ndarray) -> np.ndarray:
    """Live own slots whose value a live peer slot also holds, ascending (every live item against every one)."""
    own_at, _ = match_pairs(own, np.flatnonzero(own_live), peer, np.flatnonzero(peer_live))
    return np.sort(own_at)


def extend_matches(own_match: np.ndarray, own: np.ndarray, own_live: np.ndarray, own_from: int,
                   peer: np.ndarray, peer_live: np.ndarray, peer_from: int) -> tuple[np.ndarray, np.ndarray]:
    """``own_match`` (the peer slot of each own slot's value, or -1) after a run that added own slots from
    ``own_from`` and peer slots from ``peer_from``: the new own items against every live peer item, every
    older live own item against the new peer items. Returns it and the pairs found (for the store)."""
    own_match = np.concatenate([own_match, np.full(len(own_live) - len(own_match), -1, dtype=np.int64)])
    live_own, live_peer = np.flatnonzero(own_live), np.flatnonzero(peer_live)
    new_own, new_peer = live_own[live_own >= own_from], live_peer[live_peer >= peer_from]
    a_own, a_peer = match_pairs(own, new_own, peer, live_peer)
    b_own, b_peer = match_pairs(own, live_own[live_own < own_from], peer, new_peer)
    pairs_own, pairs_peer = np.concatenate([a_own, b_own]), np.concatenate([a_peer, b_peer])
    own_match[pairs_own] = pairs_peer
    return own_match, np.stack([pairs_own, pairs_peer], axis=1) if len(pairs_own) else np.zeros((0, 2), np.int64)


def matched_slots(state: PairState) -> np.ndarray:
    """Live own slots whose matched peer slot is live, ascending."""
    match = state.own_match
    if len(match) != state.own_slots:
        raise ValueError("the state holds no matches for its own slots")
    ok = state.own_live & (match >= 0)
    ok[ok] = state.peer_live[match[ok]]
    return np.flatnonzero(ok)


__all__ = ["DOUBLE", "PEER", "PEER_BYTES", "PairState", "peer_values", "SideDelta", "apply_delta", "empty_doubles", "match_live", "new_state",
           "prefixes", "read_removed", "screen", "slots_bytes", "state_digest", "value_order", "words", "match_pairs", "extend_matches",
           "matched_slots"]
