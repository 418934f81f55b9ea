"""gRPC's C core logs to stderr on its own, before any of our code sees the failure: a failed TLS handshake
prints ``I1208 ... ssl_transport_security.cc:...] Handshake failed ...`` ahead of our one-line explanation
(``party_common.grpc_errors``). The core reads ``GRPC_VERBOSITY`` once, when ``grpc`` is first imported, so the
node packages set it before that import (``party_bank/__init__.py``, ``party_platform/__init__.py``).

``NONE``: the core logs nothing of its own. Even ``ERROR`` is not quiet enough: a certificate without the
expected name logs ``E... No match found for server name`` ahead of ours; and every failure the core meets on
a call reaches us as the call's status, which our line explains. An operator who sets ``GRPC_VERBOSITY``
(e.g. ``DEBUG`` with ``GRPC_TRACE`` to debug TLS) keeps theirs.
"""

from __future__ import annotations

import os

DEFAULT_VERBOSITY = "NONE"


def quiet_grpc_core() -> None:
    """No log lines of the C core's own, unless the environment chose otherwise (call before ``import grpc``)."""
    os.environ.setdefault("GRPC_VERBOSITY", DEFAULT_VERBOSITY)


__all__ = ["DEFAULT_VERBOSITY", "quiet_grpc_core"]
