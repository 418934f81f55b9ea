"""The one exception hierarchy: every error this service raises on purpose derives from FedProfileError.

Four kinds, each with one meaning for whoever sees it (the gRPC status each becomes is decided in one
place, ``party_common.grpc_errors``):

* :class:`UserError` - what the caller gave is wrong (a data file, a config, job parameters, a name that
  does not exist); the message says what to change. :class:`NotFound` is the "does not exist" case.
* :class:`ProtocolError` - a party refuses a protocol step: wrong order, replay, malformed or out of range.
* :class:`PeerError` - the peer refused or failed a step, or could not be reached.
* :class:`CryptoError` - a key or ciphertext failed validation, or a value does not fit its encoding.

Anything else that escapes is a bug: nodes log it with a trace and tell the caller only "internal error".
"""

from __future__ import annotations


class FedProfileError(Exception):
    """Base of every error raised on purpose."""


class UserError(FedProfileError, ValueError):
    """The caller's input is wrong; the message names the file, column, row, key or parameter."""


class NotFound(UserError, LookupError):
    """A job, model, alignment or customer the caller named does not exist."""


class ProtocolError(FedProfileError):
    """A party refuses a step: bad input, wrong order, replay, failed validation.

    Raised by a step handler; the transport carries the message (never data) back to the caller, who sees
    it as a :class:`PeerError`.
    """


class DeviationDetected(ProtocolError):
    """The other party sent what the honest protocol never produces: a count, range or layout check failed on
    a value this party was about to decrypt, or had decrypted, for it. The job stops on both sides and each
    node keeps an audit row naming the step and the check (``party_common.audit.DEVIATION_EVENT``)."""

    def __init__(self, step: str, check: str, detail: str = "") -> None:
        super().__init__(f"{step}: check '{check}' failed{': ' + detail if detail else ''}; the honest protocol "
                         "never sends this, so the job stops")
        self.step, self.check = step, check


class SessionLost(ProtocolError):
    """The peer holds no session for the job (it restarted, or the session expired): the bank resumes the job."""


class PeerError(FedProfileError):
    """The peer refused or failed a step, or could not be reached. ``code`` is the gRPC status name."""

    def __init__(self, message: str, *, code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.code = code


class CryptoError(FedProfileError, ValueError):
    """A key or ciphertext failed validation, or a value does not fit its encoding."""


class InvalidKey(CryptoError):
    """A key that is too small, malformed, or fails validation (every HE scheme raises this one)."""


class InvalidCiphertext(CryptoError):
    """A ciphertext outside the scheme's ciphertext group, or a byte string of the wrong length."""


class PlaintextOverflow(CryptoError):
    """A plaintext (or a decrypted result) outside the signed range the key can represent."""


class JobStopped(FedProfileError):
    """A job was cancelled, or its node is stopping; ``status`` is the job's status after it ("cancelled" or
    "interrupted")."""

    def __init__(self, message: str, *, status: str = "cancelled") -> None:
        super().__init__(message)
        self.status = status


# Peer errors after which the bank waits for the platform and resumes the job (gRPC status names).
RESUMABLE_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED"})


__all__ = ["RESUMABLE_CODES", "CryptoError", "FedProfileError", "InvalidCiphertext", "InvalidKey", "JobStopped",
           "NotFound", "PeerError", "PlaintextOverflow", "ProtocolError", "SessionLost", "UserError"]
