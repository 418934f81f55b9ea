"""The Ray backend: a session's kernels on long-lived actors of the node's own Ray cluster.

Install with ``pip install '.[ray]'``; nothing imports this module unless a node's config says
``[compute] backend = "ray"`` (``protocols.compute.make_compute``).

One session, one set of actors (one CPU each), started on first use and killed by :meth:`RayCompute.close`
when the session ends. Keys stay in the actors' memory:

- :meth:`RayCompute.keep` gives back a :class:`Held` token; kernels receive the token and the actor swaps
  in the secret just before the call, so no task argument, return value or object ever holds a key.
- The secret reaches each actor once, sealed to that actor: the actor draws an X25519 key pair when it
  starts, the driver derives an AES-256-GCM key from a fresh X25519 exchange with it (HKDF-SHA256) and
  sends only the ciphertext. Whatever Ray does with that message (inline it in the task, put it in the
  object store, spill it to disk), only the actor's memory can open it.
- Killing the actors at the session's end destroys the keys (and the window tables built from them).

Large arguments (a packed ciphertext vector sent to every worker, a block of rows) are put into the
object store once per call burst and shared by reference. Results are what the same kernels return on
the process pool, in the same order: the backend changes where work runs, never what it computes.
"""

from __future__ import annotations

import os
import pickle
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocols.errors import UserError

T = TypeVar("T")
S = TypeVar("S")

SEAL_INFO = b"fedprofile/compute_ray/seal-v1"
SHARE_BYTES = 256 * 1024  # arguments at least this large go into the object store once per burst
START_TIMEOUT_S = 120.0  # a session's actors must be running by then (else the cluster lacks free CPUs)
_INIT_LOCK = threading.Lock()


class RayUnavailable(UserError):
    """Ray is configured but cannot be used: not installed, or no cluster at the address."""


def _ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise RayUnavailable("[compute] backend = \"ray\" but Ray is not installed in this environment; "
                             "install it with `pip install 'fedprofile[ray]'` (or `pip install ray`), "
                             "or set backend = \"pool\"") from err
    return ray


def connect(address: str = "auto", *, num_cpus: int | None = None) -> Any:
    """This process's connection to Ray, made once: ``address`` "auto" (the cluster this machine belongs
    to), "local" (start a private cluster here with ``num_cpus``), or the head's "host:6379" /
    "ray://host:10001"."""
    ray = _ray()
    with _INIT_LOCK:
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": False}
            try:
                if address == "local":
                    ray.init(num_cpus=num_cpus, **kwargs)
                else:
                    ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise RayUnavailable(f"[compute] address {address!r}: cannot join a Ray cluster ({err}); "
                                     "start one with `ray start --head` on the head machine and "
                                     "`ray start --address=HEAD:6379` on the others, or set address = "
                                     "\"local\"") from err
    return ray


# ------------------------------------------------------------------------------ sealing ----


def _aead(own: X25519PrivateKey, peer_public: bytes) -> AESGCM:
    shared = own.exchange(X25519PublicKey.from_public_bytes(peer_public))
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=SEAL_INFO).derive(shared)
    return AESGCM(key)


def _raw_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def seal(value: Any, recipient_public: bytes) -> tuple[bytes, bytes, bytes]:
    """``value`` pickled and encrypted to ``recipient_public``: (our one-time public key, nonce, ciphertext)."""
    ephemeral = X25519PrivateKey.generate()
    nonce = secrets.token_bytes(12)
    sealed = _aead(ephemeral, recipient_public).encrypt(nonce, pickle.dumps(value), SEAL_INFO)
    return _raw_public(ephemeral), nonce, sealed


def unseal(own: X25519PrivateKey, sender_public: bytes, nonce: bytes, sealed: bytes) -> Any:
    return pickle.loads(_aead(own, sender_public).decrypt(nonce, sealed, SEAL_INFO))


@dataclass(frozen=True)
class Held:
    """Stands for a secret that the session's actors hold; only :class:`KernelActor` can resolve it."""

    token: str

    def __repr__(self) -> str:
        return "Held(<secret>)"


class KernelActor:
    """One worker of a session (one CPU): runs kernels, holds the session's secrets in memory."""

    def __init__(self) -> None:
        self._own = X25519PrivateKey.generate()
        self._secrets: dict[str, Any] = {}

    def public_key(self) -> tuple[bytes, int]:
        return _raw_public(self._own), os.getpid()

    def hold(self, token: str, sender_public: bytes, nonce: bytes, sealed: bytes) -> None:
        self._secrets[token] = unseal(self._own, sender_public, nonce, sealed)

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        resolved = [self._secrets[a.token] if isinstance(a, Held) else a for a in args]
        return fn(*resolved)


# ------------------------------------------------------------------------------ backend ----


