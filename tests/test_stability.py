"""Population stability: the PSI kernel's known answers and bands, the bins, the bounded windows, and both nodes'
answers (a batch-score file, the recent online window), with what crosses to the bank: one index per feature."""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from party_bank.cli_stability import run, stability_tables
from party_bank.client import BankClient
from party_bank.control import ControlServicer
from party_bank.grpc_link import GrpcPlatformLink
from party_common.jobs import SESSION_KINDS
from party_common.policy import PolicyConfig, parse_policy
from party_common.prometheus_metrics import FEATURE_PSI, SCORE_PSI
from party_common.storage import open_node_stores
from party_platform.service import NodeServicer, SessionRegistry
from proto import fedprofile_v1_pb2 as pb
from proto import fedprofile_v1_pb2_grpc as pb_grpc
from protocols.binning import BinningModel
from protocols.errors import NotFound, PeerError, UserError
from protocols.stability import (
    FLOOR,
    INDEX_DECIMALS,
    FeatureReference,
    RecentWindow,
    ScoreReference,
    StabilityError,
    band,
    bin_counts,
    bitmap_rows,
    platform_indices,
    psi,
    quantile_edges,
    rows_bitmap,
)
from tests.nodes_fixture import FAST_TRAIN, Nodes, SimulatedFiles, make_nodes, simulated_files

# ---- the kernel ----


def test_identical_distributions_have_index_zero() -> None:
    assert psi([10, 20, 30, 40], [10, 20, 30, 40]) == 0.0
    assert psi([1, 2, 3, 4], [100, 200, 300, 400]) == pytest.approx(0.0, abs=1e-15)  # shares, not counts


def test_a_known_shift() -> None:
    # (0.25 - 0.5) ln(0.25/0.5) + (0.75 - 0.5) ln(0.75/0.5) = 0.25 ln 2 + 0.25 ln 1.5 = 0.25 ln 3
    assert psi([50, 50], [25, 75]) == pytest.approx(0.25 * math.log(3.0), rel=1e-12)
    assert psi([25, 75], [50, 50]) == pytest.approx(psi([50, 50], [25, 75]), rel=1e-12)  # symmetric
    # Ten equal bins, then everything moves one bin up (the top bin takes two shares): by hand
    expected = np.full(10, 0.1)
    actual = np.r_[0.0, np.full(8, 0.1), 0.2]
    by_hand = (FLOOR - 0.1) * math.log(FLOOR / 0.1) + (0.2 - 0.1) * math.log(2.0)
    assert psi(expected, actual) == pytest.approx(by_hand, rel=1e-12)


def test_an_empty_bin_counts_as_the_floor_and_a_bin_empty_in_both_adds_nothing() -> None:
    assert psi([50, 50, 0], [50, 50, 0]) == 0.0
    assert math.isfinite(psi([100, 0], [0, 100]))
    assert psi([100, 0], [0, 100]) == pytest.approx(2 * (1 - FLOOR) * math.log(1 / FLOOR), rel=1e-12)


def test_bad_histograms_are_refused() -> None:
    with pytest.raises(StabilityError, match="empty"):
        psi([0, 0], [1, 2])
    with pytest.raises(StabilityError, match="different bins"):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(StabilityError, match="negative"):
        psi([1, -2], [1, 2])


def test_warning_bands_follow_the_credit_scoring_convention() -> None:
    assert [band(v) for v in (0.0, 0.099, 0.1, 0.25, 0.2501, 3.0)] == [
        "stable", "stable", "moderate shift", "moderate shift", "significant shift", "significant shift"]


