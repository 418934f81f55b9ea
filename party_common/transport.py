"""gRPC plumbing both nodes share: mTLS credentials, channels and servers, health, the hello, step chunks.

The protocols in ``protocols/`` see only ``Peer``/``PeerChannel``/``StepHandler`` (protocols.channel).
A step's message becomes a serialised ``Payload`` cut into ``StepChunk``s on a bidirectional stream:
the bank's side is ``party_bank.grpc_link``, the platform's ``party_platform.service``.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from party_common.config import ConfigError
from party_common.grpc_errors import UNREACHABLE, transport_reason, transport_summary
from proto import fedprofile_v1_pb2 as pb
from protocols.errors import PeerError, ProtocolError

log = logging.getLogger(__name__)

PROTOCOL_VERSION = "1.3"  # 1.1: OpenSessionRequest.context; 1.2: partial scores by alignment row; 1.3: screen sessions
CHUNK_BYTES = 2 * 1024 * 1024
# Per gRPC message: a chunk plus its header. Set on purpose: large transfers are streamed, never sent whole.
MAX_GRPC_MESSAGE = CHUNK_BYTES + 64 * 1024
HANDSHAKE_TIMEOUT_S = 10.0
# What the nodes offer each other, named in the hello.
FEATURES = ("psi.x25519", "train.vfl_lr", "score.partial", "stability.v1", "screen.woe_iv")
CONTROL_TIMEOUT_S = 30.0
ROLE_NAMES = {pb.BANK: "bank", pb.PLATFORM: "platform"}
ROLE_VALUES = {v: k for k, v in ROLE_NAMES.items()}


class TransportError(PeerError):
    """The peer could not be reached or spoke an incompatible protocol (``rpc_error``: the last gRPC error)."""

    def __init__(self, message: str, *, code: str = "UNAVAILABLE", rpc_error: grpc.RpcError | None = None) -> None:
        super().__init__(message, code=code)
        self.rpc_error = rpc_error


def grpc_options(max_message: int = MAX_GRPC_MESSAGE) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message),
        ("grpc.max_receive_message_length", max_message),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        # A peer that comes back is found within seconds (gRPC's default backoff grows to two minutes).
        ("grpc.initial_reconnect_backoff_ms", 500),
        ("grpc.max_reconnect_backoff_ms", 5_000),
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
    last: grpc.RpcError | None = None
    while True:  # at least one try, even with no time to wait
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service),
                               timeout=max(0.5, min(2.0, deadline - time.monotonic())))
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError as err:
            last = err
            if err.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                # The node refused our certificate: waiting longer will not change its mind.
                raise TransportError(f"peer refused us: {err.details()}", code=err.code().name,
                                     rpc_error=err) from err
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if last is None:
        raise TransportError(f"peer not serving after {timeout_s:.0f} s")
    details = (last.details() if hasattr(last, "details") else str(last)) or ""
    found = transport_reason(details)
    why = transport_summary(details) or " ".join(details.split())
    raise TransportError(f"no answer for {timeout_s:.0f} s: {why}", rpc_error=last,
                         code="FAILED_PRECONDITION" if found and found[0] != UNREACHABLE else "UNAVAILABLE")


def make_hello(role: str, node_name: str, features: Iterable[str]) -> pb.Hello:
    return pb.Hello(role=ROLE_VALUES[role], node_name=node_name, protocol_version=PROTOCOL_VERSION,
                    features=list(features))


def check_hello(hello: pb.Hello, *, expected_role: str | None) -> str | None:
    """Return why ``hello`` is unacceptable from a peer that should be ``expected_role``, or None.

    The role a peer declares is a consistency check only: what a caller may do is decided by its certificate
    (``party_common.auth``); ``expected_role=None`` checks only the version.
    """
    got = ROLE_NAMES.get(hello.role, "unknown")
    if expected_role is not None and got != expected_role:
        return f"peer '{hello.node_name}' says it is a {got} node; expected the {expected_role} node"
    major = hello.protocol_version.split(".")[0]
    if major != PROTOCOL_VERSION.split(".")[0]:
        return (f"peer '{hello.node_name}' speaks protocol {hello.protocol_version or '?'}, "
                f"this node speaks {PROTOCOL_VERSION}; upgrade the older node")
    return None


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


def make_server(workers: int = 8, interceptors: Sequence[grpc.ServerInterceptor] = ()) -> grpc.Server:
    """A gRPC server; ``interceptors`` run before every call (the nodes install ``auth.CertificateGate``)."""
    # Accept the clients' keepalive pings (every 30 s, also between calls): the default minimum interval
    # of 5 minutes makes the server answer a long job's pings with GOAWAY "too_many_pings".
    # so_reuseport off: gRPC's default lets a second node bind the same port and take half of its calls.
    options = [*grpc_options(), ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
               ("grpc.http2.max_ping_strikes", 0), ("grpc.so_reuseport", 0)]
    return grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options,
                       maximum_concurrent_rpcs=64, interceptors=list(interceptors))


def bind(server: grpc.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """Bind ``address``; ``credentials=None`` means plaintext (``--insecure-dev`` only)."""
    try:
        port = (server.add_insecure_port(address) if credentials is None
                else server.add_secure_port(address, credentials))
    except RuntimeError as err:
        raise ConfigError(f"cannot listen on {address}: {_why_not_listening(address) or err}") from err
    if port == 0:
        raise ConfigError(f"cannot listen on {address}: "
                          f"{_why_not_listening(address) or 'in use, or not an address of this machine'}")
    return port


def _why_not_listening(address: str) -> str | None:
    """Why ``address`` cannot be bound, asked of the operating system directly (gRPC only says it failed)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, int(port)))
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            return (f"port {port} is taken by another process (is a node already running? "
                    f"`ss -ltnp 'sport = :{port}'` names it)")
        if err.errno == errno.EADDRNOTAVAIL:
            return f"{host} is not an address of this machine"
        return err.strerror
    return None
