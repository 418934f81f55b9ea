"""The train job: federated LR, one model per tag, on an alignment; each side keeps its half of the models."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from party_common.jobs.base import COLUMN_SELECTION, JobContext, JobError, JobKind, ResultExists
from party_common.link import ContextPeer, PlatformLink, SessionContext
from party_common.policy import PolicyRefused, knob
from party_common.stability import keep_reference, served_test_scores
from party_common.storage import DocumentExists, DocumentStore, NodeStores
from party_common.storage.alignments import Alignment
from protocols.channel import Message, StepHandler
from protocols.errors import NotFound, ProtocolError, UserError
from protocols.party_data import PartyData
from protocols.screen.select import select_features
from protocols.uncertainty import summarise
from protocols.vfl_lr import (
    MIN_ROWS,
    TrainOutcome,
    TrainParams,
    make_platform_train_handler,
    run_bank_training,
)
from protocols.vfl_lr.resume import job_noise_key

# Per-row evaluation data in a report: kept in the report document, left out of the job's summary.
PREDICTION_KEYS = ("test_predictions", "validation_predictions")
# Alignments a model can be trained on: both nodes learned the intersection ("bank_only" leaves the platform
# unable to find its rows, "cardinality" leaves both sides with a count).
TRAINABLE_MODES = ("both",)


class StoreCheckpoints:
    """One job's training checkpoint in the node's checkpoint store (``<state_dir>/checkpoints/<job>.json``,
    0600, replaced atomically): the ``protocols.vfl_lr.resume.Checkpoints`` of a node."""

    def __init__(self, store: DocumentStore, job_id: str) -> None:
        self.store, self.job_id = store, job_id

    def load(self) -> dict[str, Any] | None:
        return self.store.load(self.job_id) if self.store.exists(self.job_id) else None

    def save(self, doc: dict[str, Any]) -> None:
        self.store.save(self.job_id, doc, overwrite=True)


@dataclass(frozen=True)
class TrainJobParams:
    tags: tuple[str, ...]
    alignment_job_id: str
    train: TrainParams
    screen: dict[str, Any] | None = None  # a screen job's IV selection: {"job_id", "min_iv" or "top_k"}
    bank_features: tuple[str, ...] | None = None  # the bank's columns that selection kept


def latest_trainable_alignment(stores: NodeStores) -> str:
    """The newest finished align job whose alignment the bank can train on."""
    for record in stores.jobs.list(1000, kind="align", status="succeeded"):
        if record.result.get("mode") in TRAINABLE_MODES:
            return record.job_id
    raise JobError("train: no finished align job in mode 'both' (both nodes learn the intersection); "
                   "run `bank-node align` first")


def screen_selection(stores: NodeStores, rule: Any, tags: list[str]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """A train job's ``screen`` parameter, checked: the finished screen job it names and the columns its rule
    keeps per party (:func:`protocols.screen.select.select_features`)."""
    if not isinstance(rule, Mapping) or not isinstance(rule.get("job_id"), str):
        raise JobError("train: 'screen' must be an object with the screen's job_id and min_iv or top_k")
    try:
        record = stores.jobs.get(rule["job_id"])
    except NotFound as err:
        raise JobError(f"train: no screen job {rule['job_id']}") from err
    if record.kind != "screen" or record.status != "succeeded":
        raise JobError(f"train: job {rule['job_id']} is not a finished screen job")
    try:
        return dict(rule), select_features(record.result.get("iv") or [], tags, rule)
    except UserError as err:
        raise JobError(f"train: {err}") from err


def with_selection(doc: dict[str, Any], model: Any, data: PartyData) -> dict[str, Any]:
    """A model half's document, marked with its columns when a screen's selection trained it on some of the
    node's columns only (``NodeBase.model`` then scores those)."""
    names = list(model.schema.feature_columns)
    return doc if names == list(data.feature_names) else {**doc, COLUMN_SELECTION: names}


def select_platform_features(aligned: PartyData, params: Message) -> PartyData:
    """The platform's columns a job trains on: those its parameters name (a screen's selection), each one the
    platform's policy allows (its data holds only those), or all of them."""
    try:
        wanted = TrainParams.from_json(str(params.get("params", "{}"))).platform_features
    except UserError:
        return aligned  # the protocol handler refuses the parameters with its own message
    if not wanted:
        return aligned
    refused = [c for c in wanted if c not in aligned.feature_names]
    if refused:
        raise PolicyRefused(f"train: the platform's policy does not allow column(s) {', '.join(refused[:5])} to be "
                            f"used ({knob('allowed_feature_columns')}), or it has no such column")
    return aligned.select_columns(wanted)


