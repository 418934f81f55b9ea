"""Who is calling: the caller's identity from its certificate, revocation lists, and the gate on every call.

A certificate made by ``fedprofile-certs`` carries its holder's role in the subject's organisational unit
(``OU=node`` for a node, ``OU=operator`` for a person) and its name in the common name; the organisation
is the subject's ``O``. Nothing a peer *says* (the role and name in ``Handshake``) decides what it may do:
only its certificate does, checked on every call by :class:`CertificateGate`, a gRPC server interceptor
installed on both nodes' servers.

gRPC Python cannot check a certificate revocation list itself, so the gate does: it reads the serial of
the caller's certificate and looks it up in the CRL of the CA that issued it (:class:`CrlFile`), which is
read again when the file changes: a background thread (``party_common.watch.POLLER``) looks at its ``stat``
every ``CHECK_EVERY_S``, so a call makes no system call for it and a new CRL takes effect within that time. A CRL that cannot be read or whose signature is wrong refuses every
certificate of that CA until it is fixed (fail closed).

Audit code asks :func:`caller_identity` for the name and role of whoever made the current call.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from party_common.watch import POLLER, is_recent

log = logging.getLogger(__name__)

ROLE_NODE = "node"
ROLE_OPERATOR = "operator"
ROLES = (ROLE_NODE, ROLE_OPERATOR)
INSECURE_ROLE = "insecure-dev"


@dataclass(frozen=True)
class Identity:
    """A caller as its certificate names it (``serial`` None: a plaintext ``--insecure-dev`` caller)."""

    name: str
    role: str
    org: str
    serial: int | None
    issuer: str

    def describe(self) -> str:
        if self.serial is None:
            return f"an unauthenticated {INSECURE_ROLE} caller"
        return f"certificate '{self.name}' ({self.role or 'no role'}, {self.org or 'no organisation'})"


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    values = name.get_attributes_for_oid(oid)
    value = values[0].value if values else ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def identity_of(cert: x509.Certificate) -> Identity:
    return Identity(name=_attr(cert.subject, NameOID.COMMON_NAME),
                    role=_attr(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME),
                    org=_attr(cert.subject, NameOID.ORGANIZATION_NAME),
                    serial=cert.serial_number, issuer=cert.issuer.rfc4514_string())


@functools.lru_cache(maxsize=256)
def _parse_pem(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


_cached_identity = functools.lru_cache(maxsize=256)(identity_of)  # 10 us a call otherwise, on every call


def peer_certificate(context: grpc.ServicerContext) -> x509.Certificate | None:
    """The certificate the caller presented in the TLS handshake, or None on a plaintext connection."""
    pems = (context.auth_context() or {}).get("x509_pem_cert")
    return _parse_pem(pems[0]) if pems else None


INSECURE_IDENTITY = Identity(name=INSECURE_ROLE, role=INSECURE_ROLE, org="", serial=None, issuer="")


def caller_identity(context: grpc.ServicerContext) -> Identity:
    """Name and role of the current call's caller, from its certificate (the gate already admitted it)."""
    cert = peer_certificate(context)
    return INSECURE_IDENTITY if cert is None else _cached_identity(cert)


def is_loopback_peer(peer: str) -> bool:
    """Whether a gRPC peer string ("ipv4:127.0.0.1:5000", "ipv6:[::1]:5000", "unix:...") is this machine."""
    kind, _, rest = peer.partition(":")
    if kind == "unix":
        return True
    if kind not in ("ipv4", "ipv6"):
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None  # ::ffff:127.0.0.1
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def is_loopback_address(address: str) -> bool:
    """Whether a host:port names only this machine (127.0.0.0/8, ::1 or localhost; never 0.0.0.0)."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class CrlError(Exception):
    """A CRL file that cannot be trusted; the gate refuses the CA's certificates until it is fixed."""


