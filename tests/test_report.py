"""The training report for people: bootstrap intervals, calibration, warnings, the HTML page and its RPC."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from party_bank import cli
from party_bank.client import BankClient
from party_bank.control import ControlServicer
from party_bank.node import BankNode
from party_bank.report_html import render
from party_bank.segments import SegmentService
from party_common.storage import memory_node_stores
from party_common.transport import bind, make_server
from proto import fedprofile_v1_pb2_grpc as pb_grpc
from protocols.evaluation_metrics import tag_metrics
from protocols.uncertainty import (
    bootstrap_auc_ks,
    expected_calibration_error,
    percentile_interval,
    point_auc_ks,
    summarise,
)

RESAMPLES = 300


def scored(n: int, strength: float, seed: int, rate: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Labels with a given positive rate and calibrated-ish probabilities that separate them."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(np.float64)
    z = strength * (y - rate) + rng.normal(size=n) + np.log(rate / (1 - rate))
    return 1 / (1 + np.exp(-z)), y


def synthetic_report(tags: dict[str, tuple[float, float, int]], *, predictions: bool = True,
                     rate: float = 0.2) -> dict[str, Any]:
    """A report like the trainer's: tags -> (joint strength, bank-only strength, test rows)."""
    metrics, preds = {}, {}
    for i, (tag, (sj, sb, n)) in enumerate(tags.items()):
        pj, yj = scored(n, sj, 10 * i + 1, rate)
        pb, yb = scored(n, sb, 10 * i + 2, rate)
        metrics[tag] = {"joint": tag_metrics(yj, pj), "bank_only": tag_metrics(yb, pb), "best_epoch": 2}
        preds[tag] = {"joint": {"p": pj.tolist(), "y": yj.astype(int).tolist()},
                      "bank_only": {"p": pb.tolist(), "y": yb.astype(int).tolist()}}
    report: dict[str, Any] = {
        "protocol": "2.0", "metrics": metrics, "tags": list(tags), "rows": 9999, "alignment_job_id": "align-1",
        "split": {"train": 7000, "validation": 1000, "test": 1999}, "epochs_run": 3,
        "history": [{"epoch": e, "validation_auc": {t: 0.6 + 0.01 * e for t in tags}} for e in (1, 2, 3)],
        "label_privacy": {"mode": "dp", "epsilon": 3.0, "delta": 1e-5, "floor": 300},
        "encoding": {"label_mask": "sent to the platform",
                     "evaluation": "shuffled multiset of (joint score, label) per tag, under the bank's key"},
        "scoring_disclosure": {"projections_per_customer": len(tags)},
    }
    if predictions:
        report["test_predictions"] = preds
    return report


def test_point_estimates_equal_sklearn_and_intervals_contain_them_and_shrink() -> None:
    widths = []
    for n in (400, 6400):
        p, y = scored(n, 1.5, 3)
        auc, ks = point_auc_ks(p, y)
        m = tag_metrics(y, p)
        assert auc == pytest.approx(m["auc"], abs=1e-12) and ks == pytest.approx(m["ks"], abs=1e-12)
        a, k = bootstrap_auc_ks(p, y, resamples=RESAMPLES, seed=1)
        auc_ci, ks_ci = percentile_interval(a), percentile_interval(k)
        assert auc_ci and ks_ci
        assert auc_ci[0] <= round(auc, 3) <= auc_ci[1] and ks_ci[0] <= round(ks, 3) <= ks_ci[1]
        widths.append(auc_ci[1] - auc_ci[0])
    assert widths[1] < widths[0] / 2  # 16x the rows: about a quarter of the width
    # Seeded: the same draws twice.
    p, y = scored(500, 1.0, 4)
    assert np.array_equal(bootstrap_auc_ks(p, y, resamples=50, seed=9)[0], bootstrap_auc_ks(p, y, resamples=50,
                                                                                             seed=9)[0])


def test_ties_are_counted_half() -> None:
    p, y = np.array([0.5, 0.5, 0.5, 0.5]), np.array([0.0, 1.0, 0.0, 1.0])
    assert point_auc_ks(p, y) == (0.5, 0.0)


def test_ece_small_when_calibrated_and_large_when_shifted() -> None:
    rng = np.random.default_rng(5)
    p = rng.uniform(0.05, 0.95, 20_000)
    y = (rng.random(len(p)) < p).astype(np.float64)
    assert expected_calibration_error(p, y) < 0.02
    assert expected_calibration_error(np.clip(p + 0.2, 0, 1), y) > 0.15


