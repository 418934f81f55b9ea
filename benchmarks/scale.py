"""The Ray backend against the process pool, same run, same machine: each kernel on both, results compared.

    python -m benchmarks.scale --json PATH [--workers 2] [--psi-n 1000000] [--matvec-rows 20000]
        [--matvec-cols 300] [--score-rows 1000000] [--key-bits 2048]

A local Ray cluster of ``--workers`` CPUs is started by this process; the pool has as many processes.
Kernels (each run on the pool, then on Ray, results checked equal bit for bit):

- ``matvec``: ``X^T [[d]]`` with 2048-bit keys, ``d`` of ``--matvec-rows`` values, X of signed 8-bit
  features (``--matvec-cols``), split by columns; then the key holder's decryption of the products and a
  batch of CRT noise (both need the private key on the workers).
- ``psi``: ECDH PSI of ``--psi-n`` x ``--psi-n`` IDs (50% overlap), both parties in this process over the
  in-memory channel, each with its own compute of ``--workers`` workers (on Ray both parties share the one
  cluster, so each actor reserves half a CPU: the pool's 2 x 2 processes share the 2 cores the same way).
- ``scoring``: a model half's partial scores for ``--score-rows`` rows of 30 features read from a Parquet
  file by row groups and written to another, a block at a time (``party_common.bigdata.score_file``).

The JSON has ``identical`` (every result equal on both backends), ``ray_over_pool`` (Ray's seconds over the
pool's, per kernel; the goal is <= 1.1 on one machine), the seconds, the per-core rates the projections in
BENCHMARKS.md use, and the peak memory of this process and of the workers.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import console, print_table, write_json
from party_common.bigdata import score_file
from party_common.memory import peak_rss_mb
from protocols.channel import LocalPeer
from protocols.compute import Compute, ProcessPoolCompute
from protocols.paillier import generate_keypair
from protocols.paillier_pool import PaillierPool
from protocols.party_data import Schema
from protocols.psi import make_platform_psi_handler, run_bank_psi
from protocols.vfl_lr.model import BankModel
from protocols.vfl_lr.state import Scaler

Factory = Callable[[float], Compute]


def worker_rss_mb(compute: Compute) -> float | None:
    """The workers' resident memory now, summed (psutil, from the bench extra; None without it)."""
    try:
        import psutil
    except ImportError:
        return None
    pids: list[int] = []
    if hasattr(compute, "worker_pids"):
        pids = compute.worker_pids()
    elif getattr(compute, "_executor", None) is not None:
        pids = list(compute._executor._processes)  # type: ignore[attr-defined]
    total = 0.0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss / 2**20
        except psutil.Error:
            continue
    return round(total, 1)


def bench_matvec(make: Factory, rows: int, cols: int, key_bits: int) -> dict[str, Any]:
    rng = np.random.default_rng(17)
    pk, sk = KEYS.setdefault(key_bits, generate_keypair(key_bits, allow_insecure=key_bits < 2048))
    X = rng.integers(-127, 128, (rows, cols)).astype(np.int8)
    d = CACHE.setdefault(("d", rows), [secrets.randbits(40) - 2**39 for _ in range(rows)])
    with PaillierPool(make(1.0)) as pool:
        if ("cv", rows) not in CACHE:  # the same ciphertexts for both backends (not timed)
            CACHE[("cv", rows)] = pool.encrypt(pk, d)
        cv = CACHE[("cv", rows)]
        pool.make_noise(pk, 2 * pool.workers * 64)  # starts the workers (not timed)
        started = time.perf_counter()
        product = pool.matvec_t(cv, X)
        matvec_s = time.perf_counter() - started
        started = time.perf_counter()
        opened = pool.decrypt(sk, product)
        decrypt_s = time.perf_counter() - started
        started = time.perf_counter()
        noise = pool.make_noise(sk, 4000)
        noise_s = time.perf_counter() - started
        workers_mb = worker_rss_mb(pool.compute)
    assert opened == (np.array(d, dtype=object) @ X.astype(object)).tolist(), "X^T [[d]] is wrong"
    return {"seconds": {"matvec": matvec_s, "decrypt": decrypt_s, "noise": noise_s},
            "result": (product.values, opened), "noise_made": len(noise), "workers_rss_mb": workers_mb,
            "muladd_per_s": rows * cols / matvec_s}


