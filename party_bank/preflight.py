"""`bank-node preflight`: the bank's set-up checked before its first job (``party_common.preflight`` has the
checks both nodes share), plus what only the bank can check: the operator's certificate, and the platform
node over mutual TLS (reachable, its role and name from its certificate, the handshake). With
``--platform-config`` (a trial on one machine, or the file the platform's operator sent) the platform's own
config, data and ``[policy]`` are checked against the bank's default job too.

Run it on the node's machine as the node's user: it reads the node's key to connect as the node does. It
needs no running bank node and starts no job, except with ``--overlap``: then the serving bank node runs a
cardinality-only PSI (a job like any other; both nodes learn the count, nothing else) for the estimated
overlap. Exit code 1 when a check fails.
"""

from __future__ import annotations

import argparse
import ssl
import sys
import time
from collections.abc import Callable

import grpc
from cryptography import x509

from party_bank import cli_files
from party_bank.client import BankClient, JobFailed
from party_bank.grpc_link import GrpcPlatformLink
from party_common.auth import CertificateRefused, CrlError, CrlFile, check_server, server_certificate
from party_common.config import ConfigError, NodeConfig
from party_common.grpc_errors import rpc_error_line
from party_common.preflight import (
    FAIL,
    OK,
    WARN,
    Checks,
    DataFacts,
    check_certificates,
    check_config,
    check_data,
    check_id_match,
    check_policy,
)
from party_common.transport import TransportError, dial
from protocols.errors import PeerError
from protocols.vfl_lr import MIN_ROWS

PEER_TIMEOUT_S = 10.0
OVERLAP_WAIT_S = 600.0
FEW_SHARED = 0.05  # shared customers below this share of the bank's: probably IDs that do not match


