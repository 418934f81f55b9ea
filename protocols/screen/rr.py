"""Randomised response on the labels, before they are encrypted: the screen's label protection.

A deviating platform can return any integer combination of the rows' ciphertexts as a "bin" (one row, or the
difference of two overlapping sets), and the bank cannot tell: no noise added to the decrypted counts can be
calibrated to an honest partition. So the labels are protected at the source: each (row, tag)'s category
(no label, non-event, event) is replaced by k-ary randomised response (k = 3) before encryption, kept with
probability ``e^eps / (e^eps + 2)``, else one of the two others at random. That is ``eps``-local
differential privacy per (row, tag), and ``T eps`` per customer over the screen's T tags (basic composition). Every value the bank decrypts, the IV table, and whatever it
tells the platform from them (which of its features pass a selection) is post-processing of the randomised
categories, whatever the platform combined. The bank debiases the counts: for a bin of ``n`` rows and observed
category counts ``o_k``, ``(o_k - q n) / (p - q)`` estimates the true count (Wang et al., "Locally
differentially private protocols for frequency estimation", USENIX Security 2017).
"""

from __future__ import annotations

import math
import secrets

import numpy as np

_RANDOM = secrets.SystemRandom()
K = 3  # categories: no label, non-event, event


def keep_probability(epsilon_per_tag: float) -> float:
    e = math.exp(epsilon_per_tag)
    return e / (e + K - 1)


def randomise(cats: np.ndarray, epsilon_per_tag: float | None) -> np.ndarray:
    """``cats`` (rows, tags) of categories 0..2, each replaced by k-ary randomised response (None: unchanged).
    Randomness from ``secrets``."""
    if epsilon_per_tag is None:
        return cats.copy()
    p = keep_probability(epsilon_per_tag)
    n = cats.size
    draws = np.fromiter((_RANDOM.random() for _ in range(n)), dtype=np.float64, count=n).reshape(cats.shape)
    shifts = np.fromiter((_RANDOM.randrange(1, K) for _ in range(n)), dtype=np.int8, count=n).reshape(cats.shape)
    flipped = (cats.astype(np.int16) + shifts) % K
    return np.where(draws < p, cats, flipped).astype(np.int8)


def debias(observed: np.ndarray, rows: np.ndarray, epsilon_per_tag: float | None) -> np.ndarray:
    """Unbiased estimates of the true category counts from randomised ones: ``observed`` (..., 3) counts of
    the bins of ``rows`` rows each (broadcast over the last axis). Unclipped (may be negative)."""
    obs = observed.astype(np.float64)
    if epsilon_per_tag is None:
        return obs
    p = keep_probability(epsilon_per_tag)
    q = (1 - p) / (K - 1)
    return (obs - q * rows[..., None]) / (p - q)


def label_privacy_statement(epsilon_per_tag: float | None, n_tags: int) -> dict[str, object]:
    """What the screen's result and report say about the labels' protection."""
    if epsilon_per_tag is None:
        return {"mode": "off", "epsilon": None,
                "note": "no randomised response: a deviating platform can read labels through the bins the bank "
                        "decrypts (docs/security.md, Screen)"}
    return {"mode": "randomised_response", "epsilon": epsilon_per_tag * n_tags, "epsilon_per_tag": epsilon_per_tag,
            "keep_probability": round(keep_probability(epsilon_per_tag), 4),
            "note": "epsilon-local DP per customer over all tags of this screen (epsilon_per_tag per tag), against a "
                    "platform that deviates as much as against one that does not; counts debiased; it adds to the "
                    "labels' budget of every other job that releases them"}


__all__ = ["K", "debias", "keep_probability", "label_privacy_statement", "randomise"]