class CrlFile:
    """One CA's certificate revocation list on disk, read again whenever the file changes.

    The CRL must be signed by ``ca_pem``'s key; ``revocation(cert)`` answers for certificates that CA issued.
    """

    def __init__(self, path: Path, ca_pem: bytes) -> None:
        self.path = Path(path)
        self._ca = x509.load_pem_x509_certificate(ca_pem)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int, int] | None = None
        self._revoked: dict[int, dt.datetime] = {}
        self._error: str | None = None
        self._next_update: dt.datetime | None = None
        self._stale_warned = False
        self.reload_if_changed()
        if self._error:
            raise CrlError(self._error)
        POLLER.add(self)

    @property
    def issuer(self) -> x509.Name:
        return self._ca.subject

    @property
    def next_update(self) -> dt.datetime | None:
        """When the CRL read last says its CA signs the next one (None: it does not say)."""
        return self._next_update

    def reload_if_changed(self) -> None:
        """Read the file again if its stamp changed (or is too recent to tell: ``party_common.watch``)."""
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
        except OSError as err:
            stamp, problem = (0, 0, 0, 0), f"CRL {self.path} cannot be read: {err.strerror}"
        else:
            problem = None
        with self._lock:
            if stamp == self._stamp and not is_recent(stamp):
                return
            before = (self._error, self._revoked)
            self._stamp = stamp
            if problem is None:
                try:
                    self._revoked = self._read()
                except CrlError as err:
                    problem = str(err)
            self._error = problem
            if (self._error, self._revoked) == before:  # read again for a recent stamp: nothing new
                return
            self._stale_warned = False
        if problem:
            log.error("%s; refusing every certificate of %s until it is fixed", problem,
                      self.issuer.rfc4514_string())
        else:
            log.info("CRL %s loaded: %d revoked certificate(s)", self.path, len(self._revoked))

    def poll(self) -> None:
        """The poller's call (``party_common.watch``): :meth:`reload_if_changed`."""
        self.reload_if_changed()

    def _read(self) -> dict[int, dt.datetime]:
        data = self.path.read_bytes()
        try:
            crl = (x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----")
                   else x509.load_der_x509_crl(data))
        except ValueError as err:
            raise CrlError(f"CRL {self.path} is not a valid CRL: {err}") from err
        if crl.issuer != self._ca.subject:
            raise CrlError(f"CRL {self.path} was issued by {crl.issuer.rfc4514_string()}, "
                           f"not by the CA {self._ca.subject.rfc4514_string()}")
        if not crl.is_signature_valid(self._ca.public_key()):  # type: ignore[arg-type]
            raise CrlError(f"CRL {self.path} is not signed by the CA {self._ca.subject.rfc4514_string()}")
        self._next_update = crl.next_update_utc
        return {r.serial_number: r.revocation_date_utc for r in crl}

    def revocation(self, cert: x509.Certificate) -> str | None:
        """Why ``cert`` must be refused (revoked, or this CRL is unusable), or None."""
        with self._lock:
            if self._error:
                return f"{self._error}; no certificate of that CA is accepted meanwhile"
            revoked_at = self._revoked.get(cert.serial_number)
            stale = (not self._stale_warned and self._next_update is not None
                     and self._next_update < dt.datetime.now(dt.UTC))
            if stale:
                self._stale_warned = True
        if stale:
            log.warning("CRL %s is past its next update (%s): refresh it with `fedprofile-certs crl`", self.path,
                        self._next_update)
        if revoked_at is None:
            return None
        return f"it was revoked on {revoked_at:%Y-%m-%d %H:%M} UTC (serial {cert.serial_number:x}, CRL {self.path.name})"


Rule = Callable[[Identity], "str | None"]


def node_rule(expected_name: str) -> Rule:
    """Admit only the peer node whose certificate names ``expected_name`` (the platform's rule)."""

    def rule(who: Identity) -> str | None:
        if who.role != ROLE_NODE:
            return f"{who.describe()} is not a node certificate; only the node '{expected_name}' may call"
        if who.name != expected_name:
            return f"{who.describe()} is not the expected node '{expected_name}'"
        return None

    return rule


def operator_rule(who: Identity) -> str | None:
    """Admit only operator (person) certificates (the bank control API's rule)."""
    if who.role != ROLE_OPERATOR:
        return f"{who.describe()} is not an operator certificate; the control API serves only operators"
    return None


# The standard health service: a load balancer's probe may call it with any certificate the TLS layer accepted
# (the node's CA, not revoked) when a gate is built with ``open_health`` (the bank's control port).
HEALTH_METHODS = "/grpc.health.v1.Health/"

# How a gate's refusal begins ("refused by the bank node: ..."): clients tell it from other refusals by it.
GATE_REFUSAL = "refused by the {node}: "


@dataclass(frozen=True)
class Refusal:
    """A call the gate refused, as :class:`CertificateGate` reports it to its ``on_refusal`` (the audit log):
    the method, the caller's certificate (None: no certificate), the status, the gate's message and a short
    data-free reason ("wrong role or name", "revoked", "CRL unusable", "no client certificate", ...)."""

    method: str
    who: Identity | None
    code: grpc.StatusCode
    why: str
    reason: str


