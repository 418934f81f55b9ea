"""Run the whole service on a pair of files (or simulated data): both nodes as separate processes over mTLS,
PSI, multi-tag training, evaluation, scoring, and a report.

    python -m simulations.run --bank-data B.csv --platform-data P.csv \
        --bank-id-column id --platform-id-column id --tags y --out out/

Without files it generates simulated data. Because this harness (unlike either node) sees both files, the
report also holds a centralized scikit-learn model on the same split, as the yardstick for the joint one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from party_bank.scores import Scores
from party_common.data_loading import FillMode, load_party_data
from party_common.storage.files import atomic_write
from protocols.binning import DEFAULT_BINS, DEFAULT_MAX_CATEGORIES, BinningSpec, binned_party_data
from protocols.evaluation_metrics import centralized_baseline
from protocols.uncertainty import format_interval, summarise
from protocols.vfl_lr import TrainParams
from simulations.cluster import LocalCluster

# Outside a terminal (CI logs, files) rich would fold tables at 80 columns; give them room instead.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def simulated_files(out: Path, *, n_bank: int, n_platform: int, n_tags: int, label_share: float,
                    seed: int) -> tuple[Path, Path, list[str]]:
    from simulations.generate import SimulationConfig, generate, write

    config = SimulationConfig(n_bank=n_bank, n_platform=n_platform, n_tags=n_tags, label_share=label_share,
                              seed=seed)
    paths = write(generate(config), out / "data")
    bank_path, platform_path = Path(paths["bank"]), Path(paths["platform"])
    header = bank_path.read_text().split("\n", 1)[0].split(",")
    return bank_path, platform_path, [c for c in header if c.startswith("tag_")]


def centralized_report(cluster: LocalCluster, bank_data: Path, bank_id: str, platform_data: Path,
                       platform_id: str, tags: list[str], alignment_job_id: str,
                       train_params: dict[str, Any], fill_missing: FillMode = "error",
                       features: str = "raw", platform_binning: dict[str, Any] | None = None) -> dict[str, Any]:
    """Centralized sklearn LR on the same aligned rows and split as the joint model (harness only).

    The files load as the nodes load them: the same ``fill_missing``, the same all-missing columns dropped.
    ``features`` "binned": each half one-hot binned as its node bins it (the default [binning], fitted on the
    training rows), so the yardstick sees the joint model's features; ``platform_binning`` (the report's
    ``binning.platform``) says when the platform binned more coarsely, or kept its raw columns, by bins "auto".
    """
    ids = list(cluster.bank_alignment(alignment_job_id).ids or ())
    bank = load_party_data(bank_data, id_column=bank_id, tag_columns=tags, fill_missing=fill_missing).take(ids)
    platform = load_party_data(platform_data, id_column=platform_id, fill_missing=fill_missing).take(ids)
    params = TrainParams.from_dict(train_params)
    split = params.split(bank.labels, bank.ids)
    if features == "binned":
        chosen = platform_binning or {}
        bank = binned_party_data(bank, split.train)[0]
        if chosen.get("mode") != "raw":
            per_column = chosen.get("bins_per_column") or DEFAULT_BINS
            spec = BinningSpec(bins=per_column, max_categories=min(DEFAULT_MAX_CATEGORIES, per_column))
            platform = binned_party_data(platform, split.train, spec)[0]
    return centralized_baseline(bank, platform, split, l2=params.l2)


def print_report(report: dict[str, Any]) -> None:
    table = Table(title="Per-tag evaluation on the held-out share of the intersection")
    for col in ("tag", "labelled (test)", "AUC joint", "95% CI", "AUC bank-only", "uplift", "uplift 95% CI",
                "AUC centralized", "KS joint", "ECE joint", "logloss joint"):
        tag_width = max((len(t) for t in report["tags"]), default=3)  # tag names are never cut
        table.add_column(col, justify="right" if col != "tag" else "left", no_wrap=col == "tag", overflow="fold",
                         min_width=tag_width if col == "tag" else None)
    warnings = []
    for tag, m in report["tags"].items():
        joint, bank_only, central = m.get("joint", {}), m.get("bank_only", {}), m.get("centralized", {})

        def f(d: dict[str, Any], k: str) -> str:
            v = d.get(k)
            return "-" if v is None else f"{v:.3f}"

        uplift = (joint.get("auc") - bank_only.get("auc")) if joint.get("auc") is not None and \
            bank_only.get("auc") is not None else None
        iv = m.get("intervals") or {}
        table.add_row(tag, str(joint.get("n", "-")), f(joint, "auc"), format_interval((iv.get("joint") or {}).get("auc")),
                      f(bank_only, "auc"), "-" if uplift is None else f"{uplift:+.3f}",
                      format_interval(iv.get("uplift"), signed=True), f(central, "auc"), f(joint, "ks"),
                      f(m.get("ece") or {}, "joint"), f(joint, "logloss"))
        warnings.extend(f"{tag}: {w['message']}" for w in m.get("warnings") or [])
    console.print(table, crop=False, overflow="fold")
    for w in warnings:
        console.print(f"[yellow]warning[/] {w}", highlight=False, overflow="fold")


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if args.bank_data is None:
        console.print(f"[bold]Simulated data[/]: {args.n_bank} bank customers, {args.n_platform} platform users, "
                      f"{args.n_tags} tags, {args.label_share:.0%} of labels known")
        bank_data, platform_data, tags = simulated_files(out, n_bank=args.n_bank, n_platform=args.n_platform,
                                                         n_tags=args.n_tags, label_share=args.label_share,
                                                         seed=args.seed)
        bank_id = platform_id = "id"
        if args.tags:
            tags = args.tags.split(",")
    else:
        if args.platform_data is None or not args.tags:
            raise SystemExit("--bank-data needs --platform-data and --tags too")
        bank_data, platform_data, tags = args.bank_data, args.platform_data, args.tags.split(",")
        bank_id, platform_id = args.bank_id_column, args.platform_id_column

    train_params: dict[str, Any] = {"seed": args.seed}
    if args.epochs:
        train_params["epochs"] = args.epochs
    if args.batch_size:
        train_params["batch_size"] = args.batch_size
    if args.learning_rate:
        train_params["learning_rate"] = args.learning_rate
    if args.l2 is not None:
        train_params["l2"] = args.l2
    if args.validation_share is not None:
        train_params["validation_share"] = args.validation_share
    if args.he_scheme:
        train_params["he_scheme"] = args.he_scheme
    if args.features != "raw":
        train_params["features"] = args.features
    report: dict[str, Any] = {"bank_data": str(bank_data), "platform_data": str(platform_data), "tags": {}}
    with LocalCluster(out / "cluster", bank_data=bank_data, bank_id_column=bank_id, platform_data=platform_data,
                      platform_id_column=platform_id, bank_tag_columns=tags, workers=args.workers,
                      fill_missing=args.fill_missing, in_memory_mb=args.in_memory_mb) as cluster:
        console.print(f"Nodes up on loopback with mutual TLS (bank :{cluster.bank_port}, platform "
                      f":{cluster.platform_port}); logs in {cluster.workdir}")
        client = cluster.bank_client()
        align = client.align(mode="both")
        console.print(f"[bold]PSI[/]: intersection of {align['intersection_size']} customers "
                      f"(bank has {align['bank_customers']}) in {align['seconds']:.1f} s; "
                      f"alignment hash {align['content_hash'][:16]}...")
        report["psi"] = align

        def progress(job: dict[str, Any]) -> None:
            console.print(f"  training: {job['progress']}", highlight=False)

        train = client.train(tags=tags, alignment_job_id=align["job_id"], train=train_params, on_progress=progress)
        report["training"] = {k: v for k, v in train.items() if k != "tags_metrics"}
        memory = {"psi": align.get("memory"), "training": train.get("memory")}
        report["bank_node_memory_mb"] = memory
        console.print("[bold]Bank node memory[/] (peak, MB): " + "; ".join(
            f"{job} {m['node_peak_mb']:,.0f} (workers {m['workers_peak_mb']:,.0f})" for job, m in memory.items() if m),
            highlight=False)
        for tag in tags:
            report["tags"][tag] = dict(train["metrics"][tag])
        try:
            # The yardstick on the joint model's features; with bins, the raw one beside it.
            for key, features in (("centralized", args.features), ("centralized_raw", "raw")):
                if key == "centralized_raw" and args.features == "raw":
                    continue
                central = centralized_report(cluster, Path(bank_data), bank_id, Path(platform_data), platform_id,
                                             tags, align["job_id"], train_params, fill_missing=args.fill_missing,
                                             features=features,
                                             platform_binning=(train.get("binning") or {}).get("platform"))
                for tag in tags:
                    report["tags"][tag][key] = central[tag]
        except Exception as err:  # the yardstick is optional: report why it is missing
            report["centralized_error"] = f"{type(err).__name__}: {err}"

        # Serving: five customers online (members and not), then every bank customer into the enriched-tags file.
        sample = _sample_ids(cluster, align["job_id"], Path(bank_data), bank_id, tags, 5)
        scores = client.score(train["job_id"], sample)
        probs = scores.probabilities
        report["online_scoring"] = {"customers": len(sample), "tags": scores.tags,
                                    "platform_known": int(scores.platform_known.sum()), "all_probabilities_in_0_1":
                                    bool(((probs >= 0) & (probs <= 1)).all()),
                                    "platform_projections_released": scores.projections_released,
                                    "platform_projections_limit": scores.projections_limit}
        print_online_scores(sample, scores)
        # The node writes under its own state dir only; the runner copies its files to the out dir.
        enriched = client.score_file(train["job_id"], "enriched-tags.parquet", all_customers=True, overwrite=True)
        path = str(out / "enriched-tags.parquet")
        shutil.copyfile(enriched.path, path)
        report["batch_scoring"] = {"path": path, "rows": enriched.rows, "platform_known": enriched.platform_known}
        console.print(f"[bold]Enriched tags[/]: {enriched.rows} bank customers scored ({enriched.platform_known} "
                      f"with the platform's part) -> {path}", highlight=False)
        # Campaign segments: per tag the top 10% by score, with a random 10% held out as the control group.
        report["segments"] = {}
        for tag in tags:
            record, groups_path = client.segment(train["job_id"], tag, name=f"{tag}-top10", top_share=0.1,
                                                 control_share=0.1, seed=args.seed, all_customers=True,
                                                 overwrite=True)
            target = out / "segments" / Path(groups_path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(groups_path, target)
            report["segments"][tag] = {k: v for k, v in record.items() if k != "strata"} | {"file": str(target)}
            console.print(f"[bold]Segment[/] {tag}: {record['target_size']} customers to contact, "
                          f"{record['control_size']} held out as control -> {target}", highlight=False)
        report["model_job_id"] = train["job_id"]
        # Intervals, calibration and warnings (the same numbers as the node's HTML report, fetched beside it).
        summary = train.get("summary") or summarise(train)  # the node summarised the predictions it keeps
        report["uncertainty"] = {k: v for k, v in summary.items() if k != "tags"}
        for tag, s in summary["tags"].items():
            report["tags"][tag].update(intervals=s["intervals"], ece=s["ece"], warnings=s["warnings"])
        atomic_write(out / "report.html", client.report_html(train["job_id"]))
    report["seconds_total"] = round(time.monotonic() - started, 1)
    atomic_write(out / "report.json", json.dumps(report, indent=2, sort_keys=True, default=str).encode())
    print_report(report)
    console.print(f"Report: {out / 'report.json'}; for people: {out / 'report.html'}", highlight=False)
    return report


def _sample_ids(cluster: LocalCluster, alignment_job_id: str, bank_data: Path, id_column: str, tags: list[str],
                k: int) -> list[str]:
    """``k`` bank customers: shared ones first, and one outside the intersection when there is one."""
    members = list(cluster.bank_alignment(alignment_job_id).ids or ())
    shared = set(members)
    bank_ids = load_party_data(bank_data, id_column=id_column, tag_columns=tags, fill_missing="zero").ids
    outsider = next((str(c) for c in bank_ids if c not in shared), None)
    return members[: k - 1] + [outsider] if outsider is not None else members[:k]


def print_online_scores(ids: list[str], scores: Scores) -> None:
    table = Table(title="Online scores (Score call on the bank node; calibrated probabilities)")
    table.add_column("customer", no_wrap=True)
    for tag in scores.tags:
        table.add_column(tag, justify="right", no_wrap=True)
    table.add_column("platform's part", no_wrap=True)
    for i, cid in enumerate(ids):
        table.add_row(cid, *(f"{p:.3f}" for p in scores.probabilities[i]),
                      "yes" if scores.platform_known[i] else "no (not a platform user)")
    console.print(table)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m simulations.run", description=__doc__.split("\n")[0])
    p.add_argument("--bank-data", type=Path)
    p.add_argument("--platform-data", type=Path)
    p.add_argument("--bank-id-column", default="id")
    p.add_argument("--platform-id-column", default="id")
    p.add_argument("--tags", help="comma-separated tag columns of the bank file")
    p.add_argument("--out", type=Path, default=Path("run-out"))
    p.add_argument("--epochs", type=int, help="default: automatic (the most epochs whose batches meet the label "
                                              "floor, or 2 under label DP)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--l2", type=float)
    p.add_argument("--validation-share", type=float)
    p.add_argument("--he-scheme", choices=["paillier", "ou"], help="the job's HE scheme (default: paillier)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--fill-missing", default="error", choices=["error", "zero", "mean"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--features", default="raw", choices=["raw", "binned"],
                   help="what each party trains on: its raw columns or their one-hot bins (docs/protocol.md)")
    p.add_argument("--in-memory-mb", type=float, default=1024,
                   help="[data] in_memory_mb of both nodes: larger feature matrices are memory-mapped (default 1024)")
    p.add_argument("--n-bank", type=int, default=6000, help="simulated data only")
    p.add_argument("--n-platform", type=int, default=9000, help="simulated data only")
    p.add_argument("--n-tags", type=int, default=4, help="simulated data only")
    p.add_argument("--label-share", type=float, default=0.25, help="simulated data only")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        run(args)
    except Exception as err:
        from party_bank.client import JobFailed

        if isinstance(err, JobFailed):
            console.print(f"[red]{err}[/]")
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
