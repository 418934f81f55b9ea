"""The encrypted histogram: per feature and bin, the product of the rows' ciphertexts in that bin.

For every scheme of the seam (:mod:`protocols.he.scheme`), a product of ciphertexts modulo the ciphertext
modulus encrypts the sum of their plaintexts, so this is additions only: the holder of the ciphertexts
(who cannot decrypt) learns nothing, and the key holder decrypts bin-level sums, never a row. Plaintexts
that pack several values in slots (one per tag, say) are summed slot-wise: size the slots for a whole
bin's sum. Binning's weight of evidence and information value, and a boosted tree's split gains, are
both such sums.

Cost: one modular multiplication per row and feature, whatever the number of bins. The features are
spread over a compute backend's workers (or the rows, when there are fewer features than workers).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from gmpy2 import mpz

from protocols.compute import Compute
from protocols.paillier_pool import Shipped

MIN_ROWS_PER_CHUNK = 256


def check_bins(bins: np.ndarray, n_rows: int, n_bins: int | Sequence[int]) -> tuple[np.ndarray, list[int]]:
    """``bins`` as a (rows, features) int64 array and the bins per feature; ValueError naming the feature
    (by position) when an index lies outside its bins, or when the shapes disagree."""
    B = np.asarray(bins)
    if B.ndim == 1:
        B = B.reshape(-1, 1)
    if B.ndim != 2 or B.shape[0] != n_rows:
        raise ValueError(f"bins have shape {np.shape(bins)}; expected ({n_rows},) or ({n_rows}, features)")
    if B.size and not np.issubdtype(B.dtype, np.integer):
        raise ValueError("bin indices must be integers")
    B = B.astype(np.int64, copy=False)
    sizes = [int(n_bins)] * B.shape[1] if isinstance(n_bins, int | np.integer) else [int(k) for k in n_bins]
    if len(sizes) != B.shape[1]:
        raise ValueError(f"{len(sizes)} bin counts for {B.shape[1]} features")
    for j, size in enumerate(sizes):
        if size < 1:
            raise ValueError(f"feature {j}: {size} bins; at least one is needed")
        if n_rows and (B[:, j].min() < 0 or B[:, j].max() >= size):
            raise ValueError(f"feature {j}: bin indices must lie in 0..{size - 1}")
    return B, sizes


def histogram_values(values: Sequence[mpz], bins: np.ndarray, n_bins: int | Sequence[int],
                     modulus: mpz) -> list[mpz]:
    """Per feature (feature-major), per bin: the product mod ``modulus`` of the values of its rows (1, an
    encryption of 0 without noise, for an empty bin)."""
    B, sizes = check_bins(bins, len(values), n_bins)
    out: list[mpz] = []
    for j, size in enumerate(sizes):
        acc: list[mpz | None] = [None] * size
        for c, b in zip(values, B[:, j].tolist(), strict=True):
            prev = acc[b]
            acc[b] = c if prev is None else prev * c % modulus
        out.extend(mpz(1) if v is None else v for v in acc)
    return out


def _chunk(shipped: Shipped, bins: np.ndarray, sizes: list[int], modulus: mpz) -> list[mpz]:
    return histogram_values(shipped.values(), bins, sizes, modulus)


def spread_histogram(compute: Compute, values: Sequence[mpz], bins: np.ndarray, n_bins: int | Sequence[int],
                     modulus: mpz) -> list[mpz]:
    """:func:`histogram_values` on ``compute``: features split across workers (each ships the whole column
    of ciphertexts once), or rows when there are fewer features than workers (the parts' bins are then
    multiplied together: one more multiplication per bin and part). The same values either way."""
    B, sizes = check_bins(bins, len(values), n_bins)
    rows, k = B.shape
    workers = compute.workers
    bits = int(modulus).bit_length()
    if workers <= 1 or rows * k < 2 * MIN_ROWS_PER_CHUNK:
        return histogram_values(values, B, sizes, modulus)
    if k >= workers:
        bounds = np.linspace(0, k, workers + 1).astype(int)
        shipped = Shipped(list(values), bits)
        futures = [compute.submit(_chunk, shipped, B[:, a:b], sizes[a:b], modulus)
                   for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
        return [v for f in futures for v in f.result()]
    parts = min(workers, max(1, rows // MIN_ROWS_PER_CHUNK))
    if parts <= 1:
        return histogram_values(values, B, sizes, modulus)
    bounds = np.linspace(0, rows, parts + 1).astype(int)
    futures = [compute.submit(_chunk, Shipped(list(values[a:b]), bits), B[a:b], sizes, modulus)
               for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    out = futures[0].result()
    for f in futures[1:]:
        out = [x * y % modulus for x, y in zip(out, f.result(), strict=True)]
    return out


__all__ = ["check_bins", "histogram_values", "spread_histogram"]
