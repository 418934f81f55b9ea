"""Scorecards: each party's points per bin reproduce its half of a binned model's log-odds, the two halves add up
to the model's joint log-odds, each export holds only its own party's features, and bad input is named."""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import pytest

from party_bank.cli_stability import run
from party_bank.client import BankClient
from party_bank.control import ControlServicer
from party_common.storage import memory_node_stores
from party_platform import admin
from party_platform.cli import write_scorecard
from proto import fedprofile_v1_pb2_grpc as pb_grpc
from protocols.binning import BinningModel
from protocols.errors import NotFound
from protocols.scorecard import (
    BASE_FEATURE,
    Scaling,
    ScorecardError,
    bank_table,
    log_odds,
    platform_table,
    row_points,
    to_csv,
)
from protocols.vfl_lr import BankModel, PlatformModel
from tests.nodes_fixture import FAST_TRAIN, Nodes, SimulatedFiles, make_nodes, simulated_files
from tests.test_stability import small_stability_floor

TAGS = ["car", "loan"]
CLIP = 3.0


def half(rng: np.random.Generator, names: list[str], n: int, *, bank: bool) -> tuple[Any, np.ndarray]:
    """A model half trained on bins, as the LR family stores it (binning, scaler over one-hot, weights), and
    the raw rows it scores."""
    X = rng.normal(size=(n, len(names)))
    X[::5, 0] = np.nan  # a missing bin
    X[:, -1] = rng.integers(0, 3, n)  # few values: a bin per value
    binning = BinningModel.fit(X, names)
    H = binning.one_hot(binning.transform(X))
    std = H.std(axis=0)
    scaler = SimpleNamespace(mean=H.mean(axis=0), std=np.where(std > 0, std, 1.0), clip=CLIP)
    weights = rng.normal(size=(H.shape[1], len(TAGS)))
    model = SimpleNamespace(job_id="train-20260101-000000-abcdef", tag_names=list(TAGS), weights=weights,
                            scaler=scaler, binning=binning)
    if bank:
        model.intercept = np.array([-1.2, 0.4])
        model.calibration = [{"a": 1.1, "b": -0.2, "knots": None}, {"a": 0.9, "b": 0.1, "knots": None}]
        model.platform_part = [True, True]
    return model, X


def half_scores(model: Any, X: np.ndarray) -> np.ndarray:
    """What a binned half scores (protocols.scoring's formula on one-hot bins): rows x tags."""
    s = model.scaler
    H = model.binning.one_hot(model.binning.transform(X))
    z = np.clip((H - s.mean) / s.std, -s.clip, s.clip) @ model.weights
    return z + getattr(model, "intercept", 0.0)


@pytest.fixture(scope="module")
def halves() -> tuple[Any, np.ndarray, Any, np.ndarray]:
    rng = np.random.default_rng(7)
    bank, xa = half(rng, ["income", "age", "products"], 400, bank=True)
    platform, xb = half(rng, ["orders", "basket", "returns", "visits"], 400, bank=False)
    return bank, xa, platform, xb


def test_both_halves_points_reproduce_the_joint_log_odds(halves: tuple[Any, np.ndarray, Any, np.ndarray]) -> None:
    bank, xa, platform, xb = halves
    scaling = Scaling()
    ours, theirs = bank_table(bank, [], scaling), platform_table(platform, [], scaling)
    z = half_scores(bank, xa) + half_scores(platform, xb)
    for t, tag in enumerate(TAGS):
        total = row_points(ours, tag, bank.binning, xa) + row_points(theirs, tag, platform.binning, xb)
        np.testing.assert_allclose(log_odds(ours["scaling"], total), z[:, t], rtol=0, atol=1e-9)
        # each half alone is its own part: the bank's with the base points (offset + factor * intercept)
        np.testing.assert_allclose(row_points(theirs, tag, platform.binning, xb),
                                   scaling.factor * half_scores(platform, xb)[:, t], atol=1e-9)


def test_the_scaling_convention() -> None:
    s = Scaling()
    assert s.factor == pytest.approx(20 / math.log(2)) and s.offset == pytest.approx(600 - s.factor * math.log(50))
    assert s.offset + s.factor * math.log(50) == pytest.approx(600.0)  # base score at the base odds
    assert s.factor * math.log(100) - s.factor * math.log(50) == pytest.approx(20.0)  # double the odds: +PDO
    other = Scaling.of(base_score=500, pdo=40, base_odds=1)
    assert other.offset == 500 and other.factor == pytest.approx(40 / math.log(2))


