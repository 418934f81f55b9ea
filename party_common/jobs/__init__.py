"""The registry of job kinds both nodes share: job kind -> parameters, bank runner, platform session, savers."""

from __future__ import annotations

from typing import Any

from party_common.jobs.align import AlignJob, AlignParams
from party_common.jobs.base import JobContext, JobError, JobKind, Progress, ResultExists
from party_common.jobs.screen import ScreenJob
from party_common.jobs.train import TrainJob, TrainJobParams

JOB_KINDS: dict[str, JobKind[Any, Any]] = {kind.name: kind for kind in (AlignJob(), TrainJob(), ScreenJob())}
SESSION_KINDS: dict[str, JobKind[Any, Any]] = {kind.session: kind for kind in JOB_KINDS.values()}


def job_kind(name: str) -> JobKind[Any, Any]:
    try:
        return JOB_KINDS[name]
    except KeyError:
        raise JobError(f"unknown job kind '{name}'; use one of {', '.join(JOB_KINDS)}") from None


__all__ = ["JOB_KINDS", "SESSION_KINDS", "AlignParams", "JobContext", "JobError", "JobKind", "Progress",
           "ResultExists", "TrainJobParams", "job_kind"]
