"""What a job kind is: its typed parameters, the bank's runner, the platform's session, where results go.

A job kind is one class (``party_common.jobs.align``, ``party_common.jobs.train``) that both nodes look
up in the registry (``party_common.jobs.JOB_KINDS``): the bank parses a data scientist's parameters once
into a typed object, runs the protocol against the platform and saves its result; the platform opens the
matching session and saves its own result when the session reports it. Nothing else in the nodes knows
what a kind does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from party_common.link import PlatformLink, SessionContext
from party_common.storage import NodeStores
from protocols.binning import BinningSpec
from protocols.channel import Message, StepHandler
from protocols.compute import Compute
from protocols.errors import ProtocolError, UserError
from protocols.party_data import PartyData
from protocols.vfl_lr.disclosure import DisclosureBudget, EvaluationLimits

Progress = Callable[[str, int, int], None]
# A model document's key naming the columns it was trained on, when a screen's IV selection kept only some of the
# node's columns (party_common/jobs/train.py writes it, party_common/node.py scores those columns).
COLUMN_SELECTION = "column_selection"
P = TypeVar("P")
R = TypeVar("R")


class JobError(UserError):
    """A job's parameters are wrong; the message says which and why."""


class ResultExists(ProtocolError):
    """A session's result would replace one stored before under its job ID (a model half): refused."""


@dataclass(frozen=True)
class JobContext:
    """What a job (or a platform session) sees of its node."""

    job_id: str
    data: PartyData
    stores: NodeStores
    new_compute: Callable[[], Compute]  # a fresh backend per session: the session owns and closes it
    spill_dir: Path
    progress: Progress
    node_name: str = ""
    resumed: bool = False  # the job runs again after a node stopped (or the platform was unreachable)
    max_peer_rows: int | None = None  # platform: the most IDs the bank may declare in a PSI ([policy] max_psi_rows)
    state_dir: Path | None = None  # the node's state directory (incremental alignment keeps each pair's state there)
    psi_key_rotation_days: int = 30  # platform: [policy] psi_key_rotation_days (0: keep no incremental state)
    # Platform: its limits on a training session, and its disclosure ledger (protocols/vfl_lr/disclosure.py).
    evaluation_limits: EvaluationLimits | None = None
    disclosure: DisclosureBudget | None = None
    binning: BinningSpec | None = None  # the node's [binning]: how it bins its own columns (features "binned")
    # Bank: its local secret the label-DP noise key of a train job derives from (None: fresh noise per job).
    noise_secret: bytes | None = None
    screen_policy: ScreenPolicy | None = None  # platform: its limits on a screen session ([policy])


@dataclass(frozen=True)
class ScreenPolicy:
    """The platform's limits on a screen session ([policy] keys of the same names)."""

    min_screen_bin_rows: int = 50  # the platform merges its bins below this many rows before summing
    min_screen_labelled_rows: int = 20  # per bin and tag; the bank merges bins below it after decrypting


class JobKind(ABC, Generic[P, R]):
    """One kind of job, both sides of it."""

    name: ClassVar[str]  # what a data scientist submits ("align", "train")
    session: ClassVar[str]  # the protocol session it opens on the platform ("psi", "train")

    @abstractmethod
    def parse(self, raw: Mapping[str, Any], data: PartyData, stores: NodeStores) -> P:
        """The bank's parameters, checked and completed with defaults; :class:`JobError` names the problem."""

    @abstractmethod
    def params_dict(self, params: P) -> dict[str, Any]:
        """What the job store records of ``params`` (JSON, no data)."""

    @abstractmethod
    def run_bank(self, link: PlatformLink, ctx: JobContext, params: P, job_name: str) -> R:
        """Run the protocol as the bank against the platform behind ``link``."""

    @abstractmethod
    def save_bank(self, ctx: JobContext, params: P, result: R, peer_name: str) -> dict[str, Any]:
        """Keep the bank's result in its stores; return the job's summary (counts and metrics only)."""

    @abstractmethod
    def open_platform(self, ctx: JobContext, params: Message, context: SessionContext,
                      on_result: Callable[[Any], None]) -> StepHandler:
        """The platform's handler for one session; it calls ``on_result`` once, when the session is done."""

    @abstractmethod
    def save_platform(self, ctx: JobContext, context: SessionContext, result: Any) -> dict[str, Any]:
        """Keep the platform's result in its stores; return the job's summary."""
