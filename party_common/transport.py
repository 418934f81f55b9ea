"""gRPC transport between the nodes: mTLS channels and servers, the handshake, and protocol sessions.

The protocols in ``protocols/`` see only ``Peer``/``PeerChannel``/``StepHandler`` (protocols.channel).
Here a step's message becomes a serialised ``Payload`` cut into ``StepChunk``s on a bidirectional
stream; the platform's :class:`SessionServicer` joins them, checks job ID and sequence number (refusing
replays and out-of-order steps), calls the session's handler, and streams the reply back.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from party_common.codec import CodecError, array_to_pb, from_payload, to_payload
from proto import fedprofile_v1_pb2 as pb
from proto import fedprofile_v1_pb2_grpc as pb_grpc
from protocols.channel import Message, PeerError, ProtocolError, SessionFactory, StepHandler

log = logging.getLogger(__name__)

PROTOCOL_VERSION = "1.0"
CHUNK_BYTES = 2 * 1024 * 1024
# Per gRPC message: a chunk plus its header. Set on purpose: large transfers are streamed, never sent whole.
MAX_GRPC_MESSAGE = CHUNK_BYTES + 64 * 1024
HANDSHAKE_TIMEOUT_S = 10.0
CONTROL_TIMEOUT_S = 30.0
JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
ROLE_NAMES = {pb.BANK: "bank", pb.PLATFORM: "platform"}
ROLE_VALUES = {v: k for k, v in ROLE_NAMES.items()}


class TransportError(RuntimeError):
    """The peer could not be reached or spoke an incompatible protocol."""


def grpc_options(max_message: int = MAX_GRPC_MESSAGE) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message),
        ("grpc.max_receive_message_length", max_message),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def server_credentials(cert: bytes, key: bytes, client_ca: bytes) -> grpc.ServerCredentials:
    """mTLS: the server presents ``cert`` and accepts only clients whose certificate ``client_ca`` signed."""
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca, require_client_auth=True)


def channel_credentials(cert: bytes, key: bytes, server_ca: bytes) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=server_ca, private_key=key, certificate_chain=cert)


def dial(address: str, *, cert: bytes | None, key: bytes | None, server_ca: bytes | None,
         tls_name: str | None = None, insecure: bool = False) -> grpc.Channel:
    """Open a channel to ``address``: mutual TLS, or plaintext only when ``insecure`` is set explicitly."""
    options: list[tuple[str, int | str]] = list(grpc_options())
    if insecure:
        return grpc.insecure_channel(address, options=options)
    if cert is None or key is None or server_ca is None:
        raise TransportError("mutual TLS needs a certificate, its key and the peer's CA")
    if tls_name:
        options.append(("grpc.ssl_target_name_override", tls_name))
    return grpc.secure_channel(address, channel_credentials(cert, key, server_ca), options=options)


def add_health(server: grpc.Server, services: Iterable[str]) -> health.HealthServicer:
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in ["", *services]:
        servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return servicer


def wait_healthy(channel: grpc.Channel, *, service: str = "", timeout_s: float = 30.0) -> None:
    """Block until the server at the other end of ``channel`` reports SERVING."""
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2.0)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError as err:
            last = err
        time.sleep(0.1)
    raise TransportError(f"peer not healthy after {timeout_s:.0f} s: {last}")


def make_hello(role: str, node_name: str, features: Iterable[str]) -> pb.Hello:
    return pb.Hello(role=ROLE_VALUES[role], node_name=node_name, protocol_version=PROTOCOL_VERSION,
                    features=list(features))


def check_hello(hello: pb.Hello, *, expected_role: str) -> str | None:
    """Return why ``hello`` is unacceptable from a peer that should be ``expected_role``, or None."""
    got = ROLE_NAMES.get(hello.role, "unknown")
    if got != expected_role:
        return f"peer '{hello.node_name}' says it is a {got} node; expected the {expected_role} node"
    major = hello.protocol_version.split(".")[0]
    if major != PROTOCOL_VERSION.split(".")[0]:
        return (f"peer '{hello.node_name}' speaks protocol {hello.protocol_version or '?'}, "
                f"this node speaks {PROTOCOL_VERSION}; upgrade the older node")
    return None


def _peer_error(err: grpc.RpcError, what: str) -> PeerError:
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    if code == grpc.StatusCode.UNAVAILABLE:
        return PeerError(f"{what}: peer unreachable ({details})", code=code.name)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return PeerError(f"{what}: peer did not answer before the deadline", code=code.name)
    return PeerError(f"{what}: {details}", code=code.name)


def chunk_payload(job_id: str, step: str, seq: int, data: bytes) -> Iterator[pb.StepChunk]:
    count = max(1, -(-len(data) // CHUNK_BYTES))
    for i in range(count):
        piece = data[i * CHUNK_BYTES:(i + 1) * CHUNK_BYTES]
        yield pb.StepChunk(job_id=job_id, step=step, seq=seq, index=i, data=piece, last=i == count - 1)


def join_chunks(chunks: Iterable[pb.StepChunk], *, max_bytes: int) -> tuple[pb.StepChunk, bytes]:
    """Join one step's chunks; return the first chunk (its header) and the joined bytes."""
    first: pb.StepChunk | None = None
    parts: list[bytes] = []
    size = 0
    for i, chunk in enumerate(chunks):
        if first is None:
            first = chunk
        elif (chunk.job_id, chunk.step, chunk.seq) != (first.job_id, first.step, first.seq):
            raise ProtocolError("chunks of one step disagree on job ID, step or sequence number")
        if chunk.index != i:
            raise ProtocolError(f"chunk {chunk.index} arrived where chunk {i} was expected")
        size += len(chunk.data)
        if size > max_bytes:
            raise ProtocolError(f"step payload exceeds the {max_bytes // 2**20} MiB limit")
        parts.append(chunk.data)
        if chunk.last:
            return first, b"".join(parts)
    raise ProtocolError("stream ended before the step's last chunk")


