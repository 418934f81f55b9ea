"""The mTLS matrix against both real node servers on loopback (built from their config files, as `serve` does).

Every certificate that must not get in is refused with a reason that says which node refused and why; the
bank node's certificate gets into the platform and an operator's into the bank's control API.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest

from party_bank import cli as bank_cli
from party_bank.client import BankClient
from party_bank.grpc_link import GrpcPlatformLink
from party_common.auth import ROLE_NODE, ROLE_OPERATOR
from party_common.certs import OrgFolder, init_local_pki, serial_of
from party_common.config import ConfigError
from party_common.grpc_errors import failure_kind, rpc_error_line
from party_common.runtime import read_tls_files
from party_common.storage import JobStore
from party_common.transport import dial
from party_common.watch import POLLER
from party_platform import cli as platform_cli
from proto import fedprofile_v1_pb2 as pb
from proto import fedprofile_v1_pb2_grpc as pb_grpc
from protocols.errors import PeerError
from simulations.cluster import free_port, write_configs

Pair = tuple[Path, Path]


@dataclass
class Matrix:
    pki: dict[str, Path]
    other: dict[str, Path]
    extra: dict[str, Pair]
    platform: str  # address of the platform's Node service
    bank: str  # address of the bank's control API
    configs: Pair
    audit: dict[str, JobStore]  # each node's job store, whose audit log records the gate's refusals


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    d = tmp_path_factory.mktemp("matrix")
    pki = init_local_pki(d / "certs", operators=["alice", "bob"])
    other = init_local_pki(d / "other", operators=["alice"])
    bank = OrgFolder(pki["bank_dir"])
    now = dt.datetime.now(dt.UTC)
    past, future = now - dt.timedelta(days=5), now + dt.timedelta(days=5)
    extra = {
        "expired_node": bank.issue(ROLE_NODE, "bank", days=1, file="expired", start=past, hosts=["bank"]),
        "future_node": bank.issue(ROLE_NODE, "bank", days=5, file="future", start=future, hosts=["bank"]),
        "other_name_node": bank.issue(ROLE_NODE, "bank-test", days=30, file="bank-test", hosts=["bank-test"]),
        "revoked_later_node": bank.issue(ROLE_NODE, "bank", days=30, file="node-old", hosts=["bank"]),
        "expired_operator": bank.issue(ROLE_OPERATOR, "carol", days=1, start=past),
        "future_operator": bank.issue(ROLE_OPERATOR, "dave", days=5, start=future),
    }
    bank.revoke(serial_of(pki["operator_cert:bob"]), "cessation_of_operation")  # before the nodes start
    (d / "b.csv").write_text("id,x,tag\n" + "".join(f"{i},{i * 0.5},{i % 2}\n" for i in range(6)))
    (d / "p.csv").write_text("id,y\n" + "".join(f"{i},{i * 0.25}\n" for i in range(6)))
    bank_port, platform_port = free_port(), free_port()
    configs = write_configs(d, bank_data=d / "b.csv", bank_id_column="id", bank_tag_columns=["tag"],
                            platform_data=d / "p.csv", platform_id_column="id", bank_port=bank_port,
                            platform_port=platform_port, workers=1)
    p_server, _, p_node, registry, _ = platform_cli.build_server(str(configs[1]))
    b_server, _, node, _ = bank_cli.build_server(str(configs[0]))
    try:
        yield Matrix(pki, other, extra, f"127.0.0.1:{platform_port}", f"127.0.0.1:{bank_port}", configs,
                     {"bank": node.stores.jobs, "platform": p_node.stores.jobs})
    finally:
        b_server.stop(None)
        node.shutdown()
        registry.close_all()
        p_server.stop(None)


def platform_link(m: Matrix, cert: Path | None, key: Path | None) -> GrpcPlatformLink:
    """The bank's link to the platform presenting ``cert`` (None: no client certificate at all)."""
    ca = m.pki["platform_ca"].read_bytes()
    if cert is None or key is None:
        channel = grpc.secure_channel(m.platform, grpc.ssl_channel_credentials(root_certificates=ca),
                                      options=[("grpc.ssl_target_name_override", "platform")])
        return GrpcPlatformLink(channel, node_name="bank", address=m.platform)
    channel = dial(m.platform, cert=cert.read_bytes(), key=key.read_bytes(), server_ca=ca, tls_name="platform")
    return GrpcPlatformLink(channel, node_name="bank", address=m.platform, own_cert=cert.read_bytes())


