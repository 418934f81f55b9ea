"""Per-tag calibration, fitted on the validation multiset of (joint score, label) the bank already receives.

Two maps, both strictly increasing in the score (so AUC, KS and every ranking stay exactly as they were):

* **Platt** ``p = sigmoid(a z + b)``: two numbers. The Taylor loss trains scores whose ranking is good but
  whose level is not a log-odds (its optimum for an intercept alone is ``4 ybar - 2``, not ``logit(ybar)``);
  Platt fixes the level and the slope. Platt's (1999) smoothed targets keep separable data finite.
* **Monotone** (isotonic, used when validation is large enough: :data:`MONOTONE_MIN_ROWS` labelled rows and
  :data:`MONOTONE_MIN_CLASS` of each class): on default_credit even centralized scikit-learn LR is off by an
  ECE of 0.05 whatever two numbers recalibrate it, because the observed rate is not a sigmoid of the linear
  score (flat over the lowest 70% of scores, then steep). The pool-adjacent-violators algorithm over blocks of
  at least :data:`MONOTONE_MIN_BLOCK` validation rows (ties never split) gives a few knots ``(score, log-odds
  of the block's rate)``; between knots the log-odds is linear, beyond them it continues with Platt's slope
  ``a``. Knots have strictly increasing scores and log-odds, so the map is strictly increasing.

The map (``a``, ``b`` and the knots, a few dozen numbers per tag) is kept with the bank's half of the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

IDENTITY = (1.0, 0.0)
MONOTONE_MIN_ROWS = 1000  # labelled validation rows per tag below which Platt alone is used
MONOTONE_MIN_CLASS = 50  # ... and positives, and negatives
MONOTONE_MIN_BLOCK = 100  # PAV starts from blocks of at least this many rows (a rate to about +-0.04)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))


def fit_platt(z: np.ndarray, y: np.ndarray, *, iterations: int = 100) -> tuple[float, float]:
    """(a, b) minimising the log-loss of ``sigmoid(a z + b)`` against Platt's smoothed targets for ``y``.

    Newton's method with step halving; ``z`` and ``y`` need both classes (the caller checks).
    """
    z, y = np.asarray(z, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n_pos, n_neg = float(y.sum()), float(len(y) - y.sum())
    target = np.where(y > 0.5, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    X = np.column_stack([z, np.ones_like(z)])

    def loss(w: np.ndarray) -> float:
        s = X @ w
        return float(np.mean(np.logaddexp(0, s) - target * s))

    w = np.array(IDENTITY)
    current = loss(w)
    for _ in range(iterations):
        p = _sigmoid(X @ w)
        grad = X.T @ (p - target) / len(z)
        hess = (X * (p * (1 - p))[:, None]).T @ X / len(z) + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-8:
            candidate = w - t * step
            new = loss(candidate)
            if new <= current:
                break
            t /= 2
        else:
            break
        converged = current - new < 1e-12
        w, current = candidate, new
        if converged:
            break
    return float(w[0]), float(w[1])


def fit_monotone(z: np.ndarray, y: np.ndarray, *, min_block: int = MONOTONE_MIN_BLOCK) -> tuple[list[float], list[float]]:
    """Knots ``(scores, log-odds)`` of the isotonic fit of ``y`` on ``z``, both strictly increasing.

    Rows sorted by score are cut into blocks of at least ``min_block`` rows that never split tied scores (a
    short remainder joins the last block); the pool-adjacent-violators algorithm merges neighbours until the
    blocks' positive rates strictly increase. A knot is a block's mean score and the log-odds of its rate,
    clipped to ``[1 / 2n, 1 - 1 / 2n]`` (only the first block can have rate 0, only the last rate 1).
    """
    z, y = np.asarray(z, dtype=np.float64), np.asarray(y, dtype=np.float64)
    order = np.lexsort((y, z))
    z, y = z[order], y[order]
    starts = np.flatnonzero(np.r_[True, z[1:] != z[:-1]])
    ends = np.r_[starts[1:], len(z)]
    blocks: list[list[float]] = []  # [positives, rows, sum of scores]
    pending = [0.0, 0.0, 0.0]
    for s, e in zip(starts, ends, strict=True):
        pending = [pending[0] + float(y[s:e].sum()), pending[1] + float(e - s), pending[2] + float(z[s:e].sum())]
        if pending[1] >= min_block:
            blocks.append(pending)
            pending = [0.0, 0.0, 0.0]
    if pending[1]:
        if blocks:
            blocks[-1] = [u + v for u, v in zip(blocks[-1], pending, strict=True)]
        else:
            blocks.append(pending)
    pooled: list[list[float]] = []
    for block in blocks:
        pooled.append(block)
        while len(pooled) > 1 and pooled[-2][0] * pooled[-1][1] >= pooled[-1][0] * pooled[-2][1]:
            last = pooled.pop()
            pooled[-1] = [u + v for u, v in zip(pooled[-1], last, strict=True)]
    eps = 0.5 / len(z)
    rates = np.clip([b[0] / b[1] for b in pooled], eps, 1 - eps)
    return [b[2] / b[1] for b in pooled], [float(v) for v in np.log(rates / (1 - rates))]


def calibrate_tag(z: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The report's calibration entry of one tag: ``method``, Platt's ``a`` and ``b``, the monotone map's
    ``knots`` (``{"z": [...], "logit": [...]}`` or None), the pairs it was fitted on, or why not."""
    n = len(y)
    identity = {"a": IDENTITY[0], "b": IDENTITY[1], "knots": None, "n": int(n), "method": "identity"}
    if n == 0:
        return {**identity, "note": "no labelled validation rows: probabilities are the raw sigmoid of the score"}
    if y.min() == y.max():
        return {**identity, "note": "one class among the labelled validation rows: probabilities are the raw sigmoid"}
    a, b = fit_platt(z, y)
    if not a > 0:  # a score that ranks backwards on validation: keep the order rather than flip it
        return {**identity, "note": f"Platt scaling gave a slope of {a:.3g} <= 0 on validation: not applied"}
    positives = int(np.sum(y))
    if n >= MONOTONE_MIN_ROWS and min(positives, n - positives) >= MONOTONE_MIN_CLASS:
        zk, lk = fit_monotone(z, y)
        if len(zk) >= 2:
            return {"a": a, "b": b, "knots": {"z": zk, "logit": lk}, "n": int(n), "method": "monotone"}
        note = "the monotone fit pooled every row into one block: Platt scaling instead"
    else:
        note = (f"Platt scaling: the monotone map needs {MONOTONE_MIN_ROWS} labelled validation rows and "
                f"{MONOTONE_MIN_CLASS} of each class")
    return {"a": a, "b": b, "knots": None, "n": int(n), "method": "platt", "note": note}