# ---------------------------------------------------------------- client side (the bank) ----


class GrpcChannel:
    """A :class:`protocols.channel.PeerChannel` over the ``Node.Step`` stream."""

    def __init__(self, stub: pb_grpc.NodeStub, job_id: str, *, step_timeout_s: float, max_bytes: int) -> None:
        self.job_id = job_id
        self._stub = stub
        self._seq = 0
        self._timeout = step_timeout_s
        self._max_bytes = max_bytes
        self._closed = False
        self.sent_bytes = 0
        self.received_bytes = 0

    def call(self, step: str, message: Message) -> Message:
        if self._closed:
            raise PeerError(f"session {self.job_id} is closed", code="FAILED_PRECONDITION")
        self._seq += 1
        data = to_payload(message).SerializeToString()
        self.sent_bytes += len(data)
        try:
            replies = self._stub.Step(chunk_payload(self.job_id, step, self._seq, data), timeout=self._timeout)
            header, joined = join_chunks(replies, max_bytes=self._max_bytes)
        except grpc.RpcError as err:
            raise _peer_error(err, f"step {step}") from err
        except ProtocolError as err:
            raise PeerError(f"step {step}: bad reply stream: {err}", code="DATA_LOSS") from err
        if (header.job_id, header.seq) != (self.job_id, self._seq):
            raise PeerError(f"step {step}: reply is for another job or step", code="DATA_LOSS")
        self.received_bytes += len(joined)
        payload = pb.Payload()
        try:
            payload.ParseFromString(joined)
            return from_payload(payload, where=f"reply to {step}")
        except Exception as err:  # protobuf DecodeError or CodecError: both mean a malformed reply
            raise PeerError(f"step {step}: malformed reply: {err}", code="DATA_LOSS") from err

    def close(self, *, aborted: bool = False, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._stub.CloseSession(pb.CloseSessionRequest(job_id=self.job_id, aborted=aborted, reason=reason),
                                    timeout=CONTROL_TIMEOUT_S)
        except grpc.RpcError as err:
            log.warning("closing session %s on the peer failed: %s", self.job_id, err.code().name)


class GrpcPeer:
    """The bank's :class:`protocols.channel.Peer`: the platform node behind a gRPC channel."""

    def __init__(self, channel: grpc.Channel, *, node_name: str, step_timeout_s: float = 900.0,
                 max_payload_bytes: int = 1024 * 2**20) -> None:
        self._channel = channel
        self._stub = pb_grpc.NodeStub(channel)
        self._node_name = node_name
        self._step_timeout = step_timeout_s
        self._max_bytes = max_payload_bytes
        self.peer_hello: pb.Hello | None = None

    def handshake(self, features: Iterable[str] = ()) -> pb.Hello:
        try:
            reply = self._stub.Handshake(
                pb.HandshakeRequest(hello=make_hello("bank", self._node_name, features)),
                timeout=HANDSHAKE_TIMEOUT_S)
        except grpc.RpcError as err:
            raise _peer_error(err, "handshake") from err
        problem = check_hello(reply.hello, expected_role="platform")
        if problem:
            raise PeerError(f"handshake: {problem}", code="FAILED_PRECONDITION")
        self.peer_hello = reply.hello
        return reply.hello

    def open(self, kind: str, job_id: str, params: Message) -> GrpcChannel:
        try:
            self._stub.OpenSession(pb.OpenSessionRequest(kind=kind, job_id=job_id, params=to_payload(params)),
                                   timeout=self._step_timeout)
        except grpc.RpcError as err:
            raise _peer_error(err, f"open {kind} session") from err
        return GrpcChannel(self._stub, job_id, step_timeout_s=self._step_timeout, max_bytes=self._max_bytes)

    def partial_scores(self, model_job_id: str, customer_ids: list[str], tags: list[str],
                       *, timeout_s: float = 60.0) -> pb.PartialScoreResponse:
        try:
            return self._stub.PartialScore(
                pb.PartialScoreRequest(model_job_id=model_job_id, customer_ids=customer_ids, tags=tags),
                timeout=timeout_s)
        except grpc.RpcError as err:
            raise _peer_error(err, "partial scores") from err


# --------------------------------------------------------------- server side (the platform) ----


@dataclass
class Session:
    kind: str
    handler: StepHandler
    next_seq: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)
    opened_at: float = field(default_factory=time.monotonic)


