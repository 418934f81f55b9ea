"""PSI: ours (both nodes as separate processes, gRPC over mutual TLS) vs OpenMined and SecretFlow on the same IDs.

    python -m benchmarks.psi --n N [--protocol ecdh|ot] [--peers openmined,secretflow-ecdh,secretflow-rr22]
                             [--peer-python PY] [--overlap 0.5] [--transport grpc|local] [--json PATH] [--workers 2]
    python -m benchmarks.psi --incremental --n N [--platform M] [--new-share 0.01] [--removed-share 0.0] [--json PATH]
    python -m benchmarks.psi --unbalanced --bank N --platform M [--new-share 0.01] [--json PATH]

``--incremental``: a re-alignment after new and removed IDs against a full one (``benchmarks/psi_incremental.py``).

``--protocol`` is the PSI protocol of ours that runs: ``ecdh`` (the default, as in every figure recorded
before issue 28) or ``ot`` (KKRT16 from OT extension, ``protocols/psi/ot``; single-threaded per node, so
``--workers`` does not apply to it).

Both sides hold N unique phone-number IDs ("+44" and 10 digits), ``overlap`` of them shared, so the exact
intersection is known. ``grpc`` writes each side's IDs (and one numeric feature column, which the node's
data loader requires) to CSV, starts both nodes as separate OS processes on loopback with mutual TLS, and
runs an align job (mode "both") from the bank's client; ``seconds`` is the job's own time as the bank node
measured it (``wall_seconds`` is submit-to-done as the client saw it). ``local`` runs both parties in this
process over :class:`protocols.channel.LocalPeer`. Correctness: the bank's stored alignment (grpc) or the
result's IDs (local), as a set, must equal the exact intersection after ``normalise_id``; every peer's
result is checked against it too, and a wrong one makes the run fail.

The peers (``benchmarks/psi_peers.py``, run after ours on the same IDs): OpenMined's ECDH P-256 PSI, in
one process without network (the ratio flatters it), and SecretFlow's ECDH (Curve25519) and RR22 PSI
(``spu``), both parties as processes on SecretFlow's own brpc link over loopback, without TLS.
``ratios.vs_<peer>`` is their seconds / ours (above 1: we are faster). A peer that cannot run is listed
as ``peers.<name>_unavailable`` with the reason. ``--peer-python`` names an interpreter that has the
peers' packages, which pin numpy and protobuf below this project's.

Peak memory is the resident set of each node process plus all its descendants, summed and sampled every
0.2 s during the job; shared pages are counted once per process, so it over-states.
``peak_rss_mb_node_process_only`` is the node process alone; ``cpu_seconds_per_node`` is the CPU time each
node used during the job (all its threads), which other load on the machine disturbs less than seconds.

``x25519_kernel`` is the kernel the nodes chose (``protocols/psi/x25519.py``). ``floor_seconds`` is what the
2(N + M) X25519 scalar multiplications alone take on this machine with it: timed on one core after the
run, spread over the cores. No ECDH PSI can beat it here; the gap to ``seconds`` is everything else.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import console, fmt, print_table, ratio, write_json
from benchmarks.psi_incremental import add_arguments as add_incremental_arguments
from benchmarks.psi_incremental import run_incremental, run_unbalanced
from benchmarks.psi_peers import PEERS, run_peers


def make_ids(n: int, overlap: float, seed: int = 0) -> tuple[list[str], list[str], set[str]]:
    """Two sets of N unique phone-number-like IDs sharing round(N * overlap), each in random order."""
    if n < 1:
        raise ValueError("--n must be at least 1")
    if not 0.0 <= overlap <= 1.0:
        raise ValueError("--overlap must be between 0 and 1")
    rng = np.random.default_rng(seed)
    numbers = rng.choice(10**10, size=2 * n, replace=False)
    ids = [f"+44{v:010d}" for v in numbers.tolist()]
    shared = int(round(n * overlap))
    bank = ids[:n]
    platform = ids[:shared] + ids[n:2 * n - shared]
    exact = set(bank[:shared])
    bank = [bank[i] for i in rng.permutation(n)]
    platform = [platform[i] for i in rng.permutation(n)]
    return bank, platform, exact


class RssSampler:
    """Peak resident memory (MB) per process tree (process + all descendants, summed), sampled in a thread."""

    def __init__(self, pids: dict[str, int], interval_s: float = 0.2) -> None:
        import psutil

        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak = dict.fromkeys(pids, 0.0)
        self.cpu: dict[str, list[float]] = {name: [] for name in pids}  # CPU seconds of the tree, per sample
        self.main_peak = dict.fromkeys(pids, 0.0)  # the process alone, without its worker pool
        self.samples = 0
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def sample(self) -> dict[str, float]:
        import psutil

        now: dict[str, float] = {}
        for name, proc in self._procs.items():
            total = 0
            try:
                tree = [proc, *proc.children(recursive=True)]
            except psutil.Error:
                continue
            for p in tree:
                try:
                    rss = p.memory_info().rss
                except psutil.Error:  # a worker that exited between listing and reading
                    continue
                total += rss
                if p is proc:
                    self.main_peak[name] = max(self.main_peak[name], rss / 2**20)
            now[name] = total / 2**20
            try:
                times = proc.cpu_times()
                self.cpu[name].append(times.user + times.system + times.children_user + times.children_system)
            except psutil.Error:
                pass
            self.peak[name] = max(self.peak[name], now[name])
        self.samples += 1
        return now

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds each process used (its threads and reaped children) between the first and last sample."""
        return {name: round(seen[-1] - seen[0], 2) for name, seen in self.cpu.items() if len(seen) > 1}

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def _sampler(pids: dict[str, int]) -> RssSampler | None:
    try:
        return RssSampler(pids)
    except ImportError:
        console.print("[yellow]psutil not installed (the [bench] extra): no memory figures[/]")
        return None


