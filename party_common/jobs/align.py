"""The align job: PSI between the nodes; each side keeps the intersection it learned as an alignment."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import party_common.jobs.align_incremental as align_incremental
from party_common.jobs.base import JobContext, JobError, JobKind
from party_common.link import ContextPeer, PlatformLink, SessionContext
from party_common.storage import NodeStores
from party_common.storage.alignments import Alignment
from protocols.channel import Message, StepHandler
from protocols.params import dataclass_from_mapping
from protocols.party_data import PartyData
from protocols.psi import (
    MODES,
    PROTOCOLS,
    PsiResult,
    describe_kernel,
    make_platform_psi_handler,
    protocol_of,
    run_bank_psi,
)
from protocols.psi import incremental as psi_inc
from protocols.psi import ot as psi_ot

log = logging.getLogger(__name__)


def default_protocol(mode: str) -> str:
    """The OT-based PSI where it offers the mode (several times faster, docs/psi.md); ECDH for cardinality."""
    return "ot" if mode in psi_ot.MODES else "ecdh"


@dataclass(frozen=True)
class AlignParams:
    mode: str = "both"  # "both": each side learns the intersection; "bank_only"; "cardinality": only its size
    batch_size: int = 50_000  # ECDH only: IDs per exchange
    protocol: str = ""  # "ot" or "ecdh"; empty: default_protocol(mode) ("ecdh" when incremental)
    incremental: bool = False  # keep the pair's key epoch and blinded sets; re-align on the changes (docs/psi.md)
    new_key: bool = False  # incremental: start a new key epoch now (a full alignment)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise JobError(f"align: 'mode' must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.incremental:
            if self.mode not in psi_inc.MODES:
                raise JobError(f"align: incremental alignment offers modes {', '.join(psi_inc.MODES)}, not "
                               f"{self.mode!r} (a size-only result is a full ECDH run every time)")
            if self.protocol not in ("", "ecdh"):
                raise JobError("align: incremental alignment is ECDH-based (its blinded sets outlive a run); "
                               f"drop 'protocol' or use 'ecdh', not {self.protocol!r}")
            object.__setattr__(self, "protocol", "ecdh")
        elif self.new_key:
            raise JobError("align: 'new_key' applies to incremental alignment only (add 'incremental')")
        if not self.protocol:
            object.__setattr__(self, "protocol", default_protocol(self.mode))  # the job record names the choice
        if self.protocol not in PROTOCOLS:
            raise JobError(f"align: 'protocol' must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.protocol == "ot" and self.mode not in psi_ot.MODES:
            raise JobError(f"align: protocol 'ot' offers modes {', '.join(psi_ot.MODES)}, not {self.mode!r} "
                           "(its OPRF receiver, the bank, learns which of its IDs match); use protocol 'ecdh'")
        if not 1 <= self.batch_size <= 1_000_000:
            raise JobError("align: 'batch_size' must be between 1 and 1,000,000")


def save_once(ctx: JobContext, alignment: Alignment) -> Alignment:
    """Store the job's alignment. An align job run again after a node stopped mid-PSI (PSI restarts from the
    start, fresh secrets: the same intersection in another order) replaces what its first run stored on the
    platform if it stopped between storing and recording the result; a job that ended is never run again
    (``PlatformNode._admit``), and nothing uses an alignment before its job succeeded on the bank."""
    again = ctx.stores.alignments.exists(alignment.job_id)
    if again:
        log.info("align job %s ran again: its new alignment replaces the one stored before", alignment.job_id)
    return ctx.stores.alignments.save(alignment, overwrite=again)


def _kernel(protocol: str) -> dict[str, Any]:
    """The curve kernel an ECDH alignment ran on, for its job record (the OT protocol has none per ID)."""
    return {"psi_kernel": describe_kernel()} if protocol == "ecdh" else {}


class AlignJob(JobKind[AlignParams, PsiResult | None]):
    name = "align"
    session = "psi"

    def parse(self, raw: Mapping[str, Any], data: PartyData, stores: NodeStores) -> AlignParams:
        return dataclass_from_mapping(AlignParams, raw, what="align parameter", error=JobError)

    def params_dict(self, params: AlignParams) -> dict[str, Any]:
        return asdict(params)

    def run_bank(self, link: PlatformLink, ctx: JobContext, params: AlignParams,
                 job_name: str) -> PsiResult | None:
        """PSI with the platform; None when a resumed job finds its alignment stored already (the bank stopped
        after storing it, before the job's row said so): the platform finished too, and runs no ended job
        again, so the job ends with what it stored."""
        if ctx.resumed and ctx.stores.alignments.exists(ctx.job_id):
            log.info("align job %s: its alignment was stored before the node stopped; PSI is not run again",
                     ctx.job_id)
            return None
        peer = ContextPeer(link, SessionContext(job_name=job_name, resumed=ctx.resumed))
        if params.incremental:
            return align_incremental.run_bank(peer, ctx, params.mode, params.batch_size, params.new_key)
        if params.protocol == "ot":
            return psi_ot.run_bank_ot_psi(peer, ctx.job_id, ctx.data.ids, mode=params.mode, progress=ctx.progress)
        return run_bank_psi(peer, ctx.job_id, ctx.data.ids,
                            mode=params.mode, batch_size=params.batch_size, compute=ctx.new_compute(),
                            spill_dir=ctx.spill_dir, progress=ctx.progress)

    def save_bank(self, ctx: JobContext, params: AlignParams, result: PsiResult | None,
                  peer_name: str) -> dict[str, Any]:
        if result is None:  # stored before the bank node stopped (run_bank)
            alignment = ctx.stores.alignments.load(ctx.job_id)
        else:
            alignment = save_once(ctx, Alignment.from_result(ctx.job_id, result, peer_name=peer_name))
        incremental = (align_incremental.save_bank(ctx, result) if isinstance(result, psi_inc.IncrementalResult)
                       else {})
        return {"mode": alignment.mode, "intersection_size": alignment.size, "bank_customers": len(ctx.data),
                "content_hash": alignment.content_hash,
                "seconds": None if result is None else round(result.seconds, 3),
                "psi_protocol": params.protocol, **_kernel(params.protocol), **incremental}

    def open_platform(self, ctx: JobContext, params: Message, context: SessionContext,
                      on_result: Callable[[Any], None]) -> StepHandler:
        limit = {} if ctx.max_peer_rows is None else {"max_bank_size": ctx.max_peer_rows,
                                                       "limit_name": "[policy] max_psi_rows"}
        if params.get("version") == psi_inc.VERSION:
            return align_incremental.open_platform(ctx, params, context.caller, on_result, limit)
        if protocol_of(params) == "ot":
            return psi_ot.PlatformOtPsiHandler(ctx.job_id, params, ctx.data.ids, on_result=on_result,
                                               progress=ctx.progress, **limit)
        return make_platform_psi_handler(ctx.job_id, params, ctx.data.ids, on_result=on_result,
                                         compute=ctx.new_compute(), spill_dir=ctx.spill_dir, progress=ctx.progress,
                                         **limit)

    def save_platform(self, ctx: JobContext, context: SessionContext, result: Any) -> dict[str, Any]:
        alignment = save_once(ctx, Alignment.from_result(ctx.job_id, result, peer_name="bank"))
        protocol = getattr(result, "protocol", "ecdh")
        incremental = (align_incremental.save_platform(ctx, context.caller, result)
                       if isinstance(result, psi_inc.IncrementalResult) else {})
        return {"intersection_size": alignment.size, "mode": alignment.mode, "content_hash": alignment.content_hash,
                "psi_protocol": protocol, **_kernel(protocol), **incremental}
