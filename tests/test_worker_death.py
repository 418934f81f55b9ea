"""The process-pool workers (which cache a session's private key) die with their node, even on SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

NODE = """
import os, sys, time
from protocols.compute import ProcessPoolCompute
compute = ProcessPoolCompute(2)
pids = {compute.submit(os.getpid).result() for _ in range(8)}
print(" ".join(str(p) for p in sorted(pids)), flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_pool_workers_die_when_their_node_is_killed():
    node = subprocess.Popen([sys.executable, "-c", NODE], stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert node.stdout is not None
        workers = [int(p) for p in node.stdout.readline().split()]
        assert workers and all(alive(p) for p in workers) and node.pid not in workers
    finally:
        node.send_signal(signal.SIGKILL)
        node.wait()
    deadline = time.monotonic() + 10
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in workers), "a pool worker outlived its node"
