"""`make demo`: the main job on built-in simulated data.

Generates a bank's and a platform's data (with hidden traits behind both), makes certificates, starts
both nodes as separate processes on loopback with mutual TLS, runs PSI, trains one model per tag in one
job, scores customers online and in batch, prints per-tag AUC uplift over the bank-only model, writes
demo-out/report.json, and stops both nodes cleanly.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from simulations import run


def main(argv: list[str] | None = None) -> int:
    out = Path("demo-out")
    if out.exists():
        shutil.rmtree(out)  # a fresh demo each time: new certificates, new state
    return run.main(["--out", str(out), "--epochs", "8", "--batch-size", "256", *(argv or [])])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
