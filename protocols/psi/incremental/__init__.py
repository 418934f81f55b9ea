"""Incremental, unbalanced alignment: ECDH PSI whose keys and blinded sets last for a key epoch.

Within an epoch each side keeps its X25519 scalar, the hash salt and the doubly blinded values it has
learned (``state.PairState``; the nodes store it, ``party_common.storage.psi_pairs``), so a re-alignment
blinds and sends only the IDs that joined since the last one and names by slot those that left: its cost is
that of the changes, not of the sets. A platform 10-100x the bank's size blinds its whole set once per epoch
(its one-off pre-computation); after that the bank's work follows the deltas. The epoch ends when the
platform's ``[policy] psi_key_rotation_days`` is reached, when the bank asks (``new_key``), when the mode
changes, or when the two nodes' states differ; then the next run is a full alignment under fresh keys.

Steps (version ``psi-x25519-inc-v1``, session kind ``psi``): ``psi.inc.hello`` (the bank's epoch and state
digest; the platform says whether the epoch goes on, and why not), ``psi.inc.plan`` (each side's removed
slots, new-item count and size after the run), ``psi.inc.exchange`` k (the new items only, as in
:mod:`protocols.psi`'s exchange), ``psi.inc.finish`` (size, content hash and the state digest after the run,
compared before either side keeps anything). Modes ``both`` and ``bank_only``; cardinality stays a full run.
docs/psi.md, "Incremental alignment", has the security argument.
"""

from __future__ import annotations

from protocols.psi.incremental.bank import run_bank_incremental_psi
from protocols.psi.incremental.messages import MODES, VERSION, IncrementalResult
from protocols.psi.incremental.platform import ROTATION_KNOB, PlatformIncrementalHandler
from protocols.psi.incremental.state import PairState

__all__ = ["MODES", "ROTATION_KNOB", "VERSION", "IncrementalResult", "PairState", "PlatformIncrementalHandler",
           "run_bank_incremental_psi"]
