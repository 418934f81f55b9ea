"""The bank node's view of the platform node: protocol sessions with a node context, and partial scores.

Two implementations: ``party_common.transport.GrpcPlatformLink`` (the real one, mutual TLS) and
:class:`LocalPlatformLink` (both nodes in one process, for tests), which pushes every message through the
same checks and encodings as the wire. The protocols themselves see only ``protocols.channel.Peer``:
:class:`ContextPeer` adapts a link and a job's :class:`SessionContext` to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from party_common.codec import from_payload, to_payload
from party_common.grpc_errors import status_of
from protocols.channel import LocalChannel, Message, PeerChannel, StepHandler, check_message, copy_message
from protocols.errors import FedProfileError, PeerError
from protocols.stability import bitmap_rows, rows_bitmap


@dataclass(frozen=True)
class PartialScores:
    """The platform's answer for alignment rows: z_B per row and tag, and where its disclosure budget stands."""

    tags: list[str]
    scores: np.ndarray  # float64 (rows, tags)
    projections_released: int  # the most distinct projections any customer of the call holds, this call included
    projections_limit: int


@dataclass(frozen=True)
class Retirement:
    """The platform's answer to RetireModel: its half of the model is retired (now or before)."""

    model_job_id: str
    retired_at: str
    already_retired: bool


@dataclass(frozen=True)
class StabilityIndices:
    """The platform's stability answer: one population stability index per feature of its half of a model."""

    features: list[str]
    psi: list[float]
    rows: int  # rows the indices are over
    reference: str  # "training" (kept with the model) or "current data" (a model trained before it was kept)


STABILITY_SOURCES = ("rows", "recent")  # rows the bank names (a batch), or the platform's recent answers


def check_stability(answer: StabilityIndices) -> StabilityIndices:
    """Refuse a stability answer that is not one finite, non-negative index per named feature."""
    if len(answer.features) != len(answer.psi) or len(set(answer.features)) != len(answer.features):
        raise PeerError("stability: the platform's answer is not one index per feature", code="DATA_LOSS")
    if not all(np.isfinite(v) and v >= 0 for v in answer.psi):
        raise PeerError("stability: the platform sent an index that is negative or not finite", code="DATA_LOSS")
    return answer


@dataclass(frozen=True)
class SessionContext:
    """What the platform node needs to know about a session beyond the protocol's own parameters."""

    alignment_job_id: str = ""
    alignment_hash: str = ""
    job_name: str = ""
    caller: str = ""  # set by the platform's servicer from the caller's certificate, never read from the wire
    resumed: bool = False  # the bank runs the job again after either node stopped: the platform takes up its row


class PlatformEndpoint(Protocol):
    """What the platform node offers the bank: the servicer and :class:`LocalPlatformLink` call these."""

    name: str

    def open_session(self, kind: str, job_id: str, params: Message, context: SessionContext) -> StepHandler:
        ...

    def partial_scores(self, model_job_id: str, rows: np.ndarray, tags: list[str], *,
                       caller: str = ...) -> PartialScores:
        ...

    def retire_model(self, model_job_id: str) -> Retirement:
        ...

    def stability(self, model_job_id: str, source: str, rows: np.ndarray | None, *,
                  caller: str = ...) -> StabilityIndices:
        ...

    def cancel_job(self, job_id: str, reason: str) -> None:
        ...


class PlatformLink(Protocol):
    """The bank's handle on the platform node."""

    def connect(self, timeout_s: float = 30.0) -> str:
        """Wait for the platform, check its role and protocol version; return its node name."""
        ...

    def open(self, kind: str, job_id: str, params: Message, *, context: SessionContext) -> PeerChannel:
        ...

    def partial_scores(self, model_job_id: str, rows: np.ndarray, tags: list[str]) -> PartialScores:
        """z_B for positions ``rows`` of the model's alignment (never customer IDs), checked for shape."""
        ...

    def retire_model(self, model_job_id: str) -> Retirement:
        """Retire the platform's half of a model (idempotent): it answers no partial scores for it after."""
        ...

    def stability(self, model_job_id: str, source: str, rows: np.ndarray | None = None) -> StabilityIndices:
        """The platform's feature stability indices for a model: over alignment positions ``rows`` (source
        "rows") or its own recent answers ("recent"), checked (:func:`check_stability`)."""
        ...

    def cancel(self, job_id: str, reason: str) -> None:
        """The bank cancelled ``job_id``: end its session on the platform (if open), whose row says cancelled."""
        ...

    def close(self) -> None:
        ...


