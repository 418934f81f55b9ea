"""Prometheus metrics of a node (``[metrics] listen`` in its config; off when absent).

What is exported: jobs by status (read from the node's job store at each scrape), the latency of each
protocol step (the bank times the round trip, the platform its handling), the online scoring latency on
the bank, partial-score requests by outcome, and population stability indices per model, feature name and tag.
Labels are roles, step names, statuses, outcomes, model job IDs, feature names and tag names only: never a
customer ID, a feature's value, a label or a key.

The latency and request metrics live in this module (a process runs one node); each node serves them with
its own jobs collector from a registry of its own, so several nodes in one test process do not collide.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter as Tally
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from party_common.config import ConfigError

log = logging.getLogger(__name__)

_FAST = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SLOW = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)

STEP_SECONDS = Histogram("fedprofile_step_seconds", "Protocol step latency: the bank times the round trip, "
                         "the platform its handling", ["role", "step"], buckets=_SLOW, registry=None)
SCORE_SECONDS = Histogram("fedprofile_score_seconds", "Online Score latency on the bank node, whole request",
                          buckets=_FAST, registry=None)
PARTIAL_SCORE_REQUESTS = Counter("fedprofile_partial_score_requests", "Partial-score requests (bank: sent, "
                                 "platform: answered) by outcome", ["role", "outcome"], registry=None)
# Population stability indices of the last stability answer per model (protocols/stability.py): per feature
# (labelled by its column name, never a value; role: whose feature) and per tag's score; source "batch" or "online".
FEATURE_PSI = Gauge("fedprofile_feature_psi", "Population stability index of a feature against the model's training "
                    "population (warn above 0.1, alert above 0.25)", ["role", "model", "feature", "source"],
                    registry=None)
SCORE_PSI = Gauge("fedprofile_score_psi", "Population stability index of a tag's scores against the model's "
                  "training population (warn above 0.1, alert above 0.25)", ["model", "tag", "source"], registry=None)
SHARED = (STEP_SECONDS, SCORE_SECONDS, PARTIAL_SCORE_REQUESTS, FEATURE_PSI, SCORE_PSI)
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


class JobRows(Protocol):
    """A job store, as far as the metrics read it."""

    def list(self, limit: int = 50, *, kind: str | None = None, status: str | None = None) -> list: ...


class JobsCollector(Collector):
    """``fedprofile_jobs{kind, status}``: the job store's rows counted at scrape time."""

    def __init__(self, jobs: JobRows) -> None:
        self._jobs = jobs

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("fedprofile_jobs", "Jobs in the node's job store by kind and status",
                                   labels=["kind", "status"])
        counts = Tally((r.kind, r.status) for r in self._jobs.list(-1))
        kinds = sorted({kind for kind, _ in counts} | {"align", "train"})
        statuses = sorted(set(JOB_STATUSES) | {status for _, status in counts})
        for kind in kinds:
            for status in statuses:
                family.add_metric([kind, status], counts.get((kind, status), 0))
        yield family


class MetricsServer:
    """The node's ``/metrics`` HTTP endpoint (plain HTTP: bind it to an address only monitoring reaches)."""

    def __init__(self, listen: str, jobs: JobRows) -> None:
        host, _, port = listen.rpartition(":")
        self.registry = CollectorRegistry(auto_describe=True)
        for metric in SHARED:
            self.registry.register(metric)
        self.registry.register(JobsCollector(jobs))
        try:
            self._server, self._thread = start_http_server(int(port), addr=host.strip("[]"),
                                                           registry=self.registry)
        except OSError as err:
            raise ConfigError(f"[metrics] listen: cannot listen on {listen}: {err.strerror or err}") from err
        self.port = self._server.server_address[1]
        log.info("Prometheus metrics on http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if isinstance(self._thread, threading.Thread):
            self._thread.join(timeout=5)


def set_stability(model: str, source: str, features: dict[str, dict[str, float]], scores: dict[str, float]) -> None:
    """Set the stability gauges of one answer: ``features`` role -> feature name -> index, ``scores`` tag -> index."""
    for role, indices in features.items():
        for name, value in indices.items():
            FEATURE_PSI.labels(role, model, name, source).set(value)
    for tag, value in scores.items():
        SCORE_PSI.labels(model, tag, source).set(value)


def start_metrics(listen: str | None, jobs: JobRows) -> MetricsServer | None:
    """The metrics endpoint when ``[metrics] listen`` is set, else None."""
    return MetricsServer(listen, jobs) if listen else None


__all__ = ["PARTIAL_SCORE_REQUESTS", "SCORE_SECONDS", "FEATURE_PSI", "SCORE_PSI", "STEP_SECONDS", "set_stability", "JobRows", "JobsCollector", "MetricsServer",
           "start_metrics"]