class CertificateGate(grpc.ServerInterceptor):
    """Checks every call before its handler runs: the caller's certificate role and name (``rule``) and the
    CRLs; with ``insecure=True`` (``--insecure-dev``, plaintext) it admits only callers on this machine.

    A refusal ends the call with UNAUTHENTICATED (revoked, CRL unusable, no certificate) or PERMISSION_DENIED
    (wrong role or name) and a message that starts with which node refused; it is logged, and handed to
    ``on_refusal`` (the node's audit log: ``party_common.audit.record_refusal``) as a :class:`Refusal`.
    """

    def __init__(self, node: str, rule: Rule, crls: Sequence[CrlFile] = (), *, insecure: bool = False,
                 on_refusal: Callable[[Refusal], None] | None = None, open_health: bool = False) -> None:
        self.node = node
        self._open_health = open_health
        self._rule = rule
        self._crls = list(crls)
        self._insecure = insecure
        self._on_refusal = on_refusal

    def refusal(self, context: grpc.ServicerContext) -> tuple[grpc.StatusCode, str] | None:
        """(status, message) if this call must be refused, else None."""
        found = self.check(context, method="")
        return None if found is None else (found.code, found.why)

    def check(self, context: grpc.ServicerContext, *, method: str) -> Refusal | None:
        """The :class:`Refusal` of a call to ``method``, or None when the caller is admitted."""
        cert = peer_certificate(context)
        if cert is None:
            if self._insecure and is_loopback_peer(context.peer()):
                return None
            if self._insecure:
                why, reason = "--insecure-dev serves callers on this machine only", "not on this machine"
            else:
                why, reason = "the call carries no client certificate", "no client certificate"
            return Refusal(method, None, grpc.StatusCode.UNAUTHENTICATED, why, reason)
        who = _cached_identity(cert)
        for crl in self._crls:
            if crl.issuer == cert.issuer and (why := crl.revocation(cert)):
                reason = "revoked" if why.startswith("it was revoked") else "CRL unusable"
                return Refusal(method, who, grpc.StatusCode.UNAUTHENTICATED, f"{who.describe()} is refused: {why}",
                               reason)
        if self._open_health and method.startswith(HEALTH_METHODS):
            return None  # SERVING or NOT_SERVING is all it answers; the certificate's role does not matter
        if why := self._rule(who):
            return Refusal(method, who, grpc.StatusCode.PERMISSION_DENIED, why, "wrong role or name")
        return None

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                return handler._replace(**{kind: self._guard(behaviour, method)})
        return handler  # pragma: no cover - a handler always has one behaviour

    def _guard(self, behaviour: Callable[..., Any], method: str) -> Callable[..., Any]:
        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            refused = self.check(context, method=method)
            if refused is not None:
                log.warning("refused %s from %s: %s", method, context.peer(), refused.why)
                if self._on_refusal is not None:
                    try:
                        self._on_refusal(refused)
                    except Exception as err:  # the call is refused all the same
                        log.error("recording the refusal of %s failed: %s", method, type(err).__name__)
                context.abort(refused.code, GATE_REFUSAL.format(node=self.node) + refused.why)
            return behaviour(request, context)

        return guarded


def server_certificate(address: str, *, server_name: str | None, ca_pem: bytes, cert_path: Path, key_path: Path,
                       timeout_s: float = 10.0) -> x509.Certificate:
    """The certificate a TLS server at ``address`` presents (verified against ``ca_pem`` and ``server_name``).

    gRPC Python does not show a client the server's certificate, so the bank opens one plain TLS connection
    (with its own client certificate, as gRPC does) to read it: the caller checks role and revocation.
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    context = ssl.create_default_context(cadata=ca_pem.decode())
    context.load_cert_chain(cert_path, key_path)
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock, \
            context.wrap_socket(sock, server_hostname=server_name or host) as tls:
        der = tls.getpeercert(binary_form=True)
    if not der:  # pragma: no cover - a verified TLS server always presents one
        raise ssl.SSLError("the server presented no certificate")
    return x509.load_der_x509_certificate(der)


def check_server(cert: x509.Certificate, *, crl: CrlFile | None, expected_name: str | None = None) -> Identity:
    """The peer node's certificate as an identity, or :class:`CertificateRefused` saying why it is not one."""
    who = identity_of(cert)
    if who.role != ROLE_NODE:
        raise CertificateRefused(f"its {who.describe()} is not a node certificate")
    if expected_name and who.name != expected_name:
        raise CertificateRefused(f"its {who.describe()} is not the expected node '{expected_name}'")
    if crl is not None and crl.issuer == cert.issuer and (why := crl.revocation(cert)):
        raise CertificateRefused(f"its {who.describe()} is refused: {why}")
    return who


class CertificateRefused(Exception):
    """The peer's certificate is not acceptable (wrong role or name, or revoked)."""


def validity_problem(cert: x509.Certificate, now: dt.datetime | None = None) -> str | None:
    """Why ``cert`` is outside its validity period, or None."""
    now = now or dt.datetime.now(dt.UTC)
    if now < cert.not_valid_before_utc:
        return f"it is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    if now > cert.not_valid_after_utc:
        return f"it expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    return None


__all__ = ["CertificateGate", "CertificateRefused", "CrlError", "CrlFile", "GATE_REFUSAL", "INSECURE_IDENTITY",
           "Identity", "ROLES", "ROLE_NODE", "ROLE_OPERATOR", "Refusal", "caller_identity", "check_server",
           "identity_of", "is_loopback_address", "is_loopback_peer", "node_rule", "operator_rule", "peer_certificate",
           "server_certificate", "validity_problem"]
