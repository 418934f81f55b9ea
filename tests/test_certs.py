"""`fedprofile-certs` and the revocation list both nodes read: folders, never overwriting, CRLs, the gate's rules."""

from __future__ import annotations

import datetime as dt
import json
import stat
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from party_common.audit import record_refusal
from party_common.auth import (
    INSECURE_IDENTITY,
    ROLE_NODE,
    ROLE_OPERATOR,
    CertificateGate,
    CrlError,
    CrlFile,
    Refusal,
    caller_identity,
    identity_of,
    is_loopback_address,
    is_loopback_peer,
    node_rule,
    operator_rule,
)
from party_common.certs import CertsError, OrgFolder, init_local_pki, main, serial_of
from party_common.grpc_errors import failure_kind, peer_error, rpc_error_line, transport_summary
from party_common.storage.jobs import MemoryJobStore
from party_common.watch import POLLER


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_init_keeps_each_organisation_in_its_own_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["init", "--out", str(tmp_path / "certs"), "--operator", "alice", "--operator", "bob"], capsys)
    assert code == 0 and "operator_cert:bob" in out
    assert f"operator_cert            {tmp_path / 'certs' / 'bank' / 'operators' / 'alice.crt'}" in out
    bank, platform = tmp_path / "certs" / "bank", tmp_path / "certs" / "platform"
    assert sorted(p.name for p in platform.iterdir()) == ["ca.crt", "ca.key", "crl.pem", "index.json", "index.lock",
                                                          "node.crt", "node.key"]
    assert sorted(p.name for p in (bank / "operators").iterdir()) == ["alice.crt", "alice.key", "bob.crt", "bob.key"]
    platform_ca_key = (platform / "ca.key").read_bytes()
    assert all(p.read_bytes() != platform_ca_key for p in bank.rglob("*") if p.is_file())
    for key in [*bank.rglob("*.key"), *platform.rglob("*.key")]:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    alice = identity_of(x509.load_pem_x509_certificate((bank / "operators" / "alice.crt").read_bytes()))
    node = identity_of(x509.load_pem_x509_certificate((platform / "node.crt").read_bytes()))
    assert (alice.name, alice.role, alice.org) == ("alice", ROLE_OPERATOR, "bank")
    assert (node.name, node.role, node.org) == ("platform", ROLE_NODE, "platform")
    cert = x509.load_pem_x509_certificate((bank / "operators" / "alice.crt").read_bytes())
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 90  # operators: 90 days (+5 minutes)


def test_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "certs"
    assert run(["init", "--out", str(out)], capsys)[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, _, err = run(["init", "--out", str(out)], capsys)
    assert code == 2 and f"{out / 'bank' / 'ca.crt'} already exists" in err and "never overwrites" in err
    assert run(["operator", "alice", "--dir", str(out / "bank")], capsys)[0] == 0
    code, _, err = run(["operator", "alice", "--dir", str(out / "bank")], capsys)
    assert code == 2 and "operators/alice.key already exists" in err and "another --file name" in err
    code, _, err = run(["node", "bank", "--dir", str(out / "bank")], capsys)
    assert code == 2 and "node.key already exists" in err
    assert all(p.read_bytes() == data for p, data in before.items() if p.name not in ("index.json",))
    # Rotation: a new file name, never the old one.
    assert run(["node", "bank", "--dir", str(out / "bank"), "--file", "node-2027"], capsys)[0] == 0
    assert (out / "bank" / "node-2027.crt").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["operator", "al ice", "--dir", "{bank}"], "operator name 'al ice': use 1-64 letters"),
    (["operator", "eve", "--dir", "{bank}", "--days", "5000"], "would outlive the CA"),
    (["operator", "eve", "--dir", "{bank}", "--days", "0"], "at least one day"),
    (["operator", "eve", "--dir", "{empty}"], "holds no CA"),
    (["revoke", "--dir", "{bank}", "--serial", "abc"], "serial abc was not issued by the CA"),
    (["revoke", "--dir", "{bank}", "--serial", "xyz"], "is not a hexadecimal number"),
    (["revoke", "--dir", "{bank}", "--operator", "nobody"], "nobody.crt: no such certificate file"),
    (["revoke", "--dir", "{bank}", "--cert", "{platform_cert}"], "was not issued by the CA"),
])
def test_errors_name_what_to_change(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                    message: str) -> None:
    pki = init_local_pki(tmp_path / "certs")
    (tmp_path / "empty").mkdir()
    values = {"bank": pki["bank_dir"], "empty": tmp_path / "empty", "platform_cert": pki["platform_cert"]}
    code, _, err = run([a.format(**values) for a in argv], capsys)
    assert code == 2 and message in err