def test_each_export_holds_only_its_own_half(halves: tuple[Any, np.ndarray, Any, np.ndarray]) -> None:
    bank, _, platform, _ = halves
    ours, theirs = bank_table(bank, ["car"], Scaling()), platform_table(platform, ["car"], Scaling())
    assert ours["party"] == "bank" and theirs["party"] == "platform" and list(ours["tags"]) == ["car"]
    assert [f["feature"] for f in ours["tags"]["car"]["features"]] == bank.binning.feature_names
    assert [f["feature"] for f in theirs["tags"]["car"]["features"]] == platform.binning.feature_names
    assert "base_points" in ours["tags"]["car"] and "base_points" not in theirs["tags"]["car"]
    assert "calibration" in ours["tags"]["car"] and "calibration" not in theirs["tags"]["car"]
    bank_text, platform_text = json.dumps(ours) + to_csv(ours), json.dumps(theirs) + to_csv(theirs)
    assert not any(name in bank_text for name in platform.binning.feature_names)
    assert not any(name in platform_text for name in bank.binning.feature_names)
    # No weight of the other half appears in either export
    for value in platform.weights.ravel()[:20]:
        assert repr(float(value)) not in bank_text
    for value in bank.weights.ravel()[:20]:
        assert repr(float(value)) not in platform_text


def test_csv_has_a_row_per_bin_and_the_base_points(halves: tuple[Any, np.ndarray, Any, np.ndarray]) -> None:
    bank, xa, _, _ = halves
    table = bank_table(bank, [], Scaling())
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert len(rows) == len(TAGS) * (1 + sum(bank.binning.n_bins))
    base = [r for r in rows if r["feature"] == BASE_FEATURE]
    assert [r["tag"] for r in base] == TAGS and {r["party"] for r in rows} == {"bank"}
    assert float(base[0]["points"]) == pytest.approx(table["tags"]["car"]["base_points"], abs=1e-6)
    labels = [r["bin"] for r in rows if r["tag"] == "car" and r["feature"] == "income"]
    assert labels == bank.binning.labels("income") and labels[-1] == "missing"


def test_a_tag_served_by_the_bank_only_model_says_the_platform_points_do_not_apply(
        halves: tuple[Any, np.ndarray, Any, np.ndarray]) -> None:
    bank, _, _, _ = halves
    bank.platform_part = [True, False]
    try:
        table = bank_table(bank, [], Scaling())
    finally:
        bank.platform_part = [True, True]
    assert table["tags"]["car"]["served"] == "joint" and table["tags"]["loan"]["served"] == "bank_only"
    assert "do not apply" in table["tags"]["loan"]["note"]


def test_bad_input_is_named(halves: tuple[Any, np.ndarray, Any, np.ndarray]) -> None:
    bank, _, platform, _ = halves
    with pytest.raises(ScorecardError, match="no tag\\(s\\) churn"):
        bank_table(bank, ["churn"], Scaling())
    with pytest.raises(ScorecardError, match="no tag\\(s\\) churn"):
        platform_table(platform, ["car", "churn"], Scaling())
    raw = SimpleNamespace(**{**vars(platform), "binning": None})
    with pytest.raises(ScorecardError, match="trained on raw features.*features = \"binned\""):
        platform_table(raw, [], Scaling())
    with pytest.raises(ScorecardError, match="pdo"):
        Scaling.of(pdo=0)
    with pytest.raises(ScorecardError, match="base odds"):
        Scaling.of(base_odds=-1)
    with pytest.raises(ScorecardError, match="finite"):
        Scaling.of(base_score=float("nan"))
    with pytest.raises(NotFound, match="no model train-20990101-000000-abcdef on this node"):
        admin.scorecard(memory_node_stores(), "train-20990101-000000-abcdef", [], pdo=20)


# ---- both nodes: a model trained on bins ----


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> SimulatedFiles:
    return simulated_files(tmp_path_factory.mktemp("data"))


# the nodes' [binning] as configured: the test's few labelled rows would otherwise make the platform train on its
# raw columns (bins "auto", protocols/vfl_lr/bin_width.py)
CONFIGURED_BINS = {"bins": "configured"}


@pytest.fixture(scope="module")
def binned(files: SimulatedFiles, tmp_path_factory: pytest.TempPathFactory) -> tuple[Nodes, str, str]:
    """Nodes that trained one model on bins and one on raw features."""
    nodes = make_nodes(files, tmp_path_factory.mktemp("state"))
    assert nodes.bank.wait(nodes.bank.submit("align", "", {}), timeout_s=120).status == "succeeded"
    jobs = []
    for features in ("binned", "raw"):
        train = nodes.bank.wait(nodes.bank.submit("train", "", {"train": {**FAST_TRAIN, "features": features,
                                                                                **CONFIGURED_BINS}}),
                                timeout_s=300)
        assert train.status == "succeeded", train.error
        jobs.append(train.job_id)
    return small_stability_floor(nodes), jobs[0], jobs[1]


