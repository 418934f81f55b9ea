"""The platform node: answers the bank's protocol sessions and partial-score calls.

It holds the platform's data (IDs and behaviour features), its alignments (PSI results), and its half
of every trained model. The bank drives every job; this node never dials out. Each session is a job in
the platform's own job store, which ends succeeded (the protocol reported its result) or failed.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from party_common.config import NodeConfig
from party_common.grpc_errors import describe
from party_common.jobs import SESSION_KINDS, JobContext, JobKind
from party_common.link import PartialScores, Retirement, SessionContext
from party_common.node import NodeBase
from party_common.storage import NodeStores
from party_common.storage.jobs import now
from protocols.channel import Message, StepHandler
from protocols.errors import FedProfileError, NotFound, ProtocolError
from protocols.party_data import PartyData
from protocols.vfl_lr import PlatformModel

log = logging.getLogger(__name__)

RELEASE_EVENT = "projection released"  # audit rows under the alignment's job ID: "<model job>:<tag>"
RETIRE_EVENT = "model retired"  # audit row under the model's job ID when the bank retires it


class DisclosureRefused(ProtocolError):
    """Answering would release more projections of the platform's features than its policy allows."""


class PlatformSession:
    """One session's handler, wrapped so the job row ends succeeded or failed, whatever happens."""

    def __init__(self, node: PlatformNode, job: JobKind[Any, Any], ctx: JobContext, context: SessionContext) -> None:
        self._node, self._job, self._ctx, self._context = node, job, ctx, context
        self.inner: StepHandler | None = None
        self.finished = False
        self._last_refusal = ""

    def on_result(self, result: Any) -> None:
        summary = self._job.save_platform(self._ctx, self._context, result)
        self._node.stores.jobs.finish(self._ctx.job_id, summary)
        self.finished = True
        log.info("%s session %s: result stored", self._job.session, self._ctx.job_id)

    def handle(self, step: str, message: Message) -> Message:
        assert self.inner is not None
        try:
            return self.inner.handle(step, message)
        except Exception as err:
            self._last_refusal = f"step {step}: {describe(err, node='platform')}"
            raise

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()
        if not self.finished:
            reason = self._last_refusal or "the bank ended the session before the protocol finished"
            self._node.stores.jobs.fail(self._ctx.job_id, reason)