def test_warnings_fire_on_the_documented_conditions() -> None:
    report = synthetic_report({"better": (3.0, 1.0, 3000), "same": (1.5, 1.5, 3000), "worse": (0.5, 3.0, 3000),
                               "rare": (2.0, 1.0, 100)})
    s = summarise(report, resamples=RESAMPLES)
    codes = {tag: {w["code"] for w in t["warnings"]} for tag, t in s["tags"].items()}
    assert codes["better"] == set()
    assert codes["same"] == {"no_difference"}
    assert codes["worse"] == {"joint_worse"}
    assert "few_positives" in codes["rare"]  # 100 rows at 20%: about 20 positives
    worse = s["tags"]["worse"]
    assert worse["intervals"]["uplift"][1] < 0 and worse["uplift"] < 0
    for t in s["tags"].values():  # three decimals, never sixteen
        assert t["auc"]["joint"] == round(t["auc"]["joint"], 3)
        assert all(v == round(v, 3) for v in t["intervals"]["joint"]["auc"])
    old = summarise(synthetic_report({"a": (2.0, 1.0, 500)}, predictions=False), resamples=RESAMPLES)
    assert {w["code"] for w in old["tags"]["a"]["warnings"]} == {"no_intervals"}
    assert old["tags"]["a"]["auc"]["joint"] is not None and old["tags"]["a"]["intervals"]["uplift"] is None


def cells(html: str) -> dict[tuple[str, str], str]:
    return {(t, k): v for t, k, v in re.findall(r'<td data-tag="([^"]+)" data-key="([^"]+)">([^<]*)</td>', html)}


@pytest.mark.parametrize("predictions", [True, False])
def test_html_is_self_contained_and_its_numbers_are_summarises(predictions: bool) -> None:
    tag = "tag_a_rather_long_customer_tag_name_that_must_not_be_cut"
    report = synthetic_report({tag: (2.0, 1.0, 1500), "same": (1.5, 1.5, 1500)}, predictions=predictions)
    s = summarise(report, resamples=RESAMPLES)
    html = render(report, s, job={"job_id": "train-1", "created_at": "2024-06-01T10:00:00Z"})
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "data:image/png;base64," in html  # the validation history is plotted even without predictions
    c = cells(html)
    for t, summary in s["tags"].items():
        assert float(c[(t, "auc-joint")]) == summary["auc"]["joint"] == round(report["metrics"][t]["joint"]["auc"], 3)
        assert float(c[(t, "auc-bank_only")]) == summary["auc"]["bank_only"]
        assert float(c[(t, "uplift")]) == summary["uplift"]
        assert int(c[(t, "positives")]) == report["metrics"][t]["joint"]["positives"]
        if predictions:
            lo, hi = (float(x) for x in c[(t, "uplift-ci")].strip("[]").split(","))
            assert [lo, hi] == summary["intervals"]["uplift"]
            assert float(c[(t, "ece-joint")]) == summary["ece"]["joint"]
        else:
            assert c[(t, "uplift-ci")] == "-"
    assert f'<td class="tag">{tag}</td>' in html  # the whole name, in a cell that does not wrap
    for phrase in ("What each party learned", "epsilon = 3", "whether the bank knows", "docs/protocol.md",
                   "train-1", "2024-06-01T10:00:00Z"):
        assert phrase in html
    assert ("no measurable difference" in html) == predictions


class FakeNode:
    """What ControlServicer and BankNode.report_html need of a bank node."""

    report_html = BankNode.report_html
    report_document = BankNode.report_document

    def __init__(self, state_dir: Path) -> None:
        self.stores = memory_node_stores()
        self.config = SimpleNamespace(state_dir=state_dir)
        self.segments = SegmentService(self)  # type: ignore[arg-type]  # the control API takes the node's


def test_rpc_and_cli_return_the_page_the_node_renders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = FakeNode(tmp_path)
    report = synthetic_report({"tag_1": (2.0, 1.0, 800)})
    node.stores.jobs.create("train-20240601-100000-abcdef", "train", "", {})
    node.stores.jobs.finish("train-20240601-100000-abcdef", {})
    node.stores.reports.save("train-20240601-100000-abcdef", report)
    server = make_server(workers=2)
    pb_grpc.add_BankControlServicer_to_server(ControlServicer(node), server)  # type: ignore[arg-type]
    port = bind(server, "127.0.0.1:0", None)
    server.start()
    try:
        client = BankClient(f"127.0.0.1:{port}", cert=None, key=None, ca=None, insecure=True)
        expected = node.report_html("train-20240601-100000-abcdef")
        assert client.report_html("train-20240601-100000-abcdef") == expected
        # the console's form: the stored document, its figures drawn one at a time
        document = client.report_document("train-20240601-100000-abcdef")
        assert document["metrics"] == json.loads(json.dumps(report["metrics"]))
        assert document["test_predictions"]["tag_1"]["joint"]["p"] == report["test_predictions"]["tag_1"]["joint"]["p"]
        with pytest.raises(cli.grpc.RpcError) as err:
            client.report_html("train-20240601-100000-000000")
        assert err.value.code().name == "NOT_FOUND"
        client.close()

        monkeypatch.setattr(cli, "load_config", lambda *a, **k: None)
        monkeypatch.setattr(cli, "client_for", lambda config, args: BankClient(
            f"127.0.0.1:{port}", cert=None, key=None, ca=None, insecure=True))
        out = tmp_path / "report.html"
        argv = ["report", "--config", "bank.toml", "--insecure-dev", "train-20240601-100000-abcdef", "--out", str(out)]
        assert cli.main(argv) == 0 and out.read_bytes() == expected
        out.write_text("mine")
        assert cli.main(argv) == 1 and out.read_text() == "mine"  # refuses to overwrite
        assert cli.main([*argv, "--overwrite"]) == 0 and out.read_bytes() == expected
    finally:
        server.stop(None)


