"""The platform's open protocol sessions, one per job: opened, replaced on a resume, closed, expired when idle.

The ``Node`` gRPC service (``party_platform.service``) looks sessions up here by job ID; what a session does is
its protocol handler's business.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from party_common.link import SessionContext
from party_common.policy import QuotaExceeded
from party_common.storage.jobs import check_job_id
from protocols.channel import Message, StepHandler
from protocols.errors import ProtocolError, SessionLost, UserError

log = logging.getLogger(__name__)

SessionOpener = Callable[[str, str, Message, SessionContext], StepHandler]
# How a session ends (besides the bank closing it, "closed"): replaced by the bank's new session for the same job
# (it restarted and resumes), idle past the registry's limit, cancelled by the bank, or the node is stopping.
ENDINGS = ("closed", "superseded", "expired", "cancelled", "stopping")


@dataclass
class Session:
    kind: str
    handler: StepHandler
    next_seq: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)
    opened_at: float = field(default_factory=time.monotonic)
    last_active: float = field(default_factory=time.monotonic)


def end_session(handler: StepHandler, how: str, reason: str = "") -> None:
    """Close ``handler``, telling it how the session ended if it wants to know (``end(how, reason)``)."""
    end = getattr(handler, "end", None)
    if callable(end):
        end(how, reason)
    else:
        handler.close()


class SessionRegistry:
    """Open protocol sessions on the platform, one per job.

    A new session for a job that has one replaces it (the bank restarted and resumes the job). With
    ``idle_s``, :meth:`start_expiry` closes sessions that saw no step for that long (a bank killed mid-job
    never closes its session).
    """

    def __init__(self, opener: SessionOpener, kinds: Iterable[str], *, max_sessions: int = 8,
                 limit_name: str = "[policy] max_concurrent_jobs", idle_s: float | None = None) -> None:
        self._opener = opener
        self._kinds = frozenset(kinds)
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._max = max_sessions
        self._limit_name = limit_name
        self.idle_s = idle_s
        self._stop = threading.Event()

    def open(self, kind: str, job_id: str, params: Message, context: SessionContext) -> None:
        if kind not in self._kinds:
            raise ProtocolError(f"unknown session kind '{kind}' (this node supports {', '.join(sorted(self._kinds))})")
        try:
            check_job_id(job_id)
        except UserError as err:
            raise ProtocolError(str(err)) from err
        with self._lock:
            if job_id in self._sessions and not context.resumed:
                raise ProtocolError(f"job {job_id} already has an open session")
            old = self._sessions.pop(job_id, None)
            if old is None and len(self._sessions) >= self._max:
                raise QuotaExceeded(f"the platform already runs {self._max} jobs, its limit ({self._limit_name}); "
                                    "try again when one has finished")
        if old is not None:
            log.info("job %s: a new session replaces the open one (the bank resumes the job)", job_id)
            end_session(old.handler, "superseded")
        handler = self._opener(kind, job_id, params, context)
        with self._lock:
            self._sessions[job_id] = Session(kind=kind, handler=handler)

    def get(self, job_id: str) -> Session:
        with self._lock:
            session = self._sessions.get(job_id)
        if session is None:
            raise SessionLost(f"no open session for job {job_id} (the platform node restarted, or the session "
                              "expired): the bank resumes the job in a new one")
        return session

    def close(self, job_id: str, how: str = "closed", reason: str = "") -> bool:
        with self._lock:
            session = self._sessions.pop(job_id, None)
        if session is None:
            return False
        end_session(session.handler, how, reason)
        return True

    def close_all(self) -> None:
        self._stop.set()
        with self._lock:
            ids = list(self._sessions)
        for job_id in ids:
            self.close(job_id, "stopping", "the platform node stopped")

    def expire_idle(self, now: float | None = None) -> list[str]:
        """Close the sessions idle (no step running, none for ``idle_s``) at ``now``; their job IDs."""
        if self.idle_s is None:
            return []
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [job_id for job_id, s in self._sessions.items()
                    if now - s.last_active > self.idle_s and not s.lock.locked()]
        expired = []
        for job_id in idle:
            if self.close(job_id, "expired", f"no step from the bank for {self.idle_s:.0f} s"):
                log.info("session of job %s expired after %.0f s without a step", job_id, self.idle_s)
                expired.append(job_id)
        return expired

    def start_expiry(self) -> threading.Thread | None:
        """A daemon thread that runs :meth:`expire_idle` every few seconds until :meth:`close_all`."""
        if self.idle_s is None:
            return None
        every = max(0.2, min(5.0, self.idle_s / 4))

        def loop() -> None:
            while not self._stop.wait(every):
                self.expire_idle()

        thread = threading.Thread(target=loop, name="session-expiry", daemon=True)
        thread.start()
        return thread


__all__ = ["ENDINGS", "Session", "SessionOpener", "SessionRegistry", "end_session"]