BANK_TAG = "tag_x"  # the bank node needs a tag column to start


def _write_csv(path: Path, ids: list[str], *, tag: bool = False) -> None:
    columns: dict[str, Any] = {"id": ids, "f0": np.arange(len(ids), dtype=np.float64) % 7}
    if tag:
        columns[BANK_TAG] = np.arange(len(ids)) % 2
    pd.DataFrame(columns).to_csv(path, index=False)


def ours_grpc(bank: list[str], platform: list[str], workers: int, workdir: Path, protocol: str) -> dict[str, Any]:
    from party_bank.client import JobFailed
    from simulations.cluster import LocalCluster

    paths = {name: workdir / f"{name}.csv" for name in ("bank", "platform")}
    _write_csv(paths["bank"], bank, tag=True)
    _write_csv(paths["platform"], platform)
    with LocalCluster(workdir / "cluster", bank_data=paths["bank"], bank_id_column="id", bank_tag_columns=[BANK_TAG],
                      platform_data=paths["platform"], platform_id_column="id", workers=workers) as cluster:
        client = cluster.bank_client()
        sampler = _sampler(cluster.pids())
        idle = sampler.sample() if sampler else {}
        try:
            started = time.monotonic()
            if sampler:
                with sampler:
                    result = client.align(mode="both", protocol=protocol, timeout_s=3600)
            else:
                result = client.align(mode="both", protocol=protocol, timeout_s=3600)
            wall = time.monotonic() - started
        except JobFailed:
            for role in ("bank", "platform"):
                console.print(f"[red]{role} node log (tail):[/]\n{cluster.log_tail(role)}")
            raise
        alignment = cluster.bank_alignment(result["job_id"])
        found = list(alignment.ids or ())
    peak = {k: round(v, 1) for k, v in sampler.peak.items()} if sampler else {}
    return {"seconds": float(result["seconds"]), "wall_seconds": round(wall, 3), "found": found,
            "reported_size": result.get("intersection_size"),
            "peak_rss_mb": max(peak.values()) if peak else None, "peak_rss_mb_per_node": peak or None,
            "idle_rss_mb_per_node": {k: round(v, 1) for k, v in idle.items()} or None,
            "peak_rss_mb_node_process_only": {k: round(v, 1) for k, v in sampler.main_peak.items()} if sampler else None,
            "cpu_seconds_per_node": sampler.cpu_seconds() if sampler else None,
            "rss_samples": sampler.samples if sampler else 0, "workers_per_node": workers}


