"""A Python client of the v2 application API (``fedprofile.v2.Scoring``, docs/api.md), over the same mutual TLS.

Thin on purpose: it is the Python example of docs/api.md. Job results are checked against the published JSON
Schemas on receipt (the node checks them before answering), so a contract break shows on both ends.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from party_bank.api_schemas import check
from party_common.transport import CONTROL_TIMEOUT_S, dial
from proto import fedprofile_v2_pb2 as pb
from proto import fedprofile_v2_pb2_grpc as pb_grpc
from protocols.errors import FedProfileError

STREAM_IDS_PER_MESSAGE = 10_000
KIND_NAMES = {pb.ALIGN: "align", pb.TRAIN: "train"}


class ScoringClient:
    def __init__(self, address: str, *, cert: Path, key: Path, ca: Path, tls_name: str | None = None) -> None:
        self.channel = dial(address, cert=cert.read_bytes(), key=key.read_bytes(), server_ca=ca.read_bytes(),
                            tls_name=tls_name)
        self.stub = pb_grpc.ScoringStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def score(self, model: str, customer_ids: Sequence[str], tags: Sequence[str] = (), *,
              bank_only_fallback: bool = False, timeout_s: float = 30.0) -> pb.ScoreResponse:
        params = pb.ScoreParams(model=model, tags=list(tags), bank_only_fallback=bank_only_fallback)
        return self.stub.Score(pb.ScoreRequest(params=params, customer_ids=list(customer_ids)), timeout=timeout_s)

    def score_stream(self, model: str, customer_ids: Iterable[str], tags: Sequence[str] = (), *,
                     bank_only_fallback: bool = False, per_message: int = STREAM_IDS_PER_MESSAGE,
                     timeout_s: float = 3600.0) -> Iterator[pb.ScoreStreamResponse]:
        """Answers in order, each with consecutive rows; the IDs are sent while the answers arrive."""
        params = pb.ScoreParams(model=model, tags=list(tags), bank_only_fallback=bank_only_fallback)

        def messages() -> Iterator[pb.ScoreStreamRequest]:
            batch: list[str] = []
            sent = False
            for cid in customer_ids:
                batch.append(cid)
                if len(batch) == per_message:
                    yield pb.ScoreStreamRequest(params=None if sent else params, customer_ids=batch)
                    sent, batch = True, []
            if batch or not sent:
                yield pb.ScoreStreamRequest(params=None if sent else params, customer_ids=batch)

        return self.stub.ScoreStream(messages(), timeout=timeout_s)

    def submit(self, kind: int, params: dict[str, Any], name: str = "") -> pb.Job:
        check(f"{KIND_NAMES[kind]}_params", params, what="params")  # the node checks it too
        return self.stub.SubmitJob(pb.SubmitJobRequest(kind=kind, name=name, params_json=json.dumps(params)),
                                   timeout=CONTROL_TIMEOUT_S)

    def job(self, job_id: str) -> pb.Job:
        job = self.stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=CONTROL_TIMEOUT_S)
        if job.status == pb.SUCCEEDED:
            check(f"{KIND_NAMES[job.kind]}_result", json.loads(job.result_json), what=f"job {job_id}'s result")
        return job

    def wait(self, job_id: str, timeout_s: float = 3600.0) -> pb.Job:
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if job.finished_at:
                if job.status != pb.SUCCEEDED:
                    raise FedProfileError(f"job {job_id} {pb.JobStatus.Name(job.status)}: {job.error}")
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {pb.JobStatus.Name(job.status)} after {timeout_s:.0f} s")
            time.sleep(0.3)

    def batch_score(self, model: str, output_path: str, *, ids: Sequence[str] = (), all_customers: bool = False,
                    overwrite: bool = False, timeout_s: float = 600.0) -> pb.BatchScoreResponse:
        P = pb.BatchScoreRequest
        population = P.IDS if ids else P.ALL_CUSTOMERS if all_customers else P.INTERSECTION
        first = P(model=model, output_path=output_path, population=population, overwrite=overwrite)

        def messages() -> Iterator[pb.BatchScoreRequest]:
            yield first
            for start in range(0, len(ids), STREAM_IDS_PER_MESSAGE):
                yield P(ids=list(ids[start:start + STREAM_IDS_PER_MESSAGE]))

        return self.stub.BatchScore(messages(), timeout=timeout_s)

    def download(self, kind: int, name: str, out: Path, timeout_s: float = 600.0) -> Path:
        """Write the node's file to ``out`` (atomically) after checking its size and SHA-256."""
        digest, size, expected, got = hashlib.sha256(), None, "", 0
        tmp = out.with_name(out.name + ".part")
        try:
            with tmp.open("wb") as f:
                for chunk in self.stub.Download(pb.DownloadRequest(kind=kind, name=name), timeout=timeout_s):
                    if chunk.offset != got:
                        raise FedProfileError(f"download {name}: a piece at {chunk.offset}, expected {got}")
                    size = chunk.size if size is None else size
                    f.write(chunk.data)
                    digest.update(chunk.data)
                    got += len(chunk.data)
                    expected = chunk.sha256 or expected
        except BaseException:  # nothing half written stays behind
            tmp.unlink(missing_ok=True)
            raise
        if got != size or digest.hexdigest() != expected:
            tmp.unlink(missing_ok=True)
            raise FedProfileError(f"download {name}: {got} of {size} bytes, or a different SHA-256")
        tmp.replace(out)
        return out


__all__ = ["ScoringClient", "grpc", "pb"]
