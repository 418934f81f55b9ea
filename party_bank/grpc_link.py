"""The bank's side of the gRPC link to the platform node: the Step stream as a PeerChannel, and PlatformLink."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import grpc
import numpy as np

from party_common.auth import (
    CertificateRefused,
    CrlError,
    CrlFile,
    Identity,
    check_server,
    server_certificate,
)
from party_common.codec import array_from_pb, array_to_pb, from_payload, to_payload
from party_common.config import ConfigError, NodeConfig
from party_common.grpc_errors import REFUSED, REFUSING, TLS, failure_kind, peer_error, rpc_error_line
from party_common.link import (
    PartialScores,
    Retirement,
    SessionContext,
    StabilityIndices,
    check_partial_scores,
    check_stability,
)
from party_common.prometheus_metrics import PARTIAL_SCORE_REQUESTS, STEP_SECONDS
from party_common.transport import (
    CONTROL_TIMEOUT_S,
    FEATURES,
    HANDSHAKE_TIMEOUT_S,
    TransportError,
    check_hello,
    chunk_payload,
    join_chunks,
    make_hello,
    wait_healthy,
)
from proto import fedprofile_v1_pb2 as pb
from proto import fedprofile_v1_pb2_grpc as pb_grpc
from protocols.channel import Message
from protocols.errors import PeerError, ProtocolError
from protocols.stability import rows_bitmap

log = logging.getLogger(__name__)


class GrpcChannel:
    """A :class:`protocols.channel.PeerChannel` over the ``Node.Step`` stream."""

    def __init__(self, stub: pb_grpc.NodeStub, job_id: str, *, step_timeout_s: float, max_bytes: int,
                 address: str = "") -> None:
        self.job_id = job_id
        self.address = address
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
            with STEP_SECONDS.labels("bank", step).time():
                replies = self._stub.Step(chunk_payload(self.job_id, step, self._seq, data), timeout=self._timeout)
                header, joined = join_chunks(replies, max_bytes=self._max_bytes)
        except grpc.RpcError as err:
            raise peer_error(err, f"step {step}", address=self.address) from err
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


def platform_certificate_check(config: NodeConfig) -> Callable[[], Identity]:
    """Before each job the bank reads the platform's server certificate and checks its role and name, and
    its serial against the platform CA's CRL (``[tls] peer_crl``): gRPC Python can do neither on a client."""
    tls = config.tls
    if tls is None:
        raise ConfigError(f"{config.source}: missing section [tls]")
    ca_pem = tls.peer_ca.read_bytes()
    try:
        crl = CrlFile(tls.peer_crl, ca_pem) if tls.peer_crl else None
    except CrlError as err:
        raise ConfigError(f"{config.source} [tls]: {err}") from err
    address = config.peer_address

    def check() -> Identity:
        try:
            cert = server_certificate(address, server_name=config.peer_tls_name, ca_pem=ca_pem,
                                      cert_path=tls.cert, key_path=tls.key)
        except OSError as err:  # ssl.SSLError included
            raise PeerError(f"platform node at {address}: its TLS certificate could not be checked: {err}",
                            code="UNAVAILABLE") from err
        try:
            return check_server(cert, crl=crl, expected_name=config.peer_tls_name)
        except CertificateRefused as err:
            raise PeerError(f"the platform node at {address} is refused by this bank node: {err}",
                            code="PERMISSION_DENIED") from err

    return check


