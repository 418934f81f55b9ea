"""Platt scaling per tag: ``p = sigmoid(a z + b)`` fitted on the validation multiset of (joint score, label).

The Taylor loss trains scores whose ranking is good but whose level is not a log-odds (its optimum for an
intercept alone is ``4 ybar - 2``, not ``logit(ybar)``), so the bank fits two numbers per tag on held-out
pairs it already receives. AUC and KS are unchanged (``a > 0`` keeps the order); log-loss and the mean
predicted probability are what move. Platt's (1999) smoothed targets keep separable data finite.
"""

from __future__ import annotations

from typing import Any

import numpy as np

IDENTITY = (1.0, 0.0)


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


def calibrate_tag(z: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The report's calibration entry of one tag: ``a``, ``b``, the pairs it was fitted on, or why not."""
    n = len(y)
    if n == 0:
        return {"a": IDENTITY[0], "b": IDENTITY[1], "n": 0, "method": "identity",
                "note": "no labelled validation rows: probabilities are the raw sigmoid of the score"}
    if y.min() == y.max():
        return {"a": IDENTITY[0], "b": IDENTITY[1], "n": int(n), "method": "identity",
                "note": "one class among the labelled validation rows: probabilities are the raw sigmoid"}
    a, b = fit_platt(z, y)
    if not a > 0:  # a score that ranks backwards on validation: keep the order rather than flip it
        return {"a": IDENTITY[0], "b": IDENTITY[1], "n": int(n), "method": "identity",
                "note": f"Platt scaling gave a slope of {a:.3g} <= 0 on validation: not applied"}
    return {"a": a, "b": b, "n": int(n), "method": "platt"}


def apply(z: np.ndarray, a: float, b: float) -> np.ndarray:
    """Calibrated probabilities ``sigmoid(a z + b)``."""
    return _sigmoid(a * np.asarray(z, dtype=np.float64) + b)


__all__ = ["IDENTITY", "apply", "calibrate_tag", "fit_platt"]
