"""How fast the bank's console answers its two heaviest pages: the jobs list with 1,000 jobs and a training
report with 20 tags (goal: 300 ms each on this machine).

    python -m benchmarks.console --json PATH [--repeats 10]

It seeds a bank node's real stores (SQLite job store, report documents) in a temporary state directory with
1,000 jobs (one in five an alignment, the rest trainings whose results are a real report's: metrics,
intervals, history, calibration), the newest a 20-tag training with 2,000 test rows per tag; serves them with
the node's control API (``ControlServicer``, gRPC on loopback); runs the console on 127.0.0.1 (uvicorn, as
`bank-node console` does) and times complete HTTP responses, from request to the last byte, over a socket.
``jobs_page_ms`` and ``report_page_ms`` are medians of ``--repeats`` loads after one untimed load; the first
loads and one tag's figure (drawn on request, then cached) are reported beside them.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from benchmarks.common import print_table, write_json
from party_bank.client import BankClient
from party_bank.console import build_app
from party_bank.control import ControlServicer
from party_bank.node import BankNode
from party_common.console import COOKIE, bind
from party_common.jobs.train import PREDICTION_KEYS
from party_common.storage import open_node_stores
from party_common.transport import bind as bind_grpc
from party_common.transport import make_server
from proto import fedprofile_v1_pb2_grpc as pb_grpc
from protocols.evaluation_metrics import tag_metrics
from protocols.uncertainty import summarise

JOBS, REPORT_TAGS, TEST_ROWS, EPOCHS = 1000, 20, 2000, 10
GOAL_MS = 300.0


def scored(n: int, strength: float, rng: np.random.Generator, rate: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    y = (rng.random(n) < rate).astype(np.float64)
    z = strength * (y - rate) + rng.normal(size=n) + np.log(rate / (1 - rate))
    return 1 / (1 + np.exp(-z)), y


def training_report(tags: list[str], test_rows: int, seed: int) -> dict[str, Any]:
    """A report shaped as the trainer writes it (metrics per model, served model, history, predictions)."""
    rng = np.random.default_rng(seed)
    metrics, preds = {}, {}
    for tag in tags:
        pj, yj = scored(test_rows, 2.0, rng)
        pb, yb = scored(test_rows, 1.4, rng)
        metrics[tag] = {"joint": tag_metrics(yj, pj), "bank_only": {**tag_metrics(yb, pb), "best_epoch": 7},
                        "best_epoch": 8, "served": {"model": "joint", "validation_auc": {"joint": 0.74,
                                                                                           "bank_only": 0.69},
                                                    "reason": "the joint model's validation AUC is above the "
                                                              "bank-only model's"}}
        preds[tag] = {"joint": {"p": pj.tolist(), "y": yj.astype(int).tolist()},
                      "bank_only": {"p": pb.tolist(), "y": yb.astype(int).tolist()}}
    rows = test_rows * 5
    return {"protocol": "2.0", "metrics": metrics, "tags": tags, "rows": rows, "alignment_job_id": "align-seed",
            "split": {"train": rows - 2 * test_rows, "validation": test_rows, "test": test_rows},
            "epochs_run": EPOCHS, "seconds_total": 600.0, "seconds_online": 420.0, "seconds_ahead_of_time": 180.0,
            "history": [{"epoch": e, "validation_auc": {t: 0.6 + 0.012 * e + 0.001 * i for i, t in enumerate(tags)}}
                        for e in range(1, EPOCHS + 1)],
            "params": {"epochs": EPOCHS, "learning_rate": 0.05, "l2": 0.01, "batch_size": 2048, "key_bits": 2048},
            "label_privacy": {"mode": "floor", "floor": 3000},
            "encoding": {"label_mask": "sent to the platform",
                         "evaluation": "shuffled multiset of (joint score, label) per tag, under the bank's key"},
            "scoring_disclosure": {"projections_per_customer": len(tags)}, "test_predictions": preds}


def seed_stores(state_dir: Path) -> tuple[Any, str]:
    """1,000 jobs in a real job store, the newest a 20-tag training whose report is stored; its job ID."""
    stores = open_node_stores(state_dir)
    small = training_report([f"tag_{i}" for i in range(3)], 500, seed=1)
    small["summary"] = summarise(small, resamples=200)
    small_result = {k: v for k, v in small.items() if k not in PREDICTION_KEYS}
    align_result = {"intersection_size": 812_345, "mode": "both", "content_hash": "ab" * 32,
                    "memory": {"node_peak_mb": 812.0, "workers_peak_mb": 1400.0}}
    for i in range(JOBS - 1):
        kind = "align" if i % 5 == 0 else "train"
        job_id = f"{kind}-20250101-{i:06d}-{i:06x}"
        params = {"mode": "both"} if kind == "align" else {"tags": small["tags"], "alignment_job_id": "align-seed",
                                                           "train": small["params"]}
        stores.jobs.create(job_id, kind, f"job {i}", params)
        stores.jobs.mark_running(job_id)
        if i % 50 == 7:
            stores.jobs.fail(job_id, "open train session: the platform refused: tag_3 is not in [policy] allowed_tags")
        else:
            stores.jobs.finish(job_id, align_result if kind == "align" else small_result)
    report = training_report([f"tag_{i:02d}" for i in range(REPORT_TAGS)], TEST_ROWS, seed=2)
    report["summary"] = summarise(report)
    job_id = "train-20250102-000000-abcdef"
    stores.jobs.create(job_id, "train", "twenty tags", {"tags": report["tags"], "alignment_job_id": "align-seed",
                                                        "train": report["params"]})
    stores.jobs.mark_running(job_id)
    stores.reports.save(job_id, report)
    stores.jobs.finish(job_id, {k: v for k, v in report.items() if k not in PREDICTION_KEYS})
    return stores, job_id


class SeededNode:
    """What the control API needs of a bank node to answer the console's calls, over the seeded stores."""

    report_document = BankNode.report_document
    report_html = BankNode.report_html

    def __init__(self, stores: Any) -> None:
        self.stores = stores
        self.segments = None
        self.config = SimpleNamespace(name="bank", peer_address="127.0.0.1:1")


