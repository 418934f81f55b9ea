"""The bank's control API for data scientists: a thin translation from protobuf to BankNode calls."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from typing import Any

import grpc

from party_bank.node import BankNode
from party_bank.segments import BatchScoreResult
from party_common.audit import audited, caller_name
from party_common.codec import array_to_pb
from party_common.grpc_errors import translate_errors
from party_common.jobs import JOB_KINDS, JobError
from party_common.prometheus_metrics import SCORE_SECONDS
from party_common.storage.jobs import JobRecord
from proto import fedprofile_v1_pb2 as pb
from proto import fedprofile_v1_pb2_grpc as pb_grpc
from protocols.errors import FedProfileError, UserError

log = logging.getLogger(__name__)
ACTIVE_STATUSES = ("queued", "awaiting approval", "running")  # counted as running by NodeStatus
REPORT_CHUNK_BYTES = 1 << 20  # GetReport streams the page in chunks under gRPC's 2 MiB message cap


def elapsed_s(record: JobRecord) -> float:
    """Seconds from the job's creation to its end, or to now while it runs (the node's clock)."""
    try:
        start = dt.datetime.fromisoformat(record.created_at)
        end = dt.datetime.fromisoformat(record.finished_at) if record.finished_at else dt.datetime.now(dt.UTC)
    except ValueError:
        return 0.0
    return max(0.0, (end - start).total_seconds())


def job_to_pb(record: JobRecord) -> pb.Job:
    return pb.Job(job_id=record.job_id, kind=record.kind, name=record.name, status=record.status,
                  params_json=json.dumps(record.params, sort_keys=True),
                  result_json=json.dumps(record.result, sort_keys=True), error=record.error,
                  created_at=record.created_at, finished_at=record.finished_at, progress=record.progress,
                  elapsed_s=elapsed_s(record))


def batch_score_to_pb(result: BatchScoreResult) -> pb.BatchScoreResponse:
    return pb.BatchScoreResponse(output_path=str(result.path), rows=result.rows, unknown_ids=result.unknown,
                                 platform_known=result.platform_known)


class ControlServicer(pb_grpc.BankControlServicer):
    def __init__(self, node: BankNode) -> None:
        self._node = node
        self._segments = node.segments

    @translate_errors("bank")
    def SubmitJob(self, request: pb.JobSpec, context: grpc.ServicerContext) -> pb.SubmitJobResponse:
        try:
            params: Any = json.loads(request.params_json or "{}")
        except json.JSONDecodeError as err:
            raise JobError(f"params_json is not valid JSON: {err}") from err
        if not isinstance(params, dict):
            raise JobError("params_json must be a JSON object")
        actor = caller_name(context)
        kind = request.kind if request.kind in JOB_KINDS else "(unknown kind)"  # free text never reaches the audit
        with audited(self._node.stores.jobs, "submit job", actor=actor, detail=kind):
            return pb.SubmitJobResponse(job_id=self._node.submit(request.kind, request.name, params, actor=actor))

    @translate_errors("bank")
    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.Job:
        return job_to_pb(self._node.stores.jobs.get(request.job_id))

    @translate_errors("bank")
    def CancelJob(self, request: pb.CancelJobRequest, context: grpc.ServicerContext) -> pb.Job:
        with audited(self._node.stores.jobs, "cancel job", actor=caller_name(context), job_id=request.job_id):
            return job_to_pb(self._node.cancel(request.job_id))

    @translate_errors("bank")
    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext) -> pb.ListJobsResponse:
        records = self._node.stores.jobs.list(request.limit or 50, brief=request.brief)
        return pb.ListJobsResponse(jobs=[job_to_pb(r) for r in records])

    @translate_errors("bank")
    def JobEvents(self, request: pb.JobEventsRequest, context: grpc.ServicerContext) -> pb.JobEventsResponse:
        self._node.stores.jobs.get(request.job_id)  # NOT_FOUND for an unknown job, not an empty history
        events = self._node.stores.jobs.audit_events(request.job_id)
        return pb.JobEventsResponse(events=[pb.JobEvent(at=e.at, event=e.event, detail=e.detail)
                                            for e in events[request.after:]], total=len(events))

    @translate_errors("bank")
    def Score(self, request: pb.ScoreRequest, context: grpc.ServicerContext) -> pb.ScoreResponse:
        with SCORE_SECONDS.time(), audited(self._node.stores.jobs, "score", actor=caller_name(context),
                                           job_id=request.model_job_id, log_level=logging.DEBUG) as call:
            call.count = len(request.customer_ids)
            if not request.customer_ids:
                raise UserError("Score: the request names no customer; give at least one customer ID")
            scores = self._node.score(request.model_job_id, list(request.customer_ids), list(request.tags),
                                      bank_only_fallback=request.bank_only_fallback, online=True)
        return pb.ScoreResponse(tags=scores.tags, probabilities=array_to_pb(scores.probabilities),
                                platform_known=scores.platform_known.tolist(),
                                projections_released=scores.projections_released,
                                projections_limit=scores.projections_limit, status=scores.status, note=scores.note)

    @translate_errors("bank")
    def BatchScore(self, request: pb.BatchScoreRequest, context: grpc.ServicerContext) -> pb.BatchScoreResponse:
        return batch_score_to_pb(self._batch_score(request, list(request.ids), caller_name(context)))

    @translate_errors("bank")
    def BatchScoreIds(self, requests: Iterator[pb.BatchScoreRequest],
                      context: grpc.ServicerContext) -> pb.BatchScoreResponse:
        first: pb.BatchScoreRequest | None = None
        ids: list[str] = []
        for message in requests:
            if first is None:
                first = message
            ids.extend(message.ids)
        if first is None:
            raise UserError("BatchScoreIds: the stream carried no request")
        return batch_score_to_pb(self._batch_score(first, ids, caller_name(context)))

    def _batch_score(self, request: pb.BatchScoreRequest, ids: list[str], actor: str) -> BatchScoreResult:
        with audited(self._node.stores.jobs, "batch score", actor=actor, job_id=request.model_job_id) as call:
            result = self._segments.batch_score(self._node.resolve_model(request.model_job_id), request.output_path,
                                                list(request.tags),
                                                all_customers=request.all_customers, ids=ids or None,
                                                overwrite=request.overwrite)
            call.count = result.rows
        return result

    @translate_errors("bank")
    def Segment(self, request: pb.SegmentRequest, context: grpc.ServicerContext) -> pb.SegmentResponse:
        rule = request.WhichOneof("rule")
        with audited(self._node.stores.jobs, "segment", actor=caller_name(context),
                     job_id=request.model_job_id) as call:
            record = self._create_segment(request, rule)
            call.count = int(record.get("selected", 0))
        return self._segment_to_pb(record)

    def _create_segment(self, request: pb.SegmentRequest, rule: str | None) -> dict[str, Any]:
        return self._segments.create(
            self._node.resolve_model(request.model_job_id), request.tag, name=request.name,
            control_share=request.control_share,
            top_share=request.top_share if rule == "top_share" else None,
            min_score=request.min_score if rule == "min_score" else None,
            seed=request.seed if request.HasField("seed") else None, all_customers=request.all_customers,
            fmt=request.format or "parquet", overwrite=request.overwrite)

    @translate_errors("bank")
    def GetSegment(self, request: pb.GetSegmentRequest, context: grpc.ServicerContext) -> pb.SegmentResponse:
        return self._segment_to_pb(self._segments.get(request.name))

    @translate_errors("bank")
    def ListSegments(self, request: pb.ListSegmentsRequest,
                     context: grpc.ServicerContext) -> pb.ListSegmentsResponse:
        return pb.ListSegmentsResponse(segment_json=[json.dumps(r, sort_keys=True) for r in self._segments.list()])

    def _segment_to_pb(self, record: dict[str, Any]) -> pb.SegmentResponse:
        return pb.SegmentResponse(segment_json=json.dumps(record, sort_keys=True),
                                  output_path=str(self._segments.segments_dir / record["file"]))

    @translate_errors("bank")
    def SegmentResult(self, requests: Iterator[pb.SegmentOutcomes],
                      context: grpc.ServicerContext) -> pb.SegmentResultResponse:
        name = source = ""
        ids: list[str] = []
        outcomes: list[int] = []
        for message in requests:
            name, source = name or message.segment, source or message.source
            if len(message.customer_ids) != len(message.outcomes):
                raise UserError(f"SegmentResult: a message with {len(message.customer_ids)} IDs and "
                                f"{len(message.outcomes)} outcomes")
            ids.extend(message.customer_ids)
            outcomes.extend(message.outcomes)
        result = self._segments.result(name, ids, outcomes, source=source or "the request")
        return pb.SegmentResultResponse(result_json=json.dumps(result, sort_keys=True))

    @translate_errors("bank")
    def GetReport(self, request: pb.GetReportRequest, context: grpc.ServicerContext) -> Iterator[pb.ReportChunk]:
        if request.format not in ("", "html", "json"):
            raise UserError(f"GetReport: unknown format {request.format!r}; use 'html' or 'json'")
        if request.format == "json":  # the console draws its own figures from the document, one at a time
            report, _ = self._node.report_document(request.job_id)
            html = json.dumps(report, sort_keys=True).encode()
        else:  # rendered before the stream starts: errors get a status
            html = self._node.report_html(request.job_id)
        step = REPORT_CHUNK_BYTES
        return iter([pb.ReportChunk(data=html[i:i + step]) for i in range(0, len(html), step)] or [pb.ReportChunk()])

    @translate_errors("bank")
    def StabilityReport(self, request: pb.StabilityReportRequest,
                        context: grpc.ServicerContext) -> pb.StabilityReportResponse:
        with audited(self._node.stores.jobs, "stability", actor=caller_name(context), job_id=request.model or None):
            result = self._node.stability.answer(request.model, batch=request.batch_file or None,
                                                 online=request.online)
        return pb.StabilityReportResponse(result_json=json.dumps(result, sort_keys=True))

    @translate_errors("bank")
    def Scorecard(self, request: pb.ScorecardRequest, context: grpc.ServicerContext) -> pb.ScorecardResponse:
        result = self._node.scorecard(request.model, list(request.tags), base_score=request.base_score or None,
                                      pdo=request.pdo or None, base_odds=request.base_odds or None)
        return pb.ScorecardResponse(result_json=json.dumps(result, sort_keys=True))

    # ---- model registry ----

    @translate_errors("bank")
    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(model_json=[json.dumps(m, sort_keys=True) for m in self._node.registry.list()])

    @translate_errors("bank")
    def SetModelAlias(self, request: pb.SetModelAliasRequest,
                      context: grpc.ServicerContext) -> pb.ModelRegistryResponse:
        return _registry_pb(self._node.registry.set_alias(request.alias, request.model))

    @translate_errors("bank")
    def RemoveModelAlias(self, request: pb.RemoveModelAliasRequest,
                         context: grpc.ServicerContext) -> pb.ModelRegistryResponse:
        return _registry_pb(self._node.registry.remove_alias(request.alias))

    @translate_errors("bank")
    def NodeStatus(self, request: pb.NodeStatusRequest, context: grpc.ServicerContext) -> pb.NodeStatusResponse:
        config = self._node.config
        running = sum(len(self._node.stores.jobs.list(-1, status=s)) for s in ACTIVE_STATUSES)
        reply = pb.NodeStatusResponse(node_name=config.name, platform_address=config.peer_address,
                                      jobs_running=running)
        try:  # health checking and the handshake, as a job does before it starts
            reply.platform_name = self._node.connect(timeout_s=request.platform_timeout_s or 3.0)
            reply.platform_reachable = True
        except FedProfileError as err:
            reply.platform_detail = str(err)
        return reply

    @translate_errors("bank")
    def RetireRegisteredModel(self, request: pb.RetireRegisteredModelRequest,
                              context: grpc.ServicerContext) -> pb.ModelRegistryResponse:
        return _registry_pb(self._node.registry.retire(request.model))


def _registry_pb(result: dict[str, Any]) -> pb.ModelRegistryResponse:
    return pb.ModelRegistryResponse(result_json=json.dumps(result, sort_keys=True))
