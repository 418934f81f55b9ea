"""Scoring one half of a model trained on bins, in process: what online and batch scoring spend on the
platform's (or the bank's) binned features, without the network.

    python -m benchmarks.binned_scoring --json bench-out/binned_scoring.json

A half with ``--features`` raw columns (10 quantile bins each, a tenth of them with missing values, so 10-11
bins each) and ``--tags`` tags; per case (rows x features: ``1x300`` online, ``10000x300`` a batch chunk) the
median and p99 of ``partial_scores`` in microseconds, and, for reference, the same scores by the one-hot
formula (one-hot rows, standardised, times the weights: what scoring computed before the per-bin terms) and
the largest difference between the two. Only public model APIs are timed, so running this file against an
older tree (``PYTHONPATH=<tree> python benchmarks/binned_scoring.py``) times that tree's scoring: before and
after on the same machine.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from protocols.binning import BinningModel
from protocols.party_data import Schema
from protocols.scoring import standardise
from protocols.vfl_lr import PlatformModel
from protocols.vfl_lr.state import Scaler

CASES = ((1, 300), (10_000, 300))


def half(features: int, tags: int, train_rows: int = 4000, seed: int = 0) -> tuple[PlatformModel, np.ndarray]:
    """A binned platform half with random weights, and rows to score (raw, as the node holds them)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(train_rows + 10_000, features)) * rng.uniform(0.5, 3, features)
    X[:, ::10][rng.random((len(X), len(range(0, features, 10)))) < 0.05] = np.nan
    names = [f"f{i}" for i in range(features)]
    binning = BinningModel.fit(X[:train_rows], names)
    scaler = Scaler.fit(binning.one_hot(binning.transform(X[:train_rows])), 5.0)
    schema = Schema("id", tuple(names), ("float64",) * features)
    W = rng.normal(size=(len(scaler.mean), tags))
    return PlatformModel("bench", [f"t{t}" for t in range(tags)], W, scaler, schema, {}, binning=binning), X[train_rows:]


def one_hot_scores(model: PlatformModel, X: np.ndarray) -> np.ndarray:
    assert model.binning is not None
    s = model.scaler
    return standardise(model.binning.one_hot(model.binning.transform(X)), s.mean, s.std, s.clip) @ model.weights


def timed(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    fn()  # warm: caches built, code paths loaded
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    us = np.asarray(times) * 1e6
    return {"median_us": round(float(np.median(us)), 1), "p99_us": round(float(np.percentile(us, 99)), 1)}


def case(rows: int, features: int, tags: int, repeats: int) -> dict[str, Any]:
    model, X = half(features, tags)
    block = X[:rows]
    out: dict[str, Any] = {"bins": int(model.weights.shape[0]),
                           "partial_scores": timed(lambda: model.partial_scores(block), repeats),
                           "one_hot_formula": timed(lambda: one_hot_scores(model, block), repeats),
                           "max_abs_difference": float(np.max(np.abs(model.partial_scores(block)
                                                                     - one_hot_scores(model, block))))}
    out["speedup_over_one_hot"] = round(out["one_hot_formula"]["median_us"] / out["partial_scores"]["median_us"], 2)
    return out


def run(tags: int = 8, repeats: int = 200) -> dict[str, Any]:
    """Every case of :data:`CASES` (the large one with a fortieth of the repeats)."""
    out: dict[str, Any] = {"tags": tags}
    for rows, features in CASES:
        out[f"{rows}x{features}"] = case(rows, features, tags, repeats if rows == 1 else max(3, repeats // 40))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--tags", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=200, help="timed calls of the one-row case")
    args = parser.parse_args(argv)
    result = run(args.tags, args.repeats)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
