"""The platform node: answers the bank's protocol sessions and partial-score calls.

It holds the platform's data (IDs and behaviour features), its alignments (PSI results), and its half
of every trained model. The bank drives every job; this node never dials out. Each session is a job in
the platform's own job store, which ends succeeded (the protocol reported its result) or failed.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from party_common.audit import DEVIATION_EVENT, LOCAL_CALLER, audited
from party_common.config import NodeConfig
from party_common.grpc_errors import describe, status_of
from party_common.jobs import SESSION_KINDS, JobContext, JobKind, ResultExists
from party_common.link import STABILITY_SOURCES, PartialScores, Retirement, SessionContext, StabilityIndices
from party_common.memory import PeakMemory
from party_common.node import NodeBase
from party_common.policy import AWAITING_APPROVAL, REFUSED_BY_OPERATOR, AwaitingApproval, PolicyRefused, knob
from party_common.prometheus_metrics import set_stability
from party_common.stability import TRAINING, FeatureWindows, feature_reference
from party_common.storage import NodeStores, UnknownJob
from party_common.storage.group_commit import committed_before_return
from party_common.storage.jobs import JOB_ID_RE, now
from party_common.watch import WatchedDocuments
from party_platform.disclosure import RELEASE_EVENT, DisclosureLedger
from party_platform.policy import SCORE_EVENT, PlatformPolicy, restrict_features
from party_platform.policy_file import POLICY_EVENT, PolicyFile
from protocols.channel import Message, StepHandler
from protocols.errors import DeviationDetected, FedProfileError, NotFound, ProtocolError
from protocols.model_family import PlatformHalf
from protocols.models import family_of, load_platform_half
from protocols.party_data import PartyData, SchemaMismatch
from protocols.stability import platform_indices
from protocols.vfl_lr.disclosure import DisclosureRefused, Projection

log = logging.getLogger(__name__)

RETIRE_EVENT = "model retired"  # audit row under the model's job ID when the bank retires it
REVOKE_EVENT = "model revoked"  # audit row under the model's job ID when the platform's operator revokes it
SESSION_REFUSED_EVENT = "session refused"  # audit row of a session the policy or the job's state refused
RESUME_EVENT = "resume"  # audit row of a resumed job that waits for the operator's approval again
RESULT_REFUSED_EVENT = "result refused"  # audit row of a session result that would replace a stored one
STABILITY_EVENT = "stability"  # audit row of a stability answer (count = rows the indices are over)
# Job statuses a session with ``resumed`` may take up: interrupted, or running (the bank's new session replaced
# the open one). Never an ended job (succeeded, failed, cancelled).
RESUMABLE = ("interrupted", "running")
UNFINISHED_SESSION = "the bank ended the session before the protocol finished"


class PlatformSession:
    """One session's handler, wrapped so the job row says how it ended, whatever happens: succeeded, failed
    (this node refused a step), cancelled (by the bank), interrupted (expired, the node stopping, or the bank
    closing the session before a result and without a refusal here; the bank may resume it), or left to the
    session that replaced it (the bank resumed the job). Only an interrupted job resumes (``_admit``)."""

    def __init__(self, node: PlatformNode, job: JobKind[Any, Any], ctx: JobContext, context: SessionContext) -> None:
        self._node, self._job, self._ctx, self._context = node, job, ctx, context
        self.inner: StepHandler | None = None
        self.finished = False
        self._last_refusal = ""
        self.memory = PeakMemory()

    def on_result(self, result: Any) -> None:
        if self._job.session == "psi":  # an intersection below the policy's minimum is not kept
            self._node.policy.check_intersection(result.size)
        try:
            summary = self._job.save_platform(self._ctx, self._context, result)
        except ResultExists as err:
            self._last_refusal = str(err)  # the job fails (and never resumes), whichever step reported the result
            self._node.stores.jobs.audit(self._ctx.job_id, RESULT_REFUSED_EVENT,
                                         f"{self._job.session}: a stored result is never replaced",
                                         outcome=f"refused ({status_of(err).name})")
            raise
        self._node.stores.jobs.finish(self._ctx.job_id, {**summary, "memory": self.memory.stop()})
        self.finished = True
        log.info("%s session %s: result stored", self._job.session, self._ctx.job_id)

    def handle(self, step: str, message: Message) -> Message:
        assert self.inner is not None
        try:
            return self.inner.handle(step, message)
        except Exception as err:
            self._last_refusal = f"step {step}: {describe(err, node='platform')}"
            if isinstance(err, DeviationDetected):  # the session ends with it: the bank sees the refusal
                log.warning("%s session %s: the bank deviated from the protocol at %s", self._job.session,
                            self._ctx.job_id, err.step)
                self._node.stores.jobs.audit(self._ctx.job_id, DEVIATION_EVENT,
                                             f"step {err.step}: check '{err.check}'",
                                             actor=self._context.caller or LOCAL_CALLER, outcome="stopped")
            raise

    def close(self) -> None:
        self.end("closed")

    def end(self, how: str, reason: str = "") -> None:
        """Close the handler; record how the session ended (``party_platform.sessions.ENDINGS``)."""
        self.memory.stop()
        if self.inner is not None:
            self.inner.close()
        job_id, jobs = self._ctx.job_id, self._node.stores.jobs
        if self.finished or how == "superseded":
            if self.finished and how == "closed":  # the bank has what it needs: the job cannot resume any more
                self._node.stores.checkpoints.delete(job_id, missing_ok=True)
            return
        if how == "cancelled":
            self._node.cancel_job(job_id, reason or "cancelled by the bank")
        elif how in ("expired", "stopping"):
            jobs.stop(job_id, "interrupted", f"{'expired: ' if how == 'expired' else ''}{reason}; the bank resumes "
                      "the job when it reaches this node again")
        elif self._last_refusal:  # this node refused a step: the job failed here, and never runs again
            jobs.fail(job_id, self._last_refusal)
        else:  # the bank stopped (or gave up on a step) without a result: it may resume the job, nothing else
            jobs.stop(job_id, "interrupted", f"{UNFINISHED_SESSION}; the bank may resume the job")


class PlatformNode(NodeBase):
    role = "platform"

    def __init__(self, config: NodeConfig, *, data: PartyData | None = None,
                 stores: NodeStores | None = None) -> None:
        super().__init__(config, data=data, stores=stores)
        # Joint models see only the feature columns the policy allows ([policy] allowed_feature_columns).
        self.data = restrict_features(self.data, config.policy.allowed_feature_columns, f"{config.source} [policy]")
        self.policy = PlatformPolicy(config.policy, platform_rows=len(self.data.ids), jobs=self.stores.jobs)
        # The disclosure budget, per customer across alignments and jobs (party_platform/disclosure.py).
        self.ledger = DisclosureLedger(config.state_dir, lambda: self.projections_limit, self.stores.jobs)
        self._record_lock = threading.Lock()  # check-then-record steps (disclosure budget, retirement) are atomic
        # Per model, the bin counts of the rows it answered recently (never IDs): its features' stability.
        self.recent = FeatureWindows(self.stores)
        # Retirements and the operator's revocations (`platform-node revoke`, another process) as last read: a
        # partial-score call reads no file; a revocation takes effect within party_common.watch.CHECK_EVERY_S.
        self._registry = WatchedDocuments(self.stores.registry)
        # [policy] read again when the config file changes (party_platform/policy_file.py); none in tests
        # that build their config in code.
        self.policy_file = PolicyFile(config, self._replace_policy) if Path(config.source).is_file() else None
        log.info("platform data: %d users, %d features (%s)", len(self.data.ids), len(self.data.feature_names),
                 Path(self.data.source).name)

    def _replace_policy(self, config: NodeConfig, keys: list[str]) -> None:
        self.config = config
        self.policy.replace_config(config.policy, len(self.data.ids))
        self.stores.jobs.audit(None, POLICY_EVENT, ", ".join(keys), actor="(config file)", outcome="ok")

    # ---- sessions ----

    def job_context(self, job_id: str) -> JobContext:
        return dataclasses.replace(super().job_context(job_id), max_peer_rows=self.policy.max_psi_rows,
                                   psi_key_rotation_days=self.config.policy.psi_key_rotation_days,
                                   evaluation_limits=self.policy.evaluation_limits, disclosure=self.ledger,
                                   screen_policy=self.policy.screen_policy)

    def open_session(self, kind: str, job_id: str, params: Message, context: SessionContext) -> StepHandler:
        job = SESSION_KINDS.get(kind)
        if job is None:
            raise ProtocolError(f"unknown session kind '{kind}' (this node supports {', '.join(SESSION_KINDS)})")
        actor = context.caller or LOCAL_CALLER
        try:
            self.policy.check_session(kind, params, self._alignment_size(context))
        except FedProfileError as err:
            named = job_id if JOB_ID_RE.match(job_id) else None
            self.stores.jobs.audit(named, SESSION_REFUSED_EVENT, kind, actor=actor,
                                   outcome=f"refused ({status_of(err).name})")
            log.info("%s session %s refused by policy: %s", kind, job_id, err)
            raise
        self._admit(job_id, kind, context, actor)
        self.stores.jobs.mark_running(job_id)
        ctx = self.job_context(job_id)
        session = PlatformSession(self, job, ctx, context)
        try:
            session.inner = job.open_platform(ctx, params, context, session.on_result)
        except Exception as err:
            session.memory.stop()
            self.stores.jobs.fail(job_id, describe(err, node="platform"))
            if isinstance(err, FedProfileError) and not isinstance(err, ProtocolError):
                raise ProtocolError(str(err)) from err
            raise
        return session

    def _admit(self, job_id: str, kind: str, context: SessionContext, actor: str) -> None:
        """Create the job's row, or take up the row of a job the platform's operator approved, or of an
        interrupted job the bank resumes.

        In approval mode a new job waits ("awaiting approval") and the bank is told so; it asks again until
        the operator approves (``platform-node approve JOB``). A job ID is never reused for another job. The
        same job opened again with ``resumed`` (after a restart of either node, or a lost session) takes up its
        row only while the job has not ended: interrupted, or running in the session the new one replaced. A
        job that succeeded, failed or was cancelled never runs again (its result, a stored model half, would
        be made anew), and in approval mode a resume waits for the operator's approval as a new job does.
        Every refusal is an audit row naming the check.
        """
        try:
            existing = self.stores.jobs.get(job_id)
        except UnknownJob:
            existing = None
        if existing is None:
            params = {"session": kind, "alignment_job_id": context.alignment_job_id}
            waiting = self.policy.manual_approval
            self.stores.jobs.create(job_id, kind, context.job_name, params, actor=actor,
                                    status=AWAITING_APPROVAL if waiting else "queued")
            if waiting:
                log.info("%s session %s awaits the operator's approval", kind, job_id)
                raise AwaitingApproval(job_id)
            return
        if existing.status == AWAITING_APPROVAL:
            raise AwaitingApproval(job_id)
        if existing.status == "failed" and existing.error == REFUSED_BY_OPERATOR:
            raise PolicyRefused(f"job {job_id} was {REFUSED_BY_OPERATOR} ([policy] approval = \"manual\")")
        if existing.status == "queued" and existing.kind == kind:  # approved, not started yet
            return
        if not context.resumed or existing.kind != kind:
            self._refuse_admission(job_id, kind, actor, "job ID reused",
                                   f"job ID {job_id} was already used on the platform node (a {existing.kind} "
                                   f"job, {existing.status}); every job needs a new ID")
        if existing.status not in RESUMABLE:
            self._refuse_admission(job_id, kind, actor, f"resume of a {existing.status} job",
                                   f"job {job_id} has ended on the platform node ({existing.status}): only an "
                                   "interrupted job resumes; a job that succeeded, failed or was cancelled never "
                                   "runs again (submit a new job)")
        if existing.params.get("alignment_job_id") != context.alignment_job_id:
            self._refuse_admission(job_id, kind, actor, "resume on another alignment",
                                   f"job {job_id} ran on another alignment on the platform node: a resumed job "
                                   "runs on the alignment it started on")
        if self.policy.manual_approval:  # a resume is a new run: the operator approves it as a new job
            self.stores.jobs.await_approval(job_id)
            self.stores.jobs.audit(job_id, RESUME_EVENT, f"{kind}: resume awaits the operator's approval",
                                   actor=actor, outcome="waiting")
            log.info("%s session %s: the resumed job awaits the operator's approval", kind, job_id)
            raise AwaitingApproval(job_id)
        self.stores.jobs.reopen(job_id)  # the bank runs the same job again (either node restarted)

    def _refuse_admission(self, job_id: str, kind: str, actor: str, check: str, message: str) -> NoReturn:
        """Audit (the check that refused, never data) and raise the refusal of a session for ``job_id``."""
        err = ProtocolError(message)
        self.stores.jobs.audit(job_id, SESSION_REFUSED_EVENT, f"{kind}: {check}", actor=actor,
                               outcome=f"refused ({status_of(err).name})")
        log.info("%s session %s refused: %s", kind, job_id, check)
        raise err

    def _alignment_size(self, context: SessionContext) -> int | None:
        if not context.alignment_job_id:
            return None
        try:
            return self.stores.alignments.load(context.alignment_job_id).size
        except FedProfileError:
            return None  # the job kind refuses an unknown alignment with its own message

    def cancel_job(self, job_id: str, reason: str) -> None:
        """The bank cancelled ``job_id``: its row says so (unless it ended already) and its checkpoint goes."""
        try:
            record = self.stores.jobs.get(job_id)
        except NotFound:
            return
        if record.status != "succeeded":  # a session the bank's cancel closed first reads failed until now
            self.stores.jobs.stop(job_id, "cancelled", reason)
        self.stores.checkpoints.delete(job_id, missing_ok=True)

    # ---- serving ----

    @property
    def projections_limit(self) -> int:
        """The disclosure budget per customer: distinct projections of its features (weight vectors) released."""
        configured = self.config.max_released_projections
        return configured if configured is not None else max(1, len(self.data.feature_names) // 2)

    def partial_scores(self, model_job_id: str, rows: np.ndarray, tags: list[str], *,
                       caller: str = LOCAL_CALLER) -> PartialScores:
        """z_B for rows of the model's alignment, named by position (handles both nodes hold since PSI).

        The bank never names a customer: every row is already a shared customer, so answering reveals no
        membership beyond PSI. Each (model, tag) answered is one more linear projection of each scored
        customer's features (unless the customer's evaluation or an earlier call released it already); the
        ledger refuses the call if some customer would pass the budget, whatever alignment it came through.
        Every call, answered or refused, is one audit row (the caller's certificate name, rows, outcome), and
        the policy's model, tag and quota checks come before any answer. The answer leaves only once the call's
        charge and audit rows are committed: each database's writes of the call wait for one group commit
        (``party_common.storage.group_commit``), shared with the calls that wrote meanwhile.
        """
        with committed_before_return(), audited(self.stores.jobs, SCORE_EVENT, actor=caller, job_id=model_job_id,
                                                log_level=logging.DEBUG) as call:
            answer = self._partial_scores(model_job_id, rows, tags)
            call.count, call.detail = len(rows), f"{len(rows)} rows, {len(answer.tags)} tags"
        return answer

    def _partial_scores(self, model_job_id: str, rows: np.ndarray, tags: list[str]) -> PartialScores:
        if not isinstance(rows, np.ndarray) or rows.dtype != np.int64 or rows.ndim != 1 or len(rows) == 0:
            raise ProtocolError("partial scores: rows must be a non-empty 1-d int64 array of alignment positions")
        retired = self._registry.get(model_job_id)
        if retired is not None:
            if retired.get("status") == "revoked":
                raise PolicyRefused(f"model {model_job_id} was revoked by the platform's operator at "
                                    f"{retired['retired_at']}: it answers no more partial scores")
            raise NotFound(f"model {model_job_id} was retired on the platform node at {retired['retired_at']}: "
                           "it answers no more partial scores")
        model = self._model(model_job_id)
        wanted, cols = self.tag_columns(model, tags)
        aligned = self._aligned_rows(model.alignment_job_id)
        if rows.min() < 0 or rows.max() >= len(aligned) or len(np.unique(rows)) != len(rows):
            raise ProtocolError(f"partial scores: rows must be distinct positions in 0..{len(aligned) - 1}")
        self.policy.check_scoring(model_job_id, wanted, len(rows))
        epochs = model.best_epoch
        projections = [Projection(model_job_id, model.tag_names[c], None if epochs is None else epochs[c]) for c in cols]
        ids = self.data.ids
        released = self.ledger.charge([ids[i] for i in aligned[rows]], projections,
                                      what=f"scoring model {model_job_id}")
        features = self.model_features(model, aligned[rows])
        scores = family_of(model).platform_answer(model, features)[:, cols]
        self.recent.record(model_job_id, features)
        return PartialScores(wanted, scores, released, self.projections_limit)

    def stability(self, model_job_id: str, source: str, rows: np.ndarray | None, *,
                  caller: str = LOCAL_CALLER) -> StabilityIndices:
        """One population stability index per feature of our half of a model, against its training population:
        over alignment positions ``rows`` the bank scored (source "rows": a batch) or over our own recent answers
        for the model (source "recent"). The bank learns one rounded number per feature, over at least
        ``[policy] min_stability_rows`` rows (``protocols.stability.platform_indices``), never a bin's share.
        Every call, answered or refused, is one audit row."""
        with audited(self.stores.jobs, STABILITY_EVENT, actor=caller, job_id=model_job_id) as call:
            answer = self._stability(model_job_id, source, rows)
            call.count, call.detail = answer.rows, f"{source}: {answer.rows} rows, {len(answer.features)} features"
        # The platform's own gauges of its features, as the bank's (fedprofile_feature_psi, role "platform")
        set_stability(model_job_id, "batch" if source == "rows" else "online",
                      {"platform": dict(zip(answer.features, answer.psi, strict=True))}, {})
        return answer

    def _stability(self, model_job_id: str, source: str, rows: np.ndarray | None) -> StabilityIndices:
        if source not in STABILITY_SOURCES:
            raise ProtocolError(f"stability: source must be one of {', '.join(STABILITY_SOURCES)}, not {source!r}")
        model = self._model(model_job_id)
        min_rows = self.config.policy.min_stability_rows
        if source == "recent":
            reference, counts, n = self.recent.counts(model_job_id)
            values = platform_indices(reference, counts, n, min_rows=min_rows)
            return StabilityIndices(list(values), list(values.values()), n, TRAINING)
        if not isinstance(rows, np.ndarray) or rows.dtype != np.int64 or rows.ndim != 1 or len(rows) == 0:
            raise ProtocolError("stability: rows must be a non-empty 1-d int64 array of alignment positions")
        alignment = self.stores.alignments.load(model.alignment_job_id)
        aligned = self._aligned_rows(model.alignment_job_id)
        if rows.min() < 0 or rows.max() >= len(aligned) or len(np.unique(rows)) != len(rows):
            raise ProtocolError(f"stability: rows must be distinct positions in 0..{len(aligned) - 1}")
        reference, origin = feature_reference(self.stores, model_job_id, self.data, alignment.ids or [])
        values = platform_indices(reference, reference.count(self.data.features[aligned[rows]]), len(rows),
                                  min_rows=min_rows)
        return StabilityIndices(list(values), list(values.values()), len(rows), origin)

    def _model(self, model_job_id: str) -> PlatformHalf:
        try:
            return self.model(model_job_id, load_platform_half)  # of the family it names (protocols.models)
        except SchemaMismatch as err:
            allowed = self.config.policy.allowed_feature_columns
            if allowed is None:
                raise
            raise PolicyRefused(f"model {model_job_id} uses feature columns the platform's policy no longer "
                                f"allows ({knob('allowed_feature_columns')}): {err}") from err

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
            self._registry.invalidate()
            self.stores.jobs.audit(model_job_id, RETIRE_EVENT,
                                   "asked by the bank" + ("" if had_half else "; no model half on this node"))
        log.info("model %s retired", model_job_id)
        return Retirement(model_job_id, entry["retired_at"], already_retired=False)

    def _aligned_rows(self, alignment_job: str) -> np.ndarray:
        """Our rows of an alignment's members, in the alignment's order (cached)."""
        return self.cached("aligned rows", alignment_job,
                           lambda: self.data.rows_of(self.stores.alignments.load(alignment_job).ids or []))


__all__ = ["RELEASE_EVENT", "RETIRE_EVENT", "REVOKE_EVENT", "DisclosureRefused", "PlatformNode",
           "PlatformSession"]