def test_the_page_says_what_went_in_and_takes_added_sections() -> None:
    from party_bank import report_html, views
    from protocols.uncertainty import format_metric

    report = synthetic_report({"tag_a": (2.0, 1.0, 600)})
    report["metrics"]["tag_a"]["joint"]["logloss_calibrated"] = 0.41249
    report["metrics"]["tag_a"]["served"] = {"model": "joint"}
    report["params"] = {"learning_rate": 0.05, "l2": 0.01, "key_bits": 2048, "optimizer": "adam", "epochs": None,
                        "batch_size": None, "seed": 7, "label_dp": "auto", "test_share": 0.2, "serve": "best"}
    report["batching"] = {"batch_size": 256}
    report["data"] = {"bank": {"file": "bank.csv", "feature_count": 2, "features": ["age", "income"],
                               "dropped_columns": [{"column": "notes", "why": "no row of the file has a value"}]},
                      "platform": {"feature_count": 34, "features": "the platform's own"},
                      "labels": {"tag_a": {"labelled": 800, "positives": 160, "rows": 1000, "labelled_train": 560}}}
    s = summarise(report, resamples=RESAMPLES)

    def extra(report: Any, summary: Any) -> str:
        return "<h2>Scorecard</h2>"

    report_html.add_section(extra, before=report_html.privacy_section)
    try:
        html = render(report, s)
    finally:
        report_html.SECTIONS.remove(extra)
    c = cells(html)
    assert html.index("Data and parameters") < html.index("Scorecard") < html.index("What each party learned")
    for phrase in ("bank.csv", "age, income", "notes: no row of the file has a value", "Platform features (34)",
                   "<th>Learning rate</th><td>0.05</td>", "<th>Optimiser</th><td>adam</td>",
                   "<th>Paillier key size (bits)</th><td>2048</td>", "<th>Batch size</th><td>256</td>",
                   "epsilon 3.000", "Scored by the <b>joint</b> model"):
        assert phrase in html, phrase
    assert c[("tag_a", "labelled")] == "800 of 1,000" and c[("tag_a", "label-positives")] == "160"
    assert c[("tag_a", "logloss-joint")] == "0.412" == format_metric(0.41249)
    assert render(report, s).count("Scorecard") == 0  # removed again
    # the console's table and the page print the same numbers (one rounding)
    console = views.summary_table({"summary": s, "metrics": report["metrics"]})
    assert c[("tag_a", "uplift")] in console and c[("tag_a", "auc-joint")] in console
    assert "dropped column(s) of the bank's file: notes" in views.train_done(
        {"job_id": "train-1", "result": {**report, "summary": s}})


def test_one_rounding_rule_for_every_printed_metric() -> None:
    from protocols.uncertainty import format_interval, format_metric, round_metric

    # half to even on the number as written, whatever its binary expansion
    assert [format_metric(x) for x in (0.1125, 0.1135, 0.0005, 0.9995, None)] == \
        ["0.112", "0.114", "0.000", "1.000", "-"]
    assert format_metric(0.0125, signed=True) == "+0.012" and format_metric(-0.0125, signed=True) == "-0.012"
    assert round_metric(0.1135) == 0.114 and round_metric(float("nan")) is None
    assert format_interval([0.1125, 0.2], signed=True) == "[+0.112, +0.200]"


def test_a_dropped_column_reaches_the_report(tmp_path: Path) -> None:
    from party_common.data_loading import load_party_data
    from protocols.evaluation_metrics import Split
    from protocols.vfl_lr.report import DROPPED_WHY, data_inputs

    path = tmp_path / "bank.csv"
    path.write_text("id,x,empty,tag\n" + "".join(f"c{i},{i},,{i % 2}\n" for i in range(10)))
    data = load_party_data(path, id_column="id", tag_columns=["tag"])
    aligned = data.take([f"c{i}" for i in range(6)])  # the train job's rows: the record travels with the data
    assert aligned.dropped_columns == ("empty",)
    split = Split(train=np.arange(4), validation=np.array([4]), test=np.array([5]))
    inputs = data_inputs(aligned, split, 3)
    assert inputs["bank"]["dropped_columns"] == [{"column": "empty", "why": DROPPED_WHY}]
    assert inputs["bank"]["features"] == ["x"] and inputs["platform"]["feature_count"] == 3
    assert inputs["labels"]["tag"] == {"labelled": 6, "positives": 3, "rows": 6, "labelled_train": 4}
