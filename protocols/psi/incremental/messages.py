"""What both sides of an incremental alignment agree on: version, steps and fields, and the result."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

from protocols.psi.messages import PsiResult

VERSION = "psi-x25519-inc-v1"  # a session of kind "psi" whose parameters carry it is an incremental alignment
MODES: tuple[str, ...] = ("both", "bank_only")  # cardinality stays a full ECDH run every time (docs/psi.md)
EPOCH_RE = re.compile(r"^[0-9a-f]{32}$")
SALT_TAG = b"fedprofile/psi/incremental/v1/salt"
# A re-alignment blinds a few thousand points per step: split them over the workers from 2 x this many on
# (a full run's 2,000 would leave a 1% delta of 200k IDs on one thread).
MIN_CHUNK = 512

# Steps, in order (then psi.exchange and psi.finish, the field names of protocols.psi.messages).
HELLO = "psi.inc.hello"
PLAN = "psi.inc.plan"
EXCHANGE = "psi.inc.exchange"
FINISH = "psi.inc.finish"

# Fields.
EPOCH = "epoch"  # hello: the bank's stored epoch ("" if none); reply: the epoch of this run
STATE_DIGEST = "state_digest"  # hello: the bank's state digest; finish and reply: the digest after the run
NEW_KEY = "new_key"  # hello: the bank asks for a new epoch (a full alignment)
RESUMED = "resumed"  # hello reply: the stored epoch continues (else a new one starts)
REASON = "reason"  # hello reply: why a new epoch starts (plain words, no data)
KEEP = "keep"  # hello reply: whether the platform keeps state after this run ([policy] psi_key_rotation_days)
REMOVED = "removed"  # plan and reply: the sender's slots that left (4-byte little-endian each, ascending)
ADDED = "added"  # plan and reply: how many new items the sender blinds and sends
SIZE_AFTER = "size_after"  # plan and reply: the sender's live items after the run


def epoch_salt(epoch: str, bank_nonce: bytes, platform_nonce: bytes) -> bytes:
    """The hash salt of an epoch: SHA-256 over a tag, the epoch and both nonces of the run that started it."""
    h = hashlib.sha256()
    for part in (SALT_TAG, epoch.encode(), bank_nonce, platform_nonce):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


def content_hash(sorted_values: np.ndarray) -> str:
    """SHA-256 over the version and the sorted doubly blinded values of the intersection, in hex."""
    return hashlib.sha256(VERSION.encode() + np.ascontiguousarray(sorted_values).tobytes()).hexdigest()


def rounds(bank_added: int, platform_added: int, batch_size: int, mode: str) -> int:
    """``psi.inc.exchange`` steps: one per batch of new bank items, and in mode "both" the platform's batch k
    returns doubly blinded in step k + 1."""
    bank = -(-bank_added // batch_size)
    platform = -(-platform_added // batch_size)
    return max(bank, platform + 1 if mode == "both" and platform else platform)


@dataclass
class IncrementalResult(PsiResult):
    """A :class:`PsiResult` with what changed: ``resumed`` (the stored epoch went on; else a new epoch, with
    ``reason``), new and removed items per side, points sent and received, and the state to keep (None when
    the platform keeps none)."""

    epoch: str = ""
    resumed: bool = False
    reason: str = ""
    own_added: int = 0
    own_removed: int = 0
    peer_added: int = 0
    peer_removed: int = 0
    points_sent: int = 0
    points_received: int = 0
    state: object = None  # protocols.psi.incremental.state.PairState | None
    base: object = None  # the stored PairState this run continued (None: a new epoch); a store writes the delta
    state_note: str = ""  # set by the node: why its stored state was refused (damaged), if it was
    phase_seconds: dict[str, float] | None = None  # the bank: seconds per phase (open, load_state, hello, ...)

    def summary(self) -> dict[str, object]:
        """Counts only (job records and audit rows): never IDs, values or keys."""
        return {"incremental": True, "resumed": self.resumed, "new_epoch_reason": self.reason,
                "own_new": self.own_added, "own_removed": self.own_removed, "peer_new": self.peer_added,
                "peer_removed": self.peer_removed, "points_sent": self.points_sent,
                "points_received": self.points_received, "phase_seconds": self.phase_seconds}


__all__ = ["ADDED", "EPOCH", "EPOCH_RE", "EXCHANGE", "FINISH", "HELLO", "IncrementalResult", "KEEP", "MODES",
           "NEW_KEY", "PLAN", "REASON", "REMOVED", "RESUMED", "SIZE_AFTER", "STATE_DIGEST", "VERSION",
           "MIN_CHUNK", "content_hash", "epoch_salt", "rounds"]
