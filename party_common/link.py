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


@dataclass(frozen=True)
class SessionContext:
    """What the platform node needs to know about a session beyond the protocol's own parameters."""

    alignment_job_id: str = ""
    alignment_hash: str = ""
    job_name: str = ""


class PlatformEndpoint(Protocol):
    """What the platform node offers the bank: the servicer and :class:`LocalPlatformLink` call these."""

    name: str

    def open_session(self, kind: str, job_id: str, params: Message, context: SessionContext) -> StepHandler:
        ...

    def partial_scores(self, model_job_id: str, customer_ids: list[str],
                       tags: list[str]) -> tuple[list[str], np.ndarray, list[bool]]:
        ...


class PlatformLink(Protocol):
    """The bank's handle on the platform node."""

    def connect(self, timeout_s: float = 30.0) -> str:
        """Wait for the platform, check its role and protocol version; return its node name."""
        ...

    def open(self, kind: str, job_id: str, params: Message, *, context: SessionContext) -> PeerChannel:
        ...

    def partial_scores(self, model_job_id: str, customer_ids: list[str],
                       tags: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(tags, z_B of shape (len(ids), len(tags)), known per customer), checked for shape."""
        ...

    def close(self) -> None:
        ...


def check_partial_scores(tags: list[str], wanted: list[str], scores: np.ndarray, known: list[bool],
                         n: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Refuse a platform answer for other tags or of the wrong shape (both links apply this)."""
    if wanted and list(tags) != list(wanted):
        raise PeerError("partial scores: the platform answered for other tags", code="DATA_LOSS")
    if scores.shape != (n, len(tags)) or len(known) != n:
        raise PeerError("partial scores: the platform's answer has the wrong shape", code="DATA_LOSS")
    known_arr = np.asarray(known, dtype=bool)
    if not np.isfinite(scores[known_arr]).all():
        raise PeerError("partial scores: the platform sent values that are not finite", code="DATA_LOSS")
    return list(tags), scores.astype(np.float64), known_arr


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

    def partial_scores(self, model_job_id: str, customer_ids: list[str],
                       tags: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
        try:
            answered, scores, known = self.platform.partial_scores(model_job_id, list(customer_ids), list(tags))
        except FedProfileError as err:
            raise PeerError(f"partial scores: {err}", code=status_of(err).name) from err
        # Through the codec, as over the wire: the bank gets a copy in the wire's encoding.
        scores = from_payload(to_payload({"scores": np.asarray(scores, dtype=np.float64)}))["scores"]
        assert isinstance(scores, np.ndarray)
        return check_partial_scores(answered, list(tags), scores, list(known), len(customer_ids))

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


__all__ = ["ContextPeer", "LocalPlatformLink", "PlatformEndpoint", "PlatformLink", "SessionContext",
           "check_partial_scores"]
