"""Evaluation of per-tag models: the split both parties agree on, metrics, and scikit-learn yardsticks.

The split depends only on the customers' IDs, the bank's labels and three numbers (seed, shares), so a
harness that sees both halves (simulations, benchmarks) reproduces it exactly and can fit the centralized
model on the very rows the joint model was trained on. Nothing here knows the training protocol: callers pass plain numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score, roc_curve
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from protocols.errors import UserError
from protocols.identity import normalise_id
from protocols.party_data import PartyData


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # row positions in the aligned order
    validation: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


SPLIT_SCHEME = ("blake2b-64 keyed by 'vfl-lr-split/<seed>' over each customer ID's normal form (protocols.identity: NFKC, trimmed, case-folded, phone/e-mail rules), mapped to [0, 1); "
                "strata: the first tag's label (0, 1, unknown); in each stratum the round(n test_share) rows of "
                "lowest hash go to test, the next round((n - n_test) validation_share) to validation, the rest "
                "to train; every part in hash order")


def id_hashes(ids: Sequence[str], seed: int) -> np.ndarray:
    """Per customer ID, a keyed hash in [0, 1): blake2b (8 bytes) keyed by the seed over the normalised ID.

    Independent of the rows' order: the same customer gets the same value in every alignment of a job seed.
    The ID is in its normal form (``protocols.identity``), as PSI matched it: an ID already in that form hashes
    as it did under the earlier NFC-and-strip input, and one spelling of a customer is one split row.
    """
    key = f"vfl-lr-split/{seed}".encode()
    out = np.empty(len(ids), dtype=np.float64)
    for i, cid in enumerate(ids):
        digest = hashlib.blake2b(normalise_id(str(cid)).encode(), digest_size=8,
                                 key=key).digest()
        out[i] = (int.from_bytes(digest, "big") >> 11) / float(1 << 53)  # exact in a float64
    return out


def split_rows(labels: np.ndarray, ids: Sequence[str] | None = None, *, test_share: float,
               validation_share: float, seed: int) -> Split:
    """Reproducible stratified split of the aligned rows into train / validation / test (:data:`SPLIT_SCHEME`).

    A row's part depends on its customer's ID, the seed and the first tag's labels (the strata, as before),
    never on the alignment's order; each part lists its rows in the order of their hashes, so batches built
    from them hold the same customers whatever order PSI gave. Only the first tag's labels: the platform
    receives the parts, so they must not depend on the other tags' labels or on which of them are known
    (``hide_label_mask``); ranks, not fixed thresholds, give each stratum its exact share. ``ids=None``
    (harnesses without IDs) stands in the row positions as IDs: a different split from the job's, which the
    bank computes from its customers' IDs.
    """
    n = labels.shape[0]
    if ids is None:
        ids = [str(i) for i in range(n)]
    if len(ids) != n:
        raise UserError(f"{len(ids)} IDs for {n} rows of labels")
    h = id_hashes(ids, seed)
    strata = np.where(np.isnan(labels[:, 0]), 2, np.nan_to_num(labels[:, 0], nan=0.0)).astype(np.int64) \
        if labels.shape[1] else np.zeros(n, dtype=np.int64)
    parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    for value in np.unique(strata):
        rows = np.flatnonzero(strata == value)
        rows = rows[np.argsort(h[rows], kind="stable")]  # hash ranks within the stratum
        n_test = int(round(len(rows) * test_share))
        n_val = int(round((len(rows) - n_test) * validation_share))
        parts[0].append(rows[n_test + n_val:])
        parts[1].append(rows[n_test:n_test + n_val])
        parts[2].append(rows[:n_test])

    def by_hash(pieces: list[np.ndarray]) -> np.ndarray:
        rows = np.concatenate(pieces)
        return rows[np.argsort(h[rows], kind="stable")].astype(np.int64)

    return Split(*(by_hash(p) for p in parts))



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
    ``split`` the training job's (``TrainParams.split(bank.labels, bank.ids)``).
    """
    if len(bank) != len(platform):
        raise UserError(f"bank ({len(bank)} rows) and platform ({len(platform)} rows) are not aligned")
    X = np.hstack([bank.features, platform.features])
    return baseline_metrics(X, bank.labels, bank.tag_names, split, l2=l2)


__all__ = ["SPLIT_SCHEME", "Split", "bank_only_baseline", "baseline_metrics", "centralized_baseline", "fit_predict", "id_hashes",
           "split_rows", "tag_metrics"]
