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
    # 20k bank customers and batches of 2,400 rows (about 840 labelled per tag) meet the label-privacy floor
    # of 10 x the platform's features x epochs, so the platform's gradients need no DP noise
    # (docs/protocol.md, "What each party learns"); smaller data would train under label DP instead.
    return run.main(["--out", str(out), "--n-bank", "20000", "--n-platform", "30000", "--epochs", "2",
                     "--batch-size", "2400", *(argv or [])])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