def get(port: int, path: str, token: str) -> tuple[float, int, int]:
    """One complete response: (milliseconds to its last byte, status, bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    started = time.perf_counter()
    conn.request("GET", path, headers={"Cookie": f"{COOKIE}={token}"})
    response = conn.getresponse()
    body = response.read()
    elapsed = (time.perf_counter() - started) * 1000
    conn.close()
    return elapsed, response.status, len(body)


def run(repeats: int) -> dict[str, Any]:
    import uvicorn

    with tempfile.TemporaryDirectory() as tmp:
        seeded = time.perf_counter()
        stores, report_job = seed_stores(Path(tmp) / "bank")
        seed_s = time.perf_counter() - seeded
        server = make_server(workers=4)
        pb_grpc.add_BankControlServicer_to_server(ControlServicer(SeededNode(stores)), server)  # type: ignore[arg-type]
        grpc_port = bind_grpc(server, "127.0.0.1:0", None)
        server.start()
        client = BankClient(f"127.0.0.1:{grpc_port}", cert=None, key=None, ca=None, insecure=True)
        token = "benchmark-token"
        app = build_app(client, token=token, node_name="bank", who="benchmark")
        sock = bind(0)
        port = sock.getsockname()[1]
        web = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        thread = threading.Thread(target=web.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not web.started:
            time.sleep(0.05)
        try:
            out: dict[str, Any] = {"jobs": JOBS, "report_tags": REPORT_TAGS, "test_rows_per_tag": TEST_ROWS,
                                   "repeats": repeats, "goal_ms": GOAL_MS, "seed_s": round(seed_s, 1)}
            for key, path in (("jobs_page", "/jobs?limit=1000"), ("report_page", f"/jobs/{report_job}/report")):
                first, status, size = get(port, path, token)
                assert status == 200, f"{path}: HTTP {status}"
                times = [get(port, path, token)[0] for _ in range(repeats)]
                out[f"{key}_ms"] = round(statistics.median(times), 1)
                out[f"{key}_first_ms"] = round(first, 1)
                out[f"{key}_max_ms"] = round(max(times), 1)
                out[f"{key}_bytes"] = size
            figure, status, size = get(port, f"/jobs/{report_job}/figures/tag_00.png", token)
            assert status == 200, f"figure: HTTP {status}"
            out["figure_first_ms"], out["figure_bytes"] = round(figure, 1), size
            out["figure_cached_ms"] = round(get(port, f"/jobs/{report_job}/figures/tag_00.png", token)[0], 1)
            out["meets_goal"] = out["jobs_page_ms"] <= GOAL_MS and out["report_page_ms"] <= GOAL_MS
            return out
        finally:
            web.should_exit = True
            thread.join(timeout=10)
            client.close()
            server.stop(None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--repeats", type=int, default=10, help="timed loads of each page (median reported)")
    args = parser.parse_args(argv)
    result = run(args.repeats)
    print_table("bank console page loads (ms, full HTTP response)", [
        ("jobs list, 1,000 jobs", f"{result['jobs_page_ms']:.0f}", f"{result['jobs_page_first_ms']:.0f}",
         f"{result['jobs_page_bytes']:,}"),
        ("report, 20 tags", f"{result['report_page_ms']:.0f}", f"{result['report_page_first_ms']:.0f}",
         f"{result['report_page_bytes']:,}"),
        ("one tag's figure (drawn, then cached)", f"{result['figure_cached_ms']:.0f}",
         f"{result['figure_first_ms']:.0f}", f"{result['figure_bytes']:,}"),
    ], ("page", "median", "first load", "bytes"))
    write_json(args.json, result)
    return 0 if result["meets_goal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