def test_both_exports_reproduce_the_served_scores(binned: tuple[Nodes, str, str], files: SimulatedFiles) -> None:
    nodes, job, _ = binned
    ours = nodes.bank.scorecard(job, base_score=500, pdo=40, base_odds=10)
    theirs = admin.scorecard(nodes.platform.stores, job, [], pdo=40)
    assert ours["scaling"]["factor"] == theirs["scaling"]["factor"]
    members = [i for i in nodes.bank.data.ids if i in files.shared_ids][:50]
    served = nodes.bank.score(job, members)
    bank_model = BankModel.from_dict(nodes.bank.stores.models.load(job), where="test")
    platform_model = PlatformModel.from_dict(nodes.platform.stores.models.load(job), where="test")
    assert bank_model.binning is not None and platform_model.binning is not None
    xa = nodes.bank.data.features[[nodes.bank.data.row_of(i) for i in members]]
    xb = nodes.platform.data.features[[nodes.platform.data.row_of(i) for i in members]]
    z = np.column_stack([log_odds(ours["scaling"], row_points(ours, tag, bank_model.binning, xa)
                                  + row_points(theirs, tag, platform_model.binning, xb)) for tag in served.tags])
    np.testing.assert_allclose(z, bank_model.partial_scores(xa) + platform_model.partial_scores(xb), atol=1e-9)
    # the served (calibrated) probabilities are the tag's calibration of the points' log-odds
    np.testing.assert_allclose(bank_model.probabilities(z), served.probabilities, rtol=1e-9)
    names = set(nodes.platform.data.feature_names)
    assert not any(f["feature"] in names for entry in ours["tags"].values() for f in entry["features"])


def test_a_raw_model_and_unknown_names_are_refused_by_name(binned: tuple[Nodes, str, str]) -> None:
    nodes, job, raw = binned
    with pytest.raises(ScorecardError, match=f"model {raw} was trained on raw features"):
        nodes.bank.scorecard(raw)
    with pytest.raises(ScorecardError, match=f"model {raw} was trained on raw features"):
        admin.scorecard(nodes.platform.stores, raw, [], pdo=20)
    with pytest.raises(ScorecardError, match=f"model {job} has no tag\\(s\\) nope"):
        nodes.bank.scorecard(job, ["nope"])
    with pytest.raises(NotFound, match="train-20990101-000000-abcdef"):
        nodes.bank.scorecard("train-20990101-000000-abcdef")


def test_a_binned_model_is_compared_on_its_own_bins(binned: tuple[Nodes, str, str]) -> None:
    nodes, job, _ = binned
    for node in (nodes.bank, nodes.platform):
        assert node.stores.stability.load(job)["features"]["source"] == "binning"
    nodes.bank.batch_score(job, "binned.parquet", overwrite=True)
    result = nodes.bank.stability.answer(job, batch="binned.parquet")
    assert {r["party"] for r in result["features"]} == {"bank", "platform"}
    assert all(r["band"] == "stable" for r in result["features"])  # the training population's own customers


def test_the_cli_writes_the_banks_half_over_the_control_api(binned: tuple[Nodes, str, str], tmp_path: Path) -> None:
    nodes, job, raw = binned
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_BankControlServicer_to_server(ControlServicer(nodes.bank), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = BankClient(f"127.0.0.1:{port}", cert=None, key=None, ca=None, insecure=True)
    try:
        out = tmp_path / "card.csv"
        args = argparse.Namespace(command="scorecard", model=job, tag=None, out=str(out), base_score=600.0,
                                  pdo=20.0, base_odds=50.0, overwrite=False)
        run(client, args)
        rows = list(csv.DictReader(out.open()))
        assert {r["party"] for r in rows} == {"bank"} and out.stat().st_mode & 0o777 == 0o600
        table = nodes.bank.scorecard(job)
        assert len(rows) == sum(1 + sum(len(f["bins"]) for f in e["features"]) for e in table["tags"].values())
        with pytest.raises(FileExistsError, match="--overwrite"):
            run(client, args)
        run(client, argparse.Namespace(**{**vars(args), "out": str(tmp_path / "card.json")}))
        assert json.loads((tmp_path / "card.json").read_text()) == json.loads(json.dumps(table))
        with pytest.raises(grpc.RpcError) as refused:
            client.scorecard(raw)
        assert f"model {raw} was trained on raw features" in (refused.value.details() or "")
        with pytest.raises(grpc.RpcError) as unknown:
            client.scorecard(job, ["nope"])
        assert "no tag(s) nope" in (unknown.value.details() or "")
    finally:
        client.close()
        server.stop(None)
    card = tmp_path / "platform.csv"
    write_scorecard(admin.scorecard(nodes.platform.stores, job, [], pdo=20), card, overwrite=False)
    assert {r["party"] for r in csv.DictReader(card.open())} == {"platform"}
