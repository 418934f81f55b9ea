"""Fixed-point encoding of floats as integers, and quantisation of features to small integers.

Kept apart from encryption (as phe keeps ``EncodedNumber`` apart from ``EncryptedNumber``): these
functions know nothing of keys; overflow against a key's range is checked where values are encrypted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from protocols.rowblocks import column_max_abs, map_rows


def encode(values: np.ndarray | Sequence[float], scale_bits: int) -> list[int]:
    """``round(v * 2**scale_bits)`` as Python ints (exact, any size). NaN or inf raise ValueError.

    The rounding error is at most ``2**-(scale_bits + 1)`` per value.
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(arr).all():
        raise ValueError("cannot encode NaN or infinite values")
    if scale_bits < 0:
        raise ValueError("scale_bits must be non-negative")
    if scale_bits + int(np.max(np.frexp(arr)[1], initial=0)) < 63:
        return np.rint(np.ldexp(arr, scale_bits)).astype(np.int64).tolist()
    # Beyond int64: exact per value (frexp gives mantissa and exponent without rounding).
    out = []
    for v in arr.tolist():
        mantissa, exponent = np.frexp(v)
        m = int(np.ldexp(mantissa, 53))
        shift = int(exponent) - 53 + scale_bits
        out.append(m << shift if shift >= 0 else _round_shift(m, -shift))
    return out


def _round_shift(m: int, s: int) -> int:
    half = 1 << (s - 1)
    return (m + half) >> s if m >= 0 else -((-m + half) >> s)


def decode(ints: Sequence[int] | np.ndarray, scale_bits: int) -> np.ndarray:
    """Inverse of :func:`encode` (float64): ``int / 2**scale_bits``."""
    return np.array([float(int(v)) for v in ints], dtype=np.float64) / float(2**scale_bits) if len(ints) \
        else np.zeros(0)


def quantise(X: np.ndarray, bits: int = 8, *, fit_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Signed ``bits``-bit integers per column: ``X ~= Xq * scale`` with ``|Xq| <= 2**(bits-1) - 1``.

    ``scale[j] = max|X[fit_rows, j]| / (2**(bits-1) - 1)`` (1 for an all-zero column); ``fit_rows`` (default
    all rows) lets training rows set the scale for every row, values beyond it are clipped. Within the
    fitted range the error per entry is at most ``scale[j] / 2``; for standardised features clipped at 5
    standard deviations and 8 bits that is at most 5/254 ~ 0.02 standard deviations.
    """
    if not 2 <= bits <= 16:
        raise ValueError("bits must be between 2 and 16")
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError("X must be a matrix")
    if not np.isfinite(X).all():
        raise ValueError("cannot quantise NaN or infinite values")
    top = 2 ** (bits - 1) - 1
    fitted = X if fit_rows is None else X[fit_rows]
    scale = np.abs(fitted).max(axis=0, initial=0.0) / top
    scale[scale == 0] = 1.0
    return quantise_with(X, scale, bits).astype(np.int64), scale


def quantise_rows(X: np.ndarray, transform: Callable[[np.ndarray], np.ndarray], bits: int = 8, *,
                  fit_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`quantise` of ``transform(X)`` a block of rows at a time, in the smallest signed integer type of
    ``bits`` bits: on disk beside ``X`` if ``X`` is on disk (``protocols.rowblocks``). ``transform`` maps rows
    on their own (standardising); the result equals ``quantise(transform(X), bits, fit_rows=fit_rows)``."""
    if not 2 <= bits <= 16:
        raise ValueError("bits must be between 2 and 16")
    top = 2 ** (bits - 1) - 1
    scale = column_max_abs(X, fit_rows, transform=transform) / top
    if not np.isfinite(scale).all():
        raise ValueError("cannot quantise NaN or infinite values")
    scale[scale == 0] = 1.0
    Xq = map_rows(X, lambda block: quantise_with(transform(block), scale, bits), X.shape[1],
                  np.int8 if bits <= 8 else np.int16)
    return Xq, scale


def quantise_with(X: np.ndarray, scale: np.ndarray, bits: int = 8) -> np.ndarray:
    """``X`` on a fitted ``scale`` (as :func:`quantise` fits it), in the smallest signed integer type that holds
    ``bits`` bits: a block of rows quantised on the training rows' scale (:func:`quantise_rows`)."""
    top = 2 ** (bits - 1) - 1
    return np.clip(np.rint(np.asarray(X, dtype=np.float64) / scale), -top, top).astype(np.int8 if bits <= 8
                                                                                      else np.int16)
