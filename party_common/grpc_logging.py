"""gRPC's C core logs to stderr on its own, before any of our code sees the failure: a failed TLS handshake
prints ``I1208 ... ssl_transport_security.cc:...] Handshake failed ...`` ahead of our one-line explanation
(``party_common.grpc_errors``). The core reads ``GRPC_VERBOSITY`` once, when ``grpc`` is first imported, so the
node packages set it before that import (``party_bank/__init__.py``, ``party_platform/__init__.py``).

``ERROR`` keeps the core's real errors and drops its informational lines (the handshake failures among
them); an operator who sets ``GRPC_VERBOSITY`` (e.g. ``DEBUG`` with ``GRPC_TRACE``) keeps theirs.
"""

from __future__ import annotations

import os

DEFAULT_VERBOSITY = "ERROR"


def quiet_grpc_core() -> None:
    """Only the C core's errors on stderr, unless the environment chose otherwise (call before ``import grpc``)."""
    os.environ.setdefault("GRPC_VERBOSITY", DEFAULT_VERBOSITY)


__all__ = ["DEFAULT_VERBOSITY", "quiet_grpc_core"]
