"""The v2 application API (``fedprofile.v2.Scoring``): typed rows and enums over the same BankNode calls as v1.

Registered on the control port beside ``fedprofile.v1.BankControl``, behind the same certificate gate; every
call is one audit row (``party_common.audit.audited``), as in v1. Scoring is ``BankNode.score``, files are
``SegmentService`` (batch score, segments) and ``party_bank.downloads``; this module only translates.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import grpc

from party_bank.api_schemas import check
from party_bank.control import elapsed_s
from party_bank.downloads import SCORES, SEGMENT, download_path, read_pieces
from party_bank.node import BankNode
from party_bank.scores import NOT_IN_INTERSECTION, OK, PLATFORM_UNAVAILABLE, UNKNOWN_CUSTOMER, Scores
from party_common.audit import audited, caller_name
from party_common.grpc_errors import translate_errors, translate_stream_errors
from party_common.prometheus_metrics import SCORE_SECONDS
from party_common.storage.jobs import JobRecord
from proto import fedprofile_v2_pb2 as pb
from proto import fedprofile_v2_pb2_grpc as pb_grpc
from protocols.errors import UserError

log = logging.getLogger(__name__)

SERVICE = "fedprofile.v2.Scoring"
STATUS = {OK: pb.OK, NOT_IN_INTERSECTION: pb.NOT_IN_INTERSECTION, UNKNOWN_CUSTOMER: pb.UNKNOWN_CUSTOMER,
          PLATFORM_UNAVAILABLE: pb.PLATFORM_UNAVAILABLE}
SERVED = {"joint": pb.JOINT, "bank_only": pb.BANK_ONLY}
JOB_KINDS = {pb.ALIGN: "align", pb.TRAIN: "train"}
JOB_KIND_VALUES = {v: k for k, v in JOB_KINDS.items()}
JOB_STATUS = {"queued": pb.QUEUED, "awaiting approval": pb.AWAITING_APPROVAL, "running": pb.RUNNING,
              "succeeded": pb.SUCCEEDED, "failed": pb.FAILED, "cancelled": pb.CANCELLED,
              "interrupted": pb.INTERRUPTED}
FILE_KINDS = {pb.SCORES: SCORES, pb.SEGMENT: SEGMENT}
# A ScoreStream answer message stays under this many bytes (gRPC's cap is 2 MiB): the rows are cut to fit.
STREAM_MESSAGE_BYTES = 1 << 20


def rows_of(ids: list[str], scores: Scores) -> list[pb.ScoreRow]:
    status = [STATUS[s] for s in scores.status]
    known = scores.platform_known.tolist()
    return [pb.ScoreRow(customer_id=cid, probabilities=p, status=s, platform_known=k)
            for cid, p, s, k in zip(ids, scores.probabilities.tolist(), status, known, strict=True)]


def tag_models(scores: Scores) -> list[pb.TagModel]:
    return [pb.TagModel(tag=t, served=SERVED[s]) for t, s in zip(scores.tags, scores.served, strict=True)]


def job_to_pb(record: JobRecord) -> pb.Job:
    """A job record in v2 terms; a succeeded job's result is checked against its published schema first."""
    kind = JOB_KIND_VALUES.get(record.kind, pb.JOB_KIND_UNSPECIFIED)
    if record.status == "succeeded" and record.kind in JOB_KIND_VALUES.values():
        check(f"{record.kind}_result", record.result, what=f"job {record.job_id}'s result")
    return pb.Job(job_id=record.job_id, kind=kind, name=record.name,
                  status=JOB_STATUS.get(record.status, pb.JOB_STATUS_UNSPECIFIED),
                  params_json=json.dumps(record.params, sort_keys=True),
                  result_json=json.dumps(record.result, sort_keys=True), error=record.error,
                  created_at=record.created_at, finished_at=record.finished_at, progress=record.progress,
                  elapsed_s=elapsed_s(record))


