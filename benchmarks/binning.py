"""Binned features through the whole service: joint vs bank-only vs centralized (same bins) vs centralized raw,
and what a curious platform reads of the labels from binned training.

    python -m benchmarks.binning [--json PATH] [--sections default_credit,simulated,label_attack]

``default_credit`` and ``simulated`` each run both nodes as processes over mutual TLS (``simulations.run``:
PSI, training with default parameters and ``features = "binned"``, private evaluation, scoring), each node
binning its own columns with the default ``[binning]`` (10 quantile bins). The centralized yardstick is
scikit-learn LR on both halves binned the same way (the harness sees both files), ``centralized_raw`` the
same on the raw columns. ``label_attack`` replays, in plaintext, what the platform sees in default_credit's
binned training with the schedule and label-privacy mode the service chose (``benchmarks.privacy``'s
``platform_view``: its quantised one-hot bins, the label mask, its ``z_B`` and its gradients, epochs stacked)
and runs the least-squares label attack on it: ``label_recovery_accuracy`` against ``majority_rate``.

Each section is one function returning its part of the JSON (``SECTIONS``); a section another benchmark adds
(the IV screen's ``iv_seconds``, ``iv_100k``) is one more entry there. Goals (issue 22): default_credit joint
>= 0.765 and within 0.01 of centralized binned; joint - bank_only >= 0.06; label recovery within 0.02 of the
majority rate.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks import screen as screen_benchmark
from benchmarks.common import console, print_table, write_json
from benchmarks.privacy import attack_batches, load_default_credit, platform_view
from protocols.binning import binned_party_data
from protocols.vfl_lr import TrainParams
from simulations import run

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
Section = Callable[[dict[str, Any]], dict[str, Any]]


def service_run(argv: list[str]) -> dict[str, Any]:
    """One run of both nodes with default settings and binned features; the runner's report."""
    with tempfile.TemporaryDirectory(prefix="bench-binning-") as tmp:
        return run.run(run.parser().parse_args([*argv, "--out", tmp, "--features", "binned"]))


def aucs(report: dict[str, Any], tag: str) -> dict[str, Any]:
    m = report["tags"][tag]
    return {key: (m.get(key) or {}).get("auc") for key in ("joint", "bank_only", "centralized", "centralized_raw")}


def default_credit(state: dict[str, Any]) -> dict[str, Any]:
    report = service_run(["--bank-data", str(DATASETS / "default_credit_hetero_guest.csv"),
                          "--platform-data", str(DATASETS / "default_credit_hetero_host.csv"), "--tags", "y"])
    training = report["training"]
    privacy = training.get("label_privacy", {})
    state["default_credit_training"] = training
    return {"auc": aucs(report, "y"),
            "label_privacy": {"mode": privacy.get("mode"), "epsilon": privacy.get("epsilon")},
            "batching": training.get("batching"), "epochs_run": training.get("epochs_run"),
            "binning": training.get("binning"), "seconds_total": report.get("seconds_total")}


def simulated(state: dict[str, Any]) -> dict[str, Any]:
    report = service_run(["--n-bank", "20000", "--n-platform", "30000", "--label-share", "0.1"])
    per_tag = {tag: aucs(report, tag) for tag in report["tags"]}
    return {"auc": {key: {tag: a[key] for tag, a in per_tag.items()} for key in ("joint", "bank_only", "centralized")},
            "label_share": 0.1, "seconds_total": report.get("seconds_total")}


def label_attack(state: dict[str, Any]) -> dict[str, Any]:
    """The least-squares attack on the platform's view of default_credit's binned training, epochs stacked."""
    training = state.get("default_credit_training") or {}
    privacy, batching = training.get("label_privacy", {}), training.get("batching") or {}
    bank, platform = load_default_credit()
    params = TrainParams()  # the run's defaults: the same split
    split = params.split(bank.labels, bank.ids)
    bank, _ = binned_party_data(bank, split.train)
    platform, _ = binned_party_data(platform, split.train)
    epochs = int(training.get("epochs_run") or privacy.get("epochs") or 1)
    dp = privacy.get("mode") == "dp"
    params = replace(params, batch_size=int(batching.get("batch_size") or 1024), epochs=epochs,
                     dp_epsilon=float(privacy.get("epsilon_target") or params.dp_epsilon))
    view = platform_view(bank, platform, params, dp=dp,
                         join_floor=None if dp else privacy.get("floor"))
    result = attack_batches(view, bank.labels)
    return {**result, "epochs_stacked": epochs, "batch_size": params.batch_size, "label_dp": dp,
            "platform_bins": platform.features.shape[1]}


SECTIONS: dict[str, Section] = {"default_credit": default_credit, "simulated": simulated, "label_attack": label_attack,
                                **screen_benchmark.SECTIONS}


def goals(payload: dict[str, Any]) -> dict[str, bool | None]:
    dc = (payload.get("default_credit") or {}).get("auc") or {}
    joint, alone, central = dc.get("joint"), dc.get("bank_only"), dc.get("centralized")
    attack = payload.get("label_attack") or {}
    return {
        "default_credit_joint_ge_0_765": None if joint is None else joint >= 0.765,
        "default_credit_within_0_01_of_centralized": None if None in (joint, central) else central - joint <= 0.01,
        "default_credit_uplift_ge_0_06": None if None in (joint, alone) else joint - alone >= 0.06,
        "label_recovery_within_0_02_of_majority": None if not attack else
        attack["label_recovery_accuracy"] - attack["majority_rate"] <= 0.02,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated: " + ", ".join(SECTIONS))
    args = ap.parse_args(argv)
    chosen = [s for s in args.sections.split(",") if s]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    state: dict[str, Any] = {}
    payload: dict[str, Any] = {}
    for name in chosen:
        console.print(f"[bold]{name}[/]")
        payload[name] = SECTIONS[name](state)
        write_json(args.json, payload)  # what is measured so far survives a later section's failure
    attack = payload.pop("label_attack", None)
    if attack is not None:  # the names, at the top level
        payload["label_recovery_accuracy"] = attack["label_recovery_accuracy"]
        payload["majority_rate"] = attack["majority_rate"]
        payload["label_attack"] = attack
    payload["goals"] = goals(payload)
    screen_benchmark.place(payload)
    dc = payload.get("default_credit", {}).get("auc", {})
    print_table("binned features (test AUC)", [(k, "-" if v is None else f"{v:.4f}") for k, v in dc.items()],
                ("default_credit", "AUC"))
    print_table("goals", [(k, str(v)) for k, v in payload["goals"].items()], ("goal", "met"))
    write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
