"""The Okamoto-Uchiyama kernels spread over a compute backend, as ``protocols.paillier_pool`` does for Paillier:
contiguous chunks, keys sent once per call without their window tables (each worker keeps the tables it
builds, keyed by the key's fingerprint), ciphertexts shipped as one byte string (:class:`Shipped`)."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

import numpy as np
from gmpy2 import mpz

from protocols.compute import Compute, ComputeSpec, as_compute
from protocols.he.ou_keys import CipherVector, NoisePool, PrivateKey, PublicKey
from protocols.paillier_math import matvec_t_values
from protocols.paillier_pool import Shipped

_KEYS: dict[str, PublicKey | PrivateKey] = {}


def _cached(key: PublicKey | PrivateKey) -> PublicKey | PrivateKey:
    fp = key.fingerprint() if isinstance(key, PublicKey) else "sk:" + key.public_key.fingerprint()
    return _KEYS.setdefault(fp, key)


def _noise_chunk(key: PublicKey | PrivateKey, count: int, mask: bool) -> list[mpz]:
    key = _cached(key)
    make = key.mask_noise if mask else key.noise
    return [make() for _ in range(count)]


def _ship(cv: CipherVector, a: int = 0, b: int | None = None) -> Shipped:
    return Shipped(cv.values[a:b], cv.public_key.n.bit_length())


def _decrypt_chunk(key: PrivateKey, shipped: Shipped) -> list[mpz]:
    key = _cached(key)  # type: ignore[assignment]
    return key.decrypt_raw(CipherVector(key.public_key, shipped.values()))


def _matvec_chunk(public_key: PublicKey, shipped: Shipped, X: np.ndarray) -> list[mpz]:
    return matvec_t_values(shipped.values(), X, public_key.n)


class OUPool:
    """The OU kernels on ``compute`` (a backend, or a worker count: 1 runs everything in this process)."""

    def __init__(self, compute: ComputeSpec = None) -> None:
        self.compute: Compute = as_compute(compute)
        self.workers = self.compute.workers

    def __enter__(self) -> OUPool:
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
        splits = self._splits(count, 64)
        if self.workers == 1 or len(splits) == 1:
            return _noise_chunk(key, count, mask)
        held = self.compute.keep(key) if isinstance(key, PrivateKey) else key
        futures = [self.compute.submit(_noise_chunk, held, b - a, mask) for a, b in splits]
        return [v for f in futures for v in f.result()]

    def fill(self, pool: NoisePool, count: int) -> None:
        pool.extend(self.make_noise(pool.noise_key, count, mask=pool.mask))

    def encrypt(self, public_key: PublicKey, ints: Sequence[int] | np.ndarray, *,
                noise: NoisePool | None = None, mask: bool = False) -> CipherVector:
        residues = public_key.encode(ints)
        if noise is None:
            values = self.make_noise(public_key, len(residues), mask=mask)
        else:
            noise.check(public_key, mask=mask)
            values = noise.take(len(residues))
        return CipherVector(public_key, public_key.raw_encrypt(residues, values))

    def decrypt_raw(self, private_key: PrivateKey, cv: CipherVector, *, small: bool = False) -> list[mpz]:
        """Signed plaintexts in (-p/2, p/2) (``small`` changes nothing: OU always decrypts mod p^2 only)."""
        splits = self._splits(len(cv), 16)
        if self.workers == 1 or len(splits) == 1:
            return private_key.decrypt_raw(cv)
        held = self.compute.keep(private_key)
        futures = [self.compute.submit(_decrypt_chunk, held, _ship(cv, a, b)) for a, b in splits]
        return [v for f in futures for v in f.result()]

    def decrypt(self, private_key: PrivateKey, cv: CipherVector) -> list[int]:
        return private_key.public_key.decode(self.decrypt_raw(private_key, cv))

    def matvec_t(self, cv: CipherVector, X: np.ndarray) -> CipherVector:
        """Columns split across workers when there are enough of them, else rows (parts multiplied together)."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[0] != len(cv):
            raise ValueError(f"X has shape {X.shape}; expected ({len(cv)}, k)")
        rows, cols = X.shape
        n = cv.public_key.n
        if self.workers == 1 or rows * cols < 512:
            return CipherVector(cv.public_key, matvec_t_values(cv.values, X, n))
        if cols >= self.workers:
            shipped = _ship(cv)
            futures = [self.compute.submit(_matvec_chunk, cv.public_key, shipped, X[:, a:b])
                       for a, b in self._splits(cols, 1)]
            return CipherVector(cv.public_key, [v for f in futures for v in f.result()])
        splits = self._splits(rows, 256)
        futures = [self.compute.submit(_matvec_chunk, cv.public_key, _ship(cv, a, b), X[a:b]) for a, b in splits]
        out = futures[0].result()
        for f in futures[1:]:
            out = [a * b % n for a, b in zip(out, f.result(), strict=True)]
        return CipherVector(cv.public_key, out)


__all__ = ["OUPool"]