def test_revoke_signs_a_new_crl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki = init_local_pki(tmp_path / "certs", operators=["alice", "bob"])
    bank = pki["bank_dir"]
    first = x509.load_pem_x509_crl(pki["bank_crl"].read_bytes())
    assert len(list(first)) == 0
    code, out, _ = run(["revoke", "--dir", str(bank), "--operator", "alice", "--reason", "key_compromise"], capsys)
    assert code == 0 and "revoked operator 'alice'" in out
    crl = x509.load_pem_x509_crl(pki["bank_crl"].read_bytes())
    ca = x509.load_pem_x509_certificate(pki["bank_ca"].read_bytes())
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    alice = serial_of(pki["operator_cert:alice"])
    entry = crl.get_revoked_certificate_by_serial_number(alice)
    assert entry is not None and crl.get_revoked_certificate_by_serial_number(serial_of(pki["operator_cert:bob"])) is None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.key_compromise
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    code, _, err = run(["revoke", "--dir", str(bank), "--cert", str(pki["operator_cert:alice"])], capsys)
    assert code == 2 and "already revoked" in err
    assert run(["crl", "--dir", str(bank)], capsys)[0] == 0
    again = x509.load_pem_x509_crl(pki["bank_crl"].read_bytes())
    assert again.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == number + 1
    assert again.get_revoked_certificate_by_serial_number(alice) is not None
    code, out, _ = run(["list", "--dir", str(bank)], capsys)
    assert code == 0 and "alice" in out and "revoked" in out and "bob" in out
    assert json.loads((bank / "index.json").read_text())["org"] == "bank"


def test_crl_file_reloads_and_fails_closed(tmp_path: Path) -> None:
    pki = init_local_pki(tmp_path / "certs", operators=["alice"])
    other = init_local_pki(tmp_path / "other")
    ca = pki["bank_ca"].read_bytes()
    alice = x509.load_pem_x509_certificate(pki["operator_cert:alice"].read_bytes())
    crl = CrlFile(pki["bank_crl"], ca)
    assert crl.revocation(alice) is None
    OrgFolder(pki["bank_dir"]).revoke(alice.serial_number)
    POLLER.poll_all()  # what the poller does every CHECK_EVERY_S
    assert "it was revoked on" in (crl.revocation(alice) or "")
    good = pki["bank_crl"].read_bytes()
    pki["bank_crl"].write_bytes(b"-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n")
    POLLER.poll_all()  # what the poller does every CHECK_EVERY_S
    why = crl.revocation(alice) or ""
    assert "crl.pem is not a valid CRL" in why and why.endswith("no certificate of that CA is accepted meanwhile")
    pki["bank_crl"].write_bytes(other["bank_crl"].read_bytes())  # a CRL from another CA of the same name
    POLLER.poll_all()  # what the poller does every CHECK_EVERY_S
    assert "is not signed by the CA" in (crl.revocation(alice) or "")
    pki["bank_crl"].unlink()
    POLLER.poll_all()  # what the poller does every CHECK_EVERY_S
    assert "cannot be read" in (crl.revocation(alice) or "")
    pki["bank_crl"].write_bytes(good)
    POLLER.poll_all()  # what the poller does every CHECK_EVERY_S
    assert "it was revoked on" in (crl.revocation(alice) or "")
    with pytest.raises(CrlError, match="is not signed by the CA"):
        CrlFile(other["bank_crl"], ca)


class FakeContext:
    """What the gate reads of a call: the TLS auth context and the peer address."""

    def __init__(self, pem: bytes | None, peer: str = "ipv4:127.0.0.1:5000") -> None:
        self._pem, self._peer = pem, peer

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self._pem]} if self._pem else {}

    def peer(self) -> str:
        return self._peer


