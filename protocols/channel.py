"""How a two-party protocol talks to its peer, with no transport in sight.

The bank drives every protocol: it opens a *session* (one job) on the platform and then makes
request/response *steps* on it. The platform answers each step through a :class:`StepHandler` it
created for that session. Over the network the nodes carry this on gRPC (``party_common.transport``);
in tests :class:`LocalPeer` runs both parties in one process, and pushes every message through the
same validation the wire applies, so a protocol that passes here also fits on the wire.

A :data:`Message` is a flat ``dict`` from field name to one of:

* ``bytes``  - opaque payloads: ciphertext vectors (fixed-width serialisation), curve points, ...
* ``str``, ``int`` (fits in signed 64 bits), ``float``, ``bool`` - small scalars and parameters;
* ``numpy.ndarray`` of a fixed-width numeric dtype (bool, int8..int64, uint8..uint64, float32,
  float64), any shape. Object arrays are refused: big integers travel as ``bytes``.

Large fields are fine (the transport streams them in chunks); protocols that move millions of
items still send them in batches so that memory stays bounded on both sides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import numpy as np

from protocols.errors import PeerError, ProtocolError

Value = bytes | str | int | float | bool | np.ndarray
Message = dict[str, Value]

ALLOWED_DTYPES = frozenset(
    np.dtype(t).str
    for t in (
        np.bool_, np.int8, np.int16, np.int32, np.int64,
        np.uint8, np.uint16, np.uint32, np.uint64, np.float32, np.float64,
    )
)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FIELD_NAME_MAX = 128


class StepHandler(Protocol):
    """The platform's side of one session (one job)."""

    def handle(self, step: str, message: Message) -> Message:
        """Answer one step. Raise :class:`ProtocolError` to refuse it."""
        ...

    def close(self) -> None:
        """The session ended (finished or aborted): release resources, drop secrets."""
        ...


class PeerChannel(Protocol):
    """The bank's handle on one open session on the platform."""

    job_id: str

    def call(self, step: str, message: Message) -> Message:
        """Send one step and wait for the answer. Raises :class:`PeerError`."""
        ...

    def close(self) -> None:
        """End the session on the peer (idempotent)."""
        ...


class Peer(Protocol):
    """The bank's view of the platform node: it opens sessions."""

    def open(self, kind: str, job_id: str, params: Message) -> PeerChannel:
        """Open a session of protocol ``kind`` (e.g. ``"psi"``, ``"train"``) for ``job_id``."""
        ...


# On the platform, the node turns (kind, job_id, params) into a handler for that session.
SessionFactory = Callable[[str, str, Message], StepHandler]


__all__ = ["LocalChannel", "LocalPeer", "Message", "Peer", "PeerChannel", "PeerError", "ProtocolError",
           "SessionFactory", "StepHandler", "Value", "check_message", "copy_message", "message_size"]


def check_message(message: Mapping[str, object], *, where: str = "message") -> None:
    """Raise ``TypeError`` if ``message`` holds anything the wire cannot carry exactly."""
    if not isinstance(message, Mapping):
        raise TypeError(f"{where}: a message is a dict, got {type(message).__name__}")
    for name, value in message.items():
        if not isinstance(name, str) or not name or len(name) > FIELD_NAME_MAX:
            raise TypeError(f"{where}: field names are non-empty strings of at most {FIELD_NAME_MAX} chars")
        if isinstance(value, np.ndarray):
            if value.dtype.str not in ALLOWED_DTYPES and value.dtype.newbyteorder("<").str not in ALLOWED_DTYPES:
                raise TypeError(f"{where}: field {name!r} has dtype {value.dtype}, not a fixed-width numeric one")
        elif isinstance(value, bool | bytes | str | float):
            continue
        elif isinstance(value, int):
            if not INT64_MIN <= value <= INT64_MAX:
                raise TypeError(f"{where}: field {name!r} is an int outside 64 bits; send big ints as bytes")
        else:
            raise TypeError(f"{where}: field {name!r} has type {type(value).__name__}, which the wire cannot carry")


def copy_message(message: Message) -> Message:
    """A deep copy, so that neither side can mutate what the other holds (as over a network)."""
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in message.items()}


class LocalChannel:
    """An in-memory :class:`PeerChannel`: both parties in one process, wire rules enforced."""

    def __init__(self, job_id: str, handler: StepHandler) -> None:
        self.job_id = job_id
        self._handler: StepHandler | None = handler
        self.sent_bytes = 0  # what the bank sent, for tests that inspect traffic
        self.transcript: list[tuple[str, Message, Message]] = []
        self.keep_transcript = False

    def call(self, step: str, message: Message) -> Message:
        if self._handler is None:
            raise PeerError(f"session {self.job_id} is closed", code="FAILED_PRECONDITION")
        check_message(message, where=f"request {step}")
        request = copy_message(message)
        self.sent_bytes += message_size(request)
        try:
            reply = self._handler.handle(step, request)
        except ProtocolError as err:
            raise PeerError(str(err), code="FAILED_PRECONDITION") from err
        check_message(reply, where=f"reply to {step}")
        reply = copy_message(reply)
        if self.keep_transcript:
            self.transcript.append((step, copy_message(request), copy_message(reply)))
        return reply

    def close(self) -> None:
        if self._handler is not None:
            handler, self._handler = self._handler, None
            handler.close()


class LocalPeer:
    """An in-memory :class:`Peer` around the platform's :data:`SessionFactory`."""

    def __init__(self, factory: SessionFactory) -> None:
        self._factory = factory
        self.channels: list[LocalChannel] = []

    def open(self, kind: str, job_id: str, params: Message) -> LocalChannel:
        check_message(params, where=f"open {kind}")
        try:
            handler = self._factory(kind, job_id, copy_message(params))
        except ProtocolError as err:
            raise PeerError(str(err), code="FAILED_PRECONDITION") from err
        channel = LocalChannel(job_id, handler)
        self.channels.append(channel)
        return channel


def message_size(message: Message) -> int:
    """Approximate bytes a message occupies on the wire (payload only)."""
    total = 0
    for name, value in message.items():
        total += len(name)
        if isinstance(value, np.ndarray):
            total += value.nbytes
        elif isinstance(value, bytes):
            total += len(value)
        elif isinstance(value, str):
            total += len(value.encode())
        else:
            total += 8
    return total
