"""Enriched score files, segments with a seeded control group, and their lift: node-level, plus one gRPC run."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from party_bank import cli
from party_bank.score_files import OutputError, read_ids, read_outcomes, safe_output_path
from party_bank.segments import CONTROL, TARGET, SegmentService, lift
from protocols.errors import NotFound, UserError
from protocols.party_data import DataError
from simulations.cluster import LocalCluster
from tests.nodes_fixture import FAST_TRAIN, Nodes, SimulatedFiles, make_nodes, simulated_files

TAG_COLUMNS = ("p_", "rank_", "decile_", "label_known_")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> SimulatedFiles:
    return simulated_files(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained(files: SimulatedFiles, tmp_path_factory: pytest.TempPathFactory) -> tuple[Nodes, str, list[str]]:
    """Both nodes (in-memory stores, files under a temporary state dir) after one align and one train job."""
    nodes = make_nodes(files, tmp_path_factory.mktemp("state"))
    align = nodes.bank.wait(nodes.bank.submit("align", "", {}), timeout_s=120)
    assert align.status == "succeeded", align.error
    train = nodes.bank.wait(nodes.bank.submit("train", "", {"train": FAST_TRAIN}), timeout_s=300)
    assert train.status == "succeeded", train.error
    return nodes, train.job_id, list(nodes.bank.stores.alignments.load(align.job_id).ids or ())


@pytest.fixture(scope="module")
def service(trained: tuple[Nodes, str, list[str]]) -> SegmentService:
    return SegmentService(trained[0].bank)


# ---- enriched score files ----


def test_batch_score_writes_enriched_columns_ranks_and_deciles(trained: tuple[Nodes, str, list[str]],
                                                              files: SimulatedFiles) -> None:
    nodes, model, members = trained
    path, rows = nodes.bank.batch_score(model, "enriched.parquet")
    assert path == nodes.bank.config.state_dir / "scores" / "enriched.parquet"
    frame = pd.read_parquet(path)
    assert rows == len(frame) == len(members) and frame["id"].tolist() == members
    expected = ["id", "status"] + [f"{c}{t}" for t in files.tags for c in TAG_COLUMNS] + ["platform_known", "model"]
    assert list(frame.columns) == expected
    assert (frame["status"] == "ok").all() and frame["platform_known"].all() and (frame["model"] == model).all()
    n = len(frame)
    for tag in files.tags:
        p, rank, decile = frame[f"p_{tag}"], frame[f"rank_{tag}"], frame[f"decile_{tag}"]
        assert sorted(rank) == list(range(1, n + 1))
        assert p.iloc[int(np.argmin(rank))] == p.max()  # 1 = highest
        assert (np.diff(p.to_numpy()[np.argsort(rank.to_numpy())]) <= 0).all()
        assert (decile == (rank - 1) * 10 // n + 1).all() and decile[rank <= n // 10].eq(1).all()
        assert decile.value_counts().between(n // 10, n // 10 + 1).all()
        col = nodes.bank.data.tag_names.index(tag)
        labels = nodes.bank.data.labels[[nodes.bank.data.row_of(i) for i in members], col]
        assert frame[f"label_known_{tag}"].tolist() == (~np.isnan(labels)).tolist()
    np.testing.assert_allclose(frame[[f"p_{t}" for t in files.tags]].to_numpy(),
                               nodes.bank.score(model, members).probabilities)


def test_string_ids_survive_csv_and_parquet(trained: tuple[Nodes, str, list[str]]) -> None:
    nodes, model, members = trained
    assert all(i.startswith("+") for i in members)
    for name in ("ids.csv", "ids.parquet"):
        path, _ = nodes.bank.batch_score(model, name)
        back = pd.read_csv(path, dtype=str) if name.endswith(".csv") else pd.read_parquet(path)
        assert back["id"].tolist() == members
    lines = (nodes.bank.config.state_dir / "scores" / "ids.csv").read_text().splitlines()
    assert lines[0].startswith('"id","status","p_') and lines[1].startswith(f'"{members[0]}","ok",')


def test_all_customers_flags_the_outsiders(trained: tuple[Nodes, str, list[str]], files: SimulatedFiles) -> None:
    nodes, model, _ = trained
    path, rows = nodes.bank.batch_score(model, "everyone.parquet", all_customers=True)
    frame = pd.read_parquet(path)
    assert rows == len(nodes.bank.data.ids) and frame["id"].tolist() == list(nodes.bank.data.ids)
    assert frame["platform_known"].tolist() == [i in files.shared_ids for i in frame["id"]]
    assert frame[f"p_{files.tags[0]}"].between(0, 1).all()


def test_ids_file_reports_unknown_ids_per_row(trained: tuple[Nodes, str, list[str]], tmp_path: Path) -> None:
    nodes, model, members = trained
    outsider = next(i for i in nodes.bank.data.ids if i not in set(members))
    ids_file = tmp_path / "ids.csv"
    pd.DataFrame({"id": [members[0], "+440000000000", outsider, members[0]]}).to_csv(ids_file, index=False)
    ids = read_ids(ids_file, "id")
    result = SegmentService(nodes.bank).batch_score(model, "wanted.csv", ids=ids)
    assert (result.rows, result.unknown, result.platform_known) == (4, 1, 1)
    frame = pd.read_csv(result.path, dtype=str, keep_default_na=False)
    assert frame["id"].tolist() == ids
    # the same statuses as online scoring: an outsider is `not_in_intersection` in a file too
    assert frame["status"].tolist() == ["ok", "unknown_customer", "not_in_intersection", "repeated"]
    assert frame["platform_known"].tolist() == ["True", "", "False", ""]
    assert frame["p_" + nodes.bank.data.tag_names[0]][1] == ""
    assert frame["rank_" + nodes.bank.data.tag_names[0]][[0, 2]].astype(int).tolist() in ([1, 2], [2, 1])
    one_column = tmp_path / "phones.parquet"
    pd.DataFrame({"phone": [outsider]}).to_parquet(one_column)
    assert read_ids(one_column, "id") == [outsider]
    two = tmp_path / "two.csv"
    pd.DataFrame({"a": ["1"], "b": ["2"]}).to_csv(two, index=False)
    with pytest.raises(DataError, match="no column 'id'"):
        read_ids(two, "id")


def test_output_paths_are_refused_outside_scores_and_never_overwritten(
        trained: tuple[Nodes, str, list[str]]) -> None:
    nodes, model, _ = trained
    for bad, message in [("/tmp/x.parquet", "absolute paths are refused"), ("../x.parquet", "'..' is refused"),
                         ("a/../../x.csv", "'..' is refused"), ("~/x.csv", "absolute"),
                         ("x.xlsx", ".csv or .parquet"), ("", "give an output file name")]:
        with pytest.raises(OutputError, match=message):
            nodes.bank.batch_score(model, bad)
    path, _ = nodes.bank.batch_score(model, "campaign/once.csv")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    with pytest.raises(OutputError, match="already exists.*--overwrite"):
        nodes.bank.batch_score(model, "campaign/once.csv", tags=[nodes.bank.data.tag_names[0]])
    assert path.read_bytes() == before
    nodes.bank.batch_score(model, "campaign/once.csv", tags=[nodes.bank.data.tag_names[0]], overwrite=True)
    assert path.read_bytes() != before and stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_symlinked_folder_in_an_output_path_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    scores, outside = tmp_path / "scores", tmp_path / "outside"
    outside.mkdir()
    scores.mkdir()
    (scores / "campaign").mkdir()
    (scores / "campaign" / "link").symlink_to(outside, target_is_directory=True)
    (scores / "elsewhere").symlink_to(outside, target_is_directory=True)
    (scores / "report.csv").symlink_to(outside / "report.csv")
    (scores / "plain").write_text("a file")
    for bad, message in [("campaign/link/new/deeper/x.csv", "campaign/link is a symbolic link"),
                         ("elsewhere/x.parquet", "elsewhere is a symbolic link"),
                         ("report.csv", "report.csv is a symbolic link"),
                         ("plain/x.csv", "plain is a file, not a folder")]:
        with pytest.raises(OutputError, match=message):
            safe_output_path(scores, bad)
    assert list(outside.iterdir()) == []  # nothing was created through the links
    assert sorted(p.name for p in scores.iterdir()) == ["campaign", "elsewhere", "plain", "report.csv"]
    assert [p.name for p in (scores / "campaign").iterdir()] == ["link"]
    out = safe_output_path(scores, "campaign/march/week1/x.csv")  # missing folders are made after the check
    assert out == scores / "campaign" / "march" / "week1" / "x.csv" and out.parent.is_dir()
    assert stat.S_IMODE(out.parent.stat().st_mode) == 0o700


# ---- segments ----


def test_segment_sizes_control_share_and_strata(service: SegmentService,
                                                trained: tuple[Nodes, str, list[str]]) -> None:
    nodes, model, members = trained
    tag = nodes.bank.data.tag_names[0]
    record = service.create(model, tag, name="top-third", top_share=0.3, control_share=0.2, seed=7)
    n_sel = int(np.floor(0.3 * len(members) + 0.5))
    assert (record["n"], record["selected"]) == (len(members), n_sel)
    assert record["control_size"] == int(np.floor(0.2 * n_sel + 0.5))
    assert record["target_size"] + record["control_size"] == n_sel and record["seed"] == 7
    groups = pd.read_parquet(service.segments_dir / record["file"])
    assert len(groups) == n_sel and set(groups["group"]) == {TARGET, CONTROL}
    all_p = pd.read_parquet(nodes.bank.batch_score(model, "for-segment.parquet")[0])[f"p_{tag}"]
    assert groups[f"p_{tag}"].min() >= all_p.nlargest(n_sel).min()  # the top share, by score
    per_stratum = groups.groupby("stratum")["group"].apply(lambda g: (g == CONTROL).sum())
    sizes = groups["stratum"].value_counts().sort_index()
    assert len(sizes) == 10 and ((per_stratum - 0.2 * sizes).abs() <= 1).all()  # each decile holds its share
    assert [s["control"] for s in record["strata"]] == per_stratum.tolist()
    cut = float(all_p.median())  # calibrated scores need not reach 0.5: cut at the median
    by_min = service.create(model, tag, name="min-score", min_score=cut, control_share=0.1, seed=1)
    assert by_min["selected"] == int((all_p >= cut).sum()) and by_min["rule"] == {"min_score": cut}


def test_same_seed_same_groups_other_seed_other_groups(service: SegmentService,
                                                       trained: tuple[Nodes, str, list[str]]) -> None:
    nodes, model, _ = trained
    tag = nodes.bank.data.tag_names[1]

    def control(name: str, seed: int, fmt: str = "parquet") -> set[str]:
        record = service.create(model, tag, name=name, top_share=0.5, control_share=0.3, seed=seed, fmt=fmt)
        frame = (pd.read_csv(service.segments_dir / record["file"], dtype=str) if fmt == "csv"
                 else pd.read_parquet(service.segments_dir / record["file"]))
        return set(frame.loc[frame["group"] == CONTROL, "id"])

    first = control("seed-a", 42)
    assert control("seed-b", 42, "csv") == first and control("seed-c", 43) != first
    assert all(i.startswith("+") for i in first)
    with pytest.raises(OutputError, match="already exists"):
        control("seed-a", 42)
    drawn = service.create(model, tag, name="seed-drawn", top_share=0.5, control_share=0.3)
    assert isinstance(drawn["seed"], int)


def test_segment_record_holds_no_ids(service: SegmentService, trained: tuple[Nodes, str, list[str]]) -> None:
    nodes, model, _ = trained
    tag = nodes.bank.data.tag_names[0]
    record = service.create(model, tag, name="no-ids", top_share=0.2, control_share=0.25, seed=3)
    text = json.dumps(nodes.bank.stores.segments.load("segment-no-ids"))
    assert not any(cid in text for cid in nodes.bank.data.ids)
    assert {"n", "seed", "model", "tag", "created_at", "rule", "control_size", "expected"} <= set(record)
    expected = record["expected"]
    assert expected["test_auc"] is not None and 0 < expected["test_positive_rate"] < 1
    assert service.get("no-ids") == record and "no-ids" in [r["name"] for r in service.list()]
    with pytest.raises(NotFound, match="no segment"):
        service.get("never-made")
    for kwargs, message in [({"top_share": 0.2, "min_score": 0.5}, "one selection rule"),
                            ({"top_share": 0.2, "control_share": 1.0}, "control share"),
                            ({"min_score": 1.0}, "too few"), ({"top_share": 0.2, "name": "bad/name"}, "name")]:
        args = {"name": "refused", "control_share": 0.1, **kwargs}
        with pytest.raises(UserError, match=message):
            service.create(model, tag, **args)


# ---- segment results ----


def test_lift_and_interval(service: SegmentService, trained: tuple[Nodes, str, list[str]]) -> None:
    nodes, model, _ = trained
    record = service.create(model, nodes.bank.data.tag_names[0], name="campaign", top_share=1.0,
                            control_share=0.5, seed=5)
    groups = pd.read_parquet(service.segments_dir / record["file"])
    rng = np.random.default_rng(0)
    target = (groups["group"] == TARGET).to_numpy()
    ids = groups["id"].tolist() + ["+449999999999"]
    better = np.r_[np.where(target, rng.random(len(groups)) < 0.8, rng.random(len(groups)) < 0.2), [1]]
    result = service.result("campaign", ids, better.astype(int).tolist(), source="responses.csv")
    t, c = result["groups"][TARGET], result["groups"][CONTROL]
    assert t["with_outcome"] + c["with_outcome"] == len(groups) and result["not_in_segment"] == 1
    assert result["absolute_lift"] == pytest.approx(t["responders"] / t["with_outcome"]
                                                    - c["responders"] / c["with_outcome"])
    low, high = result["absolute_lift_ci95"]
    assert 0.3 < low < result["absolute_lift"] < high and result["relative_lift_ci95"][0] > 0
    same = np.r_[(np.arange(len(groups)) % 2 == 0), [0]].astype(int)  # 50% in both groups, no difference
    null = service.result("campaign", ids, same.tolist())
    assert null["absolute_lift_ci95"][0] < 0 < null["absolute_lift_ci95"][1]
    assert null["relative_lift_ci95"][0] < 0 < null["relative_lift_ci95"][1]
    kept = service.get("campaign")["readout"]  # the last readout is kept with the segment, counts only
    assert kept["groups"] == null["groups"] and kept["absolute_lift"] == null["absolute_lift"] and kept["read_at"]
    assert not any(str(i) in json.dumps(kept) for i in ids[:20])
    with pytest.raises(UserError, match="responses.csv: row 3: outcome 2 is not 0 or 1"):
        service.result("campaign", ids[:3], [0, 1, 2], source="responses.csv")
    with pytest.raises(UserError, match="rows 1 and 3 have the same customer ID"):
        service.result("campaign", [ids[0], ids[1], ids[0]], [0, 1, 1])


def test_lift_matches_a_hand_computation() -> None:
    r = lift(30, 100, 20, 100)
    se = np.sqrt(0.3 * 0.7 / 100 + 0.2 * 0.8 / 100)
    assert r["absolute_lift"] == pytest.approx(0.1)
    assert r["absolute_lift_ci95"] == pytest.approx([0.1 - 1.959964 * se, 0.1 + 1.959964 * se])
    assert r["relative_lift"] == pytest.approx(0.5)
    assert lift(0, 0, 1, 10)["absolute_lift"] is None


def test_outcome_files_name_the_bad_row(tmp_path: Path) -> None:
    good = tmp_path / "outcomes.csv"
    good.write_text("id,converted\n+447700900123,1\n+447700900456,0\n")
    assert read_outcomes(good, "id", "converted") == (["+447700900123", "+447700900456"], [1, 0])
    bad = tmp_path / "bad.csv"
    bad.write_text("id,outcome\n+447700900123,1\n+447700900456,yes\n")
    with pytest.raises(DataError, match=r"bad.csv: column 'outcome', row 2: 'yes' is not an outcome"):
        read_outcomes(bad, "id")
    with pytest.raises(DataError, match="no outcome column 'converted'"):
        read_outcomes(bad, "id", "converted")


# ---- through the control API ----


def test_cli_through_grpc(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = simulated_files(tmp_path / "data")
    with LocalCluster(tmp_path / "cluster", bank_data=files.bank, bank_id_column="id", bank_tag_columns=files.tags,
                      platform_data=files.platform, platform_id_column="id", workers=1) as cluster:
        client = cluster.bank_client()
        client.align()
        model = client.train(tags=files.tags, train=FAST_TRAIN)["job_id"]
        config = ["--config", str(cluster.bank_config), *cluster.operator_args]
        ids = tmp_path / "ids.csv"
        ids.write_text("id\n+440000000000\n" + "\n".join(sorted(files.shared_ids)[:3]) + "\n")
        assert cli.main(["batch-score", *config, "--model", model, "--out", "few.csv", "--ids-file", str(ids)]) == 0
        few = pd.read_csv(cluster.workdir / "state/bank/scores/few.csv", dtype=str)
        assert few["status"].tolist() == ["unknown_customer", "ok", "ok", "ok"] and few["id"][0] == "+440000000000"
        assert cli.main(["batch-score", *config, "--model", model, "--out", "/etc/x.csv"]) == 1
        assert "absolute paths are refused" in capsys.readouterr().err
        assert cli.main(["segment", *config, "--model", model, "--tag", files.tags[0], "--top", "50%",
                         "--control", "20%", "--seed", "9", "--out", "grpc-seg", "--json"]) == 0
        record = json.loads(capsys.readouterr().out)
        assert cli.main(["segments", *config, "grpc-seg"]) == 0  # the record for people: a table
        shown = capsys.readouterr().out
        assert re.search(r"^seed +9$", shown, re.M) and re.search(r"^control_size +\d+$", shown, re.M), shown
        assert record["seed"] == 9 and record["control_size"] == round(0.2 * record["selected"])
        groups = pd.read_parquet(cluster.workdir / "state/bank/segments/grpc-seg.groups.parquet")
        outcomes = tmp_path / "outcomes.csv"
        pd.DataFrame({"id": groups["id"], "outcome": (groups["group"] == TARGET).astype(int)}).to_csv(
            outcomes, index=False)
        assert cli.main(["segment-result", *config, "grpc-seg", "--outcomes", str(outcomes), "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["target_rate"] == 1.0 and result["control_rate"] == 0.0
        assert cli.main(["segments", *config]) == 0 and "grpc-seg" in capsys.readouterr().out
    assert cluster.stop() == {"platform": 0, "bank": 0}
