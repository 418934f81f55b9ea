"""The align job: PSI between the nodes; each side keeps the intersection it learned as an alignment."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from party_common.jobs.base import JobContext, JobError, JobKind
from party_common.link import ContextPeer, PlatformLink, SessionContext
from party_common.storage import NodeStores
from party_common.storage.alignments import Alignment
from protocols.channel import Message, StepHandler
from protocols.params import dataclass_from_mapping
from protocols.party_data import PartyData
from protocols.psi import MODES, PsiResult, describe_kernel, make_platform_psi_handler, run_bank_psi

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlignParams:
    mode: str = "both"  # "both": each side learns the intersection; "bank_only"; "cardinality": only its size
    batch_size: int = 50_000

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise JobError(f"align: 'mode' must be one of {', '.join(MODES)}, got {self.mode!r}")
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
        return run_bank_psi(ContextPeer(link, SessionContext(job_name=job_name, resumed=ctx.resumed)), ctx.job_id, ctx.data.ids,
                            mode=params.mode, batch_size=params.batch_size, compute=ctx.new_compute(),
                            spill_dir=ctx.spill_dir, progress=ctx.progress)

    def save_bank(self, ctx: JobContext, params: AlignParams, result: PsiResult | None,
                  peer_name: str) -> dict[str, Any]:
        if result is None:  # stored before the bank node stopped (run_bank)
            alignment = ctx.stores.alignments.load(ctx.job_id)
        else:
            alignment = save_once(ctx, Alignment.from_result(ctx.job_id, result, peer_name=peer_name))
        return {"mode": alignment.mode, "intersection_size": alignment.size, "bank_customers": len(ctx.data),
                "content_hash": alignment.content_hash,
                "seconds": None if result is None else round(result.seconds, 3), "psi_kernel": describe_kernel()}

    def open_platform(self, ctx: JobContext, params: Message, context: SessionContext,
                      on_result: Callable[[Any], None]) -> StepHandler:
        limit = {} if ctx.max_peer_rows is None else {"max_bank_size": ctx.max_peer_rows,
                                                       "limit_name": "[policy] max_psi_rows"}
        return make_platform_psi_handler(ctx.job_id, params, ctx.data.ids, on_result=on_result,
                                         compute=ctx.new_compute(), spill_dir=ctx.spill_dir, progress=ctx.progress,
                                         **limit)

    def save_platform(self, ctx: JobContext, context: SessionContext, result: Any) -> dict[str, Any]:
        alignment = save_once(ctx, Alignment.from_result(ctx.job_id, result, peer_name="bank"))
        return {"intersection_size": alignment.size, "mode": alignment.mode, "content_hash": alignment.content_hash,
                "psi_kernel": describe_kernel()}
