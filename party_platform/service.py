"""The platform's ``Node`` gRPC service: open sessions (job ID, sequence numbers), streamed steps, scores.

Thin by design: it checks the framing (job ID, step order, payload size), turns protobuf into plain Python
calls on the node (a ``party_common.link.PlatformEndpoint``), and our exceptions into statuses
(``party_common.grpc_errors``). What a step means is the protocol handler's business.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator

import grpc
from google.protobuf.message import DecodeError

from party_common.audit import caller_name
from party_common.auth import caller_identity
from party_common.codec import array_from_pb, array_to_pb, from_payload, to_payload
from party_common.grpc_errors import abort, translate_errors
from party_common.link import PlatformEndpoint, SessionContext
from party_common.prometheus_metrics import PARTIAL_SCORE_REQUESTS, STEP_SECONDS
from party_common.transport import FEATURES, check_hello, chunk_payload, join_chunks, make_hello
from party_platform.sessions import SessionRegistry
from proto import fedprofile_v1_pb2 as pb
from proto import fedprofile_v1_pb2_grpc as pb_grpc
from protocols.errors import ProtocolError
from protocols.stability import VERSION as STABILITY_VERSION
from protocols.stability import bitmap_rows

log = logging.getLogger(__name__)

# The counters of partial-score calls, looked up once (a label lookup on every call cost more than the count).
_ANSWERED = PARTIAL_SCORE_REQUESTS.labels("platform", "answered")
_REFUSED = PARTIAL_SCORE_REQUESTS.labels("platform", "refused")


def parse_payload(data: bytes, where: str) -> pb.Payload:
    """A serialised ``Payload`` from the peer; :class:`ProtocolError` if the bytes are not one."""
    payload = pb.Payload()
    try:
        payload.ParseFromString(data)
    except DecodeError as err:
        raise ProtocolError(f"{where}: the payload is not a protobuf Payload ({err})") from None
    return payload


def context_from_pb(msg: pb.SessionContext, caller: str = "") -> SessionContext:
    return SessionContext(alignment_job_id=msg.alignment_job_id, alignment_hash=msg.alignment_hash,
                          job_name=msg.job_name, caller=caller, resumed=msg.resumed)


class NodeServicer(pb_grpc.NodeServicer):
    """The platform's ``Node`` service."""

    def __init__(self, endpoint: PlatformEndpoint, registry: SessionRegistry, *, max_payload_bytes: int,
                 features: Iterable[str] = FEATURES) -> None:
        self._endpoint = endpoint
        self._registry = registry
        self._features = list(features)
        self._max_bytes = max_payload_bytes

    def Handshake(self, request: pb.HandshakeRequest, context: grpc.ServicerContext) -> pb.HandshakeResponse:
        # Who the caller is comes from its certificate (the gate admitted only the bank node's), never from
        # the role and name it declares here: a hello that contradicts it, or speaks another major version,
        # is malformed and refused; the log names the certificate.
        problem = check_hello(request.hello, expected_role="bank")
        if problem:
            log.warning("handshake refused: %s", problem)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, problem)
        log.info("handshake from %s (protocol %s)", caller_identity(context).describe(),
                 request.hello.protocol_version)
        return pb.HandshakeResponse(hello=make_hello("platform", self._endpoint.name, self._features))

    @translate_errors("platform")
    def OpenSession(self, request: pb.OpenSessionRequest, context: grpc.ServicerContext) -> pb.OpenSessionResponse:
        params = from_payload(request.params, where="session parameters")
        self._registry.open(request.kind, request.job_id, params,
                            context_from_pb(request.context, caller_name(context)))
        log.info("opened %s session for job %s", request.kind, request.job_id)
        return pb.OpenSessionResponse(job_id=request.job_id)

    def Step(self, request_iterator: Iterator[pb.StepChunk], context: grpc.ServicerContext) -> Iterator[pb.StepChunk]:
        try:
            header, data = join_chunks(request_iterator, max_bytes=self._max_bytes)
        except grpc.RpcError:  # gRPC ended the stream (a message over its size limit, a cancelled call)
            log.warning("a step stream was ended by the transport before its last chunk")
            return
        except Exception as err:
            abort(context, err, node="platform")
        try:
            session = self._registry.get(header.job_id)
            with session.lock:
                session.last_active = time.monotonic()
                if header.seq != session.next_seq:
                    raise ProtocolError(f"step {header.step} has sequence number {header.seq}, expected "
                                        f"{session.next_seq}: replayed or out of order")
                payload = parse_payload(data, f"step {header.step}")
                with STEP_SECONDS.labels("platform", header.step).time():
                    reply = session.handler.handle(header.step, from_payload(payload, where=f"step {header.step}"))
                session.next_seq += 1
                session.last_active = time.monotonic()
            out = to_payload(reply).SerializeToString()
        except Exception as err:
            abort(context, err, node="platform")
        yield from chunk_payload(header.job_id, header.step, header.seq, out)

    @translate_errors("platform")
    def CloseSession(self, request: pb.CloseSessionRequest, context: grpc.ServicerContext) -> pb.CloseSessionResponse:
        # aborted: the bank cancelled the job; its row here says so too, open session or not.
        how = "cancelled" if request.aborted else "closed"
        if self._registry.close(request.job_id, how, request.reason):
            log.info("closed session for job %s%s", request.job_id, " (cancelled by the bank)" if request.aborted else "")
        if request.aborted:
            self._endpoint.cancel_job(request.job_id, request.reason or "cancelled by the bank")
        return pb.CloseSessionResponse()

    @translate_errors("platform")
    def PartialScore(self, request: pb.PartialScoreRequest,
                     context: grpc.ServicerContext) -> pb.PartialScoreResponse:
        try:
            rows = array_from_pb(request.rows, where="partial score rows")
            answer = self._endpoint.partial_scores(request.model_job_id, rows, list(request.tags),
                                                   caller=caller_name(context))
        except Exception:
            _REFUSED.inc()
            raise
        _ANSWERED.inc()
        return pb.PartialScoreResponse(tags=answer.tags, scores=array_to_pb(answer.scores),
                                       projections_released=answer.projections_released,
                                       projections_limit=answer.projections_limit)

    @translate_errors("platform")
    def Stability(self, request: pb.StabilityRequest, context: grpc.ServicerContext) -> pb.StabilityResponse:
        rows = bitmap_rows(request.rows_bitmap) if request.source == "rows" else None
        answer = self._endpoint.stability(request.model_job_id, request.source, rows, caller=caller_name(context))
        return pb.StabilityResponse(version=STABILITY_VERSION, features=answer.features, psi=answer.psi,
                                    rows=answer.rows, reference=answer.reference)

    @translate_errors("platform")
    def RetireModel(self, request: pb.RetireModelRequest, context: grpc.ServicerContext) -> pb.RetireModelResponse:
        answer = self._endpoint.retire_model(request.model_job_id)
        return pb.RetireModelResponse(already_retired=answer.already_retired, retired_at=answer.retired_at)


__all__ = ["NodeServicer", "context_from_pb", "parse_payload"]