def test_bins_are_left_closed_with_a_missing_bin_as_the_binning_package_counts() -> None:
    x = np.array([[0.0], [1.0], [1.5], [2.0], [3.0], [np.nan]])
    counts = bin_counts(x, [np.array([1.0, 2.0])])
    assert counts.tolist() == [[1, 2, 2, 1]]  # (-inf,1) [1,2) [2,inf) missing
    rng = np.random.default_rng(3)
    X = rng.normal(size=(2000, 2))
    X[::9, 1] = np.nan
    binning = BinningModel.fit(X, ["a", "b"])
    ours = FeatureReference.from_edges(["a", "b"], [c.edges for c in binning.columns], X, source="binning")
    for j, column in enumerate(binning.columns):  # a binned model's bins count the same rows in the same bins
        theirs = np.bincount(binning.transform(X)[:, j], minlength=column.n_bins)
        assert ours.counts[j][:len(column.edges) + 1].tolist() == theirs[:len(column.edges) + 1].tolist()
        assert ours.counts[j][-1] == (column.counts[-1] if column.has_missing else 0)


def test_quantile_bins_hold_training_rows_and_a_constant_feature_has_one_bin() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=5000)
    edges = quantile_edges(x, 10)
    counts = bin_counts(x[:, None], [edges])[0]
    assert len(edges) == 9 and (counts[:10] > 400).all() and counts[10] == 0
    assert len(quantile_edges(np.full(100, 7.0))) == 0
    reference = FeatureReference.from_rows(["c"], np.full((50, 1), 7.0))
    assert reference.indices(reference.count(np.full((10, 1), 7.0))) == {"c": 0.0}


def test_a_shifted_feature_passes_the_warning_bands() -> None:
    rng = np.random.default_rng(1)
    train = rng.normal(size=(20_000, 3))
    reference = FeatureReference.from_rows(["same", "small", "large"], train)
    later = np.column_stack([rng.normal(size=20_000), rng.normal(0.4, 1, 20_000), rng.normal(1.0, 1, 20_000)])
    values = reference.indices(reference.count(later))
    assert band(values["same"]) == "stable" and values["same"] < 0.01
    assert band(values["small"]) == "moderate shift"
    assert band(values["large"]) == "significant shift"
    restored = FeatureReference.from_dict(reference.to_dict(), where="test")
    assert restored.indices(restored.count(later)) == values


def test_score_deciles_of_the_training_scores() -> None:
    rng = np.random.default_rng(2)
    reference = ScoreReference.from_scores({"t": rng.uniform(size=1000).tolist()})
    assert reference.counts[0][:10].tolist() == [100] * 10
    same = reference.indices({"t": rng.uniform(size=1000)})["t"]
    moved = reference.indices({"t": rng.uniform(size=1000) ** 3})["t"]
    assert same["psi"] < 0.05 and moved["psi"] > 0.25 and moved["rows"] == 1000
    assert reference.indices({"t": np.array([np.nan])}) == {}  # no scored row: left out


def test_platform_indices_are_rounded_and_need_the_policy_minimum_of_rows() -> None:
    rng = np.random.default_rng(4)
    reference = FeatureReference.from_rows(["a", "b"], rng.normal(size=(500, 2)))
    X = rng.normal(0.2, 1, size=(40, 2))
    values = platform_indices(reference, reference.count(X), 40, min_rows=20)
    assert set(values) == {"a", "b"}
    assert all(round(v, INDEX_DECIMALS) == v for v in values.values())
    with pytest.raises(StabilityError, match="min_stability_rows"):
        platform_indices(reference, reference.count(X[:5]), 5, min_rows=20)


def test_rows_travel_as_a_bitmap_of_alignment_positions() -> None:
    rows = np.array([0, 3, 9, 17], dtype=np.int64)
    assert len(rows_bitmap(rows)) == 3 and bitmap_rows(rows_bitmap(rows)).tolist() == rows.tolist()
    assert len(rows_bitmap(np.arange(10_000_000))) == 1_250_000  # ten million members: 1.25 MB, one message
    assert bitmap_rows(rows_bitmap(np.zeros(0, dtype=np.int64))).tolist() == []
    with pytest.raises(StabilityError):
        rows_bitmap(np.array([-1]))


