"""Peak memory of a node while a job runs: the node process and its worker processes, sampled.

Linux's ``/proc`` gives each process's resident memory in two parts: anonymous (the heap: arrays, objects;
what the machine must hold) and file-backed (pages of memory-mapped files, such as a spilled feature matrix,
which the kernel drops and reads again under pressure). A job's summary reports the peaks of both for the node
process, and the peak of the worker processes' resident memory together (every process below the node: the
process pool's fork server and workers; a Ray cluster's actors run elsewhere and are not counted). Several jobs running at once on one node share these
figures: they are the node's, while the job ran.
"""

from __future__ import annotations

import os
import resource
import threading
from pathlib import Path
from typing import Any

SAMPLE_S = 0.2
_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_mb(pid: int | str, *keys: str) -> dict[str, float]:
    out = dict.fromkeys(keys, 0.0)
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in out:
                out[name] = int(value.split()[0]) / 1024  # kB
    except (OSError, ValueError, IndexError):  # a process that just ended; a system without /proc
        pass
    return out


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text()
            found.extend(int(p) for p in text.split())
    except OSError:
        pass
    return found


def _descendants(pid: int) -> list[int]:
    # The pool's workers are the fork server's children, not the node's (protocols.compute).
    found, todo = [], _children(pid)
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(_children(child))
    return found


def sample() -> tuple[float, float, float]:
    """(node anonymous MB, node resident MB, all its descendant processes' resident MB) now."""
    me = _status_mb("self", "RssAnon", "VmRSS")
    workers = sum(_status_mb(child, "VmRSS")["VmRSS"] for child in _descendants(os.getpid()))
    return me["RssAnon"], me["VmRSS"], workers


class PeakMemory:
    """Samples :func:`sample` every ``interval_s`` on a daemon thread from construction to :meth:`stop`."""

    def __init__(self, interval_s: float = SAMPLE_S) -> None:
        self._peaks = list(sample())
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, args=(interval_s,), name="peak-memory", daemon=True)
        self._thread.start()

    def _take(self) -> None:
        now = sample()
        with self._lock:
            self._peaks = [max(a, b) for a, b in zip(self._peaks, now, strict=True)]

    def _watch(self, interval_s: float) -> None:
        while not self._done.wait(interval_s):
            self._take()

    def stop(self) -> dict[str, Any]:
        """The peaks, for a job's summary (whole MB: a figure with a fractional part, stored in the job's
        record, could read as one of the data's values, and a tenth of a MB says nothing more)."""
        if not self._done.is_set():
            self._done.set()
            self._thread.join()
            self._take()
        anon, rss, workers = self._peaks
        return {"node_peak_mb": round(anon), "node_peak_resident_mb": round(rss),
                "workers_peak_mb": round(workers)}


__all__ = ["PeakMemory", "peak_rss_mb", "sample"]
