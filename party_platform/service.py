"""The platform's ``Node`` gRPC service: open sessions (job ID, sequence numbers), streamed steps, scores.

Thin by design: it checks the framing (job ID, step order, payload size), turns protobuf into plain Python
calls on the node (a ``party_common.link.PlatformEndpoint``), and our exceptions into statuses
(``party_common.grpc_errors``). What a step means is the protocol handler's business.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import DecodeError

from party_common.audit import caller_name
from party_common.auth import caller_identity
from party_common.codec import array_from_pb, array_to_pb, from_payload, to_payload
from party_common.grpc_errors import abort, translate_errors
from party_common.link import PlatformEndpoint, SessionContext
from party_common.metrics import PARTIAL_SCORE_REQUESTS, STEP_SECONDS
from party_common.policy import QuotaExceeded
from party_common.storage.jobs import check_job_id
from party_common.transport import FEATURES, check_hello, chunk_payload, join_chunks, make_hello
from proto import fedprofile_v1_pb2 as pb
from proto import fedprofile_v1_pb2_grpc as pb_grpc
from protocols.channel import Message, StepHandler
from protocols.errors import ProtocolError, SessionLost, UserError

log = logging.getLogger(__name__)

SessionOpener = Callable[[str, str, Message, SessionContext], StepHandler]
# How a session ends (besides the bank closing it, "closed"): replaced by the bank's new session for the same job
# (it restarted and resumes), idle past the registry's limit, cancelled by the bank, or the node is stopping.
ENDINGS = ("closed", "superseded", "expired", "cancelled", "stopping")
# The counters of partial-score calls, looked up once (a label lookup on every call cost more than the count).
_ANSWERED = PARTIAL_SCORE_REQUESTS.labels("platform", "answered")
_REFUSED = PARTIAL_SCORE_REQUESTS.labels("platform", "refused")


@dataclass
class Session:
    kind: str
    handler: StepHandler
    next_seq: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)
    opened_at: float = field(default_factory=time.monotonic)
    last_active: float = field(default_factory=time.monotonic)


def end_session(handler: StepHandler, how: str, reason: str = "") -> None:
    """Close ``handler``, telling it how the session ended if it wants to know (``end(how, reason)``)."""
    end = getattr(handler, "end", None)
    if callable(end):
        end(how, reason)
    else:
        handler.close()


class SessionRegistry:
    """Open protocol sessions on the platform, one per job.

    A new session for a job that has one replaces it (the bank restarted and resumes the job). With
    ``idle_s``, :meth:`start_expiry` closes sessions that saw no step for that long (a bank killed mid-job
    never closes its session).
    """

    def __init__(self, opener: SessionOpener, kinds: Iterable[str], *, max_sessions: int = 8,
                 limit_name: str = "[policy] max_concurrent_jobs", idle_s: float | None = None) -> None:
        self._opener = opener
        self._kinds = frozenset(kinds)
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._max = max_sessions
        self._limit_name = limit_name
        self.idle_s = idle_s
        self._stop = threading.Event()

    def open(self, kind: str, job_id: str, params: Message, context: SessionContext) -> None:
        if kind not in self._kinds:
            raise ProtocolError(f"unknown session kind '{kind}' (this node supports {', '.join(sorted(self._kinds))})")
        try:
            check_job_id(job_id)
        except UserError as err:
            raise ProtocolError(str(err)) from err
        with self._lock:
            if job_id in self._sessions and not context.resumed:
                raise ProtocolError(f"job {job_id} already has an open session")
            old = self._sessions.pop(job_id, None)
            if old is None and len(self._sessions) >= self._max:
                raise QuotaExceeded(f"the platform already runs {self._max} jobs, its limit ({self._limit_name}); "
                                    "try again when one has finished")
        if old is not None:
            log.info("job %s: a new session replaces the open one (the bank resumes the job)", job_id)
            end_session(old.handler, "superseded")
        handler = self._opener(kind, job_id, params, context)
        with self._lock:
            self._sessions[job_id] = Session(kind=kind, handler=handler)

    def get(self, job_id: str) -> Session:
        with self._lock:
            session = self._sessions.get(job_id)
        if session is None:
            raise SessionLost(f"no open session for job {job_id} (the platform node restarted, or the session "
                              "expired): the bank resumes the job in a new one")
        return session

    def close(self, job_id: str, how: str = "closed", reason: str = "") -> bool:
        with self._lock:
            session = self._sessions.pop(job_id, None)
        if session is None:
            return False
        end_session(session.handler, how, reason)
        return True

    def close_all(self) -> None:
        self._stop.set()
        with self._lock:
            ids = list(self._sessions)
        for job_id in ids:
            self.close(job_id, "stopping", "the platform node stopped")

    def expire_idle(self, now: float | None = None) -> list[str]:
        """Close the sessions idle (no step running, none for ``idle_s``) at ``now``; their job IDs."""
        if self.idle_s is None:
            return []
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [job_id for job_id, s in self._sessions.items()
                    if now - s.last_active > self.idle_s and not s.lock.locked()]
        expired = []
        for job_id in idle:
            if self.close(job_id, "expired", f"no step from the bank for {self.idle_s:.0f} s"):
                log.info("session of job %s expired after %.0f s without a step", job_id, self.idle_s)
                expired.append(job_id)
        return expired

    def start_expiry(self) -> threading.Thread | None:
        """A daemon thread that runs :meth:`expire_idle` every few seconds until :meth:`close_all`."""
        if self.idle_s is None:
            return None
        every = max(0.2, min(5.0, self.idle_s / 4))

        def loop() -> None:
            while not self._stop.wait(every):
                self.expire_idle()

        thread = threading.Thread(target=loop, name="session-expiry", daemon=True)
        thread.start()
        return thread


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
    def RetireModel(self, request: pb.RetireModelRequest, context: grpc.ServicerContext) -> pb.RetireModelResponse:
        answer = self._endpoint.retire_model(request.model_job_id)
        return pb.RetireModelResponse(already_retired=answer.already_retired, retired_at=answer.retired_at)


__all__ = ["NodeServicer", "Session", "SessionRegistry", "context_from_pb"]