class ScoringServicer(pb_grpc.ScoringServicer):
    def __init__(self, node: BankNode) -> None:
        self._node = node

    def _score(self, params: pb.ScoreParams, ids: list[str]) -> Scores:
        return self._node.score(params.model, ids, list(params.tags), bank_only_fallback=params.bank_only_fallback,
                                online=True)

    @translate_errors("bank")
    def Score(self, request: pb.ScoreRequest, context: grpc.ServicerContext) -> pb.ScoreResponse:
        ids = list(request.customer_ids)
        with SCORE_SECONDS.time(), audited(self._node.stores.jobs, "score", actor=caller_name(context),
                                           job_id=request.params.model, log_level=logging.DEBUG) as call:
            call.count = len(ids)
            if not ids:
                raise UserError("Score: the request names no customer; give at least one customer ID")
            scores = self._score(request.params, ids)
        return pb.ScoreResponse(model_job_id=scores.model_job_id, tags=scores.tags, models=tag_models(scores),
                                rows=rows_of(ids, scores), projections_released=scores.projections_released,
                                projections_limit=scores.projections_limit, note=scores.note)

    @translate_stream_errors("bank")
    def ScoreStream(self, requests: Iterator[pb.ScoreStreamRequest],
                    context: grpc.ServicerContext) -> Iterator[pb.ScoreStreamResponse]:
        params: pb.ScoreParams | None = None
        offset = 0
        with audited(self._node.stores.jobs, "score stream", actor=caller_name(context)) as call:
            for message in requests:
                if params is None:
                    if not message.HasField("params"):
                        raise UserError("ScoreStream: the first message must carry params (the model)")
                    params = message.params
                ids = list(message.customer_ids)
                if not ids:
                    continue
                with SCORE_SECONDS.time():
                    scores = self._score(params, ids)
                rows = rows_of(ids, scores)
                head = dict(model_job_id=scores.model_job_id, tags=scores.tags, models=tag_models(scores),
                            projections_released=scores.projections_released,
                            projections_limit=scores.projections_limit, note=scores.note)
                longest = max(len(i.encode()) for i in ids)
                per_message = max(1, STREAM_MESSAGE_BYTES // (longest + 9 * len(scores.tags) + 16))
                for start in range(0, len(rows), per_message):
                    yield pb.ScoreStreamResponse(offset=offset + start, rows=rows[start:start + per_message], **head)
                offset += len(rows)
                call.count = offset
            if params is None:
                raise UserError("ScoreStream: the stream carried no message")

    @translate_errors("bank")
    def SubmitJob(self, request: pb.SubmitJobRequest, context: grpc.ServicerContext) -> pb.Job:
        kind = JOB_KINDS.get(request.kind)
        if kind is None:
            raise UserError(f"SubmitJob: kind must be ALIGN or TRAIN, got {request.kind}")
        try:
            params: Any = json.loads(request.params_json or "{}")
        except json.JSONDecodeError as err:
            raise UserError(f"SubmitJob: params_json is not valid JSON: {err}") from err
        check(f"{kind}_params", params, what=f"SubmitJob {kind}: params_json")
        actor = caller_name(context)
        with audited(self._node.stores.jobs, "submit job", actor=actor, detail=kind):
            job_id = self._node.submit(kind, request.name, params, actor=actor)
        return job_to_pb(self._node.stores.jobs.get(job_id))

    @translate_errors("bank")
    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.Job:
        return job_to_pb(self._node.stores.jobs.get(request.job_id))

    @translate_errors("bank")
    def BatchScore(self, requests: Iterator[pb.BatchScoreRequest],
                   context: grpc.ServicerContext) -> pb.BatchScoreResponse:
        first: pb.BatchScoreRequest | None = None
        ids: list[str] = []
        for message in requests:
            first = first or message
            ids.extend(message.ids)
        if first is None:
            raise UserError("BatchScore: the stream carried no request")
        population = first.population or pb.BatchScoreRequest.INTERSECTION
        if population == pb.BatchScoreRequest.IDS and not ids:
            raise UserError("BatchScore: population IDS with no ID")
        if population != pb.BatchScoreRequest.IDS and ids:
            raise UserError("BatchScore: IDs were sent but the population is not IDS")
        segments = self._node.segments
        with audited(self._node.stores.jobs, "batch score", actor=caller_name(context), job_id=first.model) as call:
            model_job_id = self._node.resolve_model(first.model)
            result = segments.batch_score(model_job_id, first.output_path, list(first.tags),
                                          all_customers=population == pb.BatchScoreRequest.ALL_CUSTOMERS,
                                          ids=ids or None, overwrite=first.overwrite)
            call.count = result.rows
        return pb.BatchScoreResponse(model_job_id=model_job_id,
                                     output_path=str(result.path.relative_to(segments.scores_dir)), rows=result.rows,
                                     unknown_ids=result.unknown, platform_known=result.platform_known)

    @translate_errors("bank")
    def Segment(self, request: pb.SegmentRequest, context: grpc.ServicerContext) -> pb.SegmentResponse:
        rule = request.WhichOneof("rule")
        fmt = "csv" if request.format == pb.SegmentRequest.CSV else "parquet"
        with audited(self._node.stores.jobs, "segment", actor=caller_name(context), job_id=request.model) as call:
            record = self._node.segments.create(
                self._node.resolve_model(request.model), request.tag, name=request.name,
                control_share=request.control_share,
                top_share=request.top_share if rule == "top_share" else None,
                min_score=request.min_score if rule == "min_score" else None,
                seed=request.seed if request.HasField("seed") else None, all_customers=request.all_customers,
                fmt=fmt, overwrite=request.overwrite)
            call.count = int(record.get("selected", 0))
        check("segment", record, what=f"segment {request.name}'s record")
        return pb.SegmentResponse(name=record["name"], selected=record["selected"], target_size=record["target_size"],
                                  control_size=record["control_size"], seed=record["seed"],
                                  segment_json=json.dumps(record, sort_keys=True))

    @translate_stream_errors("bank")
    def Download(self, request: pb.DownloadRequest, context: grpc.ServicerContext) -> Iterator[pb.FileChunk]:
        kind = FILE_KINDS.get(request.kind)
        if kind is None:
            raise UserError("Download: kind must be SCORES or SEGMENT")
        with audited(self._node.stores.jobs, "download", actor=caller_name(context), detail=kind) as call:
            path = download_path(self._node.segments, kind, request.name)  # errors before the first byte
            size = path.stat().st_size
            for piece in read_pieces(path):
                first = piece.offset == 0
                yield pb.FileChunk(file_name=path.name if first else "", size=size if first else 0,
                                   offset=piece.offset, data=piece.data, last=piece.last, sha256=piece.sha256)
                call.count = piece.offset + len(piece.data)  # bytes sent


def add_scoring_service(server: grpc.Server, node: BankNode) -> None:
    pb_grpc.add_ScoringServicer_to_server(ScoringServicer(node), server)