def ours_local(bank: list[str], platform: list[str], workers: int, protocol: str) -> dict[str, Any]:
    from protocols.channel import LocalPeer, Message, StepHandler
    from protocols.psi import PsiResult, make_platform_psi_handler, run_bank_psi
    from protocols.psi.ot import PlatformOtPsiHandler, run_bank_ot_psi

    reports: list[PsiResult] = []  # what the platform handed to on_result (once, after psi.finish)

    def factory(kind: str, job_id: str, params: Message) -> StepHandler:
        if protocol == "ot":
            return PlatformOtPsiHandler(job_id, params, platform, on_result=reports.append)
        return make_platform_psi_handler(job_id, params, platform, on_result=reports.append, compute=workers)

    def align() -> PsiResult:
        if protocol == "ot":
            return run_bank_ot_psi(LocalPeer(factory), "bench-psi", bank, mode="both")
        return run_bank_psi(LocalPeer(factory), "bench-psi", bank, mode="both", compute=workers)

    sampler = _sampler({"bench_process": os.getpid()})
    started = time.monotonic()
    if sampler:
        with sampler:
            result = align()
    else:
        result = align()
    wall = time.monotonic() - started
    theirs = reports[0] if len(reports) == 1 else None
    agreed = theirs is not None and theirs.ids == result.ids and theirs.content_hash == result.content_hash
    peak = round(sampler.peak["bench_process"], 1) if sampler else None
    return {"seconds": round(result.seconds, 3), "wall_seconds": round(wall, 3), "found": list(result.ids or ()),
            "reported_size": result.size, "platform_agreed": agreed,
            # both parties, the generated IDs and this benchmark, in one process tree
            "peak_rss_mb": peak, "peak_rss_scope": "whole benchmark process (both parties)",
            "workers_per_party": workers}