def test_the_floor_is_a_policy_knob() -> None:
    assert parse_policy({"min_stability_rows": 5000}, "[policy]").min_stability_rows == 5000
    with pytest.raises(ValueError, match="'min_stability_rows' must be a whole number"):
        parse_policy({"min_stability_rows": 0}, "[policy]")


def test_the_recent_window_is_bounded_and_keeps_no_ids() -> None:
    window = RecentWindow(max_rows=100)
    for k in range(10):
        window.add_scores({"t": np.full(30, k / 10)})
    scores = window.scores()
    assert 100 <= len(scores["t"]) < 130 and scores["t"][-1] == pytest.approx(0.9)
    counts = RecentWindow(max_rows=10)
    for _ in range(5):
        counts.add_counts(np.array([[3, 1, 0]]), 4)
    total, rows = counts.counts()
    assert rows == 12 and total.tolist() == [[9, 3, 0]]
    with pytest.raises(StabilityError):
        RecentWindow(0)


# ---- both nodes ----


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> SimulatedFiles:
    return simulated_files(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained(files: SimulatedFiles, tmp_path_factory: pytest.TempPathFactory) -> tuple[Nodes, str]:
    state = tmp_path_factory.mktemp("state")
    nodes = make_nodes(files, state, bank_stores=open_node_stores(state / "bank"),
                       platform_stores=open_node_stores(state / "platform"))
    assert nodes.bank.wait(nodes.bank.submit("align", "", {}), timeout_s=120).status == "succeeded"
    train = nodes.bank.wait(nodes.bank.submit("train", "", {"train": FAST_TRAIN}), timeout_s=300)
    assert train.status == "succeeded", train.error
    return small_stability_floor(nodes), train.job_id


def small_stability_floor(nodes: Nodes, rows: int = 50) -> Nodes:
    """The platform's floor of rows for stability lowered to fit the small simulated intersection (~180 rows)."""
    config = nodes.platform.config
    nodes.platform.config = dataclasses.replace(config, policy=dataclasses.replace(config.policy,
                                                                                   min_stability_rows=rows))
    return nodes


def test_training_keeps_each_partys_reference_of_its_own_features(trained: tuple[Nodes, str]) -> None:
    nodes, job = trained
    bank_doc = nodes.bank.stores.stability.load(job)
    platform_doc = nodes.platform.stores.stability.load(job)
    assert bank_doc["features"]["names"] == nodes.bank.data.feature_names
    assert platform_doc["features"]["names"] == nodes.platform.data.feature_names
    assert set(bank_doc["scores"]["tags"]) == set(nodes.bank.data.tag_names) and "scores" not in platform_doc
    assert not set(bank_doc["features"]["names"]) & set(platform_doc["features"]["names"])


def test_a_batch_of_the_training_population_is_stable(trained: tuple[Nodes, str]) -> None:
    nodes, job = trained
    nodes.bank.batch_score(job, "stability/all.parquet", overwrite=True)
    result = nodes.bank.stability.answer(job, batch="stability/all.parquet")
    assert result["source"] == "batch" and result["reference"] == {"bank": "training", "platform": "training"}
    parties = {row["party"] for row in result["features"]}
    assert parties == {"bank", "platform"}
    for row in result["features"]:  # the intersection is the training population: the same rows, index 0
        assert row["psi"] == pytest.approx(0.0, abs=1e-12) and row["band"] == "stable"
    platform_rows = [r for r in result["features"] if r["party"] == "platform"]
    assert [r["feature"] for r in platform_rows] == sorted(nodes.platform.data.feature_names,
                                                         key=[r["feature"] for r in platform_rows].index)
    assert {r["tag"] for r in result["scores"]} == set(nodes.bank.data.tag_names)
    assert all(r["psi"] >= 0 and r["rows"] > 0 for r in result["scores"])
    tables = stability_tables(result)  # the CLI's rich tables, one row per tag and per feature
    assert tables[0].row_count == len(result["scores"]) and tables[1].row_count == len(result["features"])
    # The gauges: per tag and per feature, labelled by names
    registry = CollectorRegistry()
    registry.register(FEATURE_PSI)
    registry.register(SCORE_PSI)
    text = generate_latest(registry).decode()
    feature = nodes.platform.data.feature_names[0]
    assert f'fedprofile_feature_psi{{feature="{feature}",model="{job}",role="platform",source="batch"}}' in text
    assert f'fedprofile_score_psi{{model="{job}",source="batch",tag="{nodes.bank.data.tag_names[0]}"}}' in text


def test_a_shifted_batch_warns(trained: tuple[Nodes, str], files: SimulatedFiles) -> None:
    nodes, job = trained
    bank = nodes.bank.data
    old = bank.features.copy()
    try:
        bank.features[:, 0] = bank.features[:, 0] + 5 * np.nanstd(bank.features[:, 0])  # the bank's data moved
        nodes.bank.batch_score(job, "stability/shifted.parquet", overwrite=True)
        result = nodes.bank.stability.answer(job, batch="stability/shifted.parquet")
    finally:
        bank.features[:] = old
    moved = next(r for r in result["features"] if r["party"] == "bank" and r["feature"] == bank.feature_names[0])
    assert moved["band"] == "significant shift" and result["features"][0] == moved  # the largest first


def test_online_window_on_both_nodes(trained: tuple[Nodes, str], files: SimulatedFiles) -> None:
    nodes, job = trained
    with pytest.raises(UserError, match="one of them"):
        nodes.bank.stability.answer(job)
    members = [i for i in nodes.bank.data.ids if i in files.shared_ids]
    for start in range(0, 60, 6):
        nodes.bank.score(job, members[start:start + 6], online=True)
    nodes.bank.score(job, members[60:200])  # not online (as a batch scores): not in the bank's window
    result = nodes.bank.stability.answer(job, online=True)
    assert result["source"] == "online" and result["rows"]["bank"] == 60
    assert {r["rows"] for r in result["scores"]} == {60}
    # The platform counts every answer it gave (it cannot tell online from batch): 60 + 140 rows, at least
    assert result["rows"]["platform"] >= 200 and {r["party"] for r in result["features"]} == {"bank", "platform"}


def test_the_platform_refuses_indices_over_too_few_rows(trained: tuple[Nodes, str]) -> None:
    nodes, job = trained
    assert PolicyConfig().min_stability_rows == 1000  # the default; the fixture lowers it for ~180 rows
    minimum = nodes.platform.config.policy.min_stability_rows
    rows = np.arange(minimum - 1, dtype=np.int64)
    with pytest.raises(PeerError, match="min_stability_rows"):
        nodes.link.stability(job, "rows", rows)
    size = len(nodes.platform._aligned_rows(nodes.platform._model(job).alignment_job_id))
    with pytest.raises(PeerError, match="distinct positions in 0..") as beyond:
        nodes.link.stability(job, "rows", np.arange(size, size + minimum, dtype=np.int64))
    assert f"0..{size - 1}" in str(beyond.value)
    with pytest.raises(PeerError, match="source"):
        nodes.link.stability(job, "everything", None)
    events = nodes.platform.stores.jobs.audit_events(job, event="stability")
    assert len(events) >= 3 and all(e.outcome != "ok" for e in events[-3:])


def test_bad_input_names_the_file_or_the_model(trained: tuple[Nodes, str]) -> None:
    nodes, job = trained
    with pytest.raises(UserError, match="no batch-score file nothing.parquet"):
        nodes.bank.stability.answer(job, batch="nothing.parquet")
    with pytest.raises(UserError, match="absolute"):
        nodes.bank.stability.answer(job, batch="/etc/passwd.csv")
    with pytest.raises(UserError, match="'..'"):
        nodes.bank.stability.answer(job, batch="../jobs.sqlite")
    with pytest.raises(UserError, match="no batch-score file new/none.csv"):
        nodes.bank.stability.answer(job, batch="new/none.csv")
    assert not (nodes.bank.config.state_dir / "scores" / "new").exists()  # reading creates nothing
    scores = nodes.bank.config.state_dir / "scores"
    (scores / "ids.csv").write_text("id\n1\n")
    with pytest.raises(UserError, match="ids.csv: not a batch-score file"):
        nodes.bank.stability.answer(job, batch="ids.csv")
    nodes.bank.batch_score(job, "stability/other.csv", overwrite=True)
    other = scores / "stability" / "other.csv"
    other.write_text(other.read_text().replace(job, "train-20200101-000000-aaaaaa"))
    with pytest.raises(UserError, match=f"scored by model train-20200101-000000-aaaaaa, not {job}"):
        nodes.bank.stability.answer(job, batch="stability/other.csv")
    with pytest.raises(NotFound):
        nodes.bank.stability.answer("train-20990101-000000-abcdef", batch="stability/all.parquet")


class RecordingServicer(NodeServicer):
    """The platform's Node service, keeping every Stability request and reply as they cross the wire."""

    wire: list[tuple[bytes, bytes]] = []

    def Stability(self, request: pb.StabilityRequest, context: grpc.ServicerContext) -> pb.StabilityResponse:
        reply = super().Stability(request, context)
        self.wire.append((request.SerializeToString(), reply.SerializeToString()))
        return reply


@pytest.fixture()
def over_grpc(trained: tuple[Nodes, str]) -> Iterator[BankClient]:
    nodes, _ = trained
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    platform = nodes.platform
    pb_grpc.add_NodeServicer_to_server(RecordingServicer(platform, SessionRegistry(platform.open_session,
                                                                                   SESSION_KINDS),
                                                         max_payload_bytes=2**24), server)
    pb_grpc.add_BankControlServicer_to_server(ControlServicer(nodes.bank), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    local = nodes.bank.link
    nodes.bank.link = GrpcPlatformLink(grpc.insecure_channel(f"127.0.0.1:{port}"), node_name="bank",
                                       address=f"127.0.0.1:{port}")
    client = BankClient(f"127.0.0.1:{port}", cert=None, key=None, ca=None, insecure=True)
    try:
        yield client
    finally:
        client.close()
        nodes.bank.link.close()
        nodes.bank.link = local
        server.stop(None)


def test_over_the_wire_the_bank_learns_one_rounded_index_per_platform_feature(
        trained: tuple[Nodes, str], over_grpc: BankClient, tmp_path: Path) -> None:
    nodes, job = trained
    RecordingServicer.wire.clear()
    nodes.bank.batch_score(job, "stability/wire.parquet", overwrite=True)
    result = over_grpc.stability(job, batch_file="stability/wire.parquet")
    assert {r["party"] for r in result["features"]} == {"bank", "platform"}
    assert len(RecordingServicer.wire) == 1
    request_bytes, reply_bytes = RecordingServicer.wire[0]
    request, reply = pb.StabilityRequest.FromString(request_bytes), pb.StabilityResponse.FromString(reply_bytes)
    # The bank sends alignment positions (as partial scores do, here as a bitmap: one bit per row), never an ID
    members = len(nodes.bank.stores.alignments.load(nodes.bank.stores.jobs.get(job).params["alignment_job_id"]).ids
                  or [])
    assert request.source == "rows" and len(request.rows_bitmap) == (members + 7) // 8
    assert bitmap_rows(request.rows_bitmap).tolist() == list(range(members))
    # The platform sends its feature names and one index each: no bin shares, no counts, no edges
    assert {f.name for f, _ in reply.ListFields()} == {"version", "features", "psi", "rows", "reference"}
    assert list(reply.features) == nodes.platform.data.feature_names
    assert len(reply.psi) == len(reply.features)
    assert all(round(v, INDEX_DECIMALS) == v for v in reply.psi)
    assert reply.rows == len(nodes.bank.stores.alignments.load(
        nodes.bank.stores.jobs.get(job).params["alignment_job_id"]).ids or [])


def test_the_training_report_shows_the_latest_answers(trained: tuple[Nodes, str]) -> None:
    nodes, job = trained
    nodes.bank.batch_score(job, "stability/report.parquet", overwrite=True)
    nodes.bank.stability.answer(job, batch="stability/report.parquet")
    report, _ = nodes.bank.report_document(job)
    assert report["stability"]["batch"]["batch"] == "stability/report.parquet"
    html = nodes.bank.report_html(job).decode()
    assert "<h2>Population stability</h2>" in html and "batch-score file stability/report.parquet" in html
    assert nodes.bank.stores.stability.load(job)["features"]["names"] == nodes.bank.data.feature_names  # kept


def test_the_cli_prints_the_bands(trained: tuple[Nodes, str], over_grpc: BankClient,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    nodes, job = trained
    nodes.bank.batch_score(job, "stability/cli.parquet", overwrite=True)
    run(over_grpc, argparse.Namespace(command="stability", model=job, batch="stability/cli.parquet", online=False,
                                      json=False))
    out = capsys.readouterr().out
    assert f"score stability of model {job}" in out and "stable" in out
    assert nodes.platform.data.feature_names[0] in out and nodes.bank.data.feature_names[0] in out
    nodes.bank.score(job, list(nodes.bank.data.ids[:5]), online=True)
    run(over_grpc, argparse.Namespace(command="stability", model="latest", batch=None, online=False, json=False))
    printed = " ".join(capsys.readouterr().out.split())  # the table's title wraps
    assert f"score stability of model {job}: recent online scores" in printed  # the defaults
    with pytest.raises(grpc.RpcError) as refused:
        over_grpc.stability(job, batch_file="missing.parquet")
    assert "no batch-score file missing.parquet" in (refused.value.details() or "")


def test_recent_feature_counts_are_kept_without_a_thread_switch_per_call(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows wait in a list (no hand-off per call); the counting thread takes them in one go, every read counts
    what waits first, and past the bound a call's rows are left out (counted in ``dropped``)."""
    import party_common.stability as stability

    rng = np.random.default_rng(3)
    training = rng.normal(size=(400, 3))
    reference = FeatureReference.from_blocks(["a", "b", "c"], training, iter([training]))
    stores = open_node_stores(tmp_path / "state")
    stores.stability.save("train-window-01", {"features": reference.to_dict()})
    monkeypatch.setattr(stability, "COUNT_EVERY_S", 0.01)
    windows = stability.FeatureWindows(stores)
    for _ in range(5):
        windows.record("train-window-01", rng.normal(size=(2, 3)))
    _, counts, rows = windows.counts("train-window-01")  # read: everything recorded before it is counted
    assert rows == 10 and counts.sum() == 10 * 3
    windows.record("train-window-01", rng.normal(size=(1, 3)))
    for _ in range(200):  # the thread counts on its own, shortly after
        window = windows.windows.get("train-window-01")
        if window is not None and window.counts()[1] == 11:
            break
        time.sleep(0.01)
    assert windows.windows.get("train-window-01").counts()[1] == 11  # type: ignore[union-attr]

    monkeypatch.setattr(stability, "COUNT_EVERY_S", 30.0)
    monkeypatch.setattr(stability, "QUEUED_CALLS", 3)
    slow = stability.FeatureWindows(stores)
    for _ in range(5):
        slow.record("train-window-01", rng.normal(size=(1, 3)))
    assert slow.dropped == 2 and slow.counts("train-window-01")[2] == 3