def add_parser(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = add("preflight", "check this node's set-up before the first job: config, data (empty and constant columns, "
            "labels per tag), certificates and keys, the platform over mutual TLS and its policy; one table, "
            "exit code 1 when a check fails")
    p.add_argument("--platform-config", help="the platform node's config too (on this machine): its data, "
                   "certificates and [policy] against the bank's default job")
    p.add_argument("--json", action="store_true", help="the checks as JSON (name, status, detail, fix)")
    p.add_argument("--timeout", type=float, default=PEER_TIMEOUT_S, help="seconds to wait for the platform")
    p.add_argument("--overlap", action="store_true", help="with the bank node serving: a cardinality-only PSI "
                   "(both nodes learn how many customers they share, nothing else; a job like any other) for the "
                   "estimated overlap")
    p.add_argument("--overlap-wait", type=float, default=OVERLAP_WAIT_S, help="seconds to wait for that PSI")


def check_operator(checks: Checks, config: NodeConfig, args: argparse.Namespace) -> None:
    try:
        cert, _ = cli_files.operator_credentials(config, args)
    except ConfigError as err:
        checks.add("operator certificate", FAIL, str(err), "the commands besides serve call the node with it")
        return
    checks.add("operator certificate", OK, f"{cert} (your commands call the control API with it)")


def _platform_certificate(config: NodeConfig, ca_pem: bytes, timeout_s: float) -> x509.Certificate:
    """The platform's certificate, from a TLS handshake made as the node makes it; a refused connection is tried
    again until ``timeout_s`` (a platform node started a moment ago)."""
    tls = config.tls
    assert tls is not None
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return server_certificate(config.peer_address, server_name=config.peer_tls_name, ca_pem=ca_pem,
                                      cert_path=tls.cert, key_path=tls.key, timeout_s=timeout_s)
        except ConnectionRefusedError:
            if time.monotonic() + 0.5 > deadline:
                raise
            time.sleep(0.5)


def check_peer(checks: Checks, config: NodeConfig, timeout_s: float) -> None:
    """The platform at ``[peer] address``: the TLS handshake as the node makes it (its certificate checked
    against ``[tls] peer_ca`` and ``[peer] tls_name``), its role and revocation from that certificate, then
    the gRPC handshake (health, protocol version, features), which shows whether it accepted ours."""
    tls = config.tls
    assert tls is not None
    address, name = config.peer_address, config.peer_tls_name
    ca_pem = tls.peer_ca.read_bytes()
    try:
        cert = _platform_certificate(config, ca_pem, timeout_s)
    except ssl.SSLCertVerificationError as err:
        checks.add("platform TLS", FAIL, f"the node at {address} presents a certificate that {tls.peer_ca.name} "
                   f"does not accept: {err.verify_message}",
                   "[tls] peer_ca must be the platform organisation's ca.crt, [peer] tls_name a name in its certificate")
        return
    except ssl.SSLError as err:
        checks.add("platform TLS", FAIL, f"the TLS handshake with {address} failed: {err.reason or err}",
                   "the platform must hold this bank's ca.crt as its [tls] peer_ca")
        return
    except ConnectionRefusedError:
        checks.add("platform reachable", FAIL, f"nothing listens at {address} (tried for {timeout_s:g} s)",
                   "start the platform node (`platform-node serve`), or correct [peer] address")
        return
    except TimeoutError:
        checks.add("platform reachable", FAIL, f"no answer from {address} within {timeout_s:g} s",
                   "check [peer] address, the platform's listen address and the firewall between")
        return
    except OSError as err:
        checks.add("platform reachable", FAIL, f"{address}: {err}", "check [peer] address")
        return
    try:
        crl = CrlFile(tls.peer_crl, ca_pem) if tls.peer_crl else None
    except CrlError:
        crl = None  # its own check says why
    try:
        who = check_server(cert, crl=crl, expected_name=name)
    except CertificateRefused as err:
        checks.add("platform certificate", FAIL, f"the node at {address}: {err}",
                   "[peer] tls_name must name the platform's node certificate; a revoked one must be reissued")
        return
    checks.add("platform certificate", OK, f"{address} is '{who.name}', role {who.role} ({who.org}) by its "
               f"certificate, valid until {cert.not_valid_after_utc:%Y-%m-%d}")
    own = tls.cert.read_bytes()
    channel = dial(address, cert=own, key=tls.key.read_bytes(), server_ca=ca_pem, tls_name=name)
    link = GrpcPlatformLink(channel, node_name=config.name, address=address, own_cert=own)
    try:
        link.connect(timeout_s=timeout_s)
    except PeerError as err:
        checks.add("platform handshake", FAIL, str(err),
                   "the platform's [tls] peer_ca must be this bank's ca.crt and its [peer] tls_name "
                   "this node's certificate name")
        return
    finally:
        channel.close()
    hello = link.peer_hello
    assert hello is not None
    checks.add("platform handshake", OK, f"mutual TLS accepted both ways; '{hello.node_name}' speaks protocol "
               f"{hello.protocol_version} ({', '.join(hello.features)})")


def check_overlap(checks: Checks, config: NodeConfig, args: argparse.Namespace, bank: DataFacts | None,
                  least: int) -> None:
    """The estimated overlap: a cardinality-only PSI run by the serving bank node (ECDH: each side learns the
    count), checked against what training needs (``least``: MIN_ROWS or the platform's min_intersection)."""
    tls = config.tls
    assert tls is not None
    try:
        cert, key = cli_files.operator_credentials(config, args)
    except ConfigError:
        return  # the operator-certificate check says why
    client = BankClient(config.client_address, cert=cert, key=key, ca=tls.client_ca, tls_name=config.client_tls_name)
    try:
        client.wait_ready(timeout_s=args.timeout)
        job_id = client.submit("align", {"mode": "cardinality"}, "preflight overlap")
        job = client.wait(job_id, timeout_s=args.overlap_wait)
    except TransportError as err:
        checks.add("estimated overlap", FAIL, f"the bank node at {config.client_address} does not answer: {err}",
                   "start it (`bank-node serve`) and run preflight --overlap again")
        return
    except grpc.RpcError as err:
        checks.add("estimated overlap", FAIL, rpc_error_line(err, server="the bank node", address=client.address,
                                                               own_cert=client.own_cert, name_key="[client] tls_name"),
                   "as the message says")
        return
    except JobFailed as err:
        checks.add("estimated overlap", FAIL, str(err), f"`bank-node logs {err.job['job_id']}` shows its history")
        return
    except TimeoutError as err:
        checks.add("estimated overlap", WARN, f"{err} (is it waiting for the platform's approval?)",
                   f"follow it with `bank-node wait {job_id}`")
        return
    finally:
        client.close()
    shared = int(job["result"]["intersection_size"])
    rows = bank.rows if bank is not None else int(job["result"].get("bank_customers") or 0)
    found = f"{shared:,} shared customers ({shared / max(1, rows):.1%} of the bank's {rows:,}; job {job['job_id']})"
    if shared < least:
        checks.add("estimated overlap", FAIL, f"{found}: training needs at least {least:,}",
                   "align on more customers, or check that both files key customers the same way")
    elif shared < FEW_SHARED * rows:
        checks.add("estimated overlap", WARN, f"{found}: few for the customers the bank has",
                   "check that both files key customers the same way (ID format, national or +country phones)")
    else:
        checks.add("estimated overlap", OK, found)


def bank_preflight(args: argparse.Namespace) -> Checks:
    checks = Checks()
    config = check_config(checks, args.config, "bank")
    if config is None:
        return checks
    _, bank = check_data(checks, config)
    check_certificates(checks, config)
    check_operator(checks, config, args)
    check_peer(checks, config, args.timeout)
    platform: DataFacts | None = None
    platform_config: NodeConfig | None = None
    if args.platform_config:
        checks.scope = "platform: "  # the platform's own files, checked the same way
        platform_config = check_config(checks, args.platform_config, "platform")
        if platform_config is not None:
            _, platform = check_data(checks, platform_config)
            check_certificates(checks, platform_config)
            checks.scope = ""  # what follows is about both nodes
            if bank is not None and platform is not None:
                check_id_match(checks, bank, platform)
            check_policy(checks, platform_config.policy, released=platform_config.max_released_projections,
                         bank=bank, platform=platform, where=f"[policy] of {platform_config.source}")
    else:
        checks.add("platform policy", OK, "not checked here: the platform's operator runs `platform-node preflight` "
                   "(or pass --platform-config with its config)")
    if args.overlap:
        least = max(MIN_ROWS, (platform_config.policy.min_intersection or 0) if platform_config is not None else 0)
        check_overlap(checks, config, args, bank, least)
    return checks


def run(args: argparse.Namespace) -> int:
    if args.insecure_dev:
        print("bank-node preflight: it checks a mutual-TLS set-up, which --insecure-dev does not have; run it "
              "without --insecure-dev", file=sys.stderr)
        return 2
    checks = bank_preflight(args)
    print(checks.as_json() if args.json else checks.table(f"preflight of the bank node ({args.config})"))
    if checks.failed:
        print("bank-node preflight: a check failed; fix it as its FIX column says, then run preflight again",
              file=sys.stderr)
        return 1
    return 0


__all__ = ["add_parser", "bank_preflight", "check_overlap", "check_peer", "run"]