def test_gate_rules_and_insecure_dev(tmp_path: Path) -> None:
    pki = init_local_pki(tmp_path / "certs", operators=["alice"])
    alice, bank = pki["operator_cert:alice"].read_bytes(), pki["bank_cert"].read_bytes()
    platform_gate = CertificateGate("platform node", node_rule("bank"))
    control_gate = CertificateGate("bank node", operator_rule)
    assert platform_gate.refusal(FakeContext(bank)) is None  # type: ignore[arg-type]
    assert control_gate.refusal(FakeContext(alice)) is None  # type: ignore[arg-type]
    code, why = platform_gate.refusal(FakeContext(alice)) or (None, "")  # type: ignore[arg-type]
    assert code == grpc.StatusCode.PERMISSION_DENIED and "not a node certificate" in why
    code, why = CertificateGate("platform node", node_rule("acme")).refusal(FakeContext(bank)) or (None, "")  # type: ignore[arg-type]
    assert code == grpc.StatusCode.PERMISSION_DENIED and "not the expected node 'acme'" in why
    code, why = control_gate.refusal(FakeContext(None)) or (None, "")  # type: ignore[arg-type]
    assert code == grpc.StatusCode.UNAUTHENTICATED and "no client certificate" in why
    # --insecure-dev: plaintext callers on this machine only, never from the network.
    insecure = CertificateGate("bank node", operator_rule, insecure=True)
    assert insecure.refusal(FakeContext(None, "ipv4:127.0.0.1:6000")) is None  # type: ignore[arg-type]
    assert insecure.refusal(FakeContext(None, "ipv6:[::1]:6000")) is None  # type: ignore[arg-type]
    assert insecure.refusal(FakeContext(None, "ipv6:[::ffff:127.0.0.1]:6000")) is None  # type: ignore[arg-type]
    assert insecure.refusal(FakeContext(None, "ipv6:[::ffff:10.0.0.7]:6000")) is not None  # type: ignore[arg-type]
    code, why = insecure.refusal(FakeContext(None, "ipv4:10.0.0.7:6000")) or (None, "")  # type: ignore[arg-type]
    assert code == grpc.StatusCode.UNAUTHENTICATED and "serves callers on this machine only" in why
    assert caller_identity(FakeContext(None)) == INSECURE_IDENTITY  # type: ignore[arg-type]
    who = caller_identity(FakeContext(alice))  # type: ignore[arg-type]
    assert (who.name, who.role) == ("alice", ROLE_OPERATOR) and who.serial == serial_of(pki["operator_cert:alice"])


class Aborted(Exception):
    pass


class AbortingContext(FakeContext):
    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


def test_each_refusal_of_the_gate_is_one_audit_row_of_name_role_serial_and_method(tmp_path: Path) -> None:
    pki = init_local_pki(tmp_path / "certs", operators=["alice", "bob"])
    jobs = MemoryJobStore()
    crl = CrlFile(pki["bank_crl"], pki["bank_ca"].read_bytes())
    gate = CertificateGate("bank node", operator_rule, [crl], on_refusal=lambda r: record_refusal(jobs, r))
    handler = gate._guard(lambda request, context: "answered", "/fedprofile.v1.BankControl/Score")
    alice, bob, bank = (pki[k].read_bytes() for k in ("operator_cert:alice", "operator_cert:bob", "bank_cert"))
    OrgFolder(pki["bank_dir"]).revoke(serial_of(pki["operator_cert:bob"]))
    POLLER.poll_all()  # what the poller does every CHECK_EVERY_S
    assert handler(b"request", AbortingContext(alice)) == "answered"
    for pem in (bob, bank, None):
        with pytest.raises(Aborted):
            handler(b"request", AbortingContext(pem))
    serial = {name: f"{serial_of(pki[key]):x}" for name, key in (("bob", "operator_cert:bob"), ("bank", "bank_cert"))}
    assert [(e.job_id, e.event, e.actor, e.detail, e.outcome, e.count) for e in jobs.audit_events()] == [
        (None, "call refused", "bob", f"/fedprofile.v1.BankControl/Score; operator certificate, serial "
                                      f"{serial['bob']}; revoked", "refused (UNAUTHENTICATED)", 0),
        (None, "call refused", "bank", f"/fedprofile.v1.BankControl/Score; node certificate, serial "
                                       f"{serial['bank']}; wrong role or name", "refused (PERMISSION_DENIED)", 0),
        (None, "call refused", "(no certificate)", "/fedprofile.v1.BankControl/Score; no certificate; no client "
                                                   "certificate", "refused (UNAUTHENTICATED)", 0)]
    pki["bank_crl"].write_bytes(b"not a CRL")  # fail closed, and say so
    POLLER.poll_all()  # what the poller does every CHECK_EVERY_S
    with pytest.raises(Aborted):
        handler(b"request", AbortingContext(alice))
    assert jobs.audit_events()[-1].detail.endswith("; CRL unusable")
    # A row that cannot be written does not let the call through.
    def full_disk(refusal: Refusal) -> None:
        record_refusal(None, refusal)  # type: ignore[arg-type]  # logs, does not raise
        raise OSError("disk full")

    broken = CertificateGate("bank node", operator_rule, on_refusal=full_disk)
    with pytest.raises(Aborted, match="not an operator certificate"):
        broken._guard(lambda request, context: "answered", "/m")(b"", AbortingContext(bank))
    insecure = CertificateGate("bank node", operator_rule, insecure=True, on_refusal=lambda r: record_refusal(jobs, r))
    with pytest.raises(Aborted):
        insecure._guard(lambda request, context: "answered", "/m")(b"", AbortingContext(None, "ipv4:10.0.0.7:1"))
    assert jobs.audit_events()[-1].detail == "/m; no certificate; not on this machine"


