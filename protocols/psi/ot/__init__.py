"""Private set intersection from OT extension: KKRT16's batched OPRF (Kolesnikov, Kumaresan, Rosulek, Trieu,
CCS 2016), semi-honest, beside the ECDH protocol of :mod:`protocols.psi`.

The bank is the OPRF receiver R: it places its items in a cuckoo table (3 hash functions, no stash,
:func:`~protocols.psi.ot.kkrt.cuckoo_bins` bins) and runs 512 base OTs (Chou-Orlandi on Curve25519,
:mod:`~protocols.psi.ot.baseot`) extended IKNP-style to one OT row per bin (:mod:`~protocols.psi.ot.kkrt`).
The platform is the OPRF sender S: it evaluates the OPRF of each bin on its items under each of their 3 bins,
and sends those ``3M`` values, truncated to :func:`~protocols.psi.ot.kkrt.output_bytes` bytes, in a secret
random order. R's item is a member iff its own output equals one of them.

Steps (:mod:`~protocols.psi.ot.messages`): ``psi.ot.hello`` (nonces, sizes, base OTs), ``psi.ot.extend`` k
(R's ``u`` rows for one block of bins), ``psi.ot.values`` k (S's shuffled values), ``psi.ot.members`` k
(mode "both": the positions of the matched values, so S learns its members), ``psi.finish`` (size and
content hash). Modes: "both" and "bank_only"; "cardinality" needs the ECDH protocol. docs/psi.md has the
parameters and the security argument.
"""

from __future__ import annotations

from protocols.psi.ot.bank import run_bank_ot_psi
from protocols.psi.ot.messages import MODES, VERSION
from protocols.psi.ot.platform import PlatformOtPsiHandler

__all__ = ["MODES", "VERSION", "PlatformOtPsiHandler", "run_bank_ot_psi"]
