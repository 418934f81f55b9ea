"""Soak: SIGKILL the bank or the platform node (alternating) at random points of training jobs; every job must
resume and end with the model of an uninterrupted run with the same seed.

    python -m benchmarks.soak --kills 20 --json PATH [--rows 3000] [--seed 1]

Both nodes run as real processes over mutual TLS (``simulations.cluster.LocalCluster``), on default_credit
(``../shared/datasets``, as ``benchmarks.quality`` finds it). To keep 21 trainings affordable the harness
trains on ``--rows`` customers drawn at random (seeded) from the 30,000, with 2048-bit keys, 2 epochs,
``label_dp = "off"`` (batches at the floor, no noise: the reference and the resumed jobs are separate jobs, and
each job draws its own secret noise key, so only noise-free jobs can be compared across jobs; a resumed job
replays its own noise exactly, which ``tests/test_resume.py`` checks bit for bit) and a checkpoint every 2
batches. One uninterrupted job is the reference; then each of ``--kills`` jobs is killed once, at a time drawn
uniformly over 5-95% of the reference's training proper (from its first "epoch" progress, the mask path of
epoch 1, to its end: before that a job restarts from its first checkpoint, step 0), the node restarted after
0.5-3 s, and the job waited for.

JSON: ``survived`` (jobs that succeeded), ``total``, ``identical_models`` (jobs whose two model halves -- bank
weights, intercepts and Platt calibration, platform weights -- equal the reference's bit for bit), the
settings, and one entry per kill (node, when, the job's progress then, status on both nodes, seconds).
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd

from benchmarks.common import console, print_table, write_json
from benchmarks.quality import DATASETS
from party_bank.client import BankClient
from simulations.cluster import LocalCluster

TRAIN = {"epochs": 2, "label_dp": "off", "seed": 1, "checkpoint_every": 2}
ROLES = ("bank", "platform")


def subsample(out: Path, rows: int, seed: int, dataset: str = "default_credit") -> tuple[Path, Path]:
    """``rows`` customers of both files, drawn at random with ``seed``; the two CSVs under ``out``."""
    guest = pd.read_csv(DATASETS / f"{dataset}_hetero_guest.csv", dtype={"id": str})
    host = pd.read_csv(DATASETS / f"{dataset}_hetero_host.csv", dtype={"id": str})
    shared = sorted(set(guest["id"]) & set(host["id"]))
    chosen = set(random.Random(seed).sample(shared, min(rows, len(shared))))
    out.mkdir(parents=True, exist_ok=True)
    bank, platform = out / "bank.csv", out / "platform.csv"
    guest[guest["id"].isin(chosen)].to_csv(bank, index=False)
    host[host["id"].isin(chosen)].to_csv(platform, index=False)
    return bank, platform


def model_arrays(cluster: LocalCluster, job_id: str) -> dict[str, np.ndarray]:
    """The arrays that make both halves of a trained model (what scoring uses)."""
    state = cluster.workdir / "state"
    bank = json.loads((state / "bank" / "models" / f"{job_id}.model").read_text())
    platform = json.loads((state / "platform" / "models" / f"{job_id}.model").read_text())
    cal = bank["calibration"]
    return {"bank_weights": np.array(bank["weights"]), "bank_intercept": np.array(bank["intercept"]),
            "bank_calibration": np.array([cal["a"], cal["b"]]), "platform_weights": np.array(platform["weights"]),
            "bank_scaler": np.array([bank["scaler"]["mean"], bank["scaler"]["std"]]),
            "platform_scaler": np.array([platform["scaler"]["mean"], platform["scaler"]["std"]])}


def identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def platform_status(cluster: LocalCluster, job_id: str) -> str:
    """The job's status in the platform's job store (read-only: the node owns the database)."""
    path = cluster.workdir / "state" / "platform" / "jobs.sqlite"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
        row = db.execute("SELECT status FROM jobs WHERE job_id=?", (job_id,)).fetchone()
    return row[0] if row else "absent"


def poll(client: BankClient, job_id: str) -> dict[str, Any] | None:
    """The job's record, or None while the bank node is down or restarting."""
    try:
        return client.job(job_id)
    except grpc.RpcError:
        return None


def wait_end(client: BankClient, job_id: str, timeout_s: float) -> dict[str, Any]:
    """Wait for the job to end, across bank restarts; its last record."""
    deadline = time.monotonic() + timeout_s
    job = None
    while time.monotonic() < deadline:
        job = poll(client, job_id)
        if job is not None and job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    return job or {"job_id": job_id, "status": "timeout", "error": f"not ended after {timeout_s:.0f} s"}


def wait_progress(client: BankClient, job_id: str, text: str) -> dict[str, Any] | None:
    """Wait until the job's progress mentions ``text`` (or it ended); its record then."""
    while True:
        job = poll(client, job_id)
        if job is not None and (text in job["progress"] or job["status"] not in ("queued", "running")):
            return job
        time.sleep(0.05)