class SessionRegistry:
    """Open protocol sessions on the platform, one per job."""

    def __init__(self, factory: SessionFactory, kinds: Iterable[str], *, max_sessions: int = 8) -> None:
        self._factory = factory
        self._kinds = frozenset(kinds)
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._max = max_sessions

    def open(self, kind: str, job_id: str, params: Message) -> None:
        if kind not in self._kinds:
            raise ProtocolError(f"unknown session kind '{kind}' (this node supports {', '.join(sorted(self._kinds))})")
        if not JOB_ID_RE.match(job_id):
            raise ProtocolError("job ID must be 8-64 characters of letters, digits, '-' or '_'")
        with self._lock:
            if job_id in self._sessions:
                raise ProtocolError(f"job {job_id} already has an open session")
            if len(self._sessions) >= self._max:
                raise ProtocolError(f"too many open sessions ({self._max}); try again later")
        handler = self._factory(kind, job_id, params)
        with self._lock:
            self._sessions[job_id] = Session(kind=kind, handler=handler)

    def get(self, job_id: str) -> Session:
        with self._lock:
            session = self._sessions.get(job_id)
        if session is None:
            raise ProtocolError(f"no open session for job {job_id}")
        return session

    def close(self, job_id: str) -> bool:
        with self._lock:
            session = self._sessions.pop(job_id, None)
        if session is None:
            return False
        session.handler.close()
        return True

    def close_all(self) -> None:
        with self._lock:
            ids = list(self._sessions)
        for job_id in ids:
            self.close(job_id)


def _abort_for(context: grpc.ServicerContext, err: Exception) -> None:
    if isinstance(err, ProtocolError | CodecError):
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
    context.abort(grpc.StatusCode.INTERNAL, f"{type(err).__name__} on the platform node; see its log")


class PartialScorer:
    """What the platform node plugs in to answer ``PartialScore``."""

    def partial_scores(self, model_job_id: str, customer_ids: list[str],
                       tags: list[str]) -> tuple[list[str], object, list[bool]]:  # pragma: no cover - interface
        raise NotImplementedError


