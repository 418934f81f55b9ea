"""The bank's control API for data scientists: a thin translation from protobuf to BankNode calls."""

from __future__ import annotations

import json
import logging
from typing import Any

import grpc

from party_bank.node import BankNode
from party_common.codec import array_to_pb
from party_common.grpc_errors import translate_errors
from party_common.jobs import JobError
from party_common.storage.jobs import JobRecord
from proto import fedprofile_v1_pb2 as pb
from proto import fedprofile_v1_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


def job_to_pb(record: JobRecord) -> pb.Job:
    return pb.Job(job_id=record.job_id, kind=record.kind, name=record.name, status=record.status,
                  params_json=json.dumps(record.params, sort_keys=True),
                  result_json=json.dumps(record.result, sort_keys=True), error=record.error,
                  created_at=record.created_at, finished_at=record.finished_at, progress=record.progress)


class ControlServicer(pb_grpc.BankControlServicer):
    def __init__(self, node: BankNode) -> None:
        self._node = node

    @translate_errors("bank")
    def SubmitJob(self, request: pb.JobSpec, context: grpc.ServicerContext) -> pb.SubmitJobResponse:
        try:
            params: Any = json.loads(request.params_json or "{}")
        except json.JSONDecodeError as err:
            raise JobError(f"params_json is not valid JSON: {err}") from err
        if not isinstance(params, dict):
            raise JobError("params_json must be a JSON object")
        return pb.SubmitJobResponse(job_id=self._node.submit(request.kind, request.name, params))

    @translate_errors("bank")
    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.Job:
        return job_to_pb(self._node.stores.jobs.get(request.job_id))

    @translate_errors("bank")
    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext) -> pb.ListJobsResponse:
        records = self._node.stores.jobs.list(request.limit or 50)
        return pb.ListJobsResponse(jobs=[job_to_pb(r) for r in records])

    @translate_errors("bank")
    def Score(self, request: pb.ScoreRequest, context: grpc.ServicerContext) -> pb.ScoreResponse:
        scores = self._node.score(request.model_job_id, list(request.customer_ids), list(request.tags))
        return pb.ScoreResponse(tags=scores.tags, probabilities=array_to_pb(scores.probabilities),
                                platform_known=scores.platform_known.tolist(),
                                projections_released=scores.projections_released,
                                projections_limit=scores.projections_limit)

    @translate_errors("bank")
    def BatchScore(self, request: pb.BatchScoreRequest, context: grpc.ServicerContext) -> pb.BatchScoreResponse:
        path, rows = self._node.batch_score(request.model_job_id, request.output_path, list(request.tags))
        return pb.BatchScoreResponse(output_path=str(path), rows=rows)
