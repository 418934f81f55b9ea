"""The bank node: the job controller.

Data scientists submit jobs to it (align = PSI, train = federated LR for many tags; see
``party_common.jobs``), it drives the protocols against the platform node, keeps jobs, alignments, models,
reports and the audit log in its stores, and serves scores (online and batch).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from party_bank.registry import ModelRegistry
from party_bank.report_stability import REPORT_KEY
from party_bank.scores import NOT_IN_INTERSECTION, OK, PLATFORM_UNAVAILABLE, UNKNOWN_CUSTOMER, Scores
from party_bank.segments import SegmentService
from party_bank.stability import BankStability
from party_common.audit import DEVIATION_EVENT, LOCAL_CALLER
from party_common.config import NodeConfig
from party_common.grpc_errors import describe
from party_common.jobs import JobContext, JobKind, job_kind
from party_common.link import PlatformLink
from party_common.memory import PeakMemory
from party_common.node import NodeBase
from party_common.policy import is_awaiting_approval
from party_common.stability import latest_answers
from party_common.storage import NodeStores
from party_common.storage.files import local_secret
from party_common.storage.jobs import ENDED, JobRecord
from protocols.errors import (
    RESUMABLE_CODES,
    DeviationDetected,
    FedProfileError,
    JobStopped,
    NotFound,
    PeerError,
    UserError,
)
from protocols.identity import customer_keys
from protocols.models import family_of, load_bank_half
from protocols.party_data import PartyData
from protocols.scorecard import Scaling, bank_table

log = logging.getLogger(__name__)

SCORE_BATCH = 5_000  # customers per PartialScore call
# A job the platform's operator has not approved yet asks again: 1 s, then every 3 s, so that an approval is
# noticed within seconds (a refused open costs the platform one row read; it writes no audit row for it).
APPROVAL_POLL_S = (1.0, 3.0)
BACKOFF_START_S, BACKOFF_MAX_S = 1.0, 30.0  # waiting for the platform: 1, 2, 4, ... 30 s between tries
CONNECT_TIMEOUT_S = 5.0  # one try to reach the platform
CANCEL_WAIT_S = 30.0  # CancelJob waits this long for the job to stop
CANCELLED = "cancelled by the data scientist"
NOISE_SECRET_FILE = "label_noise.key"
INTERRUPTED = "the bank node stopped while the job ran; it resumes when the node starts again"


class JobStop:
    """A running job's stop switch: cancel (ends "cancelled") or the node stopping (ends "interrupted")."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.status, self.reason = "cancelled", CANCELLED

    def set(self, status: str, reason: str) -> None:
        if not self.event.is_set():
            self.status, self.reason = status, reason
            self.event.set()

    def check(self) -> None:
        if self.event.is_set():
            raise JobStopped(self.reason, status=self.status)

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, or raise :class:`JobStopped` as soon as the job is stopped."""
        self.event.wait(seconds)
        self.check()


def approval_hint(job_id: str) -> str:
    """What a job waiting for approval says (progress line, `wait`): who must do what."""
    return (f"waiting for the platform's operator to run `platform-node approve {job_id}` (the platform's "
            "[policy] approval = \"manual\"); this job goes on by itself within seconds of it")


def new_job_id(kind: str) -> str:
    return f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


class BankNode(NodeBase):
    role = "bank"

    def __init__(self, config: NodeConfig, link: PlatformLink, *, data: PartyData | None = None,
                 stores: NodeStores | None = None, resume_jobs: bool = True) -> None:
        super().__init__(config, data=data, stores=stores)
        self.link = link
        # One job at a time: each job already spreads its work over all the cores.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job")
        self._running: dict[str, Future[None]] = {}
        self._stops: dict[str, JobStop] = {}
        self.segments = SegmentService(self)  # score files and campaign segments
        self.registry = ModelRegistry(self.stores, link)
        self.stability = BankStability(self)  # online windows per model, stability answers
        log.info("bank data: %d customers, %d features, %d tags (%s)", len(self.data.ids),
                 len(self.data.feature_names), len(self.data.tag_names), Path(self.data.source).name)
        if resume_jobs:
            self.resume_interrupted()

    @functools.cached_property
    def noise_secret(self) -> bytes:
        """The bank's local secret its jobs' label-DP noise keys derive from (``<state_dir>/label_noise.key``,
        0600, made once; protocols/vfl_lr/resume.py ``job_noise_key``)."""
        return local_secret(self.config.state_dir / NOISE_SECRET_FILE, "label-noise secret",
                            lost="a rerun of an older job no longer draws its noise")

    def job_context(self, job_id: str) -> JobContext:
        return dataclasses.replace(super().job_context(job_id), noise_secret=self.noise_secret)

    def connect(self, timeout_s: float = 30.0) -> str:
        """Wait for the platform node and check its role and protocol version; return its name."""
        return self.link.connect(timeout_s)

    # ---- jobs ----

    def submit(self, kind: str, name: str, raw_params: dict[str, Any], *, actor: str = LOCAL_CALLER) -> str:
        """Check the parameters now (errors name the parameter), queue the job, return its ID. ``actor``: the
        submitting operator's certificate name, kept in the job's audit row."""
        job = job_kind(kind)
        params = job.parse(raw_params, self.data, self.stores)
        job_id = new_job_id(kind)
        self.stores.jobs.create(job_id, kind, name, job.params_dict(params), actor=actor)
        self._start(job_id, job, params, name)
        return job_id

    def _start(self, job_id: str, job: JobKind[Any, Any], params: Any, name: str) -> None:
        self._stops[job_id] = JobStop()
        self._running[job_id] = self._executor.submit(self._run, job_id, job, params, name)

    def resume_interrupted(self) -> list[str]:
        """Queue again the jobs this node was running when it stopped (oldest first); their IDs.

        A train job resumes from its last checkpoint (the same model as an uninterrupted run); an align job
        runs its PSI again from the start (the same intersection, fresh keys)."""
        resumed = []
        for record in reversed(self.stores.jobs.list(1000, status="interrupted")):
            try:
                job = job_kind(record.kind)
                params = job.parse(record.params, self.data, self.stores)
            except FedProfileError as err:
                self.stores.jobs.fail(record.job_id, f"cannot resume: {describe(err, node='bank')}")
                continue
            log.info("job %s (%s) was interrupted: resuming it", record.job_id, record.kind)
            self._start(record.job_id, job, params, record.name)
            resumed.append(record.job_id)
        return resumed

    def cancel(self, job_id: str, timeout_s: float = CANCEL_WAIT_S) -> JobRecord:
        """Stop a queued, running or interrupted job on both nodes; its record once it stopped (or after
        ``timeout_s``: a step already sent to the platform finishes first)."""
        record = self.stores.jobs.get(job_id)
        if record.status in ENDED:
            raise UserError(f"job {job_id} has already ended: {record.status}")
        stop, future = self._stops.get(job_id), self._running.get(job_id)
        if stop is None or future is None:  # interrupted and not resumed: nothing runs here
            self._cancelled(job_id, CANCELLED)
            return self.stores.jobs.get(job_id)
        self.stores.jobs.set_progress(job_id, "cancelling: the job stops after its current step")
        stop.set("cancelled", CANCELLED)
        try:
            future.result(timeout=timeout_s)
        except TimeoutError:
            log.warning("job %s: still stopping after %.0f s", job_id, timeout_s)
        return self.stores.jobs.get(job_id)

    def _cancelled(self, job_id: str, reason: str) -> None:
        """Mark ``job_id`` cancelled here and on the platform; drop its checkpoint."""
        self.stores.jobs.stop(job_id, "cancelled", reason)
        self.stores.checkpoints.delete(job_id, missing_ok=True)
        try:
            self.link.cancel(job_id, reason)
        except PeerError as err:  # the platform's session expires on its own
            log.warning("job %s: could not tell the platform node about the cancellation: %s", job_id, err)

    def _deviation(self, job_id: str, err: DeviationDetected) -> None:
        """The platform sent what the honest protocol never does: the job fails here with an audit row naming
        the step and the check, and its session is aborted on the platform with the same words."""
        log.warning("job %s stopped: the platform deviated from the protocol at %s", job_id, err.step)
        self.stores.jobs.fail(job_id, describe(err, node="bank"))
        self.stores.jobs.audit(job_id, DEVIATION_EVENT, f"step {err.step}: check '{err.check}'", outcome="stopped")
        self.stores.checkpoints.delete(job_id, missing_ok=True)  # a deviating session is never resumed
        try:
            self.link.cancel(job_id, f"the bank stopped the job: {DEVIATION_EVENT} at {err.step}: {err.check}")
        except PeerError as failed:
            log.warning("job %s: could not tell the platform node about the deviation: %s", job_id, failed)

    def wait(self, job_id: str, timeout_s: float | None = None) -> JobRecord:
        """Block until a job submitted to this node has ended; return its record."""
        future = self._running.get(job_id)
        if future is not None:
            future.result(timeout=timeout_s)
        return self.stores.jobs.get(job_id)

    def _run(self, job_id: str, job: JobKind[Any, Any], params: Any, name: str) -> None:
        jobs, stop = self.stores.jobs, self._stops[job_id]
        memory = PeakMemory()
        try:
            resumed = jobs.get(job_id).status == "interrupted"
            if resumed:
                jobs.reopen(job_id)
            else:
                jobs.mark_running(job_id)
            log.info("job %s (%s) %s", job_id, job.name, "resumed" if resumed else "started")
            ctx = dataclasses.replace(self.job_context(job_id), resumed=resumed)
            report = ctx.progress

            def progress(stage: str, done: int, total: int) -> None:
                stop.check()  # a cancelled job stops at its next step
                report(stage, done, total)

            ctx = dataclasses.replace(ctx, progress=progress)
            result, peer_name = self._run_with_retries(job_id, job, ctx, params, name, stop)
            stop.check()
            summary = job.save_bank(ctx, params, result, peer_name)
        except Exception as raised:
            # Whatever a stopped job raised on its way out, it was stopped.
            err = JobStopped(stop.reason, status=stop.status) if stop.event.is_set() else raised
            if isinstance(err, JobStopped):
                log.info("job %s %s", job_id, err.status)
                if err.status == "cancelled":
                    self._cancelled(job_id, str(err))
                else:
                    jobs.stop(job_id, err.status, str(err))
            elif isinstance(err, DeviationDetected):
                self._deviation(job_id, err)
            elif isinstance(err, FedProfileError):
                log.warning("job %s failed: %s", job_id, err)
                jobs.fail(job_id, describe(err, node="bank"))
            else:
                log.error("job %s failed", job_id, exc_info=err)
                jobs.fail(job_id, describe(err, node="bank"))
        else:
            jobs.finish(job_id, {**summary, "memory": memory.stop()})
            self.stores.checkpoints.delete(job_id, missing_ok=True)
            log.info("job %s succeeded", job_id)
        finally:
            memory.stop()
            self._running.pop(job_id, None)
            self._stops.pop(job_id, None)

    def _run_with_retries(self, job_id: str, job: JobKind[Any, Any], ctx: JobContext, params: Any, name: str,
                          stop: JobStop) -> tuple[Any, str]:
        """Run the job; while the platform is unreachable (or lost the session), wait with backoff and run it
        again (a train job resumes from its checkpoint), until ``[peer] retry_deadline_s`` passes."""
        address = self.config.peer_address or "(in process)"
        deadline_s = self.config.peer_retry_deadline_s
        delay, since, since_wall = BACKOFF_START_S, None, ""
        while True:
            stop.check()
            try:
                peer_name = self.link.connect(timeout_s=CONNECT_TIMEOUT_S)
                delay, since = BACKOFF_START_S, None
                return self._run_when_approved(job, ctx, params, name, stop), peer_name
            except PeerError as err:
                if err.code not in RESUMABLE_CODES or stop.event.is_set():
                    raise
                if since is None:
                    since, since_wall = time.monotonic(), time.strftime("%H:%M:%S UTC", time.gmtime())
                waited = time.monotonic() - since
                if waited >= deadline_s:
                    raise PeerError(f"the platform at {address} has been unreachable since {since_wall}; gave up "
                                    f"after {deadline_s:.0f} s ([peer] retry_deadline_s)", code=err.code) from err
                wait = min(delay, deadline_s - waited)
                log.warning("job %s: %s; retrying in %.0f s", job_id, err, math.ceil(wait))
                self.stores.jobs.set_progress(job_id, f"waiting for the platform at {address}, retry in "
                                                      f"{math.ceil(wait)} s (unreachable since {since_wall})")
                stop.wait(wait)
                delay = min(2 * delay, BACKOFF_MAX_S)
                ctx = dataclasses.replace(ctx, resumed=True)  # the platform may hold the job's row already

    def _run_when_approved(self, job: JobKind[Any, Any], ctx: Any, params: Any, name: str, stop: JobStop) -> Any:
        """``job.run_bank``; while the platform's operator has not approved the job (the platform's policy,
        approval mode) it waits in status "awaiting approval" and asks again, less and less often."""
        wait = APPROVAL_POLL_S[0]

        def opened() -> None:  # the platform took the session: the job runs (again)
            if self.stores.jobs.get(ctx.job_id).status == "awaiting approval":
                self.stores.jobs.mark_running(ctx.job_id)

        link = _OpenNotifyingLink(self.link, opened)
        while True:
            try:
                return job.run_bank(link, ctx, params, name)
            except PeerError as err:
                if not is_awaiting_approval(err):
                    raise
                if self.stores.jobs.get(ctx.job_id).status != "awaiting approval":
                    self.stores.jobs.await_approval(ctx.job_id)
                    self.stores.jobs.set_progress(ctx.job_id, approval_hint(ctx.job_id))
                    log.info("job %s awaits the platform operator's approval", ctx.job_id)
                stop.wait(wait)  # a cancelled job, or a stopping node, stops waiting at once
                wait = min(2 * wait, APPROVAL_POLL_S[1])

    # ---- scoring ----

    def resolve_model(self, ref: str) -> str:
        """The train job ID a model reference (job ID or alias NAME@LABEL) names; retired models are refused."""
        return self.registry.resolve(ref)

    def score(self, model_job_id: str, customer_ids: list[str], tags: list[str] | None = None, *,
              bank_only_fallback: bool = False, online: bool = False) -> Scores:
        """Probabilities (len(ids), len(tags)) and a status per customer (``party_bank.scores``).

        Only customers of the model's alignment go to the platform, as their positions in that alignment
        (never an ID: the platform learns nothing about anyone outside the intersection). Everyone else is
        scored on the bank's side alone, with the platform's part at its training mean (z_B = 0 on
        standardised features), and flagged ``platform_known=False``. An ID that is no bank customer gets
        NaN and status ``unknown_customer``; it never fails the request. With ``bank_only_fallback``, a
        platform that cannot be reached turns its members' status into ``platform_unavailable`` (scored by the
        bank-only yardstick kept with the model, ``BankModel.bank_only_probabilities``; flagged) instead of
        failing the request.
        """
        keys = customer_keys(customer_ids)  # the normal form PSI matched: any spelling of a customer finds it
        empty = np.flatnonzero(keys == "")
        if len(empty):
            raise UserError(f"customer ID at position {empty[0] + 1} of the request is empty ({len(empty)} "
                            "empty ID(s)); give every customer's ID")
        model_job_id = self.resolve_model(model_job_id)
        model = self.model(model_job_id, load_bank_half)  # of the family it names (protocols.models)
        family = family_of(model)
        wanted, cols = self.tag_columns(model, tags or [])
        rows = self.data.positions(keys)
        customer = rows >= 0
        z_bank = np.zeros((len(customer_ids), len(wanted)))
        scored = np.flatnonzero(customer)
        for start in range(0, len(scored), SCORE_BATCH):  # a block of rows at a time: features may be on disk
            block = scored[start:start + SCORE_BATCH]
            z_bank[block] = family.bank_scores(model, self.model_features(model, rows[block]))[:, cols]
        index = self._alignment_index(model.alignment_job_id)
        positions = np.fromiter((index.get(str(c), -1) for c in keys), dtype=np.int64, count=len(keys))
        known = (positions >= 0) & customer
        status = np.where(known, OK, np.where(customer, NOT_IN_INTERSECTION, UNKNOWN_CUSTOMER)).astype(object)
        z_platform = np.zeros_like(z_bank)
        members = np.flatnonzero(known)
        released = limit = 0
        note, fallback = "", members[:0]
        # Tags the bank-only model serves (the joint one did not beat it on validation) ask nothing of the platform.
        joint = [j for j, c in enumerate(cols) if model.platform_part[c]]  # type: ignore[index]
        alone = [wanted[j] for j in range(len(wanted)) if j not in joint]
        served_note = (f"{', '.join(alone)}: scored by the bank-only model for every customer (the joint model did "
                       "not beat it on validation; see `bank-node models`)") if alone else ""
        try:
            # Each member once: the platform refuses repeated rows, and a repeat adds nothing.
            unique, inverse = np.unique(positions[members], return_inverse=True)
            z_unique = np.zeros((len(unique), len(wanted)))
            for start in range(0, len(unique) if joint else 0, SCORE_BATCH):
                answer = self.link.partial_scores(model_job_id, unique[start:start + SCORE_BATCH],
                                                  [wanted[j] for j in joint])
                z_unique[start:start + SCORE_BATCH, joint] = answer.scores
                released, limit = answer.projections_released, answer.projections_limit
            z_platform[members] = z_unique[inverse]
        except PeerError as err:
            if not bank_only_fallback or err.code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                raise
            z_platform[:] = 0.0
            known[:] = False
            status[members] = PLATFORM_UNAVAILABLE
            fallback = members
            note = f"scored on the bank's features alone: {err}; {model.fallback_note()}"
            log.warning("score: bank-only fallback for %d customer(s): the platform is unreachable; %s", len(members),
                        model.fallback_note())
        # Calibrated per tag (Platt or the monotone map, fitted on the validation multiset at training time).
        probabilities = family.combine(model, z_bank, z_platform, cols)
        for start in range(0, len(fallback), SCORE_BATCH):  # the bank-only yardstick's weights and calibration
            block = fallback[start:start + SCORE_BATCH]
            probabilities[block] = model.bank_only_probabilities(self.model_features(model, rows[block]), cols)
        probabilities[~customer] = np.nan
        if online:  # the recent window of online scores (scores and feature bin counts, never IDs): stability
            self.stability.record(model_job_id, wanted, probabilities[scored], self.data.features[rows[scored]])
        served = ["joint" if model.platform_part[c] else "bank_only" for c in cols]  # type: ignore[index]
        return Scores(wanted, probabilities, known, released, limit, status=status.tolist(),
                      note="; ".join(n for n in (served_note, note) if n), served=served, model_job_id=model_job_id)

    def _alignment_index(self, alignment_job: str) -> dict[str, int]:
        """A customer ID's normal form (``protocols.identity``) -> its position in the alignment (cached)."""
        return self.cached("alignment index", alignment_job, lambda: {
            str(key): i for i, key in enumerate(customer_keys(self.stores.alignments.load(alignment_job).ids or []))})

    def batch_score(self, model_job_id: str, output_path: str, tags: list[str] | None = None, *,
                    all_customers: bool = False, ids: list[str] | None = None,
                    overwrite: bool = False) -> tuple[Path, int]:
        """Score the model's intersection (default), every customer, or ``ids`` into a file under
        ``<state_dir>/scores/``; return its path and row count (``party_bank.segments`` has the columns)."""
        model_job_id = self.resolve_model(model_job_id)
        result = self.segments.batch_score(model_job_id, output_path, tags, all_customers=all_customers,
                                                  ids=ids, overwrite=overwrite)
        return result.path, result.rows

    def scorecard(self, model_ref: str, tags: list[str] | None = None, *, base_score: float | None = None,
                  pdo: float | None = None, base_odds: float | None = None) -> dict[str, Any]:
        """The bank's half of a binned model as points per bin per tag (``protocols.scorecard``): never the
        platform's weights, which stay on the platform (`platform-node scorecard` exports its half)."""
        model = self.model(self.resolve_model(model_ref), load_bank_half)
        return bank_table(model, tags or [], Scaling.of(base_score, pdo, base_odds))

    def report_document(self, job_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """A train job's stored report and the job fields its header shows (job_id, name, created, finished)."""
        record = self.stores.jobs.get(job_id)
        if record.kind != "train":
            raise NotFound(f"job {job_id} is a {record.kind} job: only train jobs have a report")
        job = {"job_id": job_id, "name": record.name, "created_at": record.created_at,
               "finished_at": record.finished_at}
        return {**self.stores.reports.load(job_id), REPORT_KEY: latest_answers(self.stores, job_id)}, job

    def report_html(self, job_id: str) -> bytes:
        """A train job's stored report as one self-contained HTML page (``party_bank.report_html``)."""
        from party_bank.report_html import render  # matplotlib loads on first use, not at node start

        if self.stores.jobs.get(job_id).kind == "screen":  # the screen's own page (party_bank/report_screen.py)
            from party_bank.report_html import CSS
            from party_bank.report_screen import render_page

            record = self.stores.jobs.get(job_id)
            return render_page(self.stores.reports.load(job_id), {"job_id": job_id, "name": record.name}, CSS).encode()
        report, job = self.report_document(job_id)
        # The summary (bootstrap intervals, ECE) was computed once when the job saved its report.
        return render(report, report.get("summary"), job=job).encode()

    def shutdown(self) -> None:
        """Stop every job at its next step as "interrupted" (resumed when the node starts again)."""
        for stop in list(self._stops.values()):
            stop.set("interrupted", INTERRUPTED)
        self._executor.shutdown(wait=False, cancel_futures=True)


class _OpenNotifyingLink:
    """The node's link, calling ``on_open`` each time the platform accepts a session."""

    def __init__(self, link: PlatformLink, on_open: Callable[[], None]) -> None:
        self._link, self._on_open = link, on_open

    def open(self, kind: str, job_id: str, params: Any, *, context: Any) -> Any:
        channel = self._link.open(kind, job_id, params, context=context)
        self._on_open()
        return channel

    def __getattr__(self, name: str) -> Any:
        return getattr(self._link, name)
