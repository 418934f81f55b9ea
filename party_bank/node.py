"""The bank node: the job controller.

Data scientists submit jobs to it (align = PSI, train = federated LR for many tags), it drives the
protocols against the platform node, keeps jobs, alignments, models and the audit log in its state
directory, and serves scores (online and batch).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from party_common.codec import array_from_pb
from party_common.config import NodeConfig
from party_common.jobstore import JobRecord, JobStore, UnknownJob
from party_common.runtime import load_node_data
from party_common.storage.files import atomic_write, ensure_private_dir
from party_common.transport import GrpcChannel, GrpcPeer, wait_healthy
from protocols.channel import Message, PeerError

log = logging.getLogger(__name__)

JOB_KINDS = ("align", "train")
PSI_MODES = ("both", "bank_only", "cardinality")
SCORE_BATCH = 5_000


class JobError(ValueError):
    """A job's parameters are wrong; the message says which and why."""


def new_job_id(kind: str) -> str:
    return f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))


class _PeerWithNodeParams:
    """Adds node-level parameters (alignment to use, job name) to the sessions a protocol opens."""

    def __init__(self, peer: GrpcPeer, extra: dict[str, Any]) -> None:
        self._peer = peer
        self._extra = {f"node.{k}": v for k, v in extra.items()}
        self.channels: list[GrpcChannel] = []

    def open(self, kind: str, job_id: str, params: Message) -> GrpcChannel:
        channel = self._peer.open(kind, job_id, {**params, **self._extra})
        self.channels.append(channel)
        return channel


