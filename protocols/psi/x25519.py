"""X25519 scalar multiplication in bulk: Intel's multi-buffer library where it runs, ``cryptography`` otherwise.

Both kernels compute RFC 7748 X25519 (clamped scalar, u-coordinates as 32 little-endian bytes, the top bit
of u masked) and give byte-identical results; a low-order input (all-zero output) is refused by both.

* ``multi-buffer``: ``mbx_x25519_mb8`` from ``libcrypto_mb.so`` (Intel Cryptography Primitives Library, PyPI
  package ``ipp-crypto``), eight scalar multiplications per call with AVX-512 IFMA, called through ctypes.
  It links against the Intel compiler runtime (``intel-cmplr-lib-rt``: ``libintlc``, ``libimf``,
  ``libsvml``, ``libirng``), which is loaded first with ``RTLD_GLOBAL``. Both wheels put their libraries in
  ``<prefix>/lib``; their file lists (``importlib.metadata``) say exactly where.
* ``cryptography``: one ``X25519PrivateKey.exchange`` per point (OpenSSL).

:func:`kernel` chooses once per process: the multi-buffer kernel if the library loads, reports X25519 at
width 8 on this CPU (``mbx_get_algo_info``) and passes the RFC 7748 test vector; otherwise ``cryptography``,
with the reason in :attr:`Kernel.note`. ``FEDPROFILE_X25519=cryptography`` forces the fallback;
``FEDPROFILE_X25519=multi-buffer`` makes an unusable library an error instead of a fallback.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import platform
import sys
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

POINT = 32
ENV = "FEDPROFILE_X25519"
CHOICES = ("auto", "multi-buffer", "cryptography")

# RFC 7748 section 5.2, the two test vectors: scalar, input u-coordinate, output u-coordinate (hex).
RFC7748_VECTORS = (
    ("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
     "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
     "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"),
    ("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
     "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
     "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"),
)

_RUNTIME = ("libintlc.so.5", "libimf.so", "libsvml.so", "libirng.so")  # intel-cmplr-lib-rt, in load order
_MB_LIB = "libcrypto_mb.so"
_MBX_ALGO_X25519 = 4  # enum MBX_ALGO in crypto_mb/cpu_features.h
_MBX_WIDTH_MB8 = 8
_MBX_STATUS_LOW_ORDER_ERR = 4  # crypto_mb/status.h; the status holds 4 bits per lane
_LANES = 8
_PAD = (9).to_bytes(POINT, "little")  # the base point: fills the unused lanes of the last call


class LowOrderPoint(ValueError):
    """An input point of small order (the product is the all-zero u-coordinate); ``index`` is its position."""

    def __init__(self, index: int) -> None:
        super().__init__(f"point {index} is of small order")
        self.index = index


class Kernel(Protocol):
    name: str  # "multi-buffer" or "cryptography"
    note: str  # the library and version, or why the multi-buffer kernel is not in use

    def multiply(self, secret: bytes, points: bytes) -> bytes:
        """``secret * P`` for every 32-byte point in ``points``, in order; :class:`LowOrderPoint` if one is."""
        ...


class CryptographyKernel:
    """One ``cryptography`` X25519 exchange per point."""

    name = "cryptography"

    def __init__(self, note: str = "") -> None:
        self.note = note or f"cryptography {_version('cryptography')}"

    def multiply(self, secret: bytes, points: bytes) -> bytes:
        _check(secret, points)
        key = X25519PrivateKey.from_private_bytes(secret)
        out = bytearray()
        for i in range(0, len(points), POINT):
            try:
                out += key.exchange(X25519PublicKey.from_public_bytes(points[i:i + POINT]))
            except ValueError:  # cryptography refuses the all-zero result of a low-order point
                raise LowOrderPoint(i // POINT) from None
        return bytes(out)


class MultiBufferKernel:
    """``mbx_x25519_mb8`` over ctypes: one call per eight points, all lanes with the same scalar."""

    name = "multi-buffer"

    def __init__(self, fn: ctypes._CFuncPtr, note: str) -> None:  # type: ignore[name-defined]
        self._fn = fn
        self.note = note
        self._careful = CryptographyKernel()  # for the inputs :func:`_risky` picks out

    def multiply(self, secret: bytes, points: bytes) -> bytes:
        _check(secret, points)
        n = len(points) // POINT
        if n == 0:
            return b""
        groups = -(-n // _LANES)
        src = np.empty((groups * _LANES, POINT), dtype=np.uint8)
        src[:n] = np.frombuffer(points, dtype=np.uint8).reshape(n, POINT)
        src[n:] = np.frombuffer(_PAD, dtype=np.uint8)
        risky = _risky(src[:n])
        src[risky] = np.frombuffer(_PAD, dtype=np.uint8)
        dst = np.empty_like(src)
        key = np.frombuffer(bytes(secret), dtype=np.uint8).copy()
        stride = np.arange(groups * _LANES, dtype=np.uint64) * np.uint64(POINT)
        src_ptrs = stride + np.uint64(src.ctypes.data)
        dst_ptrs = stride + np.uint64(dst.ctypes.data)
        key_ptrs = np.full(_LANES, key.ctypes.data, dtype=np.uint64)
        fn, k = self._fn, key_ptrs.ctypes.data
        s, d = src_ptrs.ctypes.data, dst_ptrs.ctypes.data
        step = _LANES * 8  # bytes of eight pointers
        for g in range(groups):
            status = fn(d + g * step, k, s + g * step)
            if status:
                _refuse(status, g * _LANES)
        for i in risky.tolist():
            try:
                dst[i] = np.frombuffer(self._careful.multiply(secret, points[i * POINT:(i + 1) * POINT]), np.uint8)
            except LowOrderPoint:
                raise LowOrderPoint(i) from None
        return dst[:n].tobytes()


def _risky(points: np.ndarray) -> np.ndarray:
    """Rows (of an n x 32 uint8 array) that go to ``cryptography`` instead: any 16-bit aligned word all ones.

    ``mbx_x25519_mb8`` (ipp-crypto 2026.2.0) returns wrong results, instead of the RFC 7748 ones, for some
    inputs with long runs of one bits, such as ``2^85 - 2`` and many u-coordinates within ``2^17`` below
    ``p`` (including ``p - 1``, a point of small order it does not refuse). Every such input found has a run
    of at least 80 ones, so it has a 16-bit aligned word of all ones (any run of 31 has one). Random inputs
    have one with probability about 2^-12, so the detour costs nothing measurable.
    """
    words = points.view("<u2")
    masked_top = words[:, -1] | np.uint16(0x8000)  # the top bit of u is ignored by X25519
    return np.flatnonzero((words[:, :-1] == 0xFFFF).any(axis=1) | (masked_top == 0xFFFF))


def _refuse(status: int, first: int) -> None:
    """Raise for the first failed lane of an ``mbx_x25519_mb8`` status (4 bits per lane)."""
    for lane in range(_LANES):
        code = (status >> (4 * lane)) & 0xF
        if code == _MBX_STATUS_LOW_ORDER_ERR:
            raise LowOrderPoint(first + lane)
        if code:
            raise RuntimeError(f"mbx_x25519_mb8 failed with status {status:#x}")


def _check(secret: bytes, points: bytes) -> None:
    if len(secret) != POINT:
        raise ValueError(f"an X25519 scalar is {POINT} bytes, got {len(secret)}")
    if len(points) % POINT:
        raise ValueError(f"points must be a multiple of {POINT} bytes, got {len(points)}")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _find(dist: str, name: str) -> Path | None:
    """Where the installed distribution ``dist`` put the file ``name``, or ``<prefix>/lib/name``."""
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for entry in files:
        if entry.name == name:
            path = Path(str(entry.locate())).resolve()
            if path.exists():
                return path
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        path = Path(prefix) / "lib" / name
        if path.exists():
            return path
    return None


def load_multi_buffer() -> MultiBufferKernel:
    """The multi-buffer kernel, checked against RFC 7748; ``OSError`` saying why it cannot be used here."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        raise OSError(f"the multi-buffer library is built for x86_64 Linux, not {sys.platform}/{platform.machine()}")
    lib_path = _find("ipp-crypto", _MB_LIB)
    if lib_path is None:
        raise OSError(f"{_MB_LIB} not found: install the ipp-crypto package")
    for name in _RUNTIME:
        path = _find("intel-cmplr-lib-rt", name)
        if path is None:
            raise OSError(f"{name} not found: install the intel-cmplr-lib-rt package")
        ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(str(lib_path))
    lib.mbx_get_algo_info.restype = ctypes.c_uint64
    lib.mbx_get_algo_info.argtypes = [ctypes.c_int]
    if not lib.mbx_get_algo_info(_MBX_ALGO_X25519) & _MBX_WIDTH_MB8:
        raise OSError("this CPU lacks what mbx_x25519_mb8 needs (AVX-512 IFMA)")
    fn = lib.mbx_x25519_mb8
    fn.restype = ctypes.c_uint32
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    kernel = MultiBufferKernel(fn, f"ipp-crypto {_version('ipp-crypto')} mbx_x25519_mb8")
    for scalar, u, expected in RFC7748_VECTORS:
        if kernel.multiply(bytes.fromhex(scalar), bytes.fromhex(u)) != bytes.fromhex(expected):
            raise OSError("mbx_x25519_mb8 fails the RFC 7748 test vector")
    return kernel


@lru_cache(maxsize=1)
def kernel() -> Kernel:
    """This process's X25519 kernel, chosen on first use (see the module docstring)."""
    choice = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ValueError(f"{ENV}={choice!r}: use one of {', '.join(CHOICES)}")
    if choice == "cryptography":
        return CryptographyKernel(f"cryptography {_version('cryptography')} ({ENV}=cryptography)")
    try:
        return load_multi_buffer()
    except OSError as err:
        if choice == "multi-buffer":
            raise
        return CryptographyKernel(f"cryptography {_version('cryptography')} (multi-buffer unavailable: {err})")


def describe() -> dict[str, str]:
    """The kernel in use, for job records, logs and benchmarks: ``{"name": ..., "note": ...}``."""
    chosen = kernel()
    return {"name": chosen.name, "note": chosen.note}


__all__ = ["CHOICES", "ENV", "RFC7748_VECTORS", "CryptographyKernel", "Kernel", "LowOrderPoint",
           "MultiBufferKernel", "describe", "kernel", "load_multi_buffer"]