def x25519_per_s(kernel: Any, count: int = 40_000) -> float:
    """Bare X25519 scalar multiplications per second on one core of this machine, with ``kernel``."""
    import secrets

    points = secrets.token_bytes(32 * count)
    secret = secrets.token_bytes(32)
    started = time.perf_counter()
    kernel.multiply(secret, points)
    return count / (time.perf_counter() - started)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from protocols.psi import normalise_id

    bank, platform, exact = make_ids(args.n, args.overlap, args.seed)
    expected = {normalise_id(x) for x in exact}
    console.print(f"PSI ({args.protocol}) {args.n:,} x {args.n:,}, overlap {args.overlap:.0%} ({len(exact):,} shared), "
                  f"transport {args.transport}, {args.workers} worker(s) per party, {os.cpu_count()} CPU(s)")
    if args.transport == "grpc":
        with tempfile.TemporaryDirectory(prefix="bench-psi-") as tmp:
            ours = ours_grpc(bank, platform, args.workers, Path(tmp), args.protocol)
    else:
        ours = ours_local(bank, platform, args.workers, args.protocol)
    found = ours.pop("found")
    found_set = {normalise_id(x) for x in found}
    problems = []
    if len(found_set) != len(found):
        problems.append("the stored alignment holds duplicate IDs")
    if found_set != expected:
        problems.append(f"intersection differs: {len(found_set - expected):,} extra, "
                        f"{len(expected - found_set):,} missing")
    if ours.get("reported_size") != len(expected):
        problems.append(f"reported size {ours.get('reported_size')} != {len(expected)}")
    if ours.get("platform_agreed") is False:
        problems.append("the platform's result differs from the bank's")
    correct = not problems
    ours.update(transport=args.transport, protocol=args.protocol,
                ids_per_s_per_side=round(args.n / max(ours["seconds"], 1e-9), 1))
    if args.protocol == "ecdh":
        # The floor: 2(N + M) scalar multiplications in all, shared by the machine's cores, nothing else.
        from protocols.psi.x25519 import CryptographyKernel, describe, kernel

        ours["x25519_kernel"] = describe()
        bare = x25519_per_s(kernel())
        ours["x25519_per_s_one_core"] = round(bare)
        ours["x25519_per_s_one_core_cryptography"] = round(x25519_per_s(CryptographyKernel(), 10_000))
        ours["floor_seconds"] = round(4 * args.n / (bare * min(os.cpu_count() or 1, 2 * args.workers)), 1)

    names = [] if args.no_peer else [p for p in args.peers.split(",") if p]
    peers = run_peers(names, bank, platform, exact, peer_python=args.peer_python, sampler=_sampler,
                      say=console.print)
    for name in names:
        if peers.get(name):
            peers[name]["ids_per_s_per_side"] = round(args.n / max(peers[name]["seconds"], 1e-9), 1)
            if not peers[name]["correct"]:
                problems.append(f"{name} returned a different intersection")

    correct = not problems

    def theirs_over_ours(name: str) -> float | None:
        return ratio((peers.get(name) or {}).get("seconds"), ours["seconds"])

    result: dict[str, Any] = {
        "n": args.n, "protocol": args.protocol, "overlap": args.overlap, "intersection_size": len(exact), "correct": correct,
        "problems": problems, "ours": ours, "peers": peers,
        "ratios": {"vs_openmined": theirs_over_ours("openmined"),
                   "vs_secretflow_ecdh": theirs_over_ours("secretflow-ecdh"),
                   "vs_secretflow_rr22": theirs_over_ours("secretflow-rr22")},
        "machine": {"cpus": os.cpu_count(), "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
    }

    rss = ours.get("peak_rss_mb_per_node") or {}
    print_table(f"PSI {args.n:,} x {args.n:,} ({len(exact):,} shared)", [
        (f"ours {args.transport}", fmt(ours["seconds"]), fmt(ours.get("wall_seconds")),
         fmt(ours["ids_per_s_per_side"]), ", ".join(f"{k[0]} {fmt(v)}" for k, v in rss.items())
         or fmt(ours.get("peak_rss_mb"))),
        *[(name, fmt((peers.get(name) or {}).get("seconds")), fmt((peers.get(name) or {}).get("wall_seconds")),
           fmt((peers.get(name) or {}).get("ids_per_s_per_side")),
           ", ".join(f"{k[0]} {fmt(v)}" for k, v in ((peers.get(name) or {}).get("peak_rss_mb_per_party") or {}).items())
           or "-") for name in names],
    ], ("", "seconds", "wall s", "IDs/s per side", "peak RSS MB"))
    verdict = "[green]correct[/]" if correct else f"[red]NOT correct: {'; '.join(problems)}[/]"
    ratios = ", ".join(f"{k} {fmt(v)}x" for k, v in result["ratios"].items())
    console.print(f"their seconds / ours: {ratios}; intersection {verdict}")
    if args.protocol == "ecdh":
        console.print(f"X25519 kernel {ours['x25519_kernel']['name']}: {fmt(ours['x25519_per_s_one_core'])}/s per "
                      f"core, so {fmt(ours['floor_seconds'])} s of scalar multiplications on this machine's cores")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.psi", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="IDs per side")
    parser.add_argument("--overlap", type=float, default=0.5, help="share of each side's IDs in the intersection")
    parser.add_argument("--transport", choices=["grpc", "local"], default="grpc")
    parser.add_argument("--protocol", choices=["ecdh", "ot"], default="ecdh",
                        help="our PSI protocol: ECDH over X25519, or KKRT16 from OT extension (default ecdh)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes per party")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peers", default=",".join(PEERS),
                        help=f"comma-separated, from {', '.join(PEERS)} (default: all)")
    parser.add_argument("--peer-python", help="an interpreter with the peers' packages (spu, openmined-psi), which "
                        "pin numpy and protobuf below this project's; default: this one")
    parser.add_argument("--no-peer", action="store_true", help="run no peer (same as --peers '')")
    parser.add_argument("--json", help="write the figures here (atomically)")
    add_incremental_arguments(parser)
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    if not 0.0 <= args.overlap <= 1.0:
        parser.error("--overlap must be between 0 and 1")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    unknown = set(p for p in args.peers.split(",") if p) - set(PEERS)
    if unknown:
        parser.error(f"--peers: unknown {', '.join(sorted(unknown))}; choose from {', '.join(PEERS)}")
    if args.unbalanced:
        args.platform = args.platform or 100 * args.bank
        result = run_unbalanced(args)
        write_json(args.json, result)
        return 0 if result["correct"] else 1
    if args.incremental:
        if not 0.0 <= args.new_share <= 1.0 or not 0.0 <= args.removed_share < 1.0 or (args.platform or 1) < 1:
            parser.error("--new-share and --removed-share are shares (0 to 1), --platform a positive count")
        result = run_incremental(args)
        write_json(args.json, result)
        return 0 if result["correct"] else 1
    result = run(args)
    write_json(args.json, result)
    return 0 if result["correct"] else 1


if __name__ == "__main__":
    sys.exit(main())
