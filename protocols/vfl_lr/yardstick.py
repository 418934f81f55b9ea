"""The report's per-tag figures: the bank-only yardstick (same optimiser, Taylor loss and budget, on the bank's
features alone), calibrated metrics of (score, label) multisets, and the stored predictions for plots."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from protocols.evaluation_metrics import Split, tag_metrics
from protocols.party_data import PartyData
from protocols.vfl_lr.calibration import apply, calibrate_tag
from protocols.vfl_lr.model import sigmoid
from protocols.vfl_lr.params import TrainingError, TrainParams
from protocols.vfl_lr.reference import Batches, taylor_fit
from protocols.vfl_lr.state import Scaler, active_rows, epoch_batches

Pairs = tuple[np.ndarray, np.ndarray]  # (scores z, labels 0/1), labelled rows only, sorted by (z, label)


def sorted_pairs(z: np.ndarray, y: np.ndarray) -> Pairs:
    """The labelled (score, label) pairs in a canonical order: by score, then label (no row order left)."""
    known = ~np.isnan(y)
    z, y = np.asarray(z, dtype=np.float64)[known], y[known].astype(np.float64)
    order = np.lexsort((y, z))
    return z[order], y[order]


@dataclass
class BankOnly:
    """The bank-only yardstick: per tag its best epoch's weights, calibration and held-out pairs."""

    weights: np.ndarray  # (d_A [+ 1], T), intercept last if fitted
    best_epoch: np.ndarray  # (T,) 0-based
    calibration: list[dict[str, Any]]
    validation: list[Pairs]
    test: list[Pairs]


def bank_only_fit(X_aug: np.ndarray, labels: np.ndarray, split: Split, params: TrainParams, batches: Batches,
                  epochs: int) -> BankOnly:
    """Train on the bank's standardised features alone with the joint model's optimiser, loss, batches and
    epochs; each tag keeps its best validation-AUC epoch (as the joint model does) and is calibrated on
    validation as the joint model is. Plaintext, by the bank alone."""
    T = labels.shape[1]
    mask = ~np.isnan(labels)
    train_mask = np.zeros_like(mask)
    train_mask[split.train] = mask[split.train]
    best = np.zeros((X_aug.shape[1], T))
    best_epoch = np.full(T, -1, dtype=np.int64)
    best_metric = np.full(T, -np.inf)
    val = split.validation

    def on_epoch(epoch: int, Ws: list[np.ndarray]) -> None:
        improved = np.ones(T, dtype=bool)
        if len(val):
            z = X_aug[val] @ Ws[0]
            for t in range(T):
                m = tag_metrics(labels[val, t], sigmoid(z[:, t]))
                value = m["auc"] if m["auc"] is not None else -(m["logloss"] or 0.0)
                improved[t] = value > best_metric[t] + 1e-6
                if improved[t]:
                    best_metric[t] = value
        best[:, improved] = Ws[0][:, improved]
        best_epoch[improved] = epoch

    taylor_fit([X_aug], labels, train_mask, params, batches, epochs,
               intercepts=params.start_intercepts(labels, split.train), on_epoch=on_epoch)
    z_val, z_test = X_aug[val] @ best, X_aug[split.test] @ best
    validation = [sorted_pairs(z_val[:, t], labels[val, t]) for t in range(T)]
    test = [sorted_pairs(z_test[:, t], labels[split.test, t]) for t in range(T)]
    calibration = [calibrate_tag(*v) for v in validation]
    return BankOnly(best, best_epoch, calibration, validation, test)


def bank_only_reference(bank: PartyData, params: TrainParams) -> BankOnly:
    """The yardstick from the bank's data alone, as a direct plaintext run (tests, harnesses): the job's split,
    scaler and unjoined batches for all ``params.epochs`` epochs."""
    p = params
    if p.batch_size is None:  # the automatic size needs the platform's feature count: a run decides it
        raise TrainingError("a plaintext reference needs an explicit batch_size (the job's report has the one used)")
    split = p.split(bank.labels, bank.ids)
    X = Scaler.fit(bank.features[split.train], p.clip).transform(bank.features)
    X_aug = np.hstack([X, np.ones((len(X), 1))]) if p.fit_intercept else X
    active = active_rows(split.train, ~np.isnan(bank.labels))
    return bank_only_fit(X_aug, bank.labels, split, p, lambda e: epoch_batches(active, p.batch_size, p.seed, e),
                         p.epochs)


def choose_served(joint_validation: Pairs | None, bank_only_validation: Pairs, serve: str = "best") -> dict[str, Any]:
    """Which model a tag serves: the joint one only if its validation AUC beats the bank-only yardstick's.

    The platform's part must earn its place: on a tie, or when either AUC cannot be computed, the bank's own
    model is served (no platform call, no disclosure) and the report says so. Without labelled validation
    rows there is nothing to compare on, and the joint model is served (the report says that too). ``serve``
    ``"joint"`` (TrainParams.serve) serves the joint model whatever the comparison. Both AUCs come from pairs
    the bank already holds (the joint validation multiset of the best epoch, the yardstick's own scores).
    """
    if joint_validation is None or not len(joint_validation[1]):
        return {"model": "joint", "validation_auc": None,
                "reason": "no labelled validation rows to compare on: the joint model is served unchecked"}
    joint = tag_metrics(joint_validation[1], sigmoid(joint_validation[0]))["auc"]  # scores are log-odds
    alone = tag_metrics(bank_only_validation[1], sigmoid(bank_only_validation[0]))["auc"]
    aucs = {"joint": joint, "bank_only": alone}
    if serve == "joint":
        return {"model": "joint", "validation_auc": aucs, "reason": "the job asks for the joint model (serve)"}
    if joint is not None and alone is not None and joint > alone:
        return {"model": "joint", "validation_auc": aucs,
                "reason": "the joint model's validation AUC is above the bank-only model's"}
    why = ("no validation AUC to compare" if joint is None or alone is None else
           f"the joint model's validation AUC ({joint:.4f}) is not above the bank-only model's ({alone:.4f})")
    return {"model": "bank_only", "validation_auc": aucs,
            "reason": f"{why}: the tag is scored by the bank-only model (same optimiser, the bank's features alone)"}


def pair_metrics(pairs: Pairs, calibration: dict[str, Any]) -> dict[str, Any]:
    """AUC, KS, log-loss (raw sigmoid), and log-loss and mean probability raw and calibrated, and the base rate."""
    z, y = pairs
    raw = sigmoid(z)
    out = tag_metrics(y, raw)
    out["base_rate"] = float(y.mean()) if len(y) else None
    out["mean_predicted"] = float(raw.mean()) if len(y) else None
    if len(y):
        cal = apply(z, calibration)
        out["logloss_calibrated"] = tag_metrics(y, cal)["logloss"]
        out["mean_predicted_calibrated"] = float(cal.mean())
    else:
        out["logloss_calibrated"] = out["mean_predicted_calibrated"] = None
    return out


def predictions(pairs: Pairs, calibration: dict[str, Any]) -> dict[str, list[Any]]:
    """``{"p": calibrated probabilities rounded to 6 decimals, "y": labels}``, in the pairs' canonical order."""
    z, y = pairs
    return {"p": [round(float(v), 6) for v in apply(z, calibration)],
            "y": [int(v) for v in y]}


__all__ = ["BankOnly", "Pairs", "bank_only_fit", "bank_only_reference", "choose_served", "pair_metrics", "predictions",
           "sorted_pairs"]