def bench_psi(make: Factory, n: int) -> dict[str, Any]:
    bank = CACHE.setdefault(("bank", n), [f"cust-{i:09d}" for i in range(n)])
    platform = CACHE.setdefault(("platform", n), [f"cust-{i:09d}" for i in range(n // 2, n + n // 2)])
    reports: list[Any] = []

    def factory(kind: str, job_id: str, params: dict) -> Any:
        return make_platform_psi_handler(job_id, params, platform, on_result=reports.append, compute=make(0.5))

    started = time.perf_counter()
    result = run_bank_psi(LocalPeer(factory), "bench-scale-psi", bank, mode="both", compute=make(0.5))
    seconds = time.perf_counter() - started
    assert result.ids is not None and len(result.ids) == n - n // 2, "PSI found the wrong intersection"
    assert reports and sorted(reports[0].ids) == sorted(result.ids), "the parties disagree"
    # The agreed order is random by design (it follows the blinded values); the set is the result.
    return {"seconds": {"psi": seconds}, "result": sorted(result.ids), "ids_per_s_per_side": n / seconds}


def bench_scoring(make: Factory, path: Path, out: Path, model: BankModel, columns: list[str]) -> dict[str, Any]:
    compute = make(1.0)
    try:
        compute.submit(abs, -1).result()  # starts the workers (not timed)
        started = time.perf_counter()
        scored = score_file(compute, model, path, out, id_column="id", feature_columns=columns,
                            score_names=["z_tag"])
        seconds = time.perf_counter() - started
        workers_mb = worker_rss_mb(compute)
    finally:
        compute.close()
    return {"seconds": {"scoring": seconds}, "result": pd.read_parquet(out), "rows": scored.rows,
            "workers_rss_mb": workers_mb, "rows_per_s": scored.rows / seconds}


KEYS: dict[int, Any] = {}
CACHE: dict[Any, Any] = {}


def scoring_input(workdir: Path, rows: int, cols: int = 30) -> tuple[Path, BankModel, list[str]]:
    """A Parquet file of ``rows`` x ``cols`` features in row groups of 65,536, and a one-tag model half."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(3)
    columns = [f"x{j}" for j in range(cols)]
    path = workdir / "score-in.parquet"
    schema = pa.schema([("id", pa.string()), *[(c, pa.float64()) for c in columns]])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, 65_536):
            m = min(65_536, rows - start)
            X = rng.normal(size=(m, cols))
            ids = pa.array([f"cust-{i:09d}" for i in range(start, start + m)])
            writer.write_table(pa.table([ids, *[pa.array(X[:, j]) for j in range(cols)]], schema=schema))
    scaler = Scaler(rng.normal(size=cols) * 0.1, 1 + rng.random(cols), 5.0)
    schema = Schema("id", tuple(columns), ("float64",) * cols)
    model = BankModel(job_id="bench", tag_names=["tag"], weights=rng.normal(size=(cols, 1)), intercept=np.array([0.1]),
                      scaler=scaler, schema=schema, key_fingerprints={}, alignment_job_id="bench",
                      calibration=np.array([[1.0, 0.0]]))
    return path, model, columns


def same(a: Any, b: Any) -> bool:
    if isinstance(a, pd.DataFrame):
        return bool(a.equals(b)) and all(a[c].to_numpy().tobytes() == b[c].to_numpy().tobytes()
                                         for c in a.columns if a[c].dtype.kind == "f")
    return bool(a == b)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--workers", type=int, default=2, help="Ray CPUs = pool processes (default 2)")
    parser.add_argument("--psi-n", type=int, default=1_000_000)
    parser.add_argument("--matvec-rows", type=int, default=20_000)
    parser.add_argument("--matvec-cols", type=int, default=300)
    parser.add_argument("--score-rows", type=int, default=1_000_000)
    parser.add_argument("--key-bits", type=int, default=2048)
    args = parser.parse_args(argv)
    try:
        import ray
    except ImportError:
        console.print("ray is not installed: `pip install '.[ray]'`; the Ray backend is unavailable")
        write_json(args.json, {"ray": "unavailable (not installed)"})
        return 1
    from protocols.compute_ray import RayCompute

    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    backends: dict[str, Factory] = {
        "pool": lambda share: ProcessPoolCompute(args.workers),
        "ray": lambda share: RayCompute(args.workers, cpus_per_worker=share),
    }
    runs: dict[str, dict[str, Any]] = {name: {} for name in backends}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        score_path, model, columns = scoring_input(work, args.score_rows)
        for kernel, run in (("matvec", lambda make: bench_matvec(make, args.matvec_rows, args.matvec_cols,
                                                                 args.key_bits)),
                            ("psi", lambda make: bench_psi(make, args.psi_n)),
                            ("scoring", lambda make, work=work: bench_scoring(
                                make, score_path, work / f"scores-{time.monotonic_ns()}.parquet", model, columns))):
            for name, make in backends.items():
                console.print(f"{kernel} on {name} ...")
                runs[name][kernel] = run(make)
    ray.shutdown()

    seconds = {name: {k: v for r in kernels.values() for k, v in r["seconds"].items()} for name, kernels in runs.items()}
    identical = {kernel: same(runs["pool"][kernel]["result"], runs["ray"][kernel]["result"]) for kernel in runs["pool"]}
    ratio = {k: round(seconds["ray"][k] / seconds["pool"][k], 3) for k in seconds["pool"]}
    cpus = os.cpu_count() or 1
    one, each = min(args.workers, cpus), max(1.0, min(args.workers, cpus / 2))
    payload = {
        "command": "python -m benchmarks.scale " + " ".join(sys.argv[1:] if argv is None else argv),
        "workers": args.workers, "machine_cpus": cpus, "ray_version": ray.__version__,
        "sizes": {"psi_n": args.psi_n, "psi_full_size": args.psi_n >= 1_000_000,
                  "matvec": [args.matvec_rows, args.matvec_cols], "score_rows": args.score_rows,
                  "key_bits": args.key_bits},
        "identical": all(identical.values()), "identical_per_kernel": identical,
        "ray_over_pool": ratio, "ray_over_pool_goal": 1.1,
        "seconds": {name: {k: round(v, 3) for k, v in s.items()} for name, s in seconds.items()},
        # Per-core rates for the projections, the pool's: one party's kernels over the cores they had; PSI
        # over the cores each party had (both parties share this machine's cores).
        "per_core": {
            "muladd_per_s": round(runs["pool"]["matvec"]["muladd_per_s"] / one),
            "psi_ids_per_s_per_side": round(runs["pool"]["psi"]["ids_per_s_per_side"] / each),
            "decrypt_per_s": round(args.matvec_cols / seconds["pool"]["decrypt"] / one, 1),
            "noise_per_s": round(4000 / seconds["pool"]["noise"] / one, 1),
            "scoring_rows_per_s": round(runs["pool"]["scoring"]["rows_per_s"] / one),
        },
        "cores_used": {"one_party": one, "each_party_in_psi": each},
        "peak_rss_mb_driver": round(peak_rss_mb(), 1),
        "workers_rss_mb": {name: {k: r.get("workers_rss_mb") for k, r in kernels.items() if "workers_rss_mb" in r}
                           for name, kernels in runs.items()},
    }
    write_json(args.json, payload)
    checked = {"decrypt": identical["matvec"], "noise": None}  # decrypt: compared with matvec; noise is random
    print_table("Ray backend vs process pool (seconds)", [
        (k, f"{seconds['pool'][k]:.2f}", f"{seconds['ray'][k]:.2f}", f"{ratio[k]:.2f}",
         {True: "yes", False: "NO", None: "random"}[checked.get(k, identical.get(k))]) for k in seconds["pool"]],
        ("kernel", "pool", "ray", "ray/pool", "identical"))
    return 0 if payload["identical"] else 2


if __name__ == "__main__":
    raise SystemExit(main())
