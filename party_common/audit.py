"""Who asked, and what came of it: the audit rows and log lines of jobs and score calls on both nodes.

An audit row holds the caller's certificate name (``actor``), counts and the outcome, never customer IDs,
feature values, labels or keys. :func:`caller_name` reads the certificate name of a gRPC call;
:func:`audited` writes one row (and one log line) per call, whether it succeeded or was refused;
:func:`record_refusal` one row per call the gate (``party_common.auth.CertificateGate``) refused before any
handler ran.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc

from party_common.auth import Refusal, caller_identity
from party_common.grpc_errors import status_of
from party_common.storage import JobStore
from party_common.storage.jobs import JOB_ID_RE
from protocols.errors import FedProfileError

log = logging.getLogger(__name__)

INSECURE_CALLER = "(no certificate: --insecure-dev)"
LOCAL_CALLER = "(in process)"
NO_CERTIFICATE = "(no certificate)"
REFUSED_EVENT = "call refused"
# A count, range or layout check failed on a value received from the other node: the job stopped there.
DEVIATION_EVENT = "deviation detected"


def caller_name(context: grpc.ServicerContext | None) -> str:
    """The name in the calling client's certificate (``party_common.auth.caller_identity``), as the audit log
    records it."""
    if context is None:
        return LOCAL_CALLER
    try:
        who = caller_identity(context)
    except Exception:  # a test double without an auth context
        return INSECURE_CALLER
    return INSECURE_CALLER if who.serial is None else who.name


@dataclass
class AuditedCall:
    """What the call fills in while it runs: how many rows it concerned and a short, data-free detail."""

    count: int = 0
    detail: str = ""


def outcome_of(err: BaseException | None) -> str:
    if err is None:
        return "ok"
    if isinstance(err, FedProfileError):
        return f"refused ({status_of(err).name})"
    return "error (INTERNAL)"


@contextmanager
def audited(jobs: JobStore, event: str, *, actor: str, job_id: str | None = None,
            detail: str = "", log_level: int = logging.INFO) -> Iterator[AuditedCall]:
    """One audit row and one log line for the call in the ``with`` block, with its outcome.

    ``job_id`` (the job or model the call names) is recorded only when it is a well-formed job ID: a name the
    caller typed may be anything, so nothing else of it is written. The row is committed before the answer leaves
    (group-committed with other calls' rows; flushed to the disk off the call's path:
    ``party_common.storage.group_commit``). ``log_level``: of the log line (score calls, hundreds a second, log
    at DEBUG: formatting and writing a line was a tenth of a partial-score call; the audit row is the record).
    """
    call = AuditedCall(detail=detail)
    named = job_id if job_id and JOB_ID_RE.match(job_id) else None
    error: BaseException | None = None
    try:
        yield call
    except BaseException as err:
        error = err
        raise
    finally:
        outcome = outcome_of(error)
        if log.isEnabledFor(log_level):
            log.log(log_level, "%s by %s: %d row(s), %s%s", event, actor, call.count, outcome,
                    f" (job {named})" if named else "")
        try:
            jobs.audit(named, event, call.detail, actor=actor, outcome=outcome, count=call.count)
        except Exception as err:
            log.error("audit row for %s could not be written: %s", event, type(err).__name__)
            if error is None:  # no answer leaves the node without its audit row
                raise


def record_refusal(jobs: JobStore, refusal: Refusal) -> None:
    """One audit row (event "call refused", no job) for a call the node's gate refused (``CertificateGate``'s
    ``on_refusal``): the certificate's name as the actor, its role and serial and the refused method in the
    detail, the short reason ("revoked", "wrong role or name", ...) and the status as the outcome. Never more
    of the certificate, nor anything of the request. Group-committed: a caller refused in a loop costs the
    node a share of one commit, and no disk flush of its own; a row that cannot be written is logged."""
    who = refusal.who
    cert = "no certificate" if who is None else f"{who.role or 'no role'} certificate, serial {who.serial:x}"
    try:
        jobs.audit(None, REFUSED_EVENT, f"{refusal.method}; {cert}; {refusal.reason}",
                   actor=NO_CERTIFICATE if who is None else who.name, outcome=f"refused ({refusal.code.name})")
    except Exception as err:
        log.error("audit row for a refused call could not be written: %s", type(err).__name__)


__all__ = ["DEVIATION_EVENT", "INSECURE_CALLER", "LOCAL_CALLER", "NO_CERTIFICATE", "REFUSED_EVENT", "AuditedCall", "audited",
           "caller_name", "outcome_of", "record_refusal"]