class NodeServicer(pb_grpc.NodeServicer):
    """The platform's ``Node`` service: translates protobuf to calls on plain Python objects."""

    def __init__(self, *, node_name: str, registry: SessionRegistry, features: Iterable[str],
                 scorer: PartialScorer | None, max_payload_bytes: int) -> None:
        self._name = node_name
        self._registry = registry
        self._features = list(features)
        self._scorer = scorer
        self._max_bytes = max_payload_bytes

    def Handshake(self, request: pb.HandshakeRequest, context: grpc.ServicerContext) -> pb.HandshakeResponse:
        problem = check_hello(request.hello, expected_role="bank")
        if problem:
            log.warning("handshake refused: %s", problem)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, problem)
        log.info("handshake from bank node '%s' (protocol %s)", request.hello.node_name,
                 request.hello.protocol_version)
        return pb.HandshakeResponse(hello=make_hello("platform", self._name, self._features))

    def OpenSession(self, request: pb.OpenSessionRequest, context: grpc.ServicerContext) -> pb.OpenSessionResponse:
        try:
            params = from_payload(request.params, where="session parameters")
            self._registry.open(request.kind, request.job_id, params)
        except Exception as err:  # every failure becomes a status; internal ones are logged with a trace
            if not isinstance(err, ProtocolError | CodecError):
                log.exception("opening a %s session failed", request.kind)
            _abort_for(context, err)
        log.info("opened %s session for job %s", request.kind, request.job_id)
        return pb.OpenSessionResponse(job_id=request.job_id)

    def Step(self, request_iterator: Iterator[pb.StepChunk], context: grpc.ServicerContext) -> Iterator[pb.StepChunk]:
        try:
            header, data = join_chunks(request_iterator, max_bytes=self._max_bytes)
            session = self._registry.get(header.job_id)
            with session.lock:
                if header.seq != session.next_seq:
                    raise ProtocolError(f"step {header.step} has sequence number {header.seq}, expected "
                                        f"{session.next_seq}: replayed or out of order")
                payload = pb.Payload()
                payload.ParseFromString(data)
                reply = session.handler.handle(header.step, from_payload(payload, where=f"step {header.step}"))
                session.next_seq += 1
            out = to_payload(reply).SerializeToString()
        except Exception as err:
            if not isinstance(err, ProtocolError | CodecError):
                log.exception("step failed")
            _abort_for(context, err)
        yield from chunk_payload(header.job_id, header.step, header.seq, out)

    def CloseSession(self, request: pb.CloseSessionRequest, context: grpc.ServicerContext) -> pb.CloseSessionResponse:
        if self._registry.close(request.job_id):
            log.info("closed session for job %s%s", request.job_id, " (aborted by the bank)" if request.aborted else "")
        return pb.CloseSessionResponse()

    def PartialScore(self, request: pb.PartialScoreRequest,
                     context: grpc.ServicerContext) -> pb.PartialScoreResponse:
        if self._scorer is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this node serves no models")
        try:
            tags, scores, known = self._scorer.partial_scores(
                request.model_job_id, list(request.customer_ids), list(request.tags))
        except Exception as err:
            if not isinstance(err, ProtocolError | CodecError | LookupError | ValueError):
                log.exception("partial scoring failed")
            if isinstance(err, LookupError):
                context.abort(grpc.StatusCode.NOT_FOUND, str(err))
            _abort_for(context, err if not isinstance(err, ValueError) else ProtocolError(str(err)))
        return pb.PartialScoreResponse(tags=tags, scores=array_to_pb(scores), known=known)


def make_server(workers: int = 8) -> grpc.Server:
    # Accept the clients' keepalive pings (every 30 s, also between calls): the default minimum interval
    # of 5 minutes makes the server answer a long job's pings with GOAWAY "too_many_pings".
    options = [*grpc_options(), ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
               ("grpc.http2.max_ping_strikes", 0)]
    return grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options,
                       maximum_concurrent_rpcs=64)


def bind(server: grpc.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """Bind ``address``; ``credentials=None`` means plaintext (``--insecure-dev`` only)."""
    try:
        port = (server.add_insecure_port(address) if credentials is None
                else server.add_secure_port(address, credentials))
    except RuntimeError as err:
        raise TransportError(f"cannot listen on {address}: {err}") from err
    if port == 0:
        raise TransportError(f"cannot listen on {address} (in use, or not an address of this machine)")
    return port
