"""A node's memory on a data file larger than it should hold: the platform's side of load, alignment, training
set-up and scoring, before and after data larger than memory was wired into the nodes.

    python -m benchmarks.memory --json PATH [--rows 1000000] [--features 300] [--aligned 0.8]
        [--modes legacy,memory,disk]

One Parquet file of ``--rows`` customers x ``--features`` float64 features (the platform's file; 2.4 GB of
features at the defaults) is written once; then each mode runs in a fresh process, which reports its peak
memory (``party_common.memory``: anonymous memory, what the machine must hold; and resident memory, which
also counts pages of memory-mapped files the kernel may drop) and its seconds per step:

- ``legacy``: what the nodes did before: ``pandas.read_parquet`` of the whole file, the feature matrix
  stacked in memory, the alignment's rows copied, a float64 standardised copy, int64 quantisation.
- ``memory``: the node today with ``[data] in_memory_mb`` above the matrix (features kept in memory).
- ``disk``: the node today at the default ``in_memory_mb = 1024``: the matrix spills to a memory-mapped
  file, everything derived from it goes block by block (``protocols.rowblocks``).

Steps: ``load`` (``party_common.data_loading.load_party_data``), ``align`` (the rows of a shuffled
``--aligned`` share of the customers, as ``PartyData.take`` after PSI), ``setup`` (the platform's training
set-up: scaler on the training rows, 8-bit quantisation, as
``protocols/vfl_lr/platform.py`` does it), ``score`` (partial scores of every aligned row, standardised a
block at a time). The three modes' scalers, quantised features and scores are compared: ``identical``.
Paillier epochs are not run here (their memory is a batch of ciphertexts, whatever the rows).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import console, print_table, write_json

MODES = ("legacy", "memory", "disk")


def write_file(path: Path, rows: int, features: int, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    names = [f"f{j:03d}" for j in range(features)]
    schema = pa.schema([("id", pa.string()), *[(n, pa.float64()) for n in names]])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, 65_536):
            n = min(65_536, rows - start)
            X = rng.standard_normal((n, features)) * rng.uniform(0.5, 20, features) + rng.uniform(-5, 5, features)
            ids = pa.array([f"u{i:09d}" for i in range(start, start + n)])
            writer.write_table(pa.Table.from_arrays([ids, *[pa.array(X[:, j]) for j in range(features)]],
                                                    schema=schema))


def digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        for start in range(0, len(a), 65_536):
            h.update(np.ascontiguousarray(a[start:start + 65_536]).tobytes())
    return h.hexdigest()[:16]


def run_mode(mode: str, path: Path, aligned_share: float, spill: Path) -> dict[str, Any]:
    """One mode in this process (a fresh one per mode: peaks are per process)."""
    import pandas as pd

    from party_common.data_loading import load_party_data
    from party_common.memory import PeakMemory
    from protocols.fixedpoint import quantise, quantise_rows
    from protocols.vfl_lr.state import Scaler

    watch = PeakMemory(interval_s=0.05)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    if mode == "legacy":
        frame = pd.read_parquet(path)
        ids = frame["id"].to_numpy(dtype=object)
        features = np.column_stack([frame[c].to_numpy(dtype=np.float64) for c in frame.columns[1:]])
        del frame
    else:
        data = load_party_data(path, id_column="id", spill_dir=spill, in_memory_mb=1e9 if mode == "memory" else 1024)
        ids, features = data.ids, data.features
    seconds["load"] = time.perf_counter() - t
    n = len(ids)
    order = np.random.default_rng(3).permutation(n)[:int(aligned_share * n)]
    t = time.perf_counter()
    if mode == "legacy":
        index = {cid: i for i, cid in enumerate(ids)}
        X = features[np.fromiter((index[c] for c in ids[order]), dtype=np.int64, count=len(order))]
    else:
        X = data.take(list(ids[order])).features
    del features
    seconds["align"] = time.perf_counter() - t
    train = np.arange(int(0.8 * len(X)))
    t = time.perf_counter()
    if mode == "legacy":
        scaler = Scaler(X[train].mean(axis=0), X[train].std(axis=0), 5.0)
        scaler.std[~(scaler.std > 1e-12)] = 1.0
        Z = scaler.transform(X)
        Xq, scale = quantise(Z, 8, fit_rows=train)
        Xq = Xq.astype(np.int8)
    else:
        scaler = Scaler.fit(X, 5.0, rows=train)
        Z = scaler.rows(X)
        Xq, scale = quantise_rows(X, scaler.transform, 8, fit_rows=train)
    seconds["setup"] = time.perf_counter() - t
    W = np.random.default_rng(5).standard_normal((X.shape[1], 4)) / 10
    t = time.perf_counter()
    scores = np.empty((len(X), 4))
    for start in range(0, len(X), 65_536):
        scores[start:start + 65_536] = Z[np.arange(start, min(len(X), start + 65_536))] @ W
    seconds["score"] = time.perf_counter() - t
    peaks = watch.stop()
    return {"mode": mode, "rows": n, "aligned": len(X), "features": X.shape[1], **peaks,
            "seconds": {k: round(v, 2) for k, v in seconds.items()},
            "digest": {"scaler": digest(scaler.mean, scaler.std), "quantised": digest(Xq, scale),
                       "scores": digest(scores)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=300)
    parser.add_argument("--aligned", type=float, default=0.8, help="share of the rows in the alignment")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="modes to run (legacy needs about 5x the feature matrix in memory)")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one mode, in a child process
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - set(MODES):
        parser.error(f"--modes: choose from {', '.join(MODES)}")
    if args.mode:
        with tempfile.TemporaryDirectory(prefix="fedprofile-spill-") as spill:
            print(json.dumps(run_mode(args.mode, Path(args.file), args.aligned, Path(spill))))
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="fedprofile-memory-") as work:
        path = Path(work) / "platform.parquet"
        console.print(f"writing {args.rows:,} x {args.features} features to {path} ...")
        write_file(path, args.rows, args.features)
        size_mb = path.stat().st_size / 2**20
        for mode in modes:
            console.print(f"{mode} ...")
            out = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--mode", mode, "--file", str(path),
                                  "--aligned", str(args.aligned)], capture_output=True, text=True,
                                 env={**os.environ}, check=False)
            if out.returncode != 0:
                results.append({"mode": mode, "error": out.stderr.strip().splitlines()[-1:]})
                continue
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    done = [r for r in results if "digest" in r]
    # None: fewer than two modes ran, nothing to compare
    identical = (None if len(modes) < 2 else
                 len(done) == len(modes) and all(r["digest"] == done[0]["digest"] for r in done))
    by_mode = {r["mode"]: r for r in results}
    matrix_mb = args.rows * args.features * 8 / 2**20
    payload = {"command": "python -m benchmarks.memory " + " ".join(sys.argv[1:] if argv is None else argv),
               "rows": args.rows, "features": args.features, "aligned_share": args.aligned,
               "file_mb": round(size_mb, 1), "feature_matrix_mb": round(matrix_mb, 1), "identical": identical,
               "modes": by_mode,
               "disk_over_legacy_peak": (round(by_mode["disk"]["node_peak_mb"] / by_mode["legacy"]["node_peak_mb"], 3)
                                         if {"disk", "legacy"} <= {r["mode"] for r in done} else None)}
    print_table(f"node memory, {args.rows:,} x {args.features} (features {matrix_mb:,.0f} MB)",
                [(r["mode"], f"{r.get('node_peak_mb', '-')}", f"{r.get('node_peak_resident_mb', '-')}",
                  " ".join(f"{k} {v}" for k, v in r.get("seconds", {}).items()) or str(r.get("error")))
                 for r in results], ("mode", "peak MB", "peak resident MB", "seconds"))
    console.print(f"identical: {identical}")
    if args.json:
        write_json(Path(args.json), payload)
    return 0 if len(done) == len(modes) and identical is not False else 2


if __name__ == "__main__":
    sys.exit(main())