def refused_by_platform(m: Matrix, cert: Path | None, key: Path | None) -> PeerError:
    link = platform_link(m, cert, key)
    try:
        with pytest.raises(PeerError) as err:
            link.handshake()
        return err.value
    finally:
        link.close()


def control_call(m: Matrix, cert: Path | None, key: Path | None) -> str:
    """ListJobs on the bank's control API with ``cert``: "ok", or the client's one-line refusal."""
    if cert is None or key is None:
        channel = grpc.secure_channel(m.bank, grpc.ssl_channel_credentials(m.pki["bank_ca"].read_bytes()))
        own = None
    else:
        client = BankClient(m.bank, cert=cert, key=key, ca=m.pki["bank_ca"])
        channel, own = client.channel, client.own_cert
    try:
        pb_grpc.BankControlStub(channel).ListJobs(pb.ListJobsRequest(limit=1), timeout=10)
        return "ok"
    except grpc.RpcError as err:
        assert failure_kind(err) in ("gate", "refused"), f"not recognised as a refusal: {err.code()} {err.details()}"
        return f"{err.code().name}: {rpc_error_line(err, server='the bank node', address=m.bank, own_cert=own)}"
    finally:
        channel.close()


def test_platform_serves_the_bank_node(matrix: Matrix) -> None:
    link = platform_link(matrix, matrix.pki["bank_cert"], matrix.pki["bank_key"])
    assert link.handshake().node_name == "platform"
    link.close()


@pytest.mark.parametrize(("case", "code", "reason"), [
    ("none", "UNAVAILABLE", "in the TLS handshake (we presented no client certificate)"),
    ("other CA", "UNAVAILABLE", "in the TLS handshake (not signed by a CA it trusts"),
    ("expired", "UNAVAILABLE", "our certificate 'bank': it expired on"),
    ("not yet valid", "UNAVAILABLE", "our certificate 'bank': it is not valid before"),
    ("operator on the peer port", "PERMISSION_DENIED",
     ": certificate 'alice' (operator, bank) is not a node certificate"),
    ("another bank node", "PERMISSION_DENIED", "certificate 'bank-test' (node, bank) is not the expected node 'bank'"),
])
def test_platform_refuses(matrix: Matrix, case: str, code: str, reason: str) -> None:
    cert, key = {
        "none": (None, None),
        "other CA": (matrix.other["bank_cert"], matrix.other["bank_key"]),
        "expired": matrix.extra["expired_node"],
        "not yet valid": matrix.extra["future_node"],
        "operator on the peer port": (matrix.pki["operator_cert:alice"], matrix.pki["operator_key:alice"]),
        "another bank node": matrix.extra["other_name_node"],
    }[case]
    err = refused_by_platform(matrix, cert, key)
    assert err.code == code
    assert f"handshake: certificate refused by the platform node at {matrix.platform}" in str(err)
    assert reason in str(err)


def test_platform_reads_the_crl_again_when_it_changes(matrix: Matrix) -> None:
    cert, key = matrix.extra["revoked_later_node"]
    link = platform_link(matrix, cert, key)
    assert link.handshake().node_name == "platform"  # admitted: not revoked yet
    OrgFolder(matrix.pki["bank_dir"]).revoke(serial_of(cert), "key_compromise")
    POLLER.poll_all()  # what the poller does every CHECK_EVERY_S
    with pytest.raises(PeerError) as err:
        link.handshake()  # the same connection: the gate checks every call
    assert err.value.code == "UNAUTHENTICATED"
    assert "certificate 'bank' (node, bank) is refused: it was revoked on" in str(err.value)
    link.close()
    # The bank node's current certificate is unaffected.
    good = platform_link(matrix, matrix.pki["bank_cert"], matrix.pki["bank_key"])
    assert good.handshake().node_name == "platform"
    good.close()


def test_control_api_serves_operators(matrix: Matrix) -> None:
    assert control_call(matrix, matrix.pki["operator_cert:alice"], matrix.pki["operator_key:alice"]) == "ok"