class RayCompute:
    """``workers`` actors on the Ray cluster at ``address`` (None = one per CPU of the cluster), each
    reserving ``cpus_per_worker`` of the cluster's CPUs (below 1 only where both parties share one test
    cluster; in production each party has its own)."""

    def __init__(self, workers: int | None = None, *, address: str = "auto", cpus_per_worker: float = 1.0) -> None:
        if workers is not None and (isinstance(workers, bool) or workers < 1):
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        if not 0 < cpus_per_worker <= 64:
            raise ValueError(f"cpus_per_worker must be in (0, 64], got {cpus_per_worker!r}")
        self.cpus_per_worker = cpus_per_worker
        self._ray = connect(address, num_cpus=workers)
        self.workers = workers or max(1, int(self._ray.cluster_resources().get("CPU", 1)))
        self._lock = threading.Lock()
        self._actors: list[Any] | None = None
        self._publics: list[bytes] = []
        self._busy: list[int] = []
        self._kept: dict[int, tuple[Any, Held]] = {}  # id(secret) -> (secret, its token)
        self._shared: dict[int, tuple[Any, Any]] = {}  # id(arg) -> (arg, its object ref), this burst
        self._closed = False

    # -- actors --

    def _start(self) -> list[Any]:
        if self._closed:
            raise RuntimeError("this compute backend is closed")
        if self._actors is None:
            remote = self._ray.remote(num_cpus=self.cpus_per_worker, max_restarts=0)(KernelActor)
            actors = [remote.remote() for _ in range(self.workers)]
            try:
                answers = self._ray.get([a.public_key.remote() for a in actors], timeout=START_TIMEOUT_S)
            except Exception as err:
                for actor in actors:
                    self._ray.kill(actor, no_restart=True)
                free = self._ray.available_resources().get("CPU", 0)
                raise RayUnavailable(f"the Ray cluster could not start {self.workers} kernel workers of "
                                     f"{self.cpus_per_worker} CPU each within {START_TIMEOUT_S:.0f} s ({free} CPUs "
                                     f"free; {type(err).__name__}: {err}); lower [compute] workers, or check "
                                     "that every Ray node has this package installed (`pip install "
                                     "'fedprofile[ray]'`, the same version as the node)") from err
            self._publics = [public for public, _ in answers]
            self._busy = [0] * len(actors)
            self._actors = actors
            for secret, held in self._kept.values():
                self._install(held, secret)
        return self._actors

    def _install(self, held: Held, secret: Any) -> None:
        assert self._actors is not None
        self._ray.get([actor.hold.remote(held.token, *seal(secret, public))
                       for actor, public in zip(self._actors, self._publics, strict=True)])

    def keep(self, secret: S) -> S:
        with self._lock:
            if id(secret) in self._kept:
                return self._kept[id(secret)][1]  # type: ignore[return-value]
            held = Held(secrets.token_hex(16))
            self._kept[id(secret)] = (secret, held)  # the reference keeps id() unique
            if self._actors is not None:
                self._install(held, secret)
            return held  # type: ignore[return-value]

    # -- work --

    def _share(self, arg: Any) -> Any:
        """An object ref for a large argument (the same ref for the same object within a burst)."""
        if isinstance(arg, bytes | bytearray):
            size = len(arg)
        elif hasattr(arg, "nbytes"):
            size = int(arg.nbytes)
        elif isinstance(getattr(arg, "data", None), bytes):
            size = len(arg.data)
        else:
            return arg
        if size < SHARE_BYTES:
            return arg
        hit = self._shared.get(id(arg))
        if hit is not None and hit[0] is arg:
            return hit[1]
        if len(self._shared) >= 8:
            self._shared.clear()
        ref = self._ray.put(arg)
        self._shared[id(arg)] = (arg, ref)
        return ref

    def submit(self, fn: Callable[..., T], /, *args: Any) -> Future[T]:
        with self._lock:
            actors = self._start()
            i = min(range(len(actors)), key=self._busy.__getitem__)  # the least busy worker
            self._busy[i] += 1
            shipped = [self._share(a) for a in args]
            future: Future[T] = actors[i].run.remote(fn, *shipped).future()

        def done(_: Future[T], i: int = i) -> None:
            with self._lock:
                if self._busy:
                    self._busy[i] -= 1

        future.add_done_callback(done)
        return future

    def close(self) -> None:
        """Kill the actors (and with them every key they held); idempotent."""
        with self._lock:
            self._closed = True
            actors, self._actors = self._actors or [], None
            self._kept.clear()
            self._shared.clear()
            self._busy = []
        for actor in actors:
            self._ray.kill(actor, no_restart=True)

    def worker_pids(self) -> list[int]:
        """The actors' process IDs (for tests and the benchmark's memory report)."""
        actors = self._start()
        return [pid for _, pid in self._ray.get([a.public_key.remote() for a in actors])]


__all__ = ["Held", "KernelActor", "RayCompute", "RayUnavailable", "connect", "seal", "unseal"]