def log_odds(z: np.ndarray, calibration: Mapping[str, Any]) -> np.ndarray:
    """The calibrated log-odds of scores ``z`` under one tag's calibration entry (or model entry)."""
    z = np.asarray(z, dtype=np.float64)
    a, b = float(calibration["a"]), float(calibration["b"])
    knots = calibration.get("knots")
    if not knots:
        return a * z + b
    zk, lk = np.asarray(knots["z"], dtype=np.float64), np.asarray(knots["logit"], dtype=np.float64)
    inside = np.interp(z, zk, lk)
    return np.where(z < zk[0], lk[0] + a * (z - zk[0]), np.where(z > zk[-1], lk[-1] + a * (z - zk[-1]), inside))


def apply(z: np.ndarray, calibration: Mapping[str, Any]) -> np.ndarray:
    """Calibrated probabilities of scores ``z`` under one tag's calibration entry."""
    return _sigmoid(log_odds(z, calibration))


def model_entry(calibration: Mapping[str, Any]) -> dict[str, Any]:
    """What the bank's model keeps of a calibration entry: ``a``, ``b`` and ``knots``."""
    knots = calibration.get("knots")
    return {"a": float(calibration["a"]), "b": float(calibration["b"]),
            "knots": None if not knots else {"z": [float(v) for v in knots["z"]],
                                             "logit": [float(v) for v in knots["logit"]]}}


def check_entry(entry: Any) -> dict[str, Any]:
    """A model's calibration entry, checked: finite ``a > 0`` and ``b``, and knots (if any) of equal length
    >= 2 with strictly increasing scores and log-odds. ValueError says what is wrong."""
    if not isinstance(entry, Mapping):
        raise ValueError("a calibration entry is not an object")
    out = model_entry(entry)
    if not (np.isfinite(out["a"]) and np.isfinite(out["b"]) and out["a"] > 0):
        raise ValueError("a calibration's slope a must be finite and > 0, and b finite")
    knots = out["knots"]
    if knots is not None:
        zk, lk = np.array(knots["z"]), np.array(knots["logit"])
        if len(zk) != len(lk) or len(zk) < 2 or not (np.isfinite(zk).all() and np.isfinite(lk).all()):
            raise ValueError("a calibration's knots are not two finite lists of equal length >= 2")
        if not ((np.diff(zk) > 0).all() and (np.diff(lk) > 0).all()):
            raise ValueError("a calibration's knots do not strictly increase")
    return out


def identity_entries(n_tags: int) -> list[dict[str, Any]]:
    """The calibration of a model stored before calibration: the raw sigmoid for every tag."""
    return [{"a": IDENTITY[0], "b": IDENTITY[1], "knots": None} for _ in range(n_tags)]


def entries(calibrations: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The model's entries of per-tag calibration entries (report or model dicts), checked."""
    return [check_entry(c) for c in calibrations]


__all__ = ["IDENTITY", "MONOTONE_MIN_BLOCK", "MONOTONE_MIN_CLASS", "MONOTONE_MIN_ROWS", "apply", "calibrate_tag",
           "check_entry", "entries", "fit_monotone", "fit_platt", "identity_entries", "log_odds", "model_entry"]
