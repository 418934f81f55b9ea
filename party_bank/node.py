"""The bank node: the job controller.

Data scientists submit jobs to it (align = PSI, train = federated LR for many tags; see
``party_common.jobs``), it drives the protocols against the platform node, keeps jobs, alignments, models,
reports and the audit log in its stores, and serves scores (online and batch).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from party_bank.registry import ModelRegistry
from party_bank.scores import NOT_IN_INTERSECTION, OK, PLATFORM_UNAVAILABLE, UNKNOWN_CUSTOMER, Scores
from party_bank.segments import SegmentService
from party_common.audit import LOCAL_CALLER
from party_common.config import NodeConfig
from party_common.grpc_errors import describe
from party_common.jobs import JobKind, job_kind
from party_common.link import PlatformLink
from party_common.node import NodeBase
from party_common.policy import is_awaiting_approval
from party_common.storage import NodeStores
from party_common.storage.jobs import JobRecord
from protocols.errors import FedProfileError, NotFound, PeerError
from protocols.party_data import PartyData
from protocols.vfl_lr import BankModel

log = logging.getLogger(__name__)

SCORE_BATCH = 5_000  # customers per PartialScore call
APPROVAL_POLL_S = (2.0, 60.0)  # a job the platform's operator has not approved yet asks again: 2 s, doubling to 60 s


def new_job_id(kind: str) -> str:
    return f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


class BankNode(NodeBase):
    role = "bank"

    def __init__(self, config: NodeConfig, link: PlatformLink, *, data: PartyData | None = None,
                 stores: NodeStores | None = None) -> None:
        super().__init__(config, data=data, stores=stores)
        self.link = link
        # One job at a time: each job already spreads its work over all the cores.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job")
        self._running: dict[str, Future[None]] = {}
        self._stopping = threading.Event()
        self.segments = SegmentService(self)  # score files and campaign segments
        self.registry = ModelRegistry(self.stores, link)
        log.info("bank data: %d customers, %d features, %d tags (%s)", len(self.data.ids),
                 len(self.data.feature_names), len(self.data.tag_names), Path(self.data.source).name)

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
        self._running[job_id] = self._executor.submit(self._run, job_id, job, params, name)
        return job_id

    def wait(self, job_id: str, timeout_s: float | None = None) -> JobRecord:
        """Block until a job submitted to this node has ended; return its record."""
        future = self._running.get(job_id)
        if future is not None:
            future.result(timeout=timeout_s)
        return self.stores.jobs.get(job_id)

    def _run(self, job_id: str, job: JobKind[Any, Any], params: Any, name: str) -> None:
        self.stores.jobs.mark_running(job_id)
        log.info("job %s (%s) started", job_id, job.name)
        try:
            peer_name = self.link.connect()
            ctx = self.job_context(job_id)
            result = self._run_when_approved(job, ctx, params, name)
            summary = job.save_bank(ctx, params, result, peer_name)
        except Exception as err:
            if isinstance(err, FedProfileError):
                log.warning("job %s failed: %s", job_id, err)
            else:
                log.error("job %s failed", job_id, exc_info=err)
            self.stores.jobs.fail(job_id, describe(err, node="bank"))
        else:
            self.stores.jobs.finish(job_id, summary)
            log.info("job %s succeeded", job_id)
        finally:
            self._running.pop(job_id, None)

    def _run_when_approved(self, job: JobKind[Any, Any], ctx: Any, params: Any, name: str) -> Any:
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
                    log.info("job %s awaits the platform operator's approval", ctx.job_id)
                if self._stopping.wait(wait):
                    raise PeerError("the bank node stopped while the job awaited the platform's approval",
                                    code="UNAVAILABLE") from err
                wait = min(2 * wait, APPROVAL_POLL_S[1])

    # ---- scoring ----

    def resolve_model(self, ref: str) -> str:
        """The train job ID a model reference (job ID or alias NAME@LABEL) names; retired models are refused."""
        return self.registry.resolve(ref)

    def score(self, model_job_id: str, customer_ids: list[str], tags: list[str] | None = None, *,
              bank_only_fallback: bool = False) -> Scores:
        """Probabilities (len(ids), len(tags)) and a status per customer (``party_bank.scores``).

        Only customers of the model's alignment go to the platform, as their positions in that alignment
        (never an ID: the platform learns nothing about anyone outside the intersection). Everyone else is
        scored on the bank's side alone, with the platform's part at its training mean (z_B = 0 on
        standardised features), and flagged ``platform_known=False``. An ID that is no bank customer gets
        NaN and status ``unknown_customer``; it never fails the request. With ``bank_only_fallback``, a
        platform that cannot be reached turns its members' status into ``platform_unavailable`` (bank-only
        scores, flagged) instead of failing the request.
        """
        model_job_id = self.resolve_model(model_job_id)
        model = self.model(model_job_id, BankModel.from_dict)
        wanted, cols = self.tag_columns(model, tags or [])
        rows = np.fromiter((self.data.row_of(c) for c in customer_ids), dtype=np.int64, count=len(customer_ids))
        customer = rows >= 0
        z_bank = np.zeros((len(customer_ids), len(wanted)))
        z_bank[customer] = model.partial_scores(self.data.features[rows[customer]])[:, cols]
        index = self._alignment_index(model.alignment_job_id)
        positions = np.fromiter((index.get(c, -1) for c in customer_ids), dtype=np.int64, count=len(customer_ids))
        known = (positions >= 0) & customer
        status = np.where(known, OK, np.where(customer, NOT_IN_INTERSECTION, UNKNOWN_CUSTOMER)).astype(object)
        z_platform = np.zeros_like(z_bank)
        members = np.flatnonzero(known)
        released = limit = 0
        note = ""
        # Tags the bank-only model serves (the joint one did not beat it on validation) ask nothing of the platform.
        joint = [j for j, c in enumerate(cols) if model.platform_part[c]]  # type: ignore[index]
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
            note = f"scored on the bank's features alone: {err}"
            log.warning("score: bank-only fallback for %d customer(s): the platform is unreachable", len(members))
        # Calibrated per tag (Platt or the monotone map, fitted on the validation multiset at training time).
        probabilities = model.probabilities(z_bank + z_platform, cols)
        probabilities[~customer] = np.nan
        return Scores(wanted, probabilities, known, released, limit, status=status.tolist(), note=note)

    def _alignment_index(self, alignment_job: str) -> dict[str, int]:
        """Customer ID -> position in the alignment (cached)."""
        return self.cached("alignment index", alignment_job, lambda: {
            cid: i for i, cid in enumerate(self.stores.alignments.load(alignment_job).ids or [])})

    def batch_score(self, model_job_id: str, output_path: str, tags: list[str] | None = None, *,
                    all_customers: bool = False, ids: list[str] | None = None,
                    overwrite: bool = False) -> tuple[Path, int]:
        """Score the model's intersection (default), every customer, or ``ids`` into a file under
        ``<state_dir>/scores/``; return its path and row count (``party_bank.segments`` has the columns)."""
        model_job_id = self.resolve_model(model_job_id)
        result = self.segments.batch_score(model_job_id, output_path, tags, all_customers=all_customers,
                                                  ids=ids, overwrite=overwrite)
        return result.path, result.rows

    def report_html(self, job_id: str) -> bytes:
        """A train job's stored report as one self-contained HTML page (``party_bank.report_html``)."""
        from party_bank.report_html import render  # matplotlib loads on first use, not at node start

        record = self.stores.jobs.get(job_id)
        if record.kind != "train":
            raise NotFound(f"job {job_id} is a {record.kind} job: only train jobs have a report")
        job = {"job_id": job_id, "name": record.name, "created_at": record.created_at,
               "finished_at": record.finished_at}
        report = self.stores.reports.load(job_id)
        # The summary (bootstrap intervals, ECE) was computed once when the job saved its report.
        return render(report, report.get("summary"), job=job).encode()

    def shutdown(self) -> None:
        self._stopping.set()
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
