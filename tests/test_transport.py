"""The nodes' transport over real mutual TLS on loopback: handshake, refusals, streamed steps, replays."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from party_bank.grpc_link import GrpcPlatformLink
from party_common.certs import init_local_pki
from party_common.codec import to_payload
from party_common.link import PartialScores, SessionContext
from party_common.transport import (
    CHUNK_BYTES,
    add_health,
    bind,
    chunk_payload,
    dial,
    make_hello,
    make_server,
    server_credentials,
    wait_healthy,
)
from party_platform.service import NodeServicer
from party_platform.sessions import SessionRegistry
from proto import fedprofile_v1_pb2 as pb
from proto import fedprofile_v1_pb2_grpc as pb_grpc
from protocols.channel import Message, PeerError, ProtocolError
from simulations.cluster import free_port


class SumHandler:
    """A tiny real protocol for transport tests: adds arrays, echoes bytes, refuses step 'bad'."""

    def __init__(self) -> None:
        self.closed = False

    def handle(self, step: str, message: Message) -> Message:
        if step == "bad":
            raise ProtocolError("step 'bad' is refused on purpose")
        a, b = message["a"], message["b"]
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
        return {"sum": a + b, "blob": message.get("blob", b""), "n": int(a.size)}

    def close(self) -> None:
        self.closed = True


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return init_local_pki(tmp_path_factory.mktemp("certs"), operators=["alice"])


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return init_local_pki(tmp_path_factory.mktemp("other-certs"))


@pytest.fixture(scope="module")
def platform_server(pki: dict[str, Path]) -> Iterator[tuple[str, dict[str, SumHandler]]]:
    handlers: dict[str, SumHandler] = {}

    class Endpoint:
        name = "platform"

        def open_session(self, kind: str, job_id: str, params: Message, context: SessionContext) -> SumHandler:
            if params.get("refuse"):
                raise ProtocolError("refused at open")
            if context.job_name != "a job":
                raise ProtocolError("the session context did not arrive")
            handlers[job_id] = SumHandler()
            return handlers[job_id]

        def partial_scores(self, model_job_id: str, rows: np.ndarray, tags: list[str], *,
                           caller: str = "") -> PartialScores:
            if rows.tolist() != [3, 1]:
                raise ProtocolError("this test node serves no models")
            return PartialScores(["t"], np.array([[0.5], [-0.5]]), 1, 4)

    endpoint = Endpoint()
    server = make_server()
    registry = SessionRegistry(endpoint.open_session, kinds=("sum",))
    servicer = NodeServicer(endpoint, registry, max_payload_bytes=64 * 2**20, features=["sum"])
    pb_grpc.add_NodeServicer_to_server(servicer, server)
    add_health(server, ["fedprofile.v1.Node"])
    address = f"127.0.0.1:{free_port()}"
    creds = server_credentials(pki["platform_cert"].read_bytes(), pki["platform_key"].read_bytes(),
                               pki["bank_ca"].read_bytes())
    bind(server, address, creds)
    server.start()
    yield address, handlers
    server.stop(0)


def link(channel: grpc.Channel) -> GrpcPlatformLink:
    return GrpcPlatformLink(channel, node_name="bank", address="platform")


CONTEXT = SessionContext(job_name="a job")


def bank_channel(address: str, pki: dict[str, Path]) -> grpc.Channel:
    return dial(address, cert=pki["bank_cert"].read_bytes(), key=pki["bank_key"].read_bytes(),
                server_ca=pki["platform_ca"].read_bytes())


def test_private_keys_are_0600(pki: dict[str, Path]) -> None:
    for name in ("bank_key", "platform_key", "operator_key:alice"):
        assert stat.S_IMODE(pki[name].stat().st_mode) == 0o600
    for org in ("bank", "platform"):
        assert stat.S_IMODE((pki[f"{org}_dir"] / "ca.key").stat().st_mode) == 0o600


def test_handshake_over_mutual_tls(platform_server, pki) -> None:
    address, _ = platform_server
    channel = bank_channel(address, pki)
    wait_healthy(channel, timeout_s=10)
    hello = link(channel).handshake(["sum"])
    assert hello.node_name == "platform" and hello.role == pb.PLATFORM
    assert list(hello.features) == ["sum"]
    channel.close()


def test_refuses_client_without_certificate(platform_server, pki) -> None:
    address, _ = platform_server
    creds = grpc.ssl_channel_credentials(root_certificates=pki["platform_ca"].read_bytes())
    with grpc.secure_channel(address, creds) as channel, pytest.raises(PeerError) as err:
        link(channel).handshake()
    assert err.value.code == "UNAVAILABLE"


def test_refuses_client_certificate_from_another_ca(platform_server, pki, other_pki) -> None:
    address, _ = platform_server
    channel = dial(address, cert=other_pki["bank_cert"].read_bytes(), key=other_pki["bank_key"].read_bytes(),
                   server_ca=pki["platform_ca"].read_bytes())
    with pytest.raises(PeerError) as err:
        link(channel).handshake()
    assert err.value.code == "UNAVAILABLE"
    channel.close()


def test_bank_refuses_server_from_another_ca(platform_server, pki, other_pki) -> None:
    address, _ = platform_server
    channel = dial(address, cert=pki["bank_cert"].read_bytes(), key=pki["bank_key"].read_bytes(),
                   server_ca=other_pki["platform_ca"].read_bytes())
    with pytest.raises(PeerError):
        link(channel).handshake()
    channel.close()


def test_plaintext_client_cannot_talk_to_tls_node(platform_server) -> None:
    address, _ = platform_server
    channel = dial(address, cert=None, key=None, server_ca=None, insecure=True)
    with pytest.raises(PeerError):
        link(channel).handshake()
    channel.close()


def test_declared_role_is_a_consistency_check_only(platform_server, pki) -> None:
    # What a caller may do comes from its certificate (party_common.auth, tests/test_mtls_matrix.py); a hello
    # that contradicts it is malformed, and a declared name changes nothing.
    address, _ = platform_server
    channel = bank_channel(address, pki)
    stub = pb_grpc.NodeStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.Handshake(pb.HandshakeRequest(hello=make_hello("platform", "impostor", [])), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "expected the bank node" in err.value.details()
    reply = stub.Handshake(pb.HandshakeRequest(hello=make_hello("bank", "impostor", [])), timeout=10)
    assert reply.hello.role == pb.PLATFORM
    channel.close()


def test_refuses_incompatible_protocol_version(platform_server, pki) -> None:
    address, _ = platform_server
    channel = bank_channel(address, pki)
    hello = make_hello("bank", "old-bank", [])
    hello.protocol_version = "0.9"
    with pytest.raises(grpc.RpcError) as err:
        pb_grpc.NodeStub(channel).Handshake(pb.HandshakeRequest(hello=hello), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "protocol 0.9" in err.value.details()
    channel.close()


def test_streamed_steps_round_trip_large_payloads(platform_server, pki) -> None:
    address, handlers = platform_server
    channel = bank_channel(address, pki)
    peer = link(channel)
    session = peer.open("sum", "job-large-0001", {"x": 1}, context=CONTEXT)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(700, 1000))  # 5.6 MB: several chunks each way
    blob = rng.bytes(3 * CHUNK_BYTES + 17)
    reply = session.call("add", {"a": a, "b": a, "blob": blob})
    np.testing.assert_array_equal(reply["sum"], 2 * a)
    assert reply["blob"] == blob and reply["n"] == a.size
    reply = session.call("add", {"a": np.arange(3, dtype=np.int64), "b": np.ones(3, dtype=np.int64)})
    np.testing.assert_array_equal(reply["sum"], [1, 2, 3])
    session.close()
    assert handlers["job-large-0001"].closed
    with pytest.raises(PeerError, match="serves no models") as err:
        peer.partial_scores("train-0001", np.array([1, 3]), [])
    assert err.value.code == "FAILED_PRECONDITION"
    answer = peer.partial_scores("train-0001", np.array([3, 1]), ["t"])
    np.testing.assert_array_equal(answer.scores, [[0.5], [-0.5]])
    assert (answer.projections_released, answer.projections_limit) == (1, 4)
    with pytest.raises(PeerError, match="other tags"):
        peer.partial_scores("train-0001", np.array([3, 1]), ["u"])
    channel.close()


def test_handler_refusal_reaches_the_bank_as_peer_error(platform_server, pki) -> None:
    address, _ = platform_server
    channel = bank_channel(address, pki)
    peer = link(channel)
    with pytest.raises(PeerError, match="refused at open"):
        peer.open("sum", "job-refused-01", {"refuse": True}, context=CONTEXT)
    with pytest.raises(PeerError, match="unknown session kind"):
        peer.open("nope", "job-unknown-01", {}, context=CONTEXT)
    session = peer.open("sum", "job-bad-00001", {}, context=CONTEXT)
    with pytest.raises(PeerError, match="refused on purpose") as err:
        session.call("bad", {"a": np.zeros(1), "b": np.zeros(1)})
    assert err.value.code == "FAILED_PRECONDITION"
    session.close()
    channel.close()


def test_replayed_and_out_of_order_steps_are_refused(platform_server, pki) -> None:
    address, _ = platform_server
    channel = bank_channel(address, pki)
    peer = link(channel)
    session = peer.open("sum", "job-replay-001", {}, context=CONTEXT)
    session.call("add", {"a": np.zeros(2), "b": np.ones(2)})  # seq 1
    stub = pb_grpc.NodeStub(channel)
    data = to_payload({"a": np.zeros(2), "b": np.ones(2)}).SerializeToString()
    for seq in (1, 5):  # a replay of step 1, and a skip ahead
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Step(chunk_payload("job-replay-001", "add", seq, data), timeout=10))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "replayed or out of order" in err.value.details()
    # Steps for a job with no session are refused too.
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Step(chunk_payload("job-nosuch-001", "add", 1, data), timeout=10))
    assert "no open session" in err.value.details()
    session.close()
    channel.close()


def test_unreachable_peer_is_a_clear_error(pki) -> None:
    channel = bank_channel(f"127.0.0.1:{free_port()}", pki)
    with pytest.raises(PeerError, match="unreachable"):
        link(channel).handshake()
    channel.close()
