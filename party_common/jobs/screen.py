"""The screen job: WOE and IV per (feature, tag) for both parties' features, on an alignment, before training."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from party_common.jobs.base import JobContext, JobError, JobKind, ScreenPolicy
from party_common.jobs.train import TRAINABLE_MODES, latest_trainable_alignment
from party_common.link import ContextPeer, PlatformLink, SessionContext
from party_common.storage import NodeStores
from party_common.storage.alignments import Alignment
from protocols.channel import Message, StepHandler
from protocols.errors import NotFound, ProtocolError, UserError
from protocols.party_data import PartyData
from protocols.screen import PlatformScreenHandler, ScreenOutcome, ScreenParams, run_bank_screen
from protocols.screen.features import bin_features

MIN_SCREEN_ROWS = 50  # fewer shared customers make every bin a handful of people


@dataclass(frozen=True)
class ScreenJobParams:
    tags: tuple[str, ...]
    alignment_job_id: str
    screen: ScreenParams


@dataclass
class ScreenRun:
    outcome: ScreenOutcome
    notes: list[str]
    alignment_job_id: str


def _alignment_record(stores: NodeStores, alignment_job_id: str) -> None:
    try:
        record = stores.jobs.get(alignment_job_id)
    except NotFound as err:
        raise JobError(f"screen: no align job {alignment_job_id}") from err
    if record.kind != "align" or record.status != "succeeded":
        raise JobError(f"screen: job {alignment_job_id} is not a finished align job")
    if record.result.get("mode") not in TRAINABLE_MODES:
        raise JobError(f"screen: align job {alignment_job_id} ran in mode {record.result.get('mode')!r}; the "
                       "platform must know the intersection to bin its rows (run an align job in mode 'both')")
    size = record.result.get("intersection_size")
    if isinstance(size, int) and size < MIN_SCREEN_ROWS:
        raise JobError(f"screen: align job {alignment_job_id} found {size} shared customers; a screen needs at "
                       f"least {MIN_SCREEN_ROWS}")


def screen_summary(outcome: dict[str, Any]) -> dict[str, Any]:
    """The job's result: per (feature, tag) its IV and its bins' event rates; the bins' counts and WOE stay in the
    stored report."""
    table = [{**{k: v for k, v in row.items() if k != "bins"}, "event_rates": [b["event_rate"] for b in row["bins"]]}
             for row in outcome.get("table", [])]
    return {**{k: v for k, v in outcome.items() if k != "table"}, "iv": table}


class ScreenJob(JobKind[ScreenJobParams, ScreenRun]):
    name = "screen"
    session = "screen"

    def parse(self, raw: Mapping[str, Any], data: PartyData, stores: NodeStores) -> ScreenJobParams:
        unknown = sorted(set(raw) - {"tags", "alignment_job_id", "screen"})
        if unknown:
            raise JobError(f"screen: unknown parameter {unknown[0]!r}; known: alignment_job_id, screen, tags")
        tags = raw.get("tags") or list(data.tag_names)
        if not isinstance(tags, list | tuple) or not tags or not all(isinstance(t, str) for t in tags):
            raise JobError("screen: 'tags' must be a list of tag column names")
        missing = [t for t in tags if t not in data.tag_names]
        if missing:
            raise JobError(f"screen: tag(s) {', '.join(missing)} are not tag columns of {data.source} "
                           f"(known: {', '.join(data.tag_names)})")
        if len(set(tags)) != len(tags):
            raise JobError("screen: a tag is named twice")
        alignment_job_id = str(raw.get("alignment_job_id") or latest_trainable_alignment(stores))
        _alignment_record(stores, alignment_job_id)
        screen = raw.get("screen") or {}
        if not isinstance(screen, Mapping):
            raise JobError("screen: 'screen' must be an object of screen parameters")
        try:
            params = ScreenParams.from_dict(dict(screen)).validate()
        except (UserError, TypeError) as err:
            raise JobError(f"screen: {err}") from err
        return ScreenJobParams(tuple(tags), alignment_job_id, params)

    def params_dict(self, params: ScreenJobParams) -> dict[str, Any]:
        return {"tags": list(params.tags), "alignment_job_id": params.alignment_job_id,
                "screen": params.screen.to_dict()}

    def run_bank(self, link: PlatformLink, ctx: JobContext, params: ScreenJobParams, job_name: str) -> ScreenRun:
        alignment = ctx.stores.alignments.load(params.alignment_job_id)
        if alignment.ids is None:
            raise JobError(f"screen: alignment {alignment.job_id} holds no IDs on this node")
        bank = ctx.data.take(alignment.ids).select_tags(list(params.tags))
        features, notes = bin_features(bank.features, bank.feature_names, ctx.binning, ordinal=False)
        peer = ContextPeer(link, SessionContext(alignment_job_id=alignment.job_id,
                                                alignment_hash=alignment.content_hash, job_name=job_name,
                                                resumed=ctx.resumed))
        outcome = run_bank_screen(peer, ctx.job_id, bank.labels, list(params.tags), features, params.screen,
                                  compute=ctx.new_compute(), progress=ctx.progress)
        return ScreenRun(outcome, notes, alignment.job_id)

    def save_bank(self, ctx: JobContext, params: ScreenJobParams, result: ScreenRun,
                  peer_name: str) -> dict[str, Any]:
        report = {"kind": "screen", "alignment_job_id": result.alignment_job_id, "notes": result.notes,
                  "platform": peer_name, **result.outcome.to_dict()}
        ctx.stores.reports.save(ctx.job_id, report, overwrite=True)
        return screen_summary(report)

    def open_platform(self, ctx: JobContext, params: Message, context: SessionContext,
                      on_result: Callable[[Any], None]) -> StepHandler:
        alignment = _platform_alignment(ctx, context)
        aligned = ctx.data.take(alignment.ids or [])
        features, notes = bin_features(aligned.features, aligned.feature_names, ctx.binning, ordinal=True)
        if features is None:
            raise ProtocolError("screen: no platform feature can be binned: " + "; ".join(notes))
        policy = ctx.screen_policy or ScreenPolicy()
        return PlatformScreenHandler(ctx.job_id, params, features, on_result=on_result,
                                     min_bin_rows=policy.min_screen_bin_rows,
                                     min_labelled_rows=policy.min_screen_labelled_rows, compute=ctx.new_compute(),
                                     budget=ctx.disclosure, customer_ids=list(alignment.ids or []))

    def save_platform(self, ctx: JobContext, context: SessionContext, result: Any) -> dict[str, Any]:
        return {"alignment_job_id": context.alignment_job_id, **result}


def _platform_alignment(ctx: JobContext, context: SessionContext) -> Alignment:
    if not context.alignment_job_id:
        raise ProtocolError("screen: the bank did not say which alignment to screen")
    try:
        alignment = ctx.stores.alignments.load(context.alignment_job_id)
    except NotFound as err:
        raise ProtocolError(f"no alignment {context.alignment_job_id!r} on the platform node: run PSI first") from err
    if alignment.ids is None:
        raise ProtocolError(f"alignment {alignment.job_id} was a size-only PSI; a screen needs the intersection")
    if context.alignment_hash != alignment.content_hash:
        raise ProtocolError(f"alignment {alignment.job_id}: the two nodes hold different intersections")
    return alignment


__all__ = ["MIN_SCREEN_ROWS", "ScreenJob", "ScreenJobParams", "ScreenRun", "screen_summary"]
