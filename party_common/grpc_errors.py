"""Our exceptions as gRPC statuses and back: the one place that decides which error becomes which code.

Servers call :func:`abort` (or wrap a method with :func:`translate_errors`); clients turn an
``RpcError`` into a :class:`PeerError` with :func:`peer_error`; job runners describe a failure with
:func:`describe`. Only errors raised on purpose (``protocols.errors``) reach the other side with their
message; anything else is a bug, logged here with its trace and reported as "internal error".
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import grpc

from party_common.policy import AwaitingApproval, PolicyRefused, QuotaExceeded
from protocols.errors import CryptoError, FedProfileError, NotFound, PeerError, ProtocolError, UserError

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


def peer_error(err: grpc.RpcError, what: str) -> PeerError:
    """A client-side RpcError as a :class:`PeerError` whose message says what failed and why."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    if code == grpc.StatusCode.UNAVAILABLE:
        return PeerError(f"{what}: peer unreachable ({details})", code=code.name)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return PeerError(f"{what}: peer did not answer before the deadline", code=code.name)
    return PeerError(f"{what}: {details}", code=code.name)


__all__ = ["abort", "describe", "peer_error", "status_of", "translate_errors"]
