"""`make bench`: every benchmark, each running our code and the peer libraries side by side in one run.

Results go to bench-out/*.json; each benchmark prints its own table of ratios. Pass --full for the
large sizes the issues set as goals (PSI at 1M, LR at 100k rows); the default is a shorter pass that
still compares with every peer.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path


def plan(full: bool, out: Path, peer_python: str | None = None) -> list[tuple[str, list[str]]]:
    j = lambda name: ["--json", str(out / f"{name}.json")]  # noqa: E731
    peers = ["--peer-python", peer_python] if peer_python else []
    runs = [
        ("benchmarks.paillier", ([] if full else ["--quick"]) + j("paillier")),
        ("benchmarks.psi", ["--n", "1000000" if full else "100000", "--transport", "grpc"] + peers + j("psi")),
        ("benchmarks.vfl_lr", ["--dataset", "breast"] + j("vfl_lr_breast")),
        ("benchmarks.vfl_lr", ["--dataset", "default_credit"] + j("vfl_lr_default_credit")),
        ("benchmarks.privacy", ([] if full else ["--quick"]) + j("privacy")),
        ("benchmarks.quality", j("quality")),
        ("benchmarks.fuzz", ["--messages", "10000" if full else "2000"] + j("fuzz")),
        ("benchmarks.memory", ["--rows", "1000000" if full else "200000"] + j("memory")),
        ("benchmarks.scale", ([] if full else ["--psi-n", "100000", "--score-rows", "200000", "--matvec-rows",
                                               "5000"]) + j("scale")),
    ]
    speed = ["--rows", "100000", "--bank-features", "30", "--platform-features", "300", "--epochs", "1"]
    if full:
        runs += [("benchmarks.vfl_lr", speed + ["--tags", "1"] + j("vfl_lr_speed_1tag")),
                 ("benchmarks.vfl_lr", speed + ["--tags", "8"] + j("vfl_lr_speed_8tags"))]
    else:
        runs += [("benchmarks.vfl_lr", speed + ["--quick", "--tags", "1"] + j("vfl_lr_speed_1tag_quick")),
                 ("benchmarks.vfl_lr", speed + ["--quick", "--tags", "8"] + j("vfl_lr_speed_8tags_quick"))]
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="the goal sizes (takes much longer)")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--peer-python", help="an interpreter with the PSI peers' packages (spu, openmined-psi), "
                        "passed to benchmarks.psi; `make bench` makes one in .venv-peers")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    failed = []
    for module, module_args in plan(args.full, args.out, args.peer_python):
        print(f"\n=== python -m {module} {' '.join(module_args)}", flush=True)
        started = time.monotonic()
        try:
            rc = importlib.import_module(module).main(module_args)
        except Exception as err:  # one broken benchmark must not hide the others' figures
            print(f"{module} failed: {type(err).__name__}: {err}", file=sys.stderr)
            rc = 1
        print(f"=== {module}: {'ok' if not rc else 'FAILED'} in {time.monotonic() - started:.0f} s", flush=True)
        if rc:
            failed.append(module)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