def kill_during(cluster: LocalCluster, client: BankClient, role: str, job_id: str, *, after_s: float,
                down_s: float, min_progress: str = "") -> dict[str, Any]:
    """Kill ``role`` ``after_s`` seconds after ``job_id``'s progress first mentions ``min_progress``, restart it
    ``down_s`` later; what the job showed when it was killed."""
    wait_progress(client, job_id, min_progress)
    start = time.monotonic()
    while True:
        job = poll(client, job_id)
        progress = job["progress"] if job else ""
        if time.monotonic() - start >= after_s or (job is not None and job["status"] not in ("queued", "running")):
            break
        time.sleep(0.05)
    cluster.kill(role)
    time.sleep(down_s)
    cluster.restart(role)
    return {"node": role, "killed_after_s": round(after_s, 2),
            "progress_at_kill": progress, "status_at_kill": job["status"] if job else "?", "down_s": round(down_s, 2)}


def soak(workdir: Path, *, kills: int, rows: int, seed: int, workers: int = 2, train: dict[str, Any] | None = None,
         kill_window: tuple[float, float] = (0.05, 0.95), down_window: tuple[float, float] = (0.5, 3.0),
         min_progress: str = "epoch ", timeout_s: float = 900.0) -> dict[str, Any]:
    """Kills land ``kill_window`` (fractions) into the reference's time from its first progress mentioning
    ``min_progress`` (default: the first epoch's mask path, i.e. training proper) to its end."""
    train = {**TRAIN, **(train or {})}
    rng = random.Random(seed)
    bank_csv, platform_csv = subsample(workdir / "data", rows, seed)
    entries: list[dict[str, Any]] = []
    with LocalCluster(workdir / "cluster", bank_data=bank_csv, bank_id_column="id", bank_tag_columns=["y"],
                      platform_data=platform_csv, platform_id_column="id", workers=workers) as cluster:
        client = cluster.bank_client()
        client.align()
        t0 = time.monotonic()
        reference_id = client.submit("train", {"train": train})
        wait_progress(client, reference_id, min_progress)
        t_train = time.monotonic()
        reference_job = wait_end(client, reference_id, timeout_s)
        if reference_job["status"] != "succeeded":
            raise RuntimeError(f"the reference job {reference_id} {reference_job['status']}: {reference_job['error']}")
        reference_s, train_s = time.monotonic() - t0, time.monotonic() - t_train
        reference = model_arrays(cluster, reference_id)
        for i in range(kills):
            role = ROLES[i % 2]
            t0 = time.monotonic()
            job_id = client.submit("train", {"train": train})
            entry = kill_during(cluster, client, role, job_id, after_s=rng.uniform(*kill_window) * train_s,
                                down_s=rng.uniform(*down_window), min_progress=min_progress)
            job = wait_end(client, job_id, timeout_s)
            same = job["status"] == "succeeded" and identical(model_arrays(cluster, job_id), reference)
            entry.update(job_id=job_id, status=job["status"], error=job.get("error", ""), identical_model=same,
                         platform_status=platform_status(cluster, job_id), seconds=round(time.monotonic() - t0, 1))
            entries.append(entry)
            console.print(f"kill {i + 1}/{kills}: {role} {entry['killed_after_s']} s into training "
                          f"({entry['progress_at_kill'] or entry['status_at_kill']}) -> {job['status']}, "
                          f"identical model: {same}")
    return {"survived": sum(e["status"] == "succeeded" for e in entries), "total": kills,
            "identical_models": sum(e["identical_model"] for e in entries),
            "settings": {"dataset": "default_credit", "rows": rows, "row_seed": seed, "train": train,
                         "key_bits": 2048, "workers_per_node": workers, "transport": "gRPC over mutual TLS, "
                         "two OS processes", "reference_seconds": round(reference_s, 1),
                         "reference_steps": sum(h.get("batches", 0) for h in reference_job["result"].get("history", [])),
                         "reference_training_seconds": round(train_s, 1),
                         "kill_window": f"{kill_window[0]:.0%}-{kill_window[1]:.0%} of the reference's time from "
                                        f"its first '{min_progress.strip()}' progress to its end"},
            "kills": entries}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20, help="jobs to kill, once each, bank and platform alternating")
    ap.add_argument("--rows", type=int, default=3000, help="customers drawn from default_credit's 30,000 "
                    "(affordability: 21 trainings with 2048-bit keys)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the row draw and of the kill times")
    ap.add_argument("--workers", type=int, default=2, help="compute workers per node")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        result = soak(Path(tmp), kills=args.kills, rows=args.rows, seed=args.seed, workers=args.workers)
    rows = [(str(i + 1), e["node"], f"{e['killed_after_s']:.1f}", e["progress_at_kill"] or e["status_at_kill"],
             e["status"], e["platform_status"], str(e["identical_model"])) for i, e in enumerate(result["kills"])]
    print_table("Soak: SIGKILL during training", rows, ("#", "killed", "s into training", "progress then", "bank status",
                                                         "platform status", "identical model"))
    console.print(f"survived {result['survived']}/{result['total']}, identical models "
                  f"{result['identical_models']}/{result['total']} ({result['settings']['rows']} rows)")
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
