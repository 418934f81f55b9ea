"""Where the heavy kernels run: the compute backend interface, run inline, on a local process pool or on threads.

The Paillier and PSI kernels are module-level functions of picklable arguments; a protocol hands them to
a :class:`Compute` with :meth:`Compute.submit` and collects futures. A distributed backend (a Ray cluster,
say) only has to implement the same three members; no protocol code changes.

A session owns the compute it is given and closes it when it ends, so worker processes that cached a
session's private key exit with the session.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")


@runtime_checkable
class Compute(Protocol):
    """Runs picklable module-level functions; ``workers`` is how many run at once."""

    workers: int

    def submit(self, fn: Callable[..., T], /, *args: Any) -> Future[T]:
        ...

    def close(self) -> None:
        """Stop the workers (idempotent); pending work is cancelled."""
        ...


class InlineCompute:
    """Runs each call at once in this process: for one core, small inputs and tests."""

    workers = 1

    def submit(self, fn: Callable[..., T], /, *args: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as err:  # delivered through the future, as a pool would
            future.set_exception(err)
        return future

    def close(self) -> None:
        return None


class ProcessPoolCompute:
    """A local process pool, started on first use."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
        self._executor: ProcessPoolExecutor | None = None

    def submit(self, fn: Callable[..., T], /, *args: Any) -> Future[T]:
        if self._executor is None:
            # forkserver, not fork: the nodes run gRPC threads, and forking a threaded process is unsafe.
            self._executor = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("forkserver"))
        return self._executor.submit(fn, *args)

    def close(self) -> None:
        if self._executor is not None:
            executor, self._executor = self._executor, None
            executor.shutdown(cancel_futures=True)


class ThreadCompute:
    """A pool of threads in this process, started on first use: for kernels that release the GIL while they
    compute (C code called through ctypes), which then run in parallel without pickling or worker start-up."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

    def submit(self, fn: Callable[..., T], /, *args: Any) -> Future[T]:
        if self._closed:
            raise RuntimeError("this compute backend is closed")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="compute")
        return self._executor.submit(fn, *args)

    def close(self) -> None:
        self._closed = True
        if self._executor is not None:
            executor, self._executor = self._executor, None
            executor.shutdown(cancel_futures=True)


ComputeSpec = Compute | int | None


def as_compute(spec: ComputeSpec) -> Compute:
    """A :class:`Compute` from a backend, a worker count (1 = inline) or None (every core)."""
    if isinstance(spec, Compute):
        return spec
    if spec is not None and (isinstance(spec, bool) or not isinstance(spec, int) or spec < 1):
        raise ValueError(f"workers must be a positive integer, got {spec!r}")
    workers = spec if spec is not None else (os.cpu_count() or 1)
    return InlineCompute() if workers == 1 else ProcessPoolCompute(workers)


__all__ = ["Compute", "ComputeSpec", "InlineCompute", "ProcessPoolCompute", "ThreadCompute", "as_compute"]