class TrainJob(JobKind[TrainJobParams, TrainOutcome]):
    name = "train"
    session = "train"

    def parse(self, raw: Mapping[str, Any], data: PartyData, stores: NodeStores) -> TrainJobParams:
        unknown = sorted(set(raw) - {"tags", "alignment_job_id", "train", "screen"})
        if unknown:
            raise JobError(f"train: unknown parameter {unknown[0]!r}; known: alignment_job_id, screen, tags, train")
        tags = raw.get("tags") or list(data.tag_names)
        if not isinstance(tags, list | tuple) or not all(isinstance(t, str) for t in tags):
            raise JobError("train: 'tags' must be a list of tag column names")
        missing = [t for t in tags if t not in data.tag_names]
        if missing:
            raise JobError(f"train: tag(s) {', '.join(missing)} are not tag columns of {data.source} "
                           f"(known: {', '.join(data.tag_names)})")
        if len(set(tags)) != len(tags):
            raise JobError("train: a tag is named twice")
        alignment_job_id = raw.get("alignment_job_id") or latest_trainable_alignment(stores)
        try:
            record = stores.jobs.get(str(alignment_job_id))
        except NotFound as err:
            raise JobError(f"train: no align job {alignment_job_id}") from err
        if record.kind != "align" or record.status != "succeeded":
            raise JobError(f"train: job {alignment_job_id} is not a finished align job")
        size = record.result.get("intersection_size")
        if isinstance(size, int) and size < MIN_ROWS:
            raise JobError(f"train: align job {alignment_job_id} found {size} shared customers; training needs at "
                           f"least {MIN_ROWS} (and rows in each of its splits): align on more customers")
        if record.result.get("mode") not in TRAINABLE_MODES:
            raise JobError(f"train: align job {alignment_job_id} ran in mode {record.result.get('mode')!r}, where "
                           "the platform does not learn the intersection; training needs an align job in mode 'both'")
        try:
            train = TrainParams.from_dict(raw.get("train") or {}).validate()
        except UserError as err:
            raise JobError(f"train: {err}") from err
        if raw.get("screen") is None:
            return TrainJobParams(tuple(tags), str(alignment_job_id), train)
        rule, selected = screen_selection(stores, raw["screen"], tags)
        train.platform_features = selected.get("platform") or train.platform_features
        bank_features = tuple(selected["bank"]) if selected.get("bank") else None
        return TrainJobParams(tuple(tags), str(alignment_job_id), train, rule, bank_features)

    def params_dict(self, params: TrainJobParams) -> dict[str, Any]:
        return {"tags": list(params.tags), "alignment_job_id": params.alignment_job_id,
                "train": params.train.to_dict(), **({"screen": params.screen} if params.screen else {})}

    def run_bank(self, link: PlatformLink, ctx: JobContext, params: TrainJobParams, job_name: str) -> TrainOutcome:
        alignment = ctx.stores.alignments.load(params.alignment_job_id)
        if alignment.ids is None:
            raise JobError(f"train: alignment {alignment.job_id} holds no IDs on this node")
        bank = ctx.data.take(alignment.ids).select_tags(params.tags)
        if params.bank_features:  # a screen's IV selection
            bank = bank.select_columns(list(params.bank_features))
        peer = ContextPeer(link, SessionContext(alignment_job_id=alignment.job_id,
                                                alignment_hash=alignment.content_hash, job_name=job_name,
                                                resumed=ctx.resumed))
        # The label-DP noise follows the job's seed under the bank's own secret: a rerun is the same job.
        noise_key = None if ctx.noise_secret is None else job_noise_key(
            ctx.noise_secret, seed=params.train.seed, alignment_hash=alignment.content_hash, tags=params.tags)
        outcome = run_bank_training(peer, ctx.job_id, bank, params.train, progress=ctx.progress,
                                    compute=ctx.new_compute(), noise_key=noise_key,
                                    checkpoints=StoreCheckpoints(ctx.stores.checkpoints, ctx.job_id),
                                    binning=ctx.binning)
        outcome.model.alignment_job_id = alignment.job_id
        outcome.report.update({
            "alignment_job_id": alignment.job_id, "rows": len(bank), "tags": list(params.tags),
            # Scoring with this model releases one projection of the platform's features per tag; the platform
            # counts them against its budget for the alignment (each score answer says how much is used).
            **({"screen_selection": {**params.screen, "bank_features": list(params.bank_features or []),
                                     "platform_features": params.train.platform_features,
                                     "label_privacy": ctx.stores.jobs.get(params.screen["job_id"]).result.get(
                                         "label_privacy")}} if params.screen else {}),
            "scoring_disclosure": {"projections_per_customer": len(params.tags),
                                   "budget": "per customer across alignments and jobs, evaluations included, set "
                                             "by the platform ([policy] max_released_projections); reported with "
                                             "every score"},
        })
        return outcome

    def save_bank(self, ctx: JobContext, params: TrainJobParams, result: TrainOutcome,
                  peer_name: str) -> dict[str, Any]:
        # A bank stopped between this save and the job's end runs the job again on resume and finishes from its
        # checkpoint's outcome: the model stored then is that same model, kept as it is (models are written once).
        if not ctx.stores.models.exists(ctx.job_id):
            ctx.stores.models.save(ctx.job_id, with_selection(result.model.to_dict(), result.model, ctx.data))
        # Intervals, calibration error and warnings once, from the test predictions; the predictions stay in
        # the stored report (for the HTML report's plots), not in the job's summary (it travels in GetJob).
        report = {**result.report, "summary": summarise(result.report)}
        ctx.stores.reports.save(ctx.job_id, report, overwrite=True)
        keep_reference(ctx.stores, ctx.job_id, ctx.data, ctx.stores.alignments.load(params.alignment_job_id).ids or [],
                       scores=served_test_scores(report), binning=getattr(result.model, "binning", None))  # stability
        return {key: value for key, value in report.items() if key not in PREDICTION_KEYS}

    def open_platform(self, ctx: JobContext, params: Message, context: SessionContext,
                      on_result: Callable[[Any], None]) -> StepHandler:
        alignment = self._alignment(ctx, context)
        aligned = select_platform_features(ctx.data.take(alignment.ids or []), params)
        return make_platform_train_handler(ctx.job_id, params, aligned, on_result=on_result,
                                           compute=ctx.new_compute(),
                                           checkpoints=StoreCheckpoints(ctx.stores.checkpoints, ctx.job_id),
                                           limits=ctx.evaluation_limits, budget=ctx.disclosure, binning=ctx.binning)

    @staticmethod
    def _alignment(ctx: JobContext, context: SessionContext) -> Alignment:
        if not context.alignment_job_id:
            raise ProtocolError("the bank did not say which alignment to train on (is it older than protocol 1.1?)")
        try:
            alignment = ctx.stores.alignments.load(context.alignment_job_id)
        except NotFound as err:
            raise ProtocolError(f"no alignment {context.alignment_job_id!r} on the platform node: "
                                "run PSI first") from err
        if alignment.ids is None:
            raise ProtocolError(f"alignment {alignment.job_id} was a size-only PSI; training needs the intersection")
        if context.alignment_hash != alignment.content_hash:
            raise ProtocolError(f"alignment {alignment.job_id}: the two nodes hold different intersections")
        return alignment

    def save_platform(self, ctx: JobContext, context: SessionContext, result: Any) -> dict[str, Any]:
        result.alignment_job_id = context.alignment_job_id
        # Once stored, a model half is never replaced (the store refuses, atomically): scoring answers for it,
        # and the disclosure budget counts its projections, under its job ID.
        try:
            ctx.stores.models.save(ctx.job_id, with_selection(result.to_dict(), result, ctx.data))
        except DocumentExists as err:
            raise ResultExists(f"train: the platform node holds a model half of job {ctx.job_id} already; a stored "
                               "model half is never replaced (train a new job)") from err
        keep_reference(ctx.stores, ctx.job_id, ctx.data, self._alignment(ctx, context).ids or [],
                       binning=getattr(result, "binning", None))  # the training population, for stability
        return {"alignment_job_id": context.alignment_job_id, "tags": list(result.tag_names)}
