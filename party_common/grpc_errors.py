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
from typing import Any, NoReturn, TypeVar

import grpc

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


def _is_abort(err: Exception) -> bool:
    # context.abort ends the call by raising a bare ``Exception()``; let it through untouched.
    return type(err) is Exception and not err.args


# gRPC's transport failures, as raw text in a status's details, in plain words: (marker, what it means).
# "this side" dialled; "the server" answered. The first marker found wins.
_WRONG_NAME = ("this side refused the server's certificate: it does not carry the name this side checks (set "
               "tls_name to a name in that certificate)")
_TRANSPORT = (
    ("Hostname Verification", "certificate", _WRONG_NAME),
    ("No match found for server name", "certificate", _WRONG_NAME),
    ("certificate has expired", "certificate", "this side refused the server's certificate: it has expired"),
    ("CERTIFICATE_VERIFY_FAILED", "certificate", "this side refused the server's certificate: it is not signed "
     "by the CA this side trusts"),
    ("ALERT_CERTIFICATE_EXPIRED", "certificate", "the server refused this side's certificate: it has expired"),
    ("ALERT_CERTIFICATE_REVOKED", "certificate", "the server refused this side's certificate: it is revoked"),
    ("ALERT_UNKNOWN_CA", "certificate", "the server refused this side's certificate: not signed by a CA it trusts"),
    ("ALERT_BAD_CERTIFICATE", "certificate", "the server refused this side's certificate"),
    ("ALERT_CERTIFICATE_REQUIRED", "certificate", "the server asked for a client certificate and got none"),
    ("Socket closed", "certificate", "the server closed the connection during the TLS handshake: most likely it "
     "refused this side's certificate (signed by a CA it does not trust, expired or revoked)"),
    ("Connection refused", "unreachable", "connection refused (is the node running, on that port?)"),
    ("Domain name not found", "unreachable", "the host name does not resolve"),
    ("hostname lookup error", "unreachable", "the host name does not resolve"),
    ("No route to host", "unreachable", "no route to the host"),
    ("Connection reset", "unreachable", "the connection was reset"),
    ("Timeout occurred", "unreachable", "connecting timed out"),
    ("Deadline Exceeded", "unreachable", "connecting timed out"),
)


# How gRPC's own transport failures begin; a status a server set on purpose (ours) begins otherwise.
_CORE_PREFIXES = ("failed to connect to all addresses", "errors resolving", "DNS resolution failed", "Socket closed",
                  "Connection reset", "Broken pipe", "Stream removed", "connections to all backends failing",
                  "empty address list", "Connection refused", "Ssl handshake", "Handshake failed", "Deadline Exceeded")


def transport_reason(details: str) -> tuple[str, str] | None:
    """``(kind, plain reason)`` for a raw transport failure (kind "certificate" or "unreachable"), else None
    (also for a server's own message that merely mentions such a failure further on)."""
    if not (details or "").startswith(_CORE_PREFIXES):
        return None
    for marker, kind, reason in _TRANSPORT:
        if marker in (details or ""):
            return kind, reason
    return None


def _clock(since: float) -> str:
    return dt.datetime.fromtimestamp(since, dt.UTC).strftime("%H:%M:%S UTC")


def rpc_error_line(err: grpc.RpcError, *, server: str, address: str, since: float | None = None,
                   timeout_s: float | None = None, name_key: str = "tls_name") -> str:
    """One plain line for a failed call to ``server`` (e.g. "the bank node") at ``address``: who refused whose
    certificate and why, or since when it is unreachable, or the server's own message; never a raw dump."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else str(err)) or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        found = transport_reason(details)
        when = f" since {_clock(since)}" if since is not None else ""
        if found and found[0] == "certificate":
            reason = (found[1].replace("this side", "this client").replace("the server", server)
                      .replace("set tls_name", f"set {name_key}"))
            return f"TLS with {server} at {address} failed: {reason}"
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


def peer_error(err: grpc.RpcError, what: str, *, address: str = "", since: float | None = None) -> PeerError:
    """A client-side RpcError as a :class:`PeerError` whose message says what failed and why."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    if code == grpc.StatusCode.UNAVAILABLE and (address or transport_reason(details or "")):
        return PeerError(f"{what}: " + rpc_error_line(err, server="the platform node", address=address or "?",
                                                      since=since, name_key="[peer] tls_name"), code=code.name)
    if code == grpc.StatusCode.UNAVAILABLE:
        return PeerError(f"{what}: peer unreachable ({details})", code=code.name)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return PeerError(f"{what}: peer did not answer before the deadline", code=code.name)
    return PeerError(f"{what}: {details}", code=code.name)


__all__ = ["abort", "describe", "peer_error", "rpc_error_line", "status_of", "transport_reason",
           "translate_errors"]
