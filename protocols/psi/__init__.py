"""Private set intersection: ECDH over X25519, driven by the bank, pipelined in batches, over a PeerChannel.

Math. Each ID is normalised (:func:`normalise_id`), hashed with a job salt (:func:`job_salt`) and a domain
tag to a 32-byte X25519 u-coordinate ``H(x)`` (:func:`protocols.psi.kernel.hash_to_point`); each party
multiplies by its own fresh secret scalar with X25519 (:mod:`protocols.psi.x25519`: Intel's multi-buffer
library where it runs, ``cryptography`` otherwise, byte-identical; clamped scalars; scalar
multiplication on u-coordinates commutes, and both the curve and its twist are secure, so any 32-byte
hash is a valid input). ``a*b*H(x) == b*a*H(y)`` iff ``x == y`` (up to SHA-256 collisions). Neither party
ever sends an ID or a plain hash of one: only ``a*H(x)``, ``b*H(y)`` and doubly blinded values.

Steps (bank = a, platform = b; each side sends its points in its own secret random order; the step and
field names are in :mod:`protocols.psi.messages`):

1. ``psi.hello``: nonces from both sides give the job salt; set sizes are exchanged. Then each side hashes
   all its IDs in its secret order and refuses empty and repeated IDs (:meth:`Blinder.hash_ids`), both at
   the same time (the platform in the background); nothing of a side's leaves it before that passes.
2. ``psi.exchange`` k = 0, 1, ...: the bank sends its batch k, ``a*H(x)``, and (mode "both") the doubly
   blinded platform batch k-1, ``a*b*H(y)``, in the platform's order, so the platform can find its own
   members. The platform replies with ``b*a*H(x)`` for the bank's batch k in the same order (except in
   cardinality mode, where it keeps them) and its own batch k, ``b*H(y)``. In "both" mode one last
   exchange carries only the last platform batch's doubles (:func:`protocols.psi.messages.exchange_rounds`).
   Both sides compute while the other does: the bank blinds its next batch and the platform's
   last one while the platform blinds the bank's batch; the platform blinds its own batches ahead.
3. ``psi.cardinality_batch`` (cardinality mode only): the bank returns ``a*b*H(y)`` shuffled across the
   whole set, so the platform can only count.
4. ``psi.finish``: sizes and the content hash are compared; both sides must agree. The platform hands its
   result to the node through ``on_result``, once.

Output modes: ``both`` (each learns the intersection), ``bank_only`` (the platform learns only the
size), ``cardinality`` (both learn only the size). The agreed order of the intersection is the order
of the doubly blinded values, which both sides hold without revealing anything else; the content hash
(:func:`content_hash`) is SHA-256 over that sorted list, so the two nodes can compare alignments.

Memory. Neither side holds a second copy of its IDs. Per ID a party keeps 32 bytes for its own hash and
for each doubly blinded value it holds (its own and the peer's), in RAM or, from
``protocols.psi.store.SPILL_AT`` IDs on and when the node gives a ``spill_dir``, in memory-mapped files
there (deleted when the job ends; :class:`PointStore`); the duplicate check and the matching use 8-byte
prefixes (16 bytes per ID in RAM) and check every candidate in full. The IDs themselves are the node's
data and stay where they are.

Modules: :mod:`~protocols.psi.ids` (normalisation, salt), :mod:`~protocols.psi.x25519` (the two X25519
kernels and the choice between them), :mod:`~protocols.psi.kernel` (hashing, blinding and :class:`Blinder`), :mod:`~protocols.psi.store` (values and matching),
:mod:`~protocols.psi.messages` (what both sides agree on), :mod:`~protocols.psi.bank` and
:mod:`~protocols.psi.platform` (the two sides). :mod:`protocols.psi.incremental`: the same blinding with keys that
last a key epoch, so a re-alignment sends only new and removed IDs; :mod:`protocols.psi.ot`: KKRT16.
"""

from __future__ import annotations

from protocols.channel import Message
from protocols.psi.bank import run_bank_psi
from protocols.psi.ids import job_salt, normalise_id
from protocols.psi.kernel import Blinder
from protocols.psi.messages import MODES, PARAM_VERSION, VERSION, PsiError, PsiMode, PsiResult
from protocols.psi.platform import PlatformPsiHandler, make_platform_psi_handler
from protocols.psi.store import PointStore, content_hash
from protocols.psi.x25519 import describe as describe_kernel

# The two PSI protocols a session may speak, each named by the version string in the session's parameters:
# "ecdh" (this package, psi-x25519-v2) and "ot" (KKRT16 from OT extension, protocols.psi.ot, psi-kkrt-v1).
PROTOCOLS: tuple[str, ...] = ("ot", "ecdh")
_OT_VERSION = "psi-kkrt-v1"  # protocols.psi.ot.messages.VERSION (a test checks they agree)


def protocol_of(params: Message) -> str:
    """Which protocol a PSI session's parameters ask for (``"ot"`` or ``"ecdh"``), by their version string."""
    return "ot" if params.get(PARAM_VERSION) == _OT_VERSION else "ecdh"

__all__ = [
    "MODES", "PROTOCOLS", "VERSION", "Blinder", "PlatformPsiHandler", "PointStore", "PsiError", "PsiMode", "PsiResult",
    "content_hash", "describe_kernel", "job_salt", "make_platform_psi_handler", "normalise_id", "protocol_of", "run_bank_psi",
]
