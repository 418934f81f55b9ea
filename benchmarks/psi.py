"""PSI: ours (both nodes as separate processes, gRPC over mutual TLS) vs OpenMined PSI on the same IDs.

    python -m benchmarks.psi --n N [--overlap 0.5] [--transport grpc|local] [--json PATH]

Both sides hold N phone-number IDs, ``overlap`` of them shared. OpenMined's ECDH P-256 PSI runs in this
process (no network), so the ratio flatters it. Peak memory is the resident set of each node process and
its worker processes, sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import console, fmt, print_table, ratio, write_json


def make_ids(n: int, overlap: float, seed: int = 0) -> tuple[list[str], list[str], set[str]]:
    rng = np.random.default_rng(seed)
    numbers = rng.choice(10**10, size=2 * n, replace=False)
    ids = [f"+44{v:010d}" for v in numbers.tolist()]
    shared = int(round(n * overlap))
    bank = ids[:n]
    platform = ids[:shared] + ids[n:2 * n - shared]
    return bank, platform, set(bank[:shared])


class RssSampler:
    """Peak resident memory (MB) per process tree, sampled in a background thread."""

    def __init__(self, pids: dict[str, int]) -> None:
        import psutil

        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak = dict.fromkeys(pids, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            for name, proc in self._procs.items():
                try:
                    tree = [proc, *proc.children(recursive=True)]
                    total = sum(p.memory_info().rss for p in tree) / 2**20
                except psutil.Error:
                    continue
                self.peak[name] = max(self.peak[name], total)
            self._stop.wait(0.2)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def ours_grpc(bank: list[str], platform: list[str], workers: int, workdir: Path) -> dict[str, Any]:
    from protocols.alignment import AlignmentStore
    from simulations.cluster import LocalCluster

    paths = {}
    for name, ids in (("bank", bank), ("platform", platform)):
        paths[name] = workdir / f"{name}.csv"
        pd.DataFrame({"id": ids, "f0": np.zeros(len(ids))}).to_csv(paths[name], index=False)
    with LocalCluster(workdir / "cluster", bank_data=paths["bank"], bank_id_column="id",
                      platform_data=paths["platform"], platform_id_column="id", workers=workers) as cluster:
        client = cluster.bank_client()
        with RssSampler(cluster.pids()) as rss:
            started = time.monotonic()
            result = client.align(mode="both", timeout_s=3600)
            wall = time.monotonic() - started
        alignment = AlignmentStore(cluster.workdir / "state" / "bank" / "alignments").load(result["job_id"])
        found = set(alignment.ids or ())
    return {"seconds": result["seconds"], "wall_seconds": round(wall, 3), "found": found,
            "peak_rss_mb": round(max(rss.peak.values()), 1), "peak_rss_mb_per_node": rss.peak}


def ours_local(bank: list[str], platform: list[str], workers: int) -> dict[str, Any]:
    from protocols.channel import LocalPeer
    from protocols.psi import make_platform_psi_handler, run_bank_psi

    def factory(kind: str, job_id: str, params: dict) -> object:
        return make_platform_psi_handler(job_id, params, platform, workers=workers)

    started = time.monotonic()
    result = run_bank_psi(LocalPeer(factory), "bench-psi", bank, mode="both", workers=workers)
    return {"seconds": round(time.monotonic() - started, 3), "found": set(result.ids or ()), "peak_rss_mb": None}


def openmined(bank: list[str], platform: list[str]) -> dict[str, Any]:
    import private_set_intersection.python as psi

    started = time.monotonic()
    client = psi.client.CreateWithNewKey(True)
    server = psi.server.CreateWithNewKey(True)
    setup = server.CreateSetupMessage(0.0, len(bank), platform, psi.DataStructure.RAW)
    request = client.CreateRequest(bank)
    response = server.ProcessRequest(request)
    found = client.GetIntersection(setup, response)
    seconds = time.monotonic() - started
    return {"seconds": round(seconds, 3), "size": len(found)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from protocols.psi import normalise_id

    bank, platform, exact = make_ids(args.n, args.overlap)
    console.print(f"PSI {args.n:,} x {args.n:,}, overlap {args.overlap:.0%}, transport {args.transport}")
    with tempfile.TemporaryDirectory(prefix="bench-psi-") as tmp:
        ours = ours_grpc(bank, platform, args.workers, Path(tmp)) if args.transport == "grpc" else \
            ours_local(bank, platform, args.workers)
    correct = ours.pop("found") == {normalise_id(x) for x in exact}
    ours.update(transport=args.transport, ids_per_s_per_side=round(args.n / ours["seconds"], 1))
    try:
        peer: dict[str, Any] | None = openmined(bank, platform)
        peer["ids_per_s_per_side"] = round(args.n / peer["seconds"], 1)  # type: ignore[index]
        peer["correct"] = peer.pop("size") == len(exact)  # type: ignore[union-attr]
    except ImportError as err:
        console.print(f"[yellow]openmined-psi not installed ({err}); install the [bench] extra[/]")
        peer = None
    result = {"n": args.n, "overlap": args.overlap, "intersection_size": len(exact), "correct": correct,
              "ours": ours, "peers": {"openmined": peer},
              "ratios": {"vs_openmined": ratio(ours["ids_per_s_per_side"], (peer or {}).get("ids_per_s_per_side"))}}
    print_table("PSI", [("ours", fmt(ours["seconds"]), fmt(ours["ids_per_s_per_side"]), fmt(ours["peak_rss_mb"])),
                        ("OpenMined", fmt((peer or {}).get("seconds")), fmt((peer or {}).get("ids_per_s_per_side")),
                         "-")], ("", "seconds", "IDs/s per side", "peak RSS MB"))
    console.print(f"ratio vs OpenMined: {result['ratios']['vs_openmined']}; correct: {correct}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.psi", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--transport", choices=["grpc", "local"], default="grpc")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    result = run(args)
    write_json(args.json, result)
    return 0 if result["correct"] else 1


if __name__ == "__main__":
    sys.exit(main())
