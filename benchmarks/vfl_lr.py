"""Vertical LR: quality against centralized scikit-learn, and seconds per epoch.

    python -m benchmarks.vfl_lr --dataset breast|default_credit [--he-scheme ou] [--json PATH]
    python -m benchmarks.vfl_lr --rows 100000 --bank-features 30 --platform-features 300 --tags T --epochs 1
                                [--quick] [--label-share S] [--hide-label-mask] [--he-scheme ou] [--json PATH]

Quality runs the whole service (``simulations.run``: both nodes as separate processes over mutual TLS,
PSI, training with 2048-bit keys, evaluation on a stratified 80/20 split with seed 0) on the shared
datasets, and reports AUC of the joint model, the bank-only model and centralized scikit-learn LR.
Speed runs the training protocol alone, both parties in this process over the in-memory channel (every
message still serialised and checked as on the wire; no network time), on random data of the given
shape with every label known (``--label-share``: each label known with that probability); it reports online
and ahead-of-time seconds per epoch separately, and the bytes per batch of each step (both directions).
``--hide-label-mask`` trains with ``TrainParams.hide_label_mask`` (the platform does not learn which labels
the bank knows; docs/protocol.md, "Label mask"): run it with and without to measure the mode's cost.

``--he-scheme ou`` trains under Okamoto-Uchiyama (TrainParams.he_scheme). For speed it then runs Paillier on the
same data right after, in the same process, so the ratio comes from one run: ``seconds_per_epoch`` (total),
``online_seconds`` and ``ahead_seconds`` (per epoch) are the chosen scheme's, ``paillier_seconds_per_epoch`` and
``paillier`` (its whole result) Paillier's, ``paillier_over_scheme`` their ratio. Without it the keys hold
Paillier's own figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import console, write_json
from protocols.channel import LocalPeer, Message, message_size
from protocols.party_data import PartyData, Schema
from protocols.vfl_lr import PlatformModel, TrainParams, make_platform_train_handler, run_bank_training
from simulations import run

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
# Settings per dataset (the same for the joint and the centralized model: l2 is the common objective).
QUALITY = {
    "breast": {"epochs": 10, "batch_size": 128, "l2": 0.1},
    "default_credit": {"epochs": 5, "batch_size": 1024, "l2": 0.1},
}


def quality(name: str, datasets: Path, scheme: str | None = None) -> dict[str, Any]:
    settings = QUALITY[name]
    with tempfile.TemporaryDirectory(prefix=f"bench-vfl-{name}-") as tmp:
        args = run.parser().parse_args([
            "--bank-data", str(datasets / f"{name}_hetero_guest.csv"),
            "--platform-data", str(datasets / f"{name}_hetero_host.csv"), "--tags", "y", "--out", tmp,
            "--epochs", str(settings["epochs"]), "--batch-size", str(settings["batch_size"]),
            "--l2", str(settings["l2"]), "--validation-share", "0", *(["--he-scheme", scheme] if scheme else [])])
        report = run.run(args)
    tag = report["tags"]["y"]
    auc = {"joint": tag["joint"]["auc"], "bank_only": tag["bank_only"]["auc"],
           "centralized": tag.get("centralized", {}).get("auc")}
    gap = None if auc["centralized"] is None else round(auc["centralized"] - auc["joint"], 4)
    console.print(f"{name}: AUC joint {auc['joint']:.4f}, bank-only {auc['bank_only']:.4f}, "
                  f"centralized {auc['centralized']}; gap {gap}")
    return {"dataset": name, "he_scheme": scheme or "paillier", "auc": auc, "auc_gap": gap, "within_0_005": gap is not None and gap <= 0.005,
            "settings": settings, "training": report.get("training"), "seconds_total": report["seconds_total"]}


def synthetic(rows: int, bank_features: int, platform_features: int, tags: int,
              seed: int = 0, label_share: float = 1.0) -> tuple[PartyData, PartyData]:
    """Random features of both parties and labels of a true joint model; each known with ``label_share``."""
    rng = np.random.default_rng(seed)
    XA = rng.normal(size=(rows, bank_features))
    XB = rng.normal(size=(rows, platform_features))
    wa = rng.normal(size=(bank_features, tags)) / np.sqrt(bank_features)
    wb = rng.normal(size=(platform_features, tags)) / np.sqrt(platform_features)
    y = (rng.random((rows, tags)) < 1 / (1 + np.exp(-(XA @ wa + XB @ wb)))).astype(np.float64)
    if label_share < 1.0:
        y[rng.random((rows, tags)) >= label_share] = np.nan
    ids = np.array([f"c{i}" for i in range(rows)], dtype=object)
    tag_names = [f"tag_{t}" for t in range(tags)]

    def party(X: np.ndarray, prefix: str, labels: np.ndarray, names: list[str]) -> PartyData:
        cols = [f"{prefix}{j}" for j in range(X.shape[1])]
        schema = Schema("id", tuple(cols), tuple("float64" for _ in cols), tuple(names))
        return PartyData(f"synthetic-{prefix}", ids, X, cols, labels, names, schema)

    return party(XA, "a", y, tag_names), party(XB, "b", np.zeros((rows, 0)), [])


class _Counting:
    """A platform handler that counts the bytes of every request and reply, per step."""

    def __init__(self, handler: Any, counts: dict[str, int]) -> None:
        self.handler, self.counts = handler, counts

    def handle(self, step: str, message: Message) -> Message:
        reply = self.handler.handle(step, message)
        self.counts[step] = self.counts.get(step, 0) + message_size(message) + message_size(reply)
        return reply

    def close(self) -> None:
        self.handler.close()


def speed(args: argparse.Namespace) -> dict[str, Any]:
    """The chosen scheme's run, then (for a scheme other than Paillier) Paillier's on the same data."""
    rows = 10_000 if args.quick else args.rows
    bank, platform = synthetic(rows, args.bank_features, args.platform_features, args.tags,
                               label_share=args.label_share)
    scheme = args.he_scheme or "paillier"
    result = speed_once(args, rows, bank, platform, scheme)
    if scheme != "paillier":
        paillier = speed_once(args, rows, bank, platform, "paillier")
        result["paillier"] = paillier
        result["paillier_seconds_per_epoch"] = paillier["seconds_per_epoch"]
        result["paillier_over_scheme"] = round(paillier["seconds_per_epoch"] / result["seconds_per_epoch"], 2)
        console.print(f"{scheme}: {result['seconds_per_epoch']} s per epoch; paillier: "
                      f"{paillier['seconds_per_epoch']} s ({result['paillier_over_scheme']}x)")
    return result


def speed_once(args: argparse.Namespace, rows: int, bank: PartyData, platform: PartyData,
               scheme: str) -> dict[str, Any]:
    models: list[PlatformModel] = []
    step_bytes: dict[str, int] = {}

    def factory(kind: str, job_id: str, params: dict) -> object:
        handler = make_platform_train_handler(job_id, params, platform, on_result=models.append,
                                              compute=args.workers)
        return _Counting(handler, step_bytes)

    params = TrainParams(epochs=args.epochs, batch_size=args.batch_size, validation_share=0.0,
                         key_bits=args.bits, hide_label_mask=args.hide_label_mask, he_scheme=scheme)
    console.print(f"VFL LR speed: {rows:,} rows, {args.bank_features} + {args.platform_features} features, "
                  f"{args.tags} tag(s), {args.label_share:.0%} of labels known, {args.epochs} epoch(s), batch "
                  f"{args.batch_size}, {args.bits}-bit {scheme} keys, label mask "
                  f"{'hidden' if args.hide_label_mask else 'sent'}")
    started = time.monotonic()
    outcome = run_bank_training(LocalPeer(factory), "bench-speed", bank, params, compute=args.workers)
    total = time.monotonic() - started
    report = outcome.report
    epochs = report["epochs_run"]
    batches = sum(entry["batches"] for entry in report["history"])
    per_batch = {step: round(n / batches) for step, n in step_bytes.items()
                 if step in ("train.emask", "train.emask_open", "train.forward", "train.gradient")}
    online, ahead = report["seconds_online"] / epochs, report["seconds_ahead_of_time"] / epochs
    result = {"he_scheme": scheme, "seconds_per_epoch": round(online + ahead, 2), "online_seconds": round(online, 2),
              "ahead_seconds": round(ahead, 2), "rows": rows, "train_rows": report["split"]["train"], "tags": args.tags,
              "bank_features": args.bank_features, "platform_features": args.platform_features,
              "epochs": epochs, "batch_size": args.batch_size, "bits": args.bits, "workers": args.workers,
              "seconds_per_epoch_online": round(report["seconds_online"] / epochs, 2),
              "seconds_per_epoch_ahead_of_time": round(report["seconds_ahead_of_time"] / epochs, 2),
              "seconds_per_epoch_total": round((report["seconds_online"] + report["seconds_ahead_of_time"]) / epochs,
                                               2),
              "seconds_wall": round(total, 2), "test_auc": {t: m["joint"]["auc"] for t, m in report["metrics"].items()},
              "fate_published_seconds_per_epoch_16_cores": 136, "label_share": args.label_share,
              "hide_label_mask": args.hide_label_mask, "batches_per_epoch": batches // epochs,
              "bytes_per_batch": {**per_batch, "total": sum(per_batch.values())},
              "label_privacy_mode": report["label_privacy"]["mode"]}
    console.print(f"per epoch: online {result['seconds_per_epoch_online']} s, ahead of time "
                  f"{result['seconds_per_epoch_ahead_of_time']} s (FATE publishes 136 s on 16 cores for "
                  "100k x (30+300), one tag)")
    console.print(f"{result['batches_per_epoch']} batches per epoch, bytes per batch: {result['bytes_per_batch']}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vfl_lr", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(QUALITY))
    parser.add_argument("--datasets-dir", type=Path, default=DATASETS)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--bank-features", type=int, default=30)
    parser.add_argument("--platform-features", type=int, default=300)
    parser.add_argument("--tags", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--bits", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="speed on 10k rows")
    parser.add_argument("--label-share", type=float, default=1.0, help="share of labels the bank knows")
    parser.add_argument("--hide-label-mask", action="store_true", help="train with TrainParams.hide_label_mask")
    parser.add_argument("--he-scheme", choices=["paillier", "ou"],
                        help="the job's HE scheme; speed then runs Paillier beside it (default: paillier alone)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    result = quality(args.dataset, args.datasets_dir, args.he_scheme) if args.dataset else speed(args)
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