class GrpcPlatformLink:
    """The platform node behind a gRPC channel (mutual TLS outside ``--insecure-dev``).

    ``own_cert`` (this node's certificate, PEM) lets a TLS refusal name an expired certificate;
    ``server_check`` (see :func:`platform_certificate_check`) runs on every :meth:`connect`.
    """

    def __init__(self, channel: grpc.Channel, *, node_name: str, address: str, step_timeout_s: float = 900.0,
                 max_payload_bytes: int = 1024 * 2**20, score_timeout_s: float = 60.0,
                 own_cert: bytes | None = None, server_check: Callable[[], Identity] | None = None) -> None:
        self._channel = channel
        self._stub = pb_grpc.NodeStub(channel)
        self._node_name = node_name
        self.address = address
        self._step_timeout = step_timeout_s
        self._score_timeout = score_timeout_s
        self._max_bytes = max_payload_bytes
        self._own_cert = own_cert
        self._server_check = server_check
        self.peer_hello: pb.Hello | None = None
        self.down_since: float | None = None  # wall-clock time of the first failure in a row to reach the platform

    def _error(self, err: grpc.RpcError, what: str) -> PeerError:
        """A gRPC error as a PeerError whose message says who refused whose certificate, or since when the
        platform is unreachable (:func:`~party_common.grpc_errors.rpc_error_line`)."""
        if (err.code() == grpc.StatusCode.UNAVAILABLE and failure_kind(err) not in (REFUSED, REFUSING, TLS)
                and self.down_since is None):
            self.down_since = time.time()
        return peer_error(err, what, address=self.address, since=self.down_since, own_cert=self._own_cert)

    def connect(self, timeout_s: float = 30.0) -> str:
        try:
            wait_healthy(self._channel, timeout_s=timeout_s)
        except TransportError as err:
            rpc = err.rpc_error
            refused = rpc is not None and failure_kind(rpc) in ("gate", REFUSED)  # our certificate: no waiting
            if not refused and self.down_since is None:
                self.down_since = time.time() - timeout_s
            if rpc is None:
                since = time.strftime("%H:%M:%S UTC", time.gmtime(self.down_since or time.time()))
                raise PeerError(f"the platform node at {self.address} is unreachable since {since}: {err}",
                                code=err.code) from err
            raise PeerError(rpc_error_line(rpc, server="the platform node", address=self.address,
                                           own_cert=self._own_cert, since=None if refused else self.down_since,
                                           name_key="[peer] tls_name"),
                            code=rpc.code().name if refused else err.code) from err
        self.down_since = None
        if self._server_check is not None:
            self._server_check()
        hello = self.handshake(FEATURES)
        log.info("handshake ok with platform node '%s' (protocol %s)", hello.node_name, hello.protocol_version)
        return hello.node_name

    def handshake(self, features: Iterable[str] = ()) -> pb.Hello:
        try:
            reply = self._stub.Handshake(
                pb.HandshakeRequest(hello=make_hello("bank", self._node_name, features)),
                timeout=HANDSHAKE_TIMEOUT_S)
        except grpc.RpcError as err:
            raise self._error(err, "handshake") from err
        problem = check_hello(reply.hello, expected_role="platform")
        if problem:
            raise PeerError(f"handshake: {problem}", code="FAILED_PRECONDITION")
        self.peer_hello = reply.hello
        return reply.hello

    def open(self, kind: str, job_id: str, params: Message, *,
             context: SessionContext) -> GrpcChannel:
        request = pb.OpenSessionRequest(kind=kind, job_id=job_id, params=to_payload(params),
                                        context=pb.SessionContext(alignment_job_id=context.alignment_job_id,
                                                                  alignment_hash=context.alignment_hash,
                                                                  job_name=context.job_name,
                                                                  resumed=context.resumed))
        try:
            self._stub.OpenSession(request, timeout=self._step_timeout)
        except grpc.RpcError as err:
            raise self._error(err, f"open {kind} session") from err
        return GrpcChannel(self._stub, job_id, step_timeout_s=self._step_timeout, max_bytes=self._max_bytes,
                           address=self.address)

    def partial_scores(self, model_job_id: str, rows: np.ndarray, tags: list[str]) -> PartialScores:
        request = pb.PartialScoreRequest(model_job_id=model_job_id, tags=tags,
                                         rows=array_to_pb(np.asarray(rows, dtype=np.int64)))
        try:
            reply = self._stub.PartialScore(request, timeout=self._score_timeout)
        except grpc.RpcError as err:
            PARTIAL_SCORE_REQUESTS.labels("bank", err.code().name.lower()).inc()
            raise self._error(err, "partial scores") from err
        PARTIAL_SCORE_REQUESTS.labels("bank", "ok").inc()
        self.down_since = None
        try:
            scores = array_from_pb(reply.scores, where="partial scores")
        except ProtocolError as err:
            raise PeerError(f"partial scores: {err}", code="DATA_LOSS") from err
        answer = PartialScores(list(reply.tags), scores, reply.projections_released, reply.projections_limit)
        return check_partial_scores(answer, list(tags), len(rows))

    def retire_model(self, model_job_id: str) -> Retirement:
        try:
            reply = self._stub.RetireModel(pb.RetireModelRequest(model_job_id=model_job_id), timeout=CONTROL_TIMEOUT_S)
        except grpc.RpcError as err:
            raise self._error(err, f"retire model {model_job_id} on the platform node") from err
        return Retirement(model_job_id, reply.retired_at, reply.already_retired)

    def stability(self, model_job_id: str, source: str, rows: np.ndarray | None = None) -> StabilityIndices:
        request = pb.StabilityRequest(model_job_id=model_job_id, source=source,
                                      rows_bitmap=b"" if rows is None else rows_bitmap(rows))
        try:
            reply = self._stub.Stability(request, timeout=self._score_timeout)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise PeerError(f"stability: the platform node at {self.address} does not offer stability indices "
                                "(it predates feature stability.v1): upgrade it", code="UNIMPLEMENTED") from err
            raise self._error(err, f"stability of model {model_job_id}") from err
        return check_stability(StabilityIndices(list(reply.features), list(reply.psi), int(reply.rows),
                                                reply.reference))

    def cancel(self, job_id: str, reason: str) -> None:
        try:
            self._stub.CloseSession(pb.CloseSessionRequest(job_id=job_id, aborted=True, reason=reason),
                                    timeout=CONTROL_TIMEOUT_S)
        except grpc.RpcError as err:
            raise peer_error(err, f"cancel job {job_id} on the platform node") from err

    def close(self) -> None:
        self._channel.close()


__all__ = ["GrpcChannel", "GrpcPlatformLink", "platform_certificate_check"]
