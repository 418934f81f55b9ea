"""What both node processes share: logging, TLS files, data loading from config, the server and its serve loop."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import signal
import stat
import sys
import threading
from collections.abc import Callable
from typing import NamedTuple

import grpc
from cryptography import x509
from grpc_health.v1.health import HealthServicer

from party_common.audit import record_refusal
from party_common.auth import (
    CertificateGate,
    CrlError,
    CrlFile,
    is_loopback_address,
    node_rule,
    operator_rule,
    validity_problem,
)
from party_common.config import ConfigError, NodeConfig
from party_common.data_loading import load_party_data
from party_common.prometheus_metrics import JobRows, start_metrics
from party_common.storage import JobStore
from party_common.transport import add_health, bind, make_server, server_credentials
from protocols.party_data import PartyData

log = logging.getLogger(__name__)

INSECURE_WARNING = (
    "WARNING: --insecure-dev: this node talks PLAINTEXT gRPC with no client certificates, on loopback only. "
    "Anyone on this machine can read and inject protocol messages. Never use this outside a laptop."
)


def setup_logging(level: str = "INFO") -> None:
    # Log lines carry counts, job IDs, steps and timings only; never customer IDs, features, labels or keys.
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("grpc").setLevel(logging.WARNING)


class TlsFiles(NamedTuple):
    cert: bytes
    key: bytes
    peer_ca: bytes
    client_ca: bytes | None


EXPIRY_WARNING = dt.timedelta(days=30)


def read_tls_files(config: NodeConfig) -> TlsFiles:
    """The node's TLS material as bytes; refuses a private key readable by others and a certificate outside
    its validity period, and warns when the certificate expires within 30 days."""
    if config.tls is None:
        raise ConfigError(f"{config.source}: missing section [tls]")
    mode = stat.S_IMODE(os.stat(config.tls.key).st_mode)
    if mode & 0o077:
        raise ConfigError(f"{config.tls.key}: private key has mode {mode:o}; run `chmod 600 {config.tls.key}`")
    cert = config.tls.cert.read_bytes()
    try:
        parsed = x509.load_pem_x509_certificate(cert)
    except ValueError as err:
        raise ConfigError(f"{config.tls.cert}: not a PEM certificate ({err})") from err
    rotate = "issue a new one under a new name (`fedprofile-certs node NAME --dir DIR --file NEW`)"
    if problem := validity_problem(parsed):
        raise ConfigError(f"{config.tls.cert}: this node's certificate cannot be used: {problem}; {rotate}")
    if parsed.not_valid_after_utc - dt.datetime.now(dt.UTC) < EXPIRY_WARNING:
        log.warning("%s: this node's certificate expires on %s; %s and point [tls] cert at it", config.tls.cert,
                    f"{parsed.not_valid_after_utc:%Y-%m-%d %H:%M} UTC", rotate)
    client_ca = config.tls.client_ca.read_bytes() if config.tls.client_ca else None
    return TlsFiles(cert, config.tls.key.read_bytes(), config.tls.peer_ca.read_bytes(), client_ca)


def check_insecure_dev(config: NodeConfig) -> None:
    """``--insecure-dev`` is for one machine: refuse a listen or peer address that is not loopback."""
    for where, address in (("[node] listen", config.listen), ("[peer] address", config.peer_address)):
        if address and not is_loopback_address(address):
            raise ConfigError(f"{config.source} {where} = '{address}': --insecure-dev (plaintext, no client "
                              "certificates) runs only on loopback (127.0.0.1, ::1 or localhost); use mutual TLS "
                              "for any other address")


def node_gate(config: NodeConfig, *, insecure: bool, audit: JobStore | None = None) -> CertificateGate:
    """The check on every call to this node: the platform serves only the bank node's certificate (the name
    in its ``[peer] tls_name``), the bank's control API only operator certificates; both check the CRL of
    the CA their callers' certificates come from. ``insecure``: loopback callers only. Each refusal is an
    audit row in ``audit`` (the node's job store; ``party_common.audit.record_refusal``)."""
    label = f"{config.role} node"
    on_refusal = None if audit is None else functools.partial(record_refusal, audit)
    if config.role == "platform":
        rule = node_rule(config.peer_tls_name or "")
        crl, ca = (config.tls.peer_crl, config.tls.peer_ca) if config.tls else (None, None)
    else:
        rule = operator_rule
        crl, ca = (config.tls.client_crl, config.tls.client_ca) if config.tls else (None, None)
    # The bank's control port answers health checks to any certificate of its CA (a load balancer's probe).
    kw = {"on_refusal": on_refusal, "open_health": config.role == "bank"}
    if insecure:
        return CertificateGate(label, rule, insecure=True, **kw)
    log.info("serving only %s", f"the bank node's certificate '{config.peer_tls_name}'" if config.role == "platform"
             else "operator certificates of the bank's CA")
    if crl is None or ca is None:
        key = "peer_crl" if config.role == "platform" else "client_crl"
        log.warning("%s [tls] has no '%s': revoked certificates of the callers' CA would be accepted",
                    config.source, key)
        return CertificateGate(label, rule, **kw)
    try:
        return CertificateGate(label, rule, [CrlFile(crl, ca.read_bytes())], **kw)
    except CrlError as err:
        raise ConfigError(f"{config.source} [tls]: {err}") from err


def start_node_server(config: NodeConfig, add_services: Callable[[grpc.Server], None], services: list[str], *,
                      tls: TlsFiles | None, client_ca: bytes | None,
                      audit: JobStore | None = None) -> tuple[grpc.Server, HealthServicer, int]:
    """A started gRPC server on the config's listen address with health checking for ``services``.

    ``tls=None`` (``--insecure-dev`` only, loopback only) serves plaintext; otherwise only clients whose
    certificate ``client_ca`` signed complete the TLS handshake, and :func:`node_gate` checks every call
    (its refusals audited in ``audit``).
    """
    if tls is None:
        check_insecure_dev(config)
    server = make_server(interceptors=[node_gate(config, insecure=tls is None, audit=audit)])
    add_services(server)
    health = add_health(server, services)
    creds = None
    if tls is not None:
        if client_ca is None:
            raise ConfigError(f"{config.source}: no CA to check clients against")
        creds = server_credentials(tls.cert, tls.key, client_ca)
    port = bind(server, config.listen, creds)
    server.start()
    return server, health, port


def load_node_data(config: NodeConfig) -> PartyData:
    d = config.data
    return load_party_data(d.path, id_column=d.id_column, tag_columns=list(d.tag_columns),
                           feature_columns=list(d.feature_columns) if d.feature_columns is not None else None,
                           fill_missing=d.fill_missing, spill_dir=config.state_dir / "tmp",
                           in_memory_mb=d.in_memory_mb)


def serve_with_metrics(prog: str, server: grpc.Server, health: HealthServicer, on_stop: Callable[[], None], *,
                       metrics_listen: str | None, jobs: JobRows, ready: Callable[[], None] | None = None,
                       grace_s: float = 5.0) -> int:
    """A started node: its Prometheus endpoint on ``[metrics] listen`` (none when unset), ``ready`` (e.g. the
    bank's first connection to the platform), then serve until SIGTERM/SIGINT and stop both.

    The exit code: 2 when the metrics endpoint cannot listen (said on stderr after ``prog``; the node and its
    server are stopped), else 0."""
    try:
        metrics = start_metrics(metrics_listen, jobs)
    except ConfigError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        on_stop()
        server.stop(0)
        return 2
    try:
        if ready is not None:
            ready()
        run_until_signalled(server, health, on_stop, grace_s=grace_s)
    finally:
        if metrics is not None:
            metrics.close()
    return 0


def run_until_signalled(server: grpc.Server, health: HealthServicer, on_stop: Callable[[], None], *,
                        grace_s: float = 5.0) -> None:
    """Serve until SIGTERM/SIGINT, then report NOT_SERVING, let calls finish for ``grace_s``, clean up."""
    stopping = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        log.info("received %s; shutting down", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    stopping.wait()
    health.enter_graceful_shutdown()
    on_stop()
    server.stop(grace_s).wait()
    log.info("stopped")