class PlatformNode(NodeBase):
    role = "platform"

    def __init__(self, config: NodeConfig, *, data: PartyData | None = None,
                 stores: NodeStores | None = None) -> None:
        super().__init__(config, data=data, stores=stores)
        self._released: dict[str, set[str]] = {}
        self._record_lock = threading.Lock()  # check-then-record steps (disclosure budget, retirement) are atomic
        log.info("platform data: %d users, %d features (%s)", len(self.data.ids), len(self.data.feature_names),
                 Path(self.data.source).name)

    # ---- sessions ----

    def open_session(self, kind: str, job_id: str, params: Message, context: SessionContext) -> StepHandler:
        job = SESSION_KINDS.get(kind)
        if job is None:
            raise ProtocolError(f"unknown session kind '{kind}' (this node supports {', '.join(SESSION_KINDS)})")
        self.stores.jobs.create(job_id, kind, context.job_name, {"session": kind,
                                                                 "alignment_job_id": context.alignment_job_id})
        self.stores.jobs.mark_running(job_id)
        ctx = self.job_context(job_id)
        session = PlatformSession(self, job, ctx, context)
        try:
            session.inner = job.open_platform(ctx, params, context, session.on_result)
        except Exception as err:
            self.stores.jobs.fail(job_id, describe(err, node="platform"))
            if isinstance(err, FedProfileError) and not isinstance(err, ProtocolError):
                raise ProtocolError(str(err)) from err
            raise
        return session

    # ---- serving ----

    @property
    def projections_limit(self) -> int:
        """The disclosure budget per alignment: distinct (model, tag) projections of our features released."""
        configured = self.config.max_released_projections
        return configured if configured is not None else max(1, len(self.data.feature_names) // 2)

    def partial_scores(self, model_job_id: str, rows: np.ndarray, tags: list[str]) -> PartialScores:
        """z_B for rows of the model's alignment, named by position (handles both nodes hold since PSI).

        The bank never names a customer: every row is already a shared customer, so answering reveals no
        membership beyond PSI. Each (model, tag) answered is one more linear projection of our features the
        bank can see per customer; the first answer for a pair spends one unit of the alignment's budget.
        """
        if not isinstance(rows, np.ndarray) or rows.dtype != np.int64 or rows.ndim != 1 or len(rows) == 0:
            raise ProtocolError("partial scores: rows must be a non-empty 1-d int64 array of alignment positions")
        retired = self.retirement(model_job_id)
        if retired is not None:
            raise NotFound(f"model {model_job_id} was retired on the platform node at {retired['retired_at']}: "
                           "it answers no more partial scores")
        model = self.model(model_job_id, PlatformModel.from_dict)
        wanted, cols = self.tag_columns(model, tags)
        aligned = self._aligned_rows(model.alignment_job_id)
        if rows.min() < 0 or rows.max() >= len(aligned) or len(np.unique(rows)) != len(rows):
            raise ProtocolError(f"partial scores: rows must be distinct positions in 0..{len(aligned) - 1}")
        released = self._release(model.alignment_job_id, [f"{model_job_id}:{tag}" for tag in wanted])
        self.stores.jobs.audit(model_job_id, "partial scores", f"{len(rows)} rows, {len(wanted)} tags")
        scores = model.partial_scores(self.data.features[aligned[rows]])[:, cols]
        return PartialScores(wanted, scores, released, self.projections_limit)

    # ---- model registry ----

    def retirement(self, model_job_id: str) -> dict[str, Any] | None:
        """The registry entry of a retired model (``stores.registry``), None while it is active."""
        return self.stores.registry.load(model_job_id) if self.stores.registry.exists(model_job_id) else None

    def retire_model(self, model_job_id: str) -> Retirement:
        """Mark our half of a model retired (idempotent) and audit it; partial scores for it are refused after."""
        with self._record_lock:
            entry = self.retirement(model_job_id)
            if entry is not None:
                return Retirement(model_job_id, str(entry["retired_at"]), already_retired=True)
            had_half = self.stores.models.exists(model_job_id)
            entry = {"model": model_job_id, "status": "retired", "retired_at": now(), "had_model_half": had_half}
            self.stores.registry.save(model_job_id, entry, overwrite=True)
            self.stores.jobs.audit(model_job_id, RETIRE_EVENT,
                                   "asked by the bank" + ("" if had_half else "; no model half on this node"))
        log.info("model %s retired", model_job_id)
        return Retirement(model_job_id, entry["retired_at"], already_retired=False)

    def _release(self, alignment_job: str, projections: list[str]) -> int:
        """Record ``projections`` as released on the alignment, refusing past the budget; the count after."""
        with self._record_lock:
            released = self._released.get(alignment_job)
            if released is None:
                released = {event.detail for event in self.stores.jobs.audit_events(alignment_job)
                            if event.event == RELEASE_EVENT}
                self._released[alignment_job] = released
            new = [p for p in projections if p not in released]
            if len(released) + len(new) > self.projections_limit:
                raise DisclosureRefused(
                    f"scoring would release {len(released) + len(new)} distinct projections of the platform's "
                    f"features on alignment {alignment_job}; the platform's limit is {self.projections_limit} "
                    "([policy] max_released_projections)")
            for projection in new:
                self.stores.jobs.audit(alignment_job, RELEASE_EVENT, projection)
                released.add(projection)
            return len(released)

    def _aligned_rows(self, alignment_job: str) -> np.ndarray:
        """Our rows of an alignment's members, in the alignment's order (cached)."""
        return self.cached("aligned rows", alignment_job,
                           lambda: self.data.rows_of(self.stores.alignments.load(alignment_job).ids or []))
