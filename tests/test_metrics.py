"""The Prometheus endpoint: scraped over HTTP, jobs by status from the store, latencies, partial-score requests."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from party_common.config import ConfigError
from party_common.metrics import PARTIAL_SCORE_REQUESTS, SCORE_SECONDS, STEP_SECONDS, start_metrics
from party_common.storage.jobs import MemoryJobStore


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_a_scrape_reports_jobs_by_status_and_the_latencies() -> None:
    jobs = MemoryJobStore()
    for n, status in enumerate(["succeeded", "failed", "running", "succeeded"]):
        job_id = f"train-0000000{n}"
        jobs.create(job_id, "train", "", {})
        if status == "succeeded":
            jobs.finish(job_id, {})
        elif status == "failed":
            jobs.fail(job_id, "boom")
        else:
            jobs.mark_running(job_id)
    assert start_metrics(None, jobs) is None  # off unless [metrics] listen is set
    server = start_metrics("127.0.0.1:0", jobs)
    assert server is not None
    try:
        before = scrape(server.port)
        SCORE_SECONDS.observe(0.003)
        STEP_SECONDS.labels("bank", "train.forward").observe(1.5)
        PARTIAL_SCORE_REQUESTS.labels("platform", "answered").inc()
        jobs.create("align-00000009", "align", "", {})
        after = scrape(server.port)
    finally:
        server.close()
    assert after['fedprofile_jobs{kind="train",status="succeeded"}'] == 2
    assert after['fedprofile_jobs{kind="train",status="failed"}'] == 1
    assert after['fedprofile_jobs{kind="train",status="running"}'] == 1
    assert after['fedprofile_jobs{kind="align",status="queued"}'] == 1
    assert after["fedprofile_score_seconds_count"] == before.get("fedprofile_score_seconds_count", 0) + 1
    assert after['fedprofile_score_seconds_bucket{le="0.005"}'] >= 1
    step = 'fedprofile_step_seconds_count{role="bank",step="train.forward"}'
    assert after[step] == before.get(step, 0) + 1
    answered = 'fedprofile_partial_score_requests_total{outcome="answered",role="platform"}'
    assert after[answered] == before.get(answered, 0) + 1


def test_a_port_in_use_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match=r"\[metrics\] listen: cannot listen on 127.0.0.1:\d+"):
            start_metrics(f"127.0.0.1:{taken.getsockname()[1]}", MemoryJobStore())
