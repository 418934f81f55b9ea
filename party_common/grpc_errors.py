"""Our exceptions as gRPC statuses and back: the one place that decides which error becomes which code.

Servers call :func:`abort` (or wrap a method with :func:`translate_errors`); clients turn an
``RpcError`` into a :class:`PeerError` with :func:`peer_error`; job runners describe a failure with
:func:`describe`. Only errors raised on purpose (``protocols.errors``) reach the other side with their
message; anything else is a bug, logged here with its trace and reported as "internal error".
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable
from types import EllipsisType
from typing import Any, NoReturn, TypeVar

import grpc
from cryptography import x509

from party_common.auth import GATE_REFUSAL, identity_of, validity_problem
from party_common.policy import AwaitingApproval, PolicyRefused, QuotaExceeded
from protocols.errors import (
    CryptoError,
    FedProfileError,
    NotFound,
    PeerError,
    ProtocolError,
    SessionLost,
    UserError,
)

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# Peer errors that mean "try again later" stay UNAVAILABLE for our own caller; a peer's refusal does not.
_RETRYABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})


def status_of(err: BaseException) -> grpc.StatusCode:
    # The platform's policy: a quota is "later", a job waiting for approval "not yet", the rest "not allowed".
    if isinstance(err, QuotaExceeded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(err, AwaitingApproval):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(err, PolicyRefused):
        return grpc.StatusCode.PERMISSION_DENIED
    if isinstance(err, NotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(err, SessionLost):  # the bank resumes the job in a new session
        return grpc.StatusCode.ABORTED
    if isinstance(err, UserError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(err, ProtocolError | CryptoError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(err, PeerError):
        return grpc.StatusCode.UNAVAILABLE if err.code in _RETRYABLE else grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INTERNAL


def describe(err: BaseException, *, node: str) -> str:
    """What a caller may read about ``err``: our own message, or "internal error" for a bug."""
    if isinstance(err, FedProfileError):
        return str(err)
    return f"internal error ({type(err).__name__}) on the {node} node; see its log"


def abort(context: grpc.ServicerContext, err: BaseException, *, node: str) -> NoReturn:
    """End the call with the status that fits ``err``; a bug is logged with its trace first."""
    if not isinstance(err, FedProfileError):
        log.error("unexpected error", exc_info=err)
    context.abort(status_of(err), describe(err, node=node))
    raise AssertionError("context.abort returned")  # pragma: no cover - grpc raises


def translate_errors(node: str) -> Callable[[F], F]:
    """Decorate a unary servicer method so every exception becomes the matching status."""

    def wrap(method: F) -> F:
        @functools.wraps(method)
        def run(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return method(self, request, context)
            except Exception as err:
                if _is_abort(err):
                    raise
                abort(context, err, node=node)

        return run  # type: ignore[return-value]

    return wrap


def translate_stream_errors(node: str) -> Callable[[F], F]:
    """:func:`translate_errors` for a servicer method that yields its answers (a server stream): an exception
    raised while the stream runs ends it with the matching status."""

    def wrap(method: F) -> F:
        @functools.wraps(method)
        def run(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                yield from method(self, request, context)
            except Exception as err:
                if _is_abort(err):
                    raise
                abort(context, err, node=node)

        return run  # type: ignore[return-value]

    return wrap


def _is_abort(err: Exception) -> bool:
    # context.abort ends the call by raising a bare ``Exception()``; let it through untouched.
    return type(err) is Exception and not err.args


# gRPC's transport failures, as raw text in a status's details, in plain words: (marker, kind, what it means).
# Kinds: REFUSED (the server refused our certificate in the TLS handshake), REFUSING (we refused the server's),
# TLS (the handshake failed otherwise), UNREACHABLE. The first marker found wins. gRPC's wording of a refusal
# counts only while connecting: a connection that drops mid-call also reports "Socket closed".
REFUSED, REFUSING, TLS, UNREACHABLE = "refused", "refusing", "tls", "unreachable"
_WRONG_NAME = "it does not carry the name we check (set tls_name to a name in that certificate)"
_TRANSPORT = (
    ("Hostname Verification", REFUSING, _WRONG_NAME),
    ("No match found for server name", REFUSING, _WRONG_NAME),
    ("certificate has expired", REFUSING, "it has expired"),
    ("CERTIFICATE_VERIFY_FAILED", REFUSING, "it is not signed by the CA we trust"),
    ("ALERT_CERTIFICATE_EXPIRED", REFUSED, "it says our certificate has expired"),
    ("ALERT_CERTIFICATE_REVOKED", REFUSED, "it says our certificate is revoked"),
    ("ALERT_UNKNOWN_CA", REFUSED, "not signed by a CA it trusts"),
    ("ALERT_BAD_CERTIFICATE", REFUSED, "it calls our certificate bad"),
    ("ALERT_CERTIFICATE_REQUIRED", REFUSED, "it asked for a client certificate and got none"),
    ("Socket closed", REFUSED, "not signed by a CA it trusts, or outside its validity period: it closed the "
     "connection without saying which"),
    ("WRONG_VERSION_NUMBER", TLS, "it does not speak TLS (is it running with --insecure-dev?)"),
    ("andshake failed", TLS, "the TLS handshake failed"),
    ("Connection refused", UNREACHABLE, "connection refused (is the node running, on that port?)"),
    ("Domain name not found", UNREACHABLE, "the host name does not resolve"),
    ("hostname lookup error", UNREACHABLE, "the host name does not resolve"),
    ("No route to host", UNREACHABLE, "no route to the host"),
    ("Connection reset", UNREACHABLE, "the connection was reset (while connecting, the server may also have "
     "refused our certificate)"),
    ("Timeout occurred", UNREACHABLE, "connecting timed out"),
    ("Deadline Exceeded", UNREACHABLE, "connecting timed out"),
)
_CONNECTING = "failed to connect to all addresses"
_DROPPED = (UNREACHABLE, "the connection was closed")

# How gRPC's own transport failures begin; a status a server set on purpose (ours) begins otherwise.
_CORE_PREFIXES = (_CONNECTING, "errors resolving", "DNS resolution failed", "Socket closed",
                  "Connection reset", "Broken pipe", "Stream removed", "connections to all backends failing",
                  "empty address list", "Connection refused", "Ssl handshake", "Handshake failed", "Deadline Exceeded")


def transport_reason(details: str) -> tuple[str, str] | None:
    """``(kind, plain reason)`` for a raw transport failure (a kind of the table above), else None (also for a
    server's own message that merely mentions such a failure further on)."""
    details = details or ""
    if not details.startswith(_CORE_PREFIXES):
        return None
    for marker, kind, reason in _TRANSPORT:
        if marker in details:
            if kind == REFUSED and not details.startswith(_CONNECTING):
                return _DROPPED
            return kind, reason
    return None


_KIND_WORDS = {REFUSED: "the node refused our certificate in the TLS handshake",
               REFUSING: "we refused the node's certificate", TLS: "TLS failed", UNREACHABLE: "unreachable"}


def transport_summary(details: str) -> str | None:
    """A raw transport failure in plain words without naming the node (who and where are the caller's to
    say): "unreachable: connection refused (...)", or None when ``details`` is not one."""
    found = transport_reason(details)
    return None if found is None else f"{_KIND_WORDS[found[0]]}: {found[1]}"


def is_gate_refusal(err: grpc.RpcError) -> bool:
    """Whether ``err`` is a node's :class:`~party_common.auth.CertificateGate` refusing our certificate."""
    code = err.code() if hasattr(err, "code") else None
    details = (err.details() if hasattr(err, "details") else "") or ""
    return (code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
            and details.startswith(GATE_REFUSAL.split("{node}")[0]))


def failure_kind(err: grpc.RpcError) -> str | None:
    """"gate" (a node's gate refused our certificate), a transport kind of the table above, or None."""
    if is_gate_refusal(err):
        return "gate"
    if (err.code() if hasattr(err, "code") else None) != grpc.StatusCode.UNAVAILABLE:
        return None
    found = transport_reason((err.details() if hasattr(err, "details") else "") or "")
    return found[0] if found else None


def _clock(since: float) -> str:
    return dt.datetime.fromtimestamp(since, dt.UTC).strftime("%H:%M:%S UTC")


def _own_certificate_problem(own_cert: bytes | None | EllipsisType) -> str | None:
    """What is wrong with the certificate we presented, as far as we can tell from it alone."""
    if own_cert is ...:
        return None
    if own_cert is None:
        return "we presented no client certificate"
    cert = x509.load_pem_x509_certificate(own_cert)
    problem = validity_problem(cert)
    return f"our certificate '{identity_of(cert).name}': {problem}" if problem else None


def rpc_error_line(err: grpc.RpcError, *, server: str, address: str, own_cert: bytes | None | EllipsisType = ...,
                   since: float | None = None, timeout_s: float | None = None, name_key: str = "tls_name") -> str:
    """One plain line for a failed call to ``server`` (e.g. "the bank node") at ``address``: who refused whose
    certificate and why (the server's gate, its TLS layer, or ours), or since when it is unreachable, or the
    server's own message; never a raw dump.

    The TLS layer does not say why a server closed the connection: ``own_cert`` (the PEM we presented; None:
    we presented none; not given: not known) lets the line name our certificate when it is outside its
    validity period.
    """
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else str(err)) or ""
    if is_gate_refusal(err):
        gate = GATE_REFUSAL.format(node=server.removeprefix("the "))  # said once is enough
        return f"certificate refused by {server} at {address}: {details.removeprefix(gate)}"
    if code == grpc.StatusCode.UNAVAILABLE:
        found = transport_reason(details)
        when = f" since {_clock(since)}" if since is not None else ""
        if found and found[0] == REFUSED:
            why = _own_certificate_problem(own_cert) or found[1]
            return f"certificate refused by {server} at {address} in the TLS handshake ({why})"
        if found and found[0] == REFUSING:
            return (f"TLS with {server} at {address} failed: we refused {server}'s certificate: "
                    + found[1].replace("set tls_name", f"set {name_key}"))
        if found and found[0] == TLS:
            return f"TLS with {server} at {address} failed: {found[1]}"
        if found:
            return f"{server} at {address} is unreachable{when}: {found[1]}"
        if details and not details.startswith(_CORE_PREFIXES):  # the server's own message: it says it all
            return " ".join(details.split())
        return f"{server} at {address} is unreachable{when}: {' '.join(details.split()) or 'unavailable'}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        within = f" within {timeout_s:.0f} s" if timeout_s else " before the deadline"
        return f"{server} at {address} did not answer{within}"
    if code == grpc.StatusCode.UNAUTHENTICATED or code == grpc.StatusCode.PERMISSION_DENIED:
        return f"{server} at {address} refused the call: {details}"
    return " ".join(details.split()) or code.name.lower().replace("_", " ")


def peer_error(err: grpc.RpcError, what: str, *, address: str = "", since: float | None = None,
               own_cert: bytes | None | EllipsisType = ...) -> PeerError:
    """A client-side RpcError (a call to the platform node) as a :class:`PeerError` whose message says what
    failed and why (:func:`rpc_error_line` for a refused certificate or a transport failure)."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    if is_gate_refusal(err) or (code == grpc.StatusCode.UNAVAILABLE and (address or transport_reason(details or ""))):
        return PeerError(f"{what}: " + rpc_error_line(err, server="the platform node", address=address or "?",
                                                      own_cert=own_cert, since=since,
                                                      name_key="[peer] tls_name"), code=code.name)
    if code == grpc.StatusCode.UNAVAILABLE:
        return PeerError(f"{what}: peer unreachable ({details})", code=code.name)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return PeerError(f"{what}: peer did not answer before the deadline", code=code.name)
    return PeerError(f"{what}: {details}", code=code.name)


__all__ = ["REFUSED", "REFUSING", "TLS", "UNREACHABLE", "abort", "describe", "failure_kind", "is_gate_refusal",
           "peer_error", "rpc_error_line", "status_of", "transport_reason", "transport_summary", "translate_errors",
           "translate_stream_errors"]
