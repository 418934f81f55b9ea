"""128-bit keys of raw ID texts, computed in numpy: how a node tells its kept IDs from its new ones.

A re-alignment must find which of the node's current IDs it already holds in the pair's state. Hashing
every ID with SHA-256 (or a Python dict or pandas index of the strings) costs microseconds per ID, as much
as the rest of a small re-alignment together; these keys cost a fraction of that: the IDs become a
fixed-width UTF-32 array a block at a time, and two independent multiply-xor streams over its 64-bit words,
each finished with MurmurHash3's 64-bit mixer, give two 64-bit keys per ID. Not cryptographic (the IDs are
the node's own, nobody chooses them against it): two different IDs share both keys with probability about
2^-128 per pair. The key covers the text as numpy holds it, so IDs differing only in trailing NUL
characters share a key (numpy strips those).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

BLOCK = 1 << 16
_SEEDS = (np.uint64(0x243F6A8885A308D3), np.uint64(0x13198A2E03707344))
_MULTIPLIERS = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F))


def _mix(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's fmix64: every input bit reaches every output bit."""
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


def _fixed_width(block: Sequence[str] | np.ndarray) -> np.ndarray:
    if isinstance(block, np.ndarray) and block.dtype.kind == "T":  # numpy StringDType (the nodes' IDs)
        width = int(np.strings.str_len(block).max()) if len(block) else 1
        return block.astype(f"U{max(1, width)}")
    if isinstance(block, np.ndarray) and block.dtype.kind == "U":
        return block
    return np.asarray(block, dtype=np.str_)  # any non-text ID becomes its text, as hashing reads it


def raw_keys(ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """Two 64-bit keys per ID (``(n, 2)`` uint64), equal for equal texts."""
    n = len(ids)
    out = np.empty((n, 2), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for lo in range(0, n, BLOCK):
            block = _fixed_width(ids[lo:lo + BLOCK])
            width = block.dtype.itemsize // 4
            codes = block.view(np.uint32).reshape(len(block), width)
            if width % 2:
                codes = np.concatenate([codes, np.zeros((len(block), 1), dtype=np.uint32)], axis=1)
            words = np.ascontiguousarray(codes).view(np.uint64)  # two UTF-32 code points per word
            h1 = np.full(len(block), _SEEDS[0], dtype=np.uint64)
            h2 = np.full(len(block), _SEEDS[1], dtype=np.uint64)
            for j in range(words.shape[1]):
                word = words[:, j]
                h1 = (h1 ^ word) * _MULTIPLIERS[0]
                h2 = (h2 + word) * _MULTIPLIERS[1]
                h2 ^= h2 >> np.uint64(29)
            out[lo:lo + len(block), 0] = _mix(h1)
            out[lo:lo + len(block), 1] = _mix(h2 ^ np.uint64(width))
    return out


def find_keys(stored: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """For each row of ``wanted`` (``(n, 2)`` keys), the row of ``stored`` with the same two keys, or -1.
    ``stored`` rows are distinct. A hash table of the stored first keys (pandas' uint64 index: about 3x faster
    than sorting both sides), both keys compared; sorting both sides where two stored first keys are equal."""
    at = np.full(len(wanted), -1, dtype=np.int64)
    if len(stored) == 0 or len(wanted) == 0:
        return at
    index = pd.Index(stored[:, 0])
    if not index.is_unique:  # two stored IDs share a first key (about n^2 / 2^65 odds)
        return _find_sorted(stored, wanted)
    pos = index.get_indexer(wanted[:, 0])
    hit = np.flatnonzero(pos >= 0)
    same = stored[pos[hit], 1] == wanted[hit, 1]
    at[hit[same]] = pos[hit[same]]
    return at


def _find_sorted(stored: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """:func:`find_keys` by sorting both sides on their first key (the search then runs in order)."""
    at = np.full(len(wanted), -1, dtype=np.int64)
    s_order = np.argsort(stored[:, 0], kind="stable")
    s_sorted = stored[s_order, 0]
    w_order = np.argsort(wanted[:, 0], kind="stable")
    w_sorted = wanted[w_order, 0]
    pos = np.searchsorted(s_sorted, w_sorted)
    pos[pos == len(s_sorted)] = 0
    hit = s_sorted[pos] == w_sorted
    rows = s_order[pos[hit]]
    same = stored[rows, 1] == wanted[w_order[hit], 1]
    at[w_order[hit][same]] = rows[same]
    if np.any(s_sorted[1:] == s_sorted[:-1]):  # a shared first key among stored rows (~n^2/2^64): look again
        by_pair = {(int(a), int(b)): i for i, (a, b) in enumerate(stored.tolist())}
        for i in np.flatnonzero(at < 0).tolist():
            at[i] = by_pair.get((int(wanted[i, 0]), int(wanted[i, 1])), -1)
    return at


__all__ = ["find_keys", "raw_keys"]