def check_partial_scores(answer: PartialScores, wanted: list[str], n: int) -> PartialScores:
    """Refuse a platform answer for other tags, of the wrong shape, or not finite (both links apply this)."""
    if wanted and list(answer.tags) != list(wanted):
        raise PeerError("partial scores: the platform answered for other tags", code="DATA_LOSS")
    if answer.scores.shape != (n, len(answer.tags)):
        raise PeerError("partial scores: the platform's answer has the wrong shape", code="DATA_LOSS")
    if not np.isfinite(answer.scores).all():
        raise PeerError("partial scores: the platform sent values that are not finite", code="DATA_LOSS")
    return answer


class ContextPeer:
    """A ``protocols.channel.Peer`` that opens every session through ``link`` with ``context``."""

    def __init__(self, link: PlatformLink, context: SessionContext) -> None:
        self.link = link
        self.context = context

    def open(self, kind: str, job_id: str, params: Message) -> PeerChannel:
        return self.link.open(kind, job_id, params, context=self.context)


class LocalPlatformLink:
    """Both nodes in one process: sessions over :class:`LocalChannel`, scores through the wire codec."""

    def __init__(self, platform: PlatformEndpoint) -> None:
        self.platform = platform
        self.channels: list[LocalChannel] = []

    def connect(self, timeout_s: float = 30.0) -> str:
        return self.platform.name

    def open(self, kind: str, job_id: str, params: Message, *, context: SessionContext) -> LocalChannel:
        check_message(params, where=f"open {kind}")
        try:
            handler = self.platform.open_session(kind, job_id, copy_message(params), context)
        except FedProfileError as err:  # what the bank would get over gRPC
            raise PeerError(f"open {kind} session: {err}", code=status_of(err).name) from err
        channel = LocalChannel(job_id, handler)
        self.channels.append(channel)
        return channel

    def partial_scores(self, model_job_id: str, rows: np.ndarray, tags: list[str]) -> PartialScores:
        # Through the codec both ways, as over the wire: each side gets a copy in the wire's encoding.
        sent = from_payload(to_payload({"rows": np.asarray(rows, dtype=np.int64)}))["rows"]
        assert isinstance(sent, np.ndarray)
        try:
            answer = self.platform.partial_scores(model_job_id, sent, list(tags))
        except FedProfileError as err:
            raise PeerError(f"partial scores: {err}", code=status_of(err).name) from err
        scores = from_payload(to_payload({"scores": np.asarray(answer.scores, dtype=np.float64)}))["scores"]
        assert isinstance(scores, np.ndarray)
        return check_partial_scores(PartialScores(list(answer.tags), scores, answer.projections_released,
                                                  answer.projections_limit), list(tags), len(rows))

    def retire_model(self, model_job_id: str) -> Retirement:
        try:
            return self.platform.retire_model(model_job_id)
        except FedProfileError as err:
            raise PeerError(f"retire model: {err}", code=status_of(err).name) from err

    def stability(self, model_job_id: str, source: str, rows: np.ndarray | None = None) -> StabilityIndices:
        sent = None if rows is None else bitmap_rows(rows_bitmap(rows))  # as over the wire
        try:
            answer = self.platform.stability(model_job_id, source, sent)
        except FedProfileError as err:
            raise PeerError(f"stability: {err}", code=status_of(err).name) from err
        return check_stability(StabilityIndices(list(answer.features), [float(v) for v in answer.psi], answer.rows,
                                                answer.reference))

    def cancel(self, job_id: str, reason: str) -> None:
        for channel in self.channels:
            if channel.job_id == job_id and channel._handler is not None:
                handler, channel._handler = channel._handler, None
                end = getattr(handler, "end", None)
                if callable(end):
                    end("cancelled", reason)
                else:
                    handler.close()
        self.platform.cancel_job(job_id, reason)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


__all__ = ["ContextPeer", "LocalPlatformLink", "PartialScores", "PlatformEndpoint", "PlatformLink", "Retirement",
           "STABILITY_SOURCES", "SessionContext", "StabilityIndices", "check_partial_scores", "check_stability"]
