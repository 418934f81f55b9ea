"""The Paillier kernels spread over a compute backend (``protocols.compute``), so every core works.

Work is cut into contiguous chunks; keys travel to the workers once per call (without their window
tables) and each worker process keeps the tables it builds (ordinary and mask noise have one each), keyed
by the key's fingerprint. Ciphertexts
travel packed into one byte string (:class:`Shipped`).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

import gmpy2
import numpy as np
from gmpy2 import mpz

from protocols.compute import Compute, ComputeSpec, as_compute
from protocols.paillier import CipherVector, NoisePool, PrivateKey, PublicKey, matvec_t

_KEYS: dict[str, PublicKey | PrivateKey] = {}


def _cached(key: PublicKey | PrivateKey) -> PublicKey | PrivateKey:
    fp = key.fingerprint() if isinstance(key, PublicKey) else "sk:" + key.public_key.fingerprint()
    return _KEYS.setdefault(fp, key)


def _noise_chunk(key: PublicKey | PrivateKey, count: int, mask: bool = False) -> list[mpz]:
    key = _cached(key)
    make = key.mask_noise if mask else key.noise
    return [make() for _ in range(count)]


class Shipped:
    """Ciphertexts packed into one big integer, as bytes, for the trip to a worker.

    Pickling a list of mpz costs a call per element on both ends, and even one large mpz pickles slowly;
    one byte string of fixed-width fields is a plain copy, and one packing serves every worker.
    """

    __slots__ = ("bits", "count", "data")

    def __init__(self, values: Sequence[mpz], bits: int) -> None:
        self.bits, self.count = bits, len(values)
        self.data = gmpy2.to_binary(gmpy2.pack(list(values), bits))

    def __getstate__(self) -> tuple[int, int, bytes]:
        return self.bits, self.count, self.data

    def __setstate__(self, state: tuple[int, int, bytes]) -> None:
        self.bits, self.count, self.data = state

    def values(self) -> list[mpz]:
        out = gmpy2.unpack(gmpy2.from_binary(self.data), self.bits)[:self.count]
        return out + [mpz(0)] * (self.count - len(out))  # unpack drops all-zero top fields


def _ship(cv: CipherVector, a: int = 0, b: int | None = None) -> Shipped:
    return Shipped(cv.values[a:b], cv.public_key.nsquare.bit_length())


def _decrypt_chunk(key: PrivateKey, shipped: Shipped, small: bool) -> list[mpz]:
    key = _cached(key)  # type: ignore[assignment]
    cv = CipherVector(key.public_key, shipped.values())
    return key.decrypt_small(cv) if small else key.decrypt_raw(cv)


def _matvec_chunk(public_key: PublicKey, shipped: Shipped, X: np.ndarray) -> list[mpz]:
    return matvec_t(CipherVector(public_key, shipped.values()), X).values


class PaillierPool:
    """The kernels on ``compute`` (a backend, or a worker count: 1 runs everything in this process).

    The pool owns its compute: :meth:`close` stops it, and with it the workers that cached private keys.
    """

    def __init__(self, compute: ComputeSpec = None) -> None:
        self.compute: Compute = as_compute(compute)
        self.workers = self.compute.workers

    def __enter__(self) -> PaillierPool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.compute.close()

    def _splits(self, n: int, minimum: int) -> list[tuple[int, int]]:
        parts = min(self.workers, max(1, n // minimum))
        bounds = np.linspace(0, n, parts + 1).astype(int)
        return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]

    def make_noise(self, key: PublicKey | PrivateKey, count: int, *, mask: bool = False) -> list[mpz]:
        """``count`` fresh noise values, ordinary or (``mask``) mask noise; CRT-fast with the private key.

        Each worker builds the key's window table for the kind asked for once, and keeps it.
        """
        splits = self._splits(count, 64)
        if self.workers == 1 or len(splits) == 1:
            return _noise_chunk(key, count, mask)
        held = self.compute.keep(key) if isinstance(key, PrivateKey) else key
        futures = [self.compute.submit(_noise_chunk, held, b - a, mask) for a, b in splits]
        return [v for f in futures for v in f.result()]

    def fill(self, pool: NoisePool, count: int) -> None:
        """``count`` more values of the pool's kind (``pool.mask``), made by the pool's key."""
        pool.extend(self.make_noise(pool.noise_key, count, mask=pool.mask))

    def encrypt(self, public_key: PublicKey, ints: Sequence[int] | np.ndarray, *,
                noise: NoisePool | None = None, mask: bool = False) -> CipherVector:
        """Encryptions with noise from ``noise`` (of the right kind) or made now (``mask``: mask noise)."""
        residues = public_key.encode(ints)
        if noise is None:
            values = self.make_noise(public_key, len(residues), mask=mask)
        else:
            noise.check(public_key, mask=mask)
            values = noise.take(len(residues))
        return CipherVector(public_key, public_key.raw_encrypt(residues, values))

    def decrypt_raw(self, private_key: PrivateKey, cv: CipherVector, *, small: bool = False) -> list[mpz]:
        splits = self._splits(len(cv), 16)
        if self.workers == 1 or len(splits) == 1:
            return private_key.decrypt_small(cv) if small else private_key.decrypt_raw(cv)
        held = self.compute.keep(private_key)  # Ray: a token; the key stays in the workers' memory
        futures = [self.compute.submit(_decrypt_chunk, held, _ship(cv, a, b), small) for a, b in splits]
        return [v for f in futures for v in f.result()]

    def decrypt(self, private_key: PrivateKey, cv: CipherVector) -> list[int]:
        return private_key.public_key.decode(self.decrypt_raw(private_key, cv))

    def matvec_t(self, cv: CipherVector, X: np.ndarray) -> CipherVector:
        """Columns split across workers (see :meth:`matvec_plan`); rows when there are too few columns.

        Column splits cost nothing extra: each worker runs the whole bucket method on its own columns.
        Row splits repeat the bucket combination (about two multiplications per distinct scalar and
        column) in every chunk and need one more multiplication per column to join the parts, so they
        are the fallback for a matrix with fewer columns than workers.
        """
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[0] != len(cv):
            raise ValueError(f"X has shape {X.shape}; expected ({len(cv)}, k)")
        split, bounds = self.matvec_plan(*X.shape)
        if split == "columns":
            shipped = _ship(cv)
            futures = [self.compute.submit(_matvec_chunk, cv.public_key, shipped, X[:, a:b]) for a, b in bounds]
            return CipherVector(cv.public_key, [v for f in futures for v in f.result()])
        if split == "rows":
            futures = [self.compute.submit(_matvec_chunk, cv.public_key, _ship(cv, a, b), X[a:b]) for a, b in bounds]
            parts = [f.result() for f in futures]
            n2 = cv.public_key.nsquare
            out = parts[0]
            for part in parts[1:]:
                out = [a * b % n2 for a, b in zip(out, part, strict=True)]
            return CipherVector(cv.public_key, out)
        return matvec_t(cv, X)

    def matvec_plan(self, rows: int, cols: int) -> tuple[str, list[tuple[int, int]]]:
        """How :meth:`matvec_t` splits an (rows, cols) matrix: "columns", "rows" or "none", and the bounds.

        Columns when every worker gets some and the shares are even (or at least two each, or the rows are
        too few to split); rows, at least 256 a chunk, otherwise; nothing for small products.
        """
        if self.workers == 1 or rows * cols < 512:
            return "none", [(0, rows)]
        if cols >= self.workers and (cols % self.workers == 0 or cols >= 2 * self.workers or rows < 512):
            return "columns", self._splits(cols, 1)
        splits = self._splits(rows, 256)
        return ("rows", splits) if len(splits) > 1 else ("none", [(0, rows)])
