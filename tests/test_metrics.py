"""The Prometheus endpoint: scraped over HTTP, jobs by status from the store, latencies, partial-score requests."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import HealthServicer

from party_common.config import ConfigError
from party_common.prometheus_metrics import PARTIAL_SCORE_REQUESTS, SCORE_SECONDS, STEP_SECONDS, start_metrics
from party_common.runtime import serve_with_metrics
from party_common.storage.jobs import MemoryJobStore
from party_common.transport import add_health, bind, make_server
from simulations.cluster import free_port


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


def serving_node() -> tuple[grpc.Server, HealthServicer, str]:
    server = make_server(1)
    health = add_health(server, [])
    port = bind(server, "127.0.0.1:0", None)
    server.start()
    return server, health, f"127.0.0.1:{port}"


def answers(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return False
    return True


def test_serve_runs_the_metrics_endpoint_with_the_node_and_stops_both() -> None:
    """What both nodes' `serve` do: metrics up while the node serves, both down after SIGTERM."""
    server, health, address = serving_node()
    port, seen, stopped = free_port(), [], []
    jobs = MemoryJobStore()
    jobs.create("align-00000001", "align", "", {})

    def ready() -> None:
        seen.append(scrape(port)['fedprofile_jobs{kind="align",status="queued"}'])
        before = signal.getsignal(signal.SIGTERM)

        def stop_when_handled() -> None:  # SIGTERM once serve_with_metrics handles it, never before
            deadline = time.monotonic() + 30
            while signal.getsignal(signal.SIGTERM) is before and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=stop_when_handled, daemon=True).start()

    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        code = serve_with_metrics("bank-node", server, health, lambda: stopped.append(True),
                                  metrics_listen=f"127.0.0.1:{port}", jobs=jobs, ready=ready, grace_s=0.1)
    finally:
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
    assert (code, seen, stopped) == (0, [1.0], [True])
    with pytest.raises(OSError):
        scrape(port)  # the endpoint went down with the node
    assert not answers(address)


def test_serve_stops_the_node_when_the_metrics_port_is_taken(capsys: pytest.CaptureFixture[str]) -> None:
    server, health, address = serving_node()
    stopped: list[bool] = []
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code = serve_with_metrics("platform-node", server, health, lambda: stopped.append(True),
                                  metrics_listen=f"127.0.0.1:{taken.getsockname()[1]}", jobs=MemoryJobStore(),
                                  ready=lambda: pytest.fail("the node must not get ready"))
    assert (code, stopped) == (2, [True])
    assert capsys.readouterr().err.startswith("platform-node: [metrics] listen: cannot listen on 127.0.0.1:")
    assert not answers(address)