@pytest.mark.parametrize(("address", "loopback"), [
    ("127.0.0.1:7443", True), ("127.3.4.5:1", True), ("localhost:80", True), ("[::1]:7443", True),
    ("0.0.0.0:7443", False), ("[::]:7443", False), ("10.0.0.1:7443", False), ("bank.example.com:7443", False),
])
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert is_loopback_address(address) is loopback
    peer = f"ipv4:{address}" if not address.startswith("[") else f"ipv6:{address}"
    if not address.startswith(("localhost", "bank.")):
        assert is_loopback_peer(peer) is loopback


def test_issue_refuses_unknown_folder(tmp_path: Path) -> None:
    with pytest.raises(CertsError, match="not a fedprofile-certs CA folder|holds no CA"):
        OrgFolder(tmp_path).issue(ROLE_OPERATOR, "alice", days=1)


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


CONNECTING = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:1.2.3.4:5: "
UNAVAILABLE, DENIED = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(("code", "details", "kind", "line"), [
    # The node's TLS layer refused our certificate while we connected: it does not say why.
    (UNAVAILABLE, CONNECTING + "Socket closed", "refused", "certificate refused by the platform node at A:1 in the "
     "TLS handshake (we presented no client certificate)"),
    (UNAVAILABLE, CONNECTING + "ALERT_UNKNOWN_CA", "refused", "certificate refused by the platform node at A:1 in "
     "the TLS handshake (we presented no client certificate)"),
    # A connection that dropped mid-call says "Socket closed" too: not a refusal.
    (UNAVAILABLE, "Socket closed", "unreachable", "the platform node at A:1 is unreachable: the connection was "
     "closed"),
    (UNAVAILABLE, CONNECTING + "Connection refused", "unreachable", "the platform node at A:1 is unreachable: "
     "connection refused (is the node running, on that port?)"),
    # We refused the node's certificate, or the node does not speak TLS.
    (UNAVAILABLE, CONNECTING + "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL "
     "routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate", "refusing",
     "TLS with the platform node at A:1 failed: we refused the platform node's certificate: it is not signed by "
     "the CA we trust"),
    (UNAVAILABLE, CONNECTING + "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: "
     "error:100000f7:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER", "tls",
     "TLS with the platform node at A:1 failed: it does not speak TLS (is it running with --insecure-dev?)"),
    # The node's gate refused our certificate: its own start said once.
    (DENIED, "refused by the platform node: certificate 'x' (operator, bank) is not a node certificate", "gate",
     "certificate refused by the platform node at A:1: certificate 'x' (operator, bank) is not a node "
     "certificate"),
    # A refusal that is not about certificates (the platform's policy) is not called one.
    (DENIED, "the platform's policy does not allow tag(s) t to be trained ([policy] allowed_tags: none)", None,
     "the platform node at A:1 refused the call: the platform's policy does not allow tag(s) t to be trained "
     "([policy] allowed_tags: none)"),
    (grpc.StatusCode.FAILED_PRECONDITION, "protocol 0.9", None, "protocol 0.9"),
])
def test_one_line_for_each_transport_failure(code: grpc.StatusCode, details: str, kind: str | None,
                                             line: str) -> None:
    err = FakeRpcError(code, details)
    assert failure_kind(err) == kind
    assert rpc_error_line(err, server="the platform node", address="A:1", own_cert=None) == line
    words = {"refused": "the node refused our certificate in the TLS handshake: ", "refusing": "we refused the "
             "node's certificate: ", "tls": "TLS failed: ", "unreachable": "unreachable: "}
    summary = transport_summary(details)  # what wait_healthy says, naming no node
    assert (summary is None) if kind in (None, "gate") else (summary or "").startswith(words[kind or ""])


