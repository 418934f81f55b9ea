"""How many bins the platform can afford when labels are few: the schedule and label protection the service
would choose for each platform width, and the joint model's test AUC, by the training's plaintext twin.

    python -m benchmarks.sparse_bins [--json PATH] [--settings raw,2,3,4,5,10] [--label-share 0.1]

The data are ``benchmarks.binning``'s simulated section (20,000 bank and 30,000 platform customers, each tag
known for ``--label-share`` of the bank's). For each platform setting ("raw", or a number of quantile bins
per column), with the bank on its default 10 bins: the platform's width ``d_B``, the automatic epochs, batch
and protection the bank's rules pick for it (``choose_schedule``, ``LabelPrivacy.plan``: the floor ``10 x
d_B x epochs`` labelled rows per tag and batch, or label DP when no batch meets it), then the joint
training's plaintext twin (``protocols.vfl_lr.reference.taylor_fit``: the same Taylor loss, scalers,
batches, optimiser and, under label DP, the same noise on the labels) and per tag the test AUC of its best
validation epoch, beside the bank's own model trained the same way. This is the measurement behind the
automatic bin count (``TrainParams.bins = "auto"``, ``protocols/binning/auto.py``); it needs no keys, so it
runs in a minute where the service takes an hour.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from party_common.data_loading import load_party_data
from protocols.binning import BinningSpec, binned_party_data
from protocols.party_data import PartyData
from protocols.vfl_lr import TrainParams
from protocols.vfl_lr.batching import choose_schedule, session_batch_bound
from protocols.vfl_lr.label_privacy import LabelPrivacy
from protocols.vfl_lr.params import F_BITS
from protocols.vfl_lr.reference import taylor_fit
from protocols.vfl_lr.state import Scaler, active_rows, resolve_optimizer
from simulations.generate import SimulationConfig, generate, write


def simulated(label_share: float, n_bank: int = 20_000, n_platform: int = 30_000,
              seed: int = 0) -> tuple[PartyData, PartyData]:
    config = SimulationConfig(n_bank=n_bank, n_platform=n_platform, label_share=label_share, seed=seed)
    with tempfile.TemporaryDirectory(prefix="sparse-bins-") as tmp:
        data = generate(config)
        paths = write(data, Path(tmp))
        bank = load_party_data(paths["bank"], id_column="id", tag_columns=data.tag_columns)
        platform = load_party_data(paths["platform"], id_column="id")
        members = set(platform.ids)
        ids = [i for i in bank.ids if i in members]
        return bank.take(ids), platform.take(ids)


def standardised(data: PartyData, train: np.ndarray, clip: float, *, intercept: bool) -> np.ndarray:
    X = Scaler.fit(np.asarray(data.features, dtype=np.float64), clip, rows=train).transform(
        np.asarray(data.features, dtype=np.float64))
    return np.hstack([X, np.ones((len(X), 1))]) if intercept else X


def auc(y: np.ndarray, z: np.ndarray) -> float | None:
    known = ~np.isnan(y)
    if known.sum() < 2 or len(np.unique(y[known])) < 2:
        return None
    return round(float(roc_auc_score(y[known], z[known])), 4)


def twin(blocks: list[np.ndarray], bank: PartyData, params: TrainParams, n_features: int,
         noise_seed: int) -> dict[str, Any]:
    """The schedule the bank would pick for a platform of ``n_features``, and the twin's per-tag test AUC."""
    split = params.split(bank.labels, bank.ids)
    mask = ~np.isnan(bank.labels)
    train_mask = np.zeros_like(mask)
    train_mask[split.train] = mask[split.train]
    active = active_rows(split.train, mask)
    p, choice, entry = choose_schedule(params, active, train_mask, n_features, session_batch_bound(len(active)))
    privacy = LabelPrivacy.plan(p, active, train_mask, n_features, strict=True)
    p = replace(p, optimizer=resolve_optimizer(p, choice.full))
    noise = privacy.label_noise(len(bank.ids), bank.labels.shape[1], rng=random.Random(noise_seed))
    labels = bank.labels - noise / (4.0 * (1 << F_BITS))  # d' = z + 2 - 4 y + noise / 2^F, as the bank sends
    aucs: dict[str, dict[str, float | None]] = {}
    for name, used in (("joint", blocks), ("bank_only", blocks[:1])):  # the yardstick: same schedule, bank alone
        snapshots: list[list[np.ndarray]] = []
        keep = snapshots.append
        taylor_fit(used, labels, train_mask, p, lambda epoch: privacy.batches(epoch), p.epochs,
                   intercepts=p.start_intercepts(bank.labels, split.train),
                   on_epoch=lambda epoch, Ws, keep=keep: keep([W.copy() for W in Ws]))
        aucs[name] = {}
        for t, tag in enumerate(bank.tag_names):
            scores = [sum(X @ W[:, t] for X, W in zip(used, Ws, strict=True)) for Ws in snapshots]
            best = max(range(len(scores)), key=lambda e: auc(bank.labels[split.validation, t],
                                                             scores[e][split.validation]) or 0.0)
            aucs[name][tag] = auc(bank.labels[split.test, t], scores[best][split.test])
    return {"auc": aucs, "epochs": p.epochs, "batch_size": p.batch_size, "batching": choice.kind,
            "label_protection": privacy.mode, "optimizer": p.optimizer,
            "labelled_train_rows_per_tag": [int(c) for c in train_mask.sum(axis=0)]}


def run(settings: list[str], label_share: float, noise_seed: int = 0, bank_features: str = "binned") -> dict[str, Any]:
    bank, platform = simulated(label_share)
    params = TrainParams(features="binned")
    split = params.split(bank.labels, bank.ids)
    bank_binned, _ = binned_party_data(bank, split.train)
    XA = standardised(bank_binned if bank_features == "binned" else bank, split.train, params.clip,
                      intercept=params.fit_intercept)
    out: dict[str, Any] = {"bank_features": bank_features, "label_share": label_share, "rows": len(bank.ids), "platform_columns":
                           len(platform.feature_names), "bank_bins": XA.shape[1] - int(params.fit_intercept)}
    XA_raw = standardised(bank, split.train, params.clip, intercept=params.fit_intercept)
    for setting in settings:
        if setting == "raw":
            features = platform
        else:
            features, _ = binned_party_data(platform, split.train, BinningSpec(bins=int(setting),
                                                                                max_categories=int(setting)))
        XB = standardised(features, split.train, params.clip, intercept=False)
        out[f"platform_{setting}"] = {"platform_width": XB.shape[1], **twin([XA, XB], bank, params, XB.shape[1],
                                                                            noise_seed)}
        if setting == "raw" and bank_features == "binned":  # the bank on its raw columns too: what bins cost or gain on so few labels
            out["both_raw"] = twin([XA_raw, XB], bank, params, XB.shape[1], noise_seed)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json")
    ap.add_argument("--settings", default="raw,2,3,4,5,10")
    ap.add_argument("--label-share", type=float, default=0.1)
    ap.add_argument("--bank", choices=["binned", "raw"], default="binned", help="the bank's features")
    args = ap.parse_args(argv)
    result = run([s for s in args.settings.split(",") if s], args.label_share, bank_features=args.bank)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
