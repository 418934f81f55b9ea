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
from party_common.link import SessionContext
from party_common.node import NodeBase
from party_common.storage import NodeStores
from protocols.channel import Message, StepHandler
from protocols.errors import FedProfileError, ProtocolError
from protocols.party_data import PartyData
from protocols.vfl_lr import PlatformModel

log = logging.getLogger(__name__)


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
        self._members: dict[str, frozenset[str]] = {}
        self._members_lock = threading.Lock()
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

    def partial_scores(self, model_job_id: str, customer_ids: list[str],
                       tags: list[str]) -> tuple[list[str], np.ndarray, list[bool]]:
        """z_B for each customer and tag. Only customers in the model's alignment are answered: the bank
        already knows they are platform users, so answering reveals no membership beyond PSI."""
        model = self.model(model_job_id, PlatformModel.from_dict)
        wanted, cols = self.tag_columns(model, tags)
        members = self._alignment_members(model.alignment_job_id)
        rows = np.array([self.data.row_of(c) if c in members else -1 for c in customer_ids], dtype=np.int64)
        known = rows >= 0
        scores = np.full((len(customer_ids), len(cols)), np.nan)
        if known.any():
            scores[known] = model.partial_scores(self.data.features[rows[known]])[:, cols]
        return wanted, scores, known.tolist()

    def _alignment_members(self, alignment_job: str) -> frozenset[str]:
        with self._members_lock:
            cached = self._members.get(alignment_job)
        if cached is None:
            cached = frozenset(self.stores.alignments.load(alignment_job).ids or ())
            with self._members_lock:
                self._members[alignment_job] = cached
        return cached
