"""A data scientist's client for the bank node's control API (used by the CLI, the demo and benchmarks)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from party_bank.scores import Scores
from party_bank.segments import BatchScoreResult, id_chunks
from party_common.codec import array_from_pb
from party_common.transport import CONTROL_TIMEOUT_S, dial, wait_healthy
from proto import fedprofile_v1_pb2 as pb
from proto import fedprofile_v1_pb2_grpc as pb_grpc
from protocols.errors import FedProfileError


class JobFailed(FedProfileError):
    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__(f"job {job['job_id']} ({job['kind']}) {job['status']}: {job['error'] or 'no reason given'}")
        self.job = job


def job_dict(job: pb.Job) -> dict[str, Any]:
    return {"job_id": job.job_id, "kind": job.kind, "name": job.name, "status": job.status,
            "params": json.loads(job.params_json or "{}"), "result": json.loads(job.result_json or "{}"),
            "error": job.error, "progress": job.progress, "created_at": job.created_at,
            "finished_at": job.finished_at, "elapsed_s": job.elapsed_s}


class BankClient:
    def __init__(self, address: str, *, cert: Path | None, key: Path | None, ca: Path | None,
                 insecure: bool = False, tls_name: str | None = None) -> None:
        self.address = address
        self.own_cert = cert.read_bytes() if cert else None  # names an expired certificate when refused
        self.channel = dial(address, cert=self.own_cert, key=key.read_bytes() if key else None,
                            server_ca=ca.read_bytes() if ca else None, tls_name=tls_name, insecure=insecure)
        self.stub = pb_grpc.BankControlStub(self.channel)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        wait_healthy(self.channel, service="fedprofile.v1.BankControl", timeout_s=timeout_s)

    def close(self) -> None:
        self.channel.close()

    def submit(self, kind: str, params: dict[str, Any], name: str = "") -> str:
        reply = self.stub.SubmitJob(pb.JobSpec(kind=kind, name=name, params_json=json.dumps(params)),
                                    timeout=CONTROL_TIMEOUT_S)
        return reply.job_id

    def job(self, job_id: str) -> dict[str, Any]:
        return job_dict(self.stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=CONTROL_TIMEOUT_S))

    def cancel(self, job_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """Cancel a job on both nodes; its record once stopped (a step in flight finishes first)."""
        return job_dict(self.stub.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=timeout_s))

    def jobs(self, limit: int = 20, *, brief: bool = False) -> list[dict[str, Any]]:
        """The newest ``limit`` jobs; ``brief``: results cut to what a list shows (``party_common.storage.jobs.brief_result``)."""
        reply = self.stub.ListJobs(pb.ListJobsRequest(limit=limit, brief=brief), timeout=CONTROL_TIMEOUT_S)
        return [job_dict(j) for j in reply.jobs]

    def events(self, job_id: str, after: int = 0) -> tuple[list[dict[str, str]], int]:
        """The job's history from event number ``after`` on, and how many events it has in all."""
        reply = self.stub.JobEvents(pb.JobEventsRequest(job_id=job_id, after=after), timeout=CONTROL_TIMEOUT_S)
        return [{"at": e.at, "event": e.event, "detail": e.detail} for e in reply.events], reply.total

    def wait(self, job_id: str, *, timeout_s: float = 3600.0,
             on_progress: Callable[[dict[str, Any]], None] | None = None,
             on_event: Callable[[dict[str, str]], None] | None = None) -> dict[str, Any]:
        """Poll until the job ends; ``on_progress`` sees the job when its progress changes, ``on_event``
        each new event of its history (stages, per-epoch validation metrics)."""
        deadline = time.monotonic() + timeout_s
        last = ""
        seen = 0
        while True:
            job = self.job(job_id)
            if on_event:
                new, seen = self.events(job_id, seen)
                for event in new:
                    on_event(event)
            if job["status"] == "succeeded":
                return job
            if job["finished_at"]:  # ended otherwise: failed, cancelled
                raise JobFailed(job)
            if on_progress and job["progress"] != last:
                last = job["progress"]
                on_progress(job)
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s:.0f} s")
            time.sleep(0.2)

    def run(self, kind: str, params: dict[str, Any], *, name: str = "", timeout_s: float = 3600.0,
            on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        return self.wait(self.submit(kind, params, name), timeout_s=timeout_s, on_progress=on_progress)

    def align(self, mode: str = "both", protocol: str | None = None, **kw: Any) -> dict[str, Any]:
        """``protocol``: "ot" or "ecdh"; None lets the job choose (``party_common.jobs.align.default_protocol``)."""
        job = self.run("align", {"mode": mode, **({"protocol": protocol} if protocol else {})}, **kw)
        return {"job_id": job["job_id"], **job["result"]}

    def train(self, tags: list[str] | None = None, alignment_job_id: str | None = None,
              train: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        params: dict[str, Any] = {"train": train or {}}
        if tags:
            params["tags"] = tags
        if alignment_job_id:
            params["alignment_job_id"] = alignment_job_id
        job = self.run("train", params, **kw)
        return {"job_id": job["job_id"], **job["result"]}

    def score(self, model_job_id: str, customer_ids: list[str], tags: list[str] | None = None,
              timeout_s: float = 120.0, *, bank_only_fallback: bool = False) -> Scores:
        """Scores with a status per customer (``party_bank.scores``); an unknown ID gets NaN, not an error.
        ``bank_only_fallback``: when the platform is down, score its members bank-only, flagged."""
        reply = self.stub.Score(pb.ScoreRequest(model_job_id=model_job_id, customer_ids=customer_ids,
                                                tags=tags or [], bank_only_fallback=bank_only_fallback),
                                timeout=timeout_s)
        return Scores(list(reply.tags), array_from_pb(reply.probabilities, where="scores"),
                      np.array(reply.platform_known, dtype=bool), reply.projections_released, reply.projections_limit,
                      status=list(reply.status), note=reply.note)

    def batch_score(self, model_job_id: str, output_path: str, tags: list[str] | None = None,
                    timeout_s: float = 3600.0, **kw: Any) -> tuple[str, int]:
        """:meth:`score_file`, answered as (path on the node, rows)."""
        result = self.score_file(model_job_id, output_path, tags, timeout_s=timeout_s, **kw)
        return str(result.path), result.rows

    def score_file(self, model_job_id: str, output_path: str, tags: list[str] | None = None, *,
                   all_customers: bool = False, ids: Sequence[str] | None = None, overwrite: bool = False,
                   timeout_s: float = 3600.0) -> BatchScoreResult:
        """Write a score file under the node's ``scores/``: the intersection, every customer, or ``ids``
        (streamed in messages under the gRPC size limit; an unknown ID gets a status, not an error)."""
        base = pb.BatchScoreRequest(model_job_id=model_job_id, output_path=output_path, tags=tags or [],
                                    all_customers=all_customers, overwrite=overwrite)
        if ids:
            id_list = list(ids)

            def messages() -> Iterator[pb.BatchScoreRequest]:
                for n, (start, stop) in enumerate(id_chunks(id_list)):
                    message = pb.BatchScoreRequest(ids=id_list[start:stop])
                    if n == 0:
                        message.MergeFrom(base)
                    yield message

            reply = self.stub.BatchScoreIds(messages(), timeout=timeout_s)
        else:
            reply = self.stub.BatchScore(base, timeout=timeout_s)
        return BatchScoreResult(Path(reply.output_path), reply.rows, reply.unknown_ids, reply.platform_known)

    def segment(self, model_job_id: str, tag: str, *, name: str, control_share: float,
                top_share: float | None = None, min_score: float | None = None, seed: int | None = None,
                all_customers: bool = False, fmt: str = "parquet", overwrite: bool = False,
                timeout_s: float = 3600.0) -> tuple[dict[str, Any], str]:
        """Create a segment on the node; return its record and the groups file's path on the node."""
        request = pb.SegmentRequest(model_job_id=model_job_id, tag=tag, name=name, control_share=control_share,
                                    all_customers=all_customers, format=fmt, overwrite=overwrite)
        if top_share is not None:
            request.top_share = top_share
        if min_score is not None:
            request.min_score = min_score
        if seed is not None:
            request.seed = seed
        reply = self.stub.Segment(request, timeout=timeout_s)
        return json.loads(reply.segment_json), reply.output_path

    def get_segment(self, name: str) -> dict[str, Any]:
        reply = self.stub.GetSegment(pb.GetSegmentRequest(name=name), timeout=CONTROL_TIMEOUT_S)
        return json.loads(reply.segment_json)

    def segments(self) -> list[dict[str, Any]]:
        reply = self.stub.ListSegments(pb.ListSegmentsRequest(), timeout=CONTROL_TIMEOUT_S)
        return [json.loads(r) for r in reply.segment_json]

    def segment_result(self, name: str, customer_ids: Sequence[str], outcomes: Sequence[int], *,
                       source: str = "", timeout_s: float = 600.0) -> dict[str, Any]:
        """Response rates and lift of a segment's target over its control; ``source`` names the file."""
        id_list, values = list(customer_ids), [int(v) for v in outcomes]

        def messages() -> Iterator[pb.SegmentOutcomes]:
            yield pb.SegmentOutcomes(segment=name, source=source)
            for start, stop in id_chunks(id_list):
                yield pb.SegmentOutcomes(customer_ids=id_list[start:stop], outcomes=values[start:stop])

        return json.loads(self.stub.SegmentResult(messages(), timeout=timeout_s).result_json)

    def report_html(self, job_id: str, timeout_s: float = 300.0) -> bytes:
        """A train job's report as the self-contained HTML page the node renders."""
        return b"".join(c.data for c in self.stub.GetReport(pb.GetReportRequest(job_id=job_id), timeout=timeout_s))

    def report_document(self, job_id: str, timeout_s: float = 300.0) -> dict[str, Any]:
        """A train job's stored report document (metrics, history and the test rows' (score, label) pairs)."""
        request = pb.GetReportRequest(job_id=job_id, format="json")
        return json.loads(b"".join(c.data for c in self.stub.GetReport(request, timeout=timeout_s)))

    def stability(self, model: str, *, batch_file: str | None = None, online: bool = False,
                  timeout_s: float = 300.0) -> dict[str, Any]:
        """Population stability of a model: a batch-score file on the node, or its recent online scores."""
        request = pb.StabilityReportRequest(model=model, batch_file=batch_file or "", online=online)
        return json.loads(self.stub.StabilityReport(request, timeout=timeout_s).result_json)

    def scorecard(self, model: str, tags: list[str] | None = None, *, base_score: float = 0.0, pdo: float = 0.0,
                  base_odds: float = 0.0) -> dict[str, Any]:
        """The bank's half of a model as points tables per tag (0: the defaults)."""
        request = pb.ScorecardRequest(model=model, tags=tags or [], base_score=base_score, pdo=pdo,
                                      base_odds=base_odds)
        return json.loads(self.stub.Scorecard(request, timeout=CONTROL_TIMEOUT_S).result_json)

    def node_status(self, platform_timeout_s: float = 3.0) -> dict[str, Any]:
        """The node's name, its running jobs, and whether it reaches the platform now (and why not)."""
        r = self.stub.NodeStatus(pb.NodeStatusRequest(platform_timeout_s=platform_timeout_s),
                                 timeout=CONTROL_TIMEOUT_S + platform_timeout_s)
        return {"node_name": r.node_name, "platform_address": r.platform_address,
                "platform_reachable": r.platform_reachable, "platform_name": r.platform_name,
                "platform_detail": r.platform_detail, "jobs_running": r.jobs_running}

    # ---- model registry (``model`` is a train job ID or an alias NAME@LABEL) ----

    def models(self) -> list[dict[str, Any]]:
        reply = self.stub.ListModels(pb.ListModelsRequest(), timeout=CONTROL_TIMEOUT_S)
        return [json.loads(m) for m in reply.model_json]

    def set_alias(self, alias: str, model: str) -> dict[str, Any]:
        reply = self.stub.SetModelAlias(pb.SetModelAliasRequest(alias=alias, model=model), timeout=CONTROL_TIMEOUT_S)
        return json.loads(reply.result_json)

    def remove_alias(self, alias: str) -> dict[str, Any]:
        reply = self.stub.RemoveModelAlias(pb.RemoveModelAliasRequest(alias=alias), timeout=CONTROL_TIMEOUT_S)
        return json.loads(reply.result_json)

    def retire_model(self, model: str, timeout_s: float = 120.0) -> dict[str, Any]:
        reply = self.stub.RetireRegisteredModel(pb.RetireRegisteredModelRequest(model=model), timeout=timeout_s)
        return json.loads(reply.result_json)


__all__ = ["BankClient", "JobFailed", "grpc"]