@pytest.mark.parametrize(("case", "reason"), [
    ("none", "UNAVAILABLE: certificate refused by the bank node at {addr} in the TLS handshake (we presented no "
             "client certificate)"),
    ("other CA", "UNAVAILABLE: certificate refused by the bank node at {addr} in the TLS handshake (not signed"),
    ("platform certificate", "UNAVAILABLE: certificate refused by the bank node at {addr} in the TLS handshake"),
    ("expired", "UNAVAILABLE: certificate refused by the bank node at {addr} in the TLS handshake (our "
                "certificate 'carol': it expired on"),
    ("not yet valid", "(our certificate 'dave': it is not valid before"),
    ("bank node certificate", "PERMISSION_DENIED: certificate refused by the bank node at {addr}: certificate "
                              "'bank' (node, bank) is not an operator certificate"),
    ("revoked", "UNAUTHENTICATED: certificate refused by the bank node at {addr}: certificate 'bob' (operator, "
                "bank) is refused: it was revoked on"),
])
def test_control_api_refuses(matrix: Matrix, case: str, reason: str) -> None:
    cert, key = {
        "none": (None, None),
        "other CA": (matrix.other["operator_cert:alice"], matrix.other["operator_key:alice"]),
        "platform certificate": (matrix.pki["platform_cert"], matrix.pki["platform_key"]),
        "expired": matrix.extra["expired_operator"],
        "not yet valid": matrix.extra["future_operator"],
        "bank node certificate": (matrix.pki["bank_cert"], matrix.pki["bank_key"]),
        "revoked": (matrix.pki["operator_cert:bob"], matrix.pki["operator_key:bob"]),
    }[case]
    assert reason.format(addr=matrix.bank) in control_call(matrix, cert, key)


def test_the_gates_refusals_are_audit_rows(matrix: Matrix) -> None:
    """Each refused call is one audit row on the refusing node: the certificate's name, role and serial and the
    method, nothing of the request. Admitted calls and TLS refusals (no handler ran) leave none."""
    before = {side: len(jobs.audit_events(event="call refused")) for side, jobs in matrix.audit.items()}
    bob = (matrix.pki["operator_cert:bob"], matrix.pki["operator_key:bob"])
    assert control_call(matrix, *bob).startswith("UNAUTHENTICATED")
    assert control_call(matrix, matrix.pki["bank_cert"], matrix.pki["bank_key"]).startswith("PERMISSION_DENIED")
    assert control_call(matrix, matrix.pki["operator_cert:alice"], matrix.pki["operator_key:alice"]) == "ok"
    assert control_call(matrix, *matrix.extra["expired_operator"]).startswith("UNAVAILABLE")  # the TLS layer's
    refused_by_platform(matrix, *matrix.extra["other_name_node"])
    rows = matrix.audit["bank"].audit_events(event="call refused")[before["bank"]:]
    assert [(r.job_id, r.actor, r.detail, r.outcome) for r in rows] == [
        (None, "bob", f"/fedprofile.v1.BankControl/ListJobs; operator certificate, serial "
                      f"{serial_of(bob[0]):x}; revoked", "refused (UNAUTHENTICATED)"),
        (None, "bank", f"/fedprofile.v1.BankControl/ListJobs; node certificate, serial "
                       f"{serial_of(matrix.pki['bank_cert']):x}; wrong role or name", "refused (PERMISSION_DENIED)")]
    rows = matrix.audit["platform"].audit_events(event="call refused")[before["platform"]:]
    assert [(r.actor, r.detail, r.outcome) for r in rows] == [
        ("bank-test", f"/fedprofile.v1.Node/Handshake; node certificate, serial "
                      f"{serial_of(matrix.extra['other_name_node'][0]):x}; wrong role or name",
         "refused (PERMISSION_DENIED)")]