def test_a_tls_refusal_names_our_expired_certificate_and_the_bank_link_says_the_same(tmp_path: Path) -> None:
    pki = init_local_pki(tmp_path / "pki", operators=[])
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=5)
    cert, _ = OrgFolder(pki["bank_dir"]).issue(ROLE_NODE, "bank", days=1, file="old", start=start, hosts=["bank"])
    closed = FakeRpcError(UNAVAILABLE, CONNECTING + "Socket closed")
    line = rpc_error_line(closed, server="the platform node", address="A:1", own_cert=cert.read_bytes())
    assert line.startswith("certificate refused by the platform node at A:1 in the TLS handshake (our "
                           "certificate 'bank': it expired on ")
    unknown = rpc_error_line(closed, server="the platform node", address="A:1")  # what we presented: not known
    assert unknown.endswith("(not signed by a CA it trusts, or outside its validity period: it closed the "
                            "connection without saying which)")
    assert str(peer_error(closed, "step x", address="A:1", own_cert=cert.read_bytes())) == f"step x: {line}"
    policy = FakeRpcError(DENIED, "the platform's policy does not allow model m to be scored")
    assert str(peer_error(policy, "partial scores", address="A:1")) == f"partial scores: {policy.details()}"


def check_index(folder: OrgFolder, names: set[str], crl_number: int) -> None:
    """Every certificate issued is in the index once, with its own serial, and the CRL number counts every
    signing: no read-modify-write of the index was lost."""
    index = folder.index()
    rows = index["certificates"]
    assert {r["name"] for r in rows} == names and len(rows) == len(names)
    assert len({r["serial"] for r in rows}) == len(rows)
    for r in rows:
        assert f"{serial_of(folder.path / r['file']):x}" == r["serial"]
    assert index["crl_number"] == crl_number


def test_concurrent_issuers_each_get_their_row_in_the_index(tmp_path: Path) -> None:
    folder = OrgFolder.create(tmp_path / "bank", "bank")  # CRL number 1
    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def issuer(i: int) -> None:
        start.wait()
        try:
            mine = OrgFolder(folder.path)  # as a separate process would: its own object
            for k in range(3):
                mine.issue(ROLE_OPERATOR, f"op{i}-{k}", days=5)
            mine.write_crl()
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=issuer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    check_index(folder, {f"op{i}-{k}" for i in range(6) for k in range(3)}, crl_number=1 + 6)
    assert stat.S_IMODE((folder.path / "index.lock").stat().st_mode) == 0o600


def test_concurrent_issuing_processes_each_get_their_row_in_the_index(tmp_path: Path) -> None:
    folder = OrgFolder.create(tmp_path / "bank", "bank")
    runs = [subprocess.Popen([sys.executable, "-m", "party_common.certs", "operator", f"p{i}", "--dir",
                              str(folder.path), "--days", "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for i in range(4)]
    outputs = [run.communicate(timeout=60) for run in runs]
    assert [run.returncode for run in runs] == [0] * 4, outputs
    folder.revoke(serial_of(folder.path / "operators" / "p0.crt"))
    check_index(folder, {f"p{i}" for i in range(4)}, crl_number=2)
    with pytest.raises(CertsError, match="holds no CA"):
        OrgFolder(tmp_path).write_crl()
    assert not (tmp_path / "index.lock").exists()  # no lock file outside a CA folder
