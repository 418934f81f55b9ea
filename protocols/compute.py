"""Where the heavy kernels run: the compute backend interface, run inline, on threads, on a local process
pool or on a Ray cluster (``protocols.compute_ray``, imported only when a node's config asks for it).

The Paillier, PSI and scoring kernels are module-level functions of picklable arguments; a protocol hands
them to a :class:`Compute` with :meth:`Compute.submit` and collects futures. A secret a kernel needs (a
Paillier private key, a PSI scalar) goes through :meth:`Compute.keep` once: the backend places it on its
workers its own way and returns what to pass to the kernels in its place (the secret itself for the local
backends; a token for Ray, whose workers hold the key in memory and never in the object store).

A session owns the compute it is given and closes it when it ends, so worker processes that cached a
session's private key exit with the session.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import select
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")
S = TypeVar("S")
BACKENDS = ("pool", "ray")


@runtime_checkable
class Compute(Protocol):
    """Runs picklable module-level functions; ``workers`` is how many run at once."""

    workers: int

    def submit(self, fn: Callable[..., T], /, *args: Any) -> Future[T]:
        ...

    def keep(self, secret: S) -> S:
        """What to pass to kernels in place of ``secret`` (kept by the workers until :meth:`close`)."""
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

    def keep(self, secret: S) -> S:
        return secret  # never leaves this process

    def close(self) -> None:
        return None


NODE_WATCH_S = 1.0  # how often a worker polls for its node where it cannot wait on a pidfd


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed node its parent has not reaped yet is a zombie: dead all the same
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]  # noqa: SIM115
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def die_with_node(node_pid: int) -> None:
    """Pool initializer: the worker exits as soon as the node process ``node_pid`` ends, even by SIGKILL, so no
    worker that cached a session's private key outlives its node.

    A forkserver worker's parent is the fork server, not the node, and the fork server stays up while any worker
    holds its "alive" pipe, so ``prctl(PR_SET_PDEATHSIG)`` would never fire. The worker watches the node itself:
    a thread blocked on a pidfd of the node (Linux 5.3+; readable once the node ends), else polling every
    ``NODE_WATCH_S``.
    """
    if not _alive(node_pid):
        os._exit(1)
    try:
        pidfd: int | None = os.pidfd_open(node_pid)  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        pidfd = None

    def watch() -> None:
        if pidfd is not None:
            select.select([pidfd], [], [])
            os._exit(1)
        while _alive(node_pid):
            time.sleep(NODE_WATCH_S)
        os._exit(1)

    threading.Thread(target=watch, name="node-watch", daemon=True).start()


class ProcessPoolCompute:
    """A local process pool, started on first use; its workers die with the node (:func:`die_with_node`)."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
        self._executor: ProcessPoolExecutor | None = None

    def submit(self, fn: Callable[..., T], /, *args: Any) -> Future[T]:
        if self._executor is None:
            # forkserver, not fork: the nodes run gRPC threads, and forking a threaded process is unsafe.
            self._executor = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("forkserver"),
                                                 initializer=die_with_node, initargs=(os.getpid(),))
        return self._executor.submit(fn, *args)

    def keep(self, secret: S) -> S:
        return secret  # pickled to the workers through their pipes with each call; never written anywhere

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

    def keep(self, secret: S) -> S:
        return secret  # never leaves this process

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


def make_compute(backend: str = "pool", workers: int | None = None, address: str | None = None) -> Compute:
    """A node's backend from its config: ``"pool"`` (local processes; 1 worker runs inline) or ``"ray"``
    (``workers`` actors on the Ray cluster at ``address``: "auto", "ray://head:10001", "head:6379"; None
    workers = every CPU of the cluster). Ray is imported only here, and only when asked for."""
    if backend == "pool":
        return as_compute(workers)
    if backend == "ray":
        from protocols.compute_ray import RayCompute  # optional extra: pip install '.[ray]'

        return RayCompute(workers, address=address or "auto")
    raise ValueError(f"compute backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


__all__ = ["BACKENDS", "Compute", "ComputeSpec", "InlineCompute", "ProcessPoolCompute", "ThreadCompute",
           "as_compute", "die_with_node", "make_compute"]
