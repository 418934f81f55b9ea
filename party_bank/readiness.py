"""Readiness for a load balancer: the standard gRPC health service on the control port says SERVING for the
application API only while the node can answer a Score as asked.

Two kinds of service name on the one health service (``grpc.health.v1.Health``):

* ``fedprofile.v1.BankControl``: liveness. SERVING as soon as the node serves (the CLI waits on it; jobs and
  lists work without the platform), NOT_SERVING while it shuts down.
* ``""`` (what a load balancer checks by default) and ``fedprofile.v2.Scoring``: readiness. SERVING while the
  platform node answers its handshake, or always when the node was started with ``--ready-on-fallback`` (the
  applications behind the balancer ask for ``bank_only_fallback``, so the node answers them either way);
  NOT_SERVING otherwise, and during shutdown.

A background thread asks the platform every ``interval_s`` seconds; a change is logged once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import HealthServicer

from protocols.errors import FedProfileError

log = logging.getLogger(__name__)

READINESS_SERVICES = ("", "fedprofile.v2.Scoring")
PROBE_INTERVAL_S = 5.0


class Readiness:
    """Sets the readiness services of ``health`` from ``probe`` (raises when the platform cannot be reached)."""

    def __init__(self, health: HealthServicer, probe: Callable[[], object], *, ready_on_fallback: bool = False,
                 interval_s: float = PROBE_INTERVAL_S) -> None:
        self._health = health
        self._probe = probe
        self.ready_on_fallback = ready_on_fallback
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.platform_reachable: bool | None = None  # None: not asked yet
        self._set(ready_on_fallback)  # until the first probe: ready only if the platform is not needed

    def _set(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in READINESS_SERVICES:
            self._health.set(name, status)

    def check_once(self) -> bool:
        """Probe the platform now and set the readiness services; return whether they say SERVING."""
        try:
            self._probe()
            reachable, why = True, ""
        except FedProfileError as err:
            reachable, why = False, str(err)
        if reachable != self.platform_reachable:
            if reachable:
                log.info("ready: the platform node answers")
            elif self.ready_on_fallback:
                log.warning("the platform node cannot be reached (%s); still ready: --ready-on-fallback", why)
            else:
                log.warning("not ready (health NOT_SERVING): the platform node cannot be reached: %s", why)
        self.platform_reachable = reachable
        serving = reachable or self.ready_on_fallback
        if not self._stop.is_set():
            self._set(serving)
        return serving

    def start(self) -> Readiness:
        def run() -> None:
            while not self._stop.is_set():
                self.check_once()
                self._stop.wait(self._interval)

        self._thread = threading.Thread(target=run, name="readiness", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop probing and say NOT_SERVING (the node is shutting down)."""
        self._stop.set()
        self._set(False)