class BankNode:
    def __init__(self, config: NodeConfig, peer: GrpcPeer, peer_channel: Any) -> None:
        from protocols.alignment import AlignmentStore

        self.config = config
        self.peer = peer
        self._grpc_channel = peer_channel
        self.data = load_node_data(config)
        self.state_dir = ensure_private_dir(config.state_dir)
        self.alignments = AlignmentStore(self.state_dir / "alignments")
        self.models_dir = ensure_private_dir(self.state_dir / "models")
        self.jobs = JobStore(self.state_dir / "jobs.sqlite")
        # One job at a time: each job already spreads its work over all the cores.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job")
        self._index: dict[str, int] | None = None
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()
        log.info("bank data: %d customers, %d features, %d tags (%s)", len(self.data.ids),
                 len(self.data.feature_names), len(self.data.tag_names), Path(self.data.source).name)

    # ---- peer ----

    def connect(self, timeout_s: float = 30.0) -> str:
        """Wait for the platform node and check its role and protocol version; return its name."""
        try:
            wait_healthy(self._grpc_channel, timeout_s=timeout_s)
        except Exception as err:
            raise PeerError(f"platform node at {self.config.peer_address} is not reachable: {err}",
                            code="UNAVAILABLE") from err
        hello = self.peer.handshake(features=("psi.x25519", "train.vfl_lr", "score.partial"))
        log.info("handshake ok with platform node '%s' (protocol %s)", hello.node_name, hello.protocol_version)
        return hello.node_name

    # ---- jobs ----

    def submit(self, kind: str, name: str, params: dict[str, Any]) -> str:
        if kind not in JOB_KINDS:
            raise JobError(f"unknown job kind '{kind}'; use one of {', '.join(JOB_KINDS)}")
        params = dict(params)
        if kind == "align":
            mode = params.setdefault("mode", "both")
            if mode not in PSI_MODES:
                raise JobError(f"align: 'mode' must be one of {', '.join(PSI_MODES)}, got {mode!r}")
        else:
            self._check_train_params(params)
        job_id = new_job_id(kind)
        self.jobs.create(job_id, kind, name, params)
        self._executor.submit(self._run, job_id, kind, params)
        return job_id

    def _check_train_params(self, params: dict[str, Any]) -> None:
        from protocols.vfl_lr import TrainParams

        tags = params.get("tags") or list(self.data.tag_names)
        missing = [t for t in tags if t not in self.data.tag_names]
        if missing:
            raise JobError(f"train: tag(s) {', '.join(missing)} are not tag columns of {self.data.source} "
                           f"(known: {', '.join(self.data.tag_names)})")
        params["tags"] = list(tags)
        try:
            TrainParams(**params.get("train", {})).validate()
        except (TypeError, ValueError) as err:
            raise JobError(f"train: {err}") from err
        if params.get("alignment_job_id"):
            self._alignment_job(params["alignment_job_id"])

    def _alignment_job(self, job_id: str | None) -> JobRecord:
        if job_id:
            try:
                record = self.jobs.get(job_id)
            except UnknownJob as err:
                raise JobError(f"no align job {job_id}") from err
            if record.kind != "align" or record.status != "succeeded":
                raise JobError(f"job {job_id} is not a finished align job")
            return record
        done = self.jobs.list(1, kind="align", status="succeeded")
        if not done:
            raise JobError("no finished align job: run PSI (an align job) before training")
        return done[0]

    def _run(self, job_id: str, kind: str, params: dict[str, Any]) -> None:
        self.jobs.mark_running(job_id)
        log.info("job %s (%s) started", job_id, kind)
        try:
            result = self._align(job_id, params) if kind == "align" else self._train(job_id, params)
        except (PeerError, JobError, ValueError) as err:
            log.warning("job %s failed: %s", job_id, err)
            self.jobs.fail(job_id, str(err))
        except Exception as err:
            log.error("job %s failed: %s", job_id, "".join(traceback.format_exception_only(err)).strip())
            self.jobs.fail(job_id, f"internal error ({type(err).__name__}: {err}); see the bank node's log")
        else:
            self.jobs.finish(job_id, result)
            log.info("job %s succeeded", job_id)

    def _progress(self, job_id: str):
        last = [0.0]

        def report(stage: str, done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] > 0.5 or done >= total:
                last[0] = now
                self.jobs.set_progress(job_id, f"{stage}: {done}/{total}")

        return report

    def _align(self, job_id: str, params: dict[str, Any]) -> dict[str, Any]:
        from protocols.psi import run_bank_psi

        self.connect()
        started = time.monotonic()
        result = run_bank_psi(self.peer, job_id, list(self.data.ids), mode=params["mode"],
                              workers=self.config.workers, spill_dir=self.state_dir / "tmp",
                              progress=self._progress(job_id))
        alignment = self.alignments.save_result(job_id, result, peer_name=self.peer.peer_hello.node_name)
        return {"mode": alignment.mode, "intersection_size": alignment.size, "bank_customers": len(self.data.ids),
                "content_hash": alignment.content_hash, "seconds": round(time.monotonic() - started, 3)}

    def _train(self, job_id: str, params: dict[str, Any]) -> dict[str, Any]:
        from protocols.vfl_lr import TrainParams, run_bank_training

        align_job = self._alignment_job(params.get("alignment_job_id"))
        alignment = self.alignments.load(align_job.job_id)
        if alignment.ids is None:
            raise JobError(f"align job {align_job.job_id} learned only the intersection size; "
                           "training needs mode 'both' or 'bank_only'")
        self.connect()
        bank = self.data.take(list(alignment.ids)).select_tags(params["tags"])
        train_params = TrainParams(**params.get("train", {}))
        peer = _PeerWithNodeParams(self.peer, {"alignment_job_id": align_job.job_id,
                                               "alignment_hash": alignment.content_hash})
        outcome = run_bank_training(peer, job_id, bank, train_params, progress=self._progress(job_id),
                                    workers=self.config.workers)
        model = outcome.model
        model.alignment_job_id = align_job.job_id
        model.save(self.models_dir / f"{job_id}.model")
        report = dict(outcome.report)
        report.update({"alignment_job_id": align_job.job_id, "rows": len(bank.ids), "tags": params["tags"]})
        atomic_write(self.state_dir / "reports" / f"{job_id}.json",
                     json.dumps(report, indent=2, sort_keys=True, default=str).encode())
        return report

    # ---- scoring ----

    def _model(self, model_job_id: str) -> Any:
        from protocols.vfl_lr import BankModel

        with self._lock:
            if model_job_id in self._models:
                return self._models[model_job_id]
        path = self.models_dir / f"{model_job_id}.model"
        if not path.exists():
            raise LookupError(f"no model for job {model_job_id} (is it a finished train job?)")
        model = BankModel.load(path)
        with self._lock:
            self._models[model_job_id] = model
        return model

    def score(self, model_job_id: str, customer_ids: list[str],
              tags: list[str] | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Probabilities (len(ids), len(tags)) and whether the platform knew each customer.

        Customers the platform does not answer for (not in the model's intersection) are scored with the
        platform's part at its training mean (z_B = 0 on standardised features): the bank-side signal only.
        """
        model = self._model(model_job_id)
        tag_names = list(model.tag_names)
        wanted = list(tags or tag_names)
        unknown = [t for t in wanted if t not in tag_names]
        if unknown:
            raise JobError(f"model {model_job_id} has no tag(s) {', '.join(unknown)}")
        if self._index is None:
            self._index = {cid: i for i, cid in enumerate(self.data.ids)}
        rows = []
        for pos, cid in enumerate(customer_ids):
            row = self._index.get(cid)
            if row is None:
                raise LookupError(f"customer at position {pos} of the request is not in {self.data.source}")
            rows.append(row)
        cols = [tag_names.index(t) for t in wanted]
        z_bank = model.partial_scores(self.data.features[np.array(rows, dtype=np.int64)])[:, cols]
        z_platform = np.zeros_like(z_bank)
        known = np.zeros(len(customer_ids), dtype=bool)
        for start in range(0, len(customer_ids), SCORE_BATCH):
            chunk = customer_ids[start:start + SCORE_BATCH]
            reply = self.peer.partial_scores(model_job_id, chunk, wanted)
            if list(reply.tags) != wanted:
                raise PeerError("partial scores: the platform answered for other tags", code="DATA_LOSS")
            z = array_from_pb(reply.scores, where="partial scores")
            if z.shape != (len(chunk), len(wanted)):
                raise PeerError("partial scores: the platform's answer has the wrong shape", code="DATA_LOSS")
            k = np.array(reply.known, dtype=bool)
            z_platform[start:start + len(chunk)][k] = z[k]
            known[start:start + len(chunk)] = k
        return wanted, sigmoid(z_bank + z_platform), known

    def batch_score(self, model_job_id: str, output_path: str, tags: list[str] | None = None) -> tuple[Path, int]:
        """Score every customer of the model's intersection; write CSV or Parquet atomically."""
        model = self._model(model_job_id)
        alignment = self.alignments.load(model.alignment_job_id)
        out = Path(output_path)
        if not out.is_absolute():
            out = self.state_dir / "scores" / out
        if out.suffix not in (".csv", ".parquet"):
            raise JobError(f"{out}: batch scores are written as .csv or .parquet")
        ids = list(alignment.ids or ())
        wanted, probs, known = self.score(model_job_id, ids, tags)
        frame = pd.DataFrame(probs, columns=[f"p_{t}" for t in wanted])
        frame.insert(0, self.config.data.id_column, ids)
        frame["platform_known"] = known
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        if out.suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
        tmp.replace(out)
        return out, len(frame)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
