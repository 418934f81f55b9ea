"""Incremental alignment: a re-alignment after a few new (and removed) customers on each side vs a full one.

    python -m benchmarks.psi --incremental --n N [--platform M] [--new-share 0.01] [--removed-share 0.0]
                             [--transport grpc|local] [--workers 2] [--json PATH]

The bank holds N phone-number IDs, the platform M (default N; 10-100x N is the unbalanced case), with
``overlap`` of the bank's IDs on the platform. ``grpc`` (the default): both nodes as processes with mutual
TLS, an incremental align job, then both nodes restarted on the changed files and the job again; ``seconds``
is the alignment's time as the bank node measured it (as for ``ours.seconds``: both nodes loading their
state, the protocol, the platform storing its state; not the bank's own store after it), ``wall_seconds``
submit to done as the client saw it (polling every 0.2 s), ``bytes`` the points and slots sent. ``local``: both parties in this process over
:class:`protocols.channel.LocalPeer` (one GIL: each side's per-ID work no longer overlaps the other's),
their stores in a temporary directory; ``bytes`` is every message payload both ways.

1. ``full``: the first alignment of a key epoch (every ID blinded and sent), including both nodes storing
   their state.
2. The files change: each side gains ``new_share`` of its size in new IDs (half of the bank's new IDs are
   among the platform's new ones, so the intersection grows on both sides' account) and loses
   ``removed_share`` of its IDs.
3. ``incremental``: the re-alignment, including both nodes loading their stored state (checked against its
   hashes) and storing the delta.

Each phase reports ``seconds`` (both parties and the stores, end to end), ``bytes`` (everything both ways:
message payloads), ``points_sent`` and ``state_bytes_written``; ``correct`` compares the intersection with
the exact one. ``ratios`` are incremental / full (the issue's goal: ``seconds`` <= 0.05).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import console, fmt, print_table


def make_sets(n: int, m: int, overlap: float, new_share: float, removed_share: float,
              seed: int) -> tuple[list[str], list[str], list[str], list[str]]:
    """Bank and platform IDs before and after the change, each in random order."""
    rng = np.random.default_rng(seed)
    new_bank, new_platform = int(round(n * new_share)), int(round(m * new_share))
    shared = min(int(round(n * overlap)), m)
    total = n + m - shared + new_bank + new_platform
    ids = [f"+44{v:010d}" for v in rng.choice(10**10, size=total, replace=False).tolist()]
    bank = ids[:n]
    platform = ids[:shared] + ids[n:n + m - shared]
    fresh = ids[n + m - shared:]
    platform_new = fresh[:new_platform]
    bank_new = platform_new[:new_bank // 2] + fresh[new_platform:new_platform + new_bank - new_bank // 2]
    gone_bank, gone_platform = int(round(n * removed_share)), int(round(m * removed_share))
    bank_after = bank[gone_bank:] + bank_new
    platform_after = platform[gone_platform:] + platform_new
    shuffle = lambda xs: [xs[i] for i in rng.permutation(len(xs))]  # noqa: E731
    return shuffle(bank), shuffle(platform), shuffle(bank_after), shuffle(platform_after)


class _Pair:
    """Both nodes' side of the pair: the protocol, and each node's state store in its own state directory."""

    def __init__(self, root: Path, workers: int) -> None:
        from party_common.storage.psi_pairs import PairStateStore

        self.bank_store = PairStateStore(root / "bank" / "psi_pairs")
        self.platform_store = PairStateStore(root / "platform" / "psi_pairs")
        self.workers = workers
        self.runs = 0

    def align(self, bank: np.ndarray, platform: np.ndarray) -> dict[str, Any]:
        from protocols.channel import LocalPeer, Message, message_size
        from protocols.psi.incremental import (
            IncrementalResult,
            PlatformIncrementalHandler,
            run_bank_incremental_psi,
        )

        reports: list[IncrementalResult] = []
        started = time.monotonic()
        bank_state, platform_state = self.bank_store.load("platform"), self.platform_store.load("bank")
        loaded = time.monotonic()

        def factory(kind: str, job_id: str, params: Message) -> PlatformIncrementalHandler:
            return PlatformIncrementalHandler(job_id, params, platform, state=platform_state,
                                              on_result=reports.append, compute=self.workers)

        channels = []

        class Peer:
            def open(self, kind: str, job_id: str, params: Message):  # noqa: ANN202
                channel = LocalPeer(factory).open(kind, job_id, params)
                channel.keep_transcript = True
                channels.append(channel)
                return channel

        self.runs += 1
        result = run_bank_incremental_psi(Peer(), f"bench-inc-{self.runs}", bank, state=bank_state,
                                          compute=self.workers)
        ran = time.monotonic()
        theirs = reports[0]
        written = self.bank_store.save("platform", result.state, result.base)  # type: ignore[arg-type]
        written += self.platform_store.save("bank", theirs.state, theirs.base)  # type: ignore[arg-type]
        ended = time.monotonic()
        wire = sum(message_size(step[1]) + message_size(step[2]) for step in channels[0].transcript)
        return {"seconds": round(ended - started, 3), "load_seconds": round(loaded - started, 3),
                "protocol_seconds": round(ran - loaded, 3), "store_seconds": round(ended - ran, 3),
                "bytes": wire, "points_sent": result.points_sent + theirs.points_sent,
                "state_bytes_written": written, "resumed": result.resumed,
                "bank_new": result.own_added, "bank_removed": result.own_removed,
                "platform_new": result.peer_added, "platform_removed": result.peer_removed,
                "ids": result.ids, "agreed": theirs.ids == result.ids and theirs.content_hash == result.content_hash}


def _cluster_runs(runs: list[tuple[np.ndarray, np.ndarray, dict[str, Any]]], workers: int,
                  workdir: Path) -> list[dict[str, Any]]:
    """Both nodes as processes (gRPC, mutual TLS), their state kept in their state directories across runs:
    for each (bank IDs, platform IDs, align parameters), the nodes start on those files, run the align job
    (peak memory per node sampled) and stop."""
    from benchmarks.psi import BANK_TAG, _sampler, _write_csv
    from simulations.cluster import LocalCluster

    paths = {name: workdir / f"{name}.csv" for name in ("bank", "platform")}
    cluster = LocalCluster(workdir / "cluster", bank_data=paths["bank"], bank_id_column="id",
                           platform_data=paths["platform"], platform_id_column="id", bank_tag_columns=[BANK_TAG],
                           workers=workers)
    out = []
    for bank, platform, params in runs:
        _write_csv(paths["bank"], bank.tolist(), tag=True)
        _write_csv(paths["platform"], platform.tolist())
        with cluster:
            client = cluster.bank_client()
            sampler = _sampler(cluster.pids())
            started = time.monotonic()
            if sampler:
                with sampler:
                    job = client.run("align", {"mode": "both", **params}, timeout_s=7200)
            else:
                job = client.run("align", {"mode": "both", **params}, timeout_s=7200)
            wall = time.monotonic() - started
            found = list(cluster.bank_alignment(job["job_id"]).ids or ())
        out.append({"wall": round(wall, 3), "result": job["result"], "ids": found,
                    "peak_rss_mb": {k: round(v, 1) for k, v in sampler.peak.items()} if sampler else {}})
    return out


def _grpc_phases(bank: np.ndarray, platform: np.ndarray, bank_after: np.ndarray, platform_after: np.ndarray,
                 workers: int, workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """An incremental align job on the first files, then on the changed files (the nodes restarted)."""
    runs = _cluster_runs([(bank, platform, {"incremental": True}), (bank_after, platform_after, {"incremental": True})],
                         workers, workdir)
    phases = []
    for run in runs:
        r = run["result"]
        phases.append({"seconds": r["seconds"], "wall_seconds": run["wall"], "resumed": r["resumed"],
                       "points_sent": 2 * (r["own_new"] + r["peer_new"]),
                       "bank_new": r["own_new"], "bank_removed": r["own_removed"], "platform_new": r["peer_new"],
                       "platform_removed": r["peer_removed"], "state_bytes_written": r["state_bytes_written"],
                       "seconds_saved_reported": r.get("seconds_saved"), "peak_rss_mb_per_node": run["peak_rss_mb"],
                       "bank_phase_seconds": r.get("phase_seconds"),
                       "ids": run["ids"], "agreed": True,
                       "bytes": 32 * 2 * (r["own_new"] + r["peer_new"]) + 4 * (r["own_removed"] + r["peer_removed"])})
    return phases[0], phases[1]


def run_unbalanced(args: argparse.Namespace) -> dict[str, Any]:
    """A bank of ``--bank`` IDs against a platform of ``--platform``: the platform's one-off pre-computation
    (the incremental run that starts the key epoch, blinding its whole set), then a re-alignment after
    ``--new-share`` new IDs per side, against a plain ``--bank`` x ``--bank`` alignment (the default protocol)."""
    from protocols.party_data import as_ids

    n, m = args.bank, args.platform
    bank, platform, bank_after, platform_after = (as_ids(s) for s in make_sets(
        n, m, args.overlap, args.new_share, args.removed_share, args.seed))
    small_platform = as_ids(make_sets(n, n, args.overlap, 0.0, 0.0, args.seed + 1)[1])
    small_bank = as_ids(make_sets(n, n, args.overlap, 0.0, 0.0, args.seed + 1)[0])
    console.print(f"unbalanced PSI: bank {n:,}, platform {m:,}; reference {n:,} x {n:,}; "
                  f"+{args.new_share:.1%} new per side before the re-alignment")
    with tempfile.TemporaryDirectory(prefix="bench-psi-unbal-") as tmp:
        pre, again = _cluster_runs([(bank, platform, {"incremental": True}),
                                    (bank_after, platform_after, {"incremental": True})], args.workers, Path(tmp) / "u")
        (reference,) = _cluster_runs([(small_bank, small_platform, {})], args.workers, Path(tmp) / "r")
    expected = set(bank_after.tolist()) & set(platform_after.tolist())
    bank_figures = {"seconds": again["result"]["seconds"], "wall_seconds": again["wall"],
                    "peak_rss_mb": again["peak_rss_mb"].get("bank")}
    ref = {"seconds": reference["result"]["seconds"], "peak_rss_mb": reference["peak_rss_mb"].get("bank"),
           "psi_protocol": reference["result"].get("psi_protocol")}
    result: dict[str, Any] = {
        "bank_size": n, "platform_size": m, "new_share": args.new_share,
        # The run that starts the key epoch: the platform blinds its whole set (and the bank's) once.
        "platform": {"precompute_seconds": pre["result"]["seconds"],
                     "precompute_wall_seconds": pre["wall"], "peak_rss_mb": again["peak_rss_mb"].get("platform")},
        "bank": bank_figures, "reference": ref,
        "ratios": {"bank_seconds_vs_reference": round(bank_figures["seconds"] / ref["seconds"], 3)
                   if ref["seconds"] else None,
                   "bank_peak_rss_vs_reference": round(bank_figures["peak_rss_mb"] / ref["peak_rss_mb"], 3)
                   if bank_figures["peak_rss_mb"] and ref["peak_rss_mb"] else None},
        "correct": set(again["ids"]) == expected and again["result"]["resumed"],
        "machine": {"cpus": os.cpu_count(), "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
    }
    console.print(f"platform pre-computation {fmt(result['platform']['precompute_seconds'])} s; bank re-alignment "
                  f"{fmt(bank_figures['seconds'])} s, peak {fmt(bank_figures['peak_rss_mb'])} MB; reference "
                  f"{n:,} x {n:,}: {fmt(ref['seconds'])} s, peak {fmt(ref['peak_rss_mb'])} MB; "
                  f"correct {result['correct']}")
    return result


def run_incremental(args: argparse.Namespace) -> dict[str, Any]:
    m = args.platform or args.n
    from protocols.party_data import as_ids

    sets = make_sets(args.n, m, args.overlap, args.new_share, args.removed_share, args.seed)
    bank, platform, bank_after, platform_after = (as_ids(s) for s in sets)  # the nodes' form of IDs
    console.print(f"incremental PSI: bank {args.n:,}, platform {m:,}, +{args.new_share:.1%} new and "
                  f"-{args.removed_share:.1%} removed per side, {args.workers} worker(s) per party, "
                  f"{os.cpu_count()} CPU(s)")
    with tempfile.TemporaryDirectory(prefix="bench-psi-inc-") as tmp:
        if args.transport == "grpc":
            full, incremental = _grpc_phases(bank, platform, bank_after, platform_after, args.workers, Path(tmp))
        else:
            pair = _Pair(Path(tmp), args.workers)
            full = pair.align(bank, platform)
            incremental = pair.align(bank_after, platform_after)
    for phase, (b, p) in (("full", (bank, platform)), ("incremental", (bank_after, platform_after))):
        figures = full if phase == "full" else incremental
        found = figures.pop("ids") or []
        figures["correct"] = (bool(figures.pop("agreed")) and set(found) == set(b.tolist()) & set(p.tolist())
                              and len(found) == len(set(found)))
    result: dict[str, Any] = {
        "n": args.n, "bank": args.n, "platform": m, "overlap": args.overlap, "new_share": args.new_share,
        "removed_share": args.removed_share, "workers": args.workers, "full": full, "incremental": incremental,
        "correct": full["correct"] and incremental["correct"] and incremental["resumed"],
        "ratios": {key: round(incremental[key] / full[key], 4) if full[key] else None
                   for key in ("seconds", "bytes", "points_sent", "state_bytes_written")},
        "machine": {"cpus": os.cpu_count(), "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
    }
    print_table(f"incremental PSI, bank {args.n:,} x platform {m:,}", [
        (phase, fmt(f["seconds"]), fmt(f.get("load_seconds")), fmt(f.get("protocol_seconds")),
         fmt(f.get("store_seconds")), fmt(f["bytes"] / 2**20), fmt(f["points_sent"]), "yes" if f["correct"] else "NO")
        for phase, f in (("full", full), ("incremental", incremental))
    ], ("", "seconds", "load s", "protocol s", "store s", "MiB sent", "points", "correct"))
    console.print(f"incremental / full: {', '.join(f'{k} {fmt(v)}' for k, v in result['ratios'].items())}")
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--incremental", action="store_true",
                        help="measure a re-alignment after new and removed IDs against a full one (--transport: "
                        "grpc by default, or local)")
    parser.add_argument("--unbalanced", action="store_true", help="a --bank bank against a --platform platform: the "
                        "platform's pre-computation, the bank's re-alignment, and a --bank x --bank reference (gRPC)")
    parser.add_argument("--bank", type=int, default=100_000, help="--unbalanced: the bank's IDs")
    parser.add_argument("--platform", type=int, help="--incremental: the platform's IDs (default --n); "
                        "--unbalanced: the platform's IDs (default 100x --bank)")
    parser.add_argument("--new-share", type=float, default=0.01, help="--incremental: new IDs per side, a share")
    parser.add_argument("--removed-share", type=float, default=0.0, help="--incremental: removed IDs per side")


__all__ = ["add_arguments", "make_sets", "run_incremental", "run_unbalanced"]
