"""Secret permutations from the operating system's CSPRNG (``secrets``), for every shuffle that hides an order."""

from __future__ import annotations

import secrets

import numpy as np
import numpy.typing as npt


def secret_permutation(n: int, dtype: npt.DTypeLike = np.int64) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` (int64, or ``dtype`` if it holds ``n - 1``), drawn with
    ``secrets``.

    Each element gets an independent uniform 64-bit key from ``secrets.token_bytes`` and the permutation is
    the order of the keys: with distinct keys every permutation is equally likely. If two keys are equal
    (probability about n^2 / 2^65) all are drawn again, so ties never bias the result. Unlike a NumPy
    generator seeded with 64 bits, the permutation carries the full entropy of the operating system's source.
    """
    if n < 0:
        raise ValueError(f"permutation size must be non-negative, got {n}")
    while True:
        keys = np.frombuffer(secrets.token_bytes(8 * n), dtype=np.uint64)
        order = np.argsort(keys, kind="stable").astype(dtype, copy=False)  # e.g. uint32: half the memory
        ordered = keys[order]
        if n < 2 or bool((ordered[1:] != ordered[:-1]).all()):
            return order
