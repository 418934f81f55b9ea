"""The bank's training report: what a data scientist reads of a finished job (protocols/vfl_lr/bank.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from protocols.evaluation_metrics import SPLIT_SCHEME, Split, bank_only_baseline
from protocols.party_data import PartyData
from protocols.vfl_lr.params import F_BITS, STAT_BITS, VERSION, Z_CLIP, SlotPlan, TrainParams
from protocols.vfl_lr.state import BankTrainState
from protocols.vfl_lr.yardstick import Pairs, bank_only_fit, choose_served, pair_metrics, predictions

DROPPED_WHY = "no row of the file has a value (dropped when the node loaded it)"


def data_inputs(bank: PartyData, split: Split, platform_features: int | None) -> dict[str, Any]:
    """What went into the job: each party's features (the bank's by name, the platform's by count: its names are
    its own), the bank's dropped columns and why, and each tag's label coverage over the alignment and the
    training rows. Counts only: no ID, value or label."""
    coverage = {}
    for t, tag in enumerate(bank.tag_names):
        column = bank.labels[:, t]
        known = ~np.isnan(column)
        coverage[tag] = {"labelled": int(known.sum()), "positives": int(np.nansum(column)),
                         "rows": len(column), "labelled_train": int(known[split.train].sum())}
    return {
        "bank": {"file": Path(bank.source).name, "feature_count": len(bank.feature_names),
                 "features": list(bank.feature_names),
                 "dropped_columns": [{"column": c, "why": DROPPED_WHY} for c in bank.dropped_columns]},
        "platform": {"feature_count": platform_features,
                     "features": "the platform's own (their names are not shared with the bank)"},
        "labels": coverage,
    }


def training_report(p: TrainParams, state: BankTrainState, bank: PartyData, X_aug: Any, split: Split,
                    batches: Callable[[int], list[np.ndarray]], test_pairs: list[Pairs],
                    calibration: list[dict[str, Any]], total: float, plan: SlotPlan, evaluation_slots: int,
                    key_fingerprints: dict[str, str], platform_features: int | None = None) -> tuple[dict[str, Any], Any]:
    """The bank's training report (metrics per tag next to the bank-only yardsticks, history, split, timings,
    parameters, encoding) and the yardstick fit itself, which the served-model choice uses."""
    tags = bank.tag_names
    epochs_run = len(state.history)
    # The yardstick: the bank alone, same optimiser, loss, batches, epochs and learning rate (plaintext).
    alone = bank_only_fit(X_aug, bank.labels, split, p, batches, epochs_run)
    sklearn = bank_only_baseline(bank, split, l2=p.l2)
    metrics, test_pred, val_pred = {}, {}, {}
    for t, tag in enumerate(tags):
        metrics[tag] = {"joint": pair_metrics(test_pairs[t], calibration[t]),
                        "bank_only": {**pair_metrics(alone.test[t], alone.calibration[t]),
                                      "best_epoch": int(alone.best_epoch[t]) + 1},
                        "bank_only_sklearn": sklearn[tag], "best_epoch": int(state.best_epoch[t]) + 1,
                        "calibration": calibration[t],
                        "bank_only_calibration": alone.calibration[t],
                        "served": choose_served(state.best_validation[t], alone.validation[t], p.serve)}
        test_pred[tag] = {"joint": predictions(test_pairs[t], calibration[t]),
                          "bank_only": predictions(alone.test[t], alone.calibration[t])}
        best_val = state.best_validation[t]
        if best_val is not None:
            val_pred[tag] = {"joint": predictions(best_val, calibration[t]),
                             "bank_only": predictions(alone.validation[t], alone.calibration[t])}
    return {
        "protocol": VERSION, "metrics": metrics, "history": state.history, "epochs_run": epochs_run,
        "split": split.sizes(), "split_scheme": SPLIT_SCHEME, "seconds_online": round(state.seconds_online, 3),
        "seconds_ahead_of_time": round(state.seconds_ahead, 3), "seconds_total": round(total, 3),
        "params": p.to_dict(), "data": data_inputs(bank, split, platform_features),
        "yardsticks": {"bank_only": "the joint model's optimiser, Taylor loss, batches, epochs and learning rate "
                                    "on the bank's features alone (plaintext), best validation epoch, "
                                    "calibrated as the joint model",
                       "bank_only_sklearn": "scikit-learn LR on the bank's features, same split and l2"},
        "calibration": "per tag on the validation multiset of (joint score, label): a monotone map (isotonic "
                       "knots, log-odds linear between them) when it holds 1000 labelled rows and 50 of each "
                       "class, else Platt scaling; both strictly increasing, so AUC and KS are of the scores; "
                       "logloss and mean_predicted raw, *_calibrated after the map",
        "test_predictions": test_pred, "validation_predictions": val_pred,
        "encoding": {"fixed_point_bits": F_BITS, "z_clip": Z_CLIP, "quant_bits": p.quant_bits,
                     "statistical_mask_bits": STAT_BITS, "tags_per_ciphertext": plan.group,
                     "pairs_per_ciphertext": plan.pairs_per_ct,
                     "label_mask": "hidden from the platform" if p.hide_label_mask else "sent to the platform",
                     "tag_scale_bits": plan.scale_bits,
                     "evaluation": "shuffled multiset of (joint score, label) per tag, under the bank's evaluation key",
                     "evaluation_scores_per_ciphertext": evaluation_slots},
        "key_fingerprints": key_fingerprints,
        "he_scheme": p.he_scheme,
    }, alone


__all__ = ["DROPPED_WHY", "data_inputs", "training_report"]