def test_bank_cli_names_the_refusal(matrix: Matrix, capsys: pytest.CaptureFixture[str]) -> None:
    bank_config = str(matrix.configs[0])
    bob = ["--cert", str(matrix.pki["operator_cert:bob"]), "--key", str(matrix.pki["operator_key:bob"])]
    assert bank_cli.main(["jobs", "--config", bank_config, *bob]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"bank-node jobs: certificate refused by the bank node at {matrix.bank}: ")
    assert "'bob' (operator, bank) is refused: it was revoked on" in err
    assert bank_cli.main(["status", "--config", bank_config, *bob]) == 1
    assert capsys.readouterr().err.startswith(f"bank-node status: certificate refused by the bank node at {matrix.bank}: ")
    alice = ["--cert", str(matrix.pki["operator_cert:alice"])]  # the key is found beside it
    assert bank_cli.main(["jobs", "--config", bank_config, *alice]) == 0
    matrix.pki["operator_key:alice"].chmod(0o640)
    try:
        assert bank_cli.main(["jobs", "--config", bank_config, *alice]) == 2
        assert "alice.key: private key has mode 640; run `chmod 600" in capsys.readouterr().err
    finally:
        matrix.pki["operator_key:alice"].chmod(0o600)


def test_bank_checks_the_platform_certificate_against_its_crl(matrix: Matrix, tmp_path: Path) -> None:
    """The last test of the module: it revokes the platform's node certificate."""
    bank_config = bank_cli.load_config(matrix.configs[0], expected_role="bank")
    link = GrpcPlatformLink(
        dial(matrix.platform, cert=matrix.pki["bank_cert"].read_bytes(), key=matrix.pki["bank_key"].read_bytes(),
             server_ca=matrix.pki["platform_ca"].read_bytes(), tls_name="platform"),
        node_name="bank", address=matrix.platform,
        server_check=bank_cli.platform_certificate_check(bank_config))
    assert link.connect(timeout_s=10) == "platform"
    OrgFolder(matrix.pki["platform_dir"]).revoke(serial_of(matrix.pki["platform_cert"]))
    POLLER.poll_all()  # what the poller does every CHECK_EVERY_S
    with pytest.raises(PeerError) as err:
        link.connect(timeout_s=10)
    assert err.value.code == "PERMISSION_DENIED"
    assert (f"the platform node at {matrix.platform} is refused by this bank node: its certificate 'platform' "
            "(node, platform) is refused: it was revoked on") in str(err.value)
    link.close()


def test_insecure_dev_only_on_loopback(matrix: Matrix, tmp_path: Path) -> None:
    bank, platform = (tmp_path / "bank.toml", tmp_path / "platform.toml")
    shutil.copy(matrix.configs[0], bank)
    shutil.copy(matrix.configs[1], platform)
    text = platform.read_text().replace('listen = "127.0.0.1:', 'listen = "0.0.0.0:')
    platform.write_text(text)
    with pytest.raises(ConfigError, match=r"\[node\] listen = '0.0.0.0:\d+': --insecure-dev .* runs only on "
                                          "loopback"):
        platform_cli.build_server(str(platform), insecure_dev=True)
    bank.write_text(bank.read_text().replace('address = "127.0.0.1:', 'address = "10.1.2.3:'))
    with pytest.raises(ConfigError, match=r"\[peer\] address = '10.1.2.3:\d+': --insecure-dev"):
        bank_cli.build_server(str(bank), insecure_dev=True)
    assert bank_cli.main(["jobs", "--config", str(bank), "--insecure-dev"]) == 2


def test_a_node_will_not_start_on_an_unusable_certificate(matrix: Matrix, caplog: pytest.LogCaptureFixture) -> None:
    config = bank_cli.load_config(matrix.configs[1], expected_role="platform")
    assert config.tls is not None
    for case, message in (("expired_node", "it expired on"), ("future_node", "it is not valid before")):
        cert, key = matrix.extra[case]
        with pytest.raises(ConfigError, match=f"this node's certificate cannot be used: {message}"):
            read_tls_files(replace(config, tls=replace(config.tls, cert=cert, key=key)))
    cert, key = OrgFolder(matrix.pki["bank_dir"]).issue(ROLE_NODE, "bank", days=10, file="soon", hosts=["bank"])
    with caplog.at_level("WARNING"):
        read_tls_files(replace(config, tls=replace(config.tls, cert=cert, key=key)))
    assert "this node's certificate expires on" in caplog.text and "fedprofile-certs node" in caplog.text
