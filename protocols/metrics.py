"""Evaluation of per-tag models: the split both parties agree on, metrics, and scikit-learn yardsticks.

The split depends only on the bank's labels and three numbers (seed, shares), so a harness that sees
both halves (simulations, benchmarks) reproduces it exactly and can fit the centralized model on the very
rows the joint model was trained on. Nothing here knows the training protocol: callers pass plain numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score, roc_curve
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from protocols.errors import UserError
from protocols.party_data import PartyData


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # row positions in the aligned order
    validation: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


def split_rows(labels: np.ndarray, *, test_share: float, validation_share: float, seed: int) -> Split:
    """Stratified split of the aligned rows into train / validation / test.

    Strata are the first tag's label with "unknown" as a class of its own (for one tag this is the usual
    stratified split). ``validation_share`` is taken from what remains after the test share.
    """
    n = labels.shape[0]
    rng = np.random.default_rng(seed)
    strata = np.where(np.isnan(labels[:, 0]), 2, labels[:, 0]).astype(np.int64) if labels.shape[1] else \
        np.zeros(n, dtype=np.int64)
    test_parts, val_parts, train_parts = [], [], []
    for value in np.unique(strata):
        rows = np.flatnonzero(strata == value)
        rows = rows[rng.permutation(len(rows))]
        n_test = int(round(len(rows) * test_share))
        n_val = int(round((len(rows) - n_test) * validation_share))
        test_parts.append(rows[:n_test])
        val_parts.append(rows[n_test:n_test + n_val])
        train_parts.append(rows[n_test + n_val:])
    return Split(*(np.sort(np.concatenate(p)).astype(np.int64) for p in (train_parts, val_parts, test_parts)))


def tag_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """AUC, KS and logloss on the labelled rows (``y`` NaN = unknown). AUC and KS are None with one class."""
    known = ~np.isnan(y)
    y, p = y[known].astype(np.int64), np.clip(p[known], 1e-12, 1 - 1e-12)
    out: dict[str, Any] = {"n": int(len(y)), "positives": int(y.sum())}
    if len(y) == 0 or y.min() == y.max():
        out.update(auc=None, ks=None, logloss=None if len(y) == 0 else float(log_loss(y, p, labels=[0, 1])))
        return out
    fpr, tpr, _ = roc_curve(y, p)
    out.update(auc=float(roc_auc_score(y, p)), ks=float(np.max(tpr - fpr)), logloss=float(log_loss(y, p)))
    return out


def fit_predict(X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, *, l2: float,
                fit_intercept: bool = True) -> np.ndarray:
    """scikit-learn LR (standardised features) fit on the labelled training rows; probabilities on ``test``.

    ``C = 1 / (l2 * n_labelled)`` gives the same L2 objective as our mean loss + ``l2/2 * |w|^2``.
    """
    rows = train[~np.isnan(y[train])]
    n = max(len(rows), 1)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0 / max(l2 * n, 1e-12), max_iter=2000,
                                                               fit_intercept=fit_intercept))
    model.fit(X[rows], y[rows].astype(np.int64))
    return model.predict_proba(X[test])[:, 1]


def baseline_metrics(X: np.ndarray, labels: np.ndarray, tag_names: Sequence[str], split: Split, *,
                     l2: float) -> dict[str, dict[str, Any]]:
    """Per tag: scikit-learn LR on ``X`` fit on the split's training rows, metrics on its test rows."""
    out = {}
    for t, tag in enumerate(tag_names):
        y = labels[:, t]
        train_y = y[split.train]
        if np.isnan(train_y).all() or np.nanmin(train_y) == np.nanmax(train_y):
            out[tag] = {"n": 0, "auc": None, "ks": None, "logloss": None, "note": "one class in training rows"}
            continue
        p = fit_predict(X, y, split.train, split.test, l2=l2)
        out[tag] = tag_metrics(y[split.test], p)
    return out


def bank_only_baseline(bank: PartyData, split: Split, *, l2: float) -> dict[str, dict[str, Any]]:
    """What the bank gets alone: LR on its own features, same rows and split."""
    return baseline_metrics(bank.features, bank.labels, bank.tag_names, split, l2=l2)


def centralized_baseline(bank: PartyData, platform: PartyData, split: Split, *,
                         l2: float) -> dict[str, dict[str, Any]]:
    """The yardstick no real deployment can build: LR on both halves pooled (harness only).

    ``bank`` and ``platform`` must be in the alignment's order with the tags of the training job, and
    ``split`` the training job's (``TrainParams.split(bank.labels)``).
    """
    if len(bank) != len(platform):
        raise UserError(f"bank ({len(bank)} rows) and platform ({len(platform)} rows) are not aligned")
    X = np.hstack([bank.features, platform.features])
    return baseline_metrics(X, bank.labels, bank.tag_names, split, l2=l2)


__all__ = ["Split", "bank_only_baseline", "baseline_metrics", "centralized_baseline", "fit_predict", "split_rows",
           "tag_metrics"]
