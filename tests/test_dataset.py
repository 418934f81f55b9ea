"""Data loading: each validation error names the file, column and row; schemas guard scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from party_common.data_loading import load_party_data
from protocols.party_data import DataError, SchemaMismatch, tag_summary

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def write(tmp_path: Path, text: str, name: str = "bank.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_loads_csv_keeps_leading_zero_ids_and_tags(tmp_path: Path) -> None:
    path = write(tmp_path, "id,a,b,tag\n0012,1.5,2,1\n 0013 ,-1,3e2,\n14,0,0,0\n")
    data = load_party_data(path, id_column="id", tag_columns=["tag"])
    assert list(data.ids) == ["0012", "0013", "14"]
    np.testing.assert_array_equal(data.features, [[1.5, 2], [-1, 300], [0, 0]])
    assert data.labels[0, 0] == 1 and np.isnan(data.labels[1, 0]) and data.labels[2, 0] == 0
    assert data.feature_names == ["a", "b"] and data.tag_names == ["tag"]
    assert tag_summary(data.labels, data.tag_names) == [{"tag": "tag", "known": 2, "positive": 1, "negative": 1}]


def test_loads_parquet(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pd.DataFrame({"uid": ["a", "b"], "x": [1.0, 2.0], "flag": [True, False]}).to_parquet(path)
    data = load_party_data(path, id_column="uid")
    np.testing.assert_array_equal(data.features, [[1, 1], [2, 0]])
    assert data.schema.feature_dtypes == ("float64", "bool")


@pytest.mark.parametrize(("text", "kwargs", "message"), [
    ("uid,a\n1,2\n", {}, "no ID column 'id'"),
    ("id,a\n1,2\n,3\n", {}, "column 'id', row 2: empty ID"),
    ("id,a\n1,2\n2,3\n1,4\n", {}, "rows 1 and 3 have the same ID"),
    ("id,a\n1,2\n2,\n", {}, "column 'a', row 2: missing value"),
    ("id,a\n1,2\n2,inf\n", {}, "column 'a', row 2: infinite value"),
    ("id,a\n1,2\n2,abc\n", {}, "column 'a', row 2: 'abc' is not a number"),
    ("id,a,tag\n1,2,1\n2,3,yes\n", {"tag_columns": ["tag"]}, "tag column 'tag', row 2: 'yes' is not 0, 1 or empty"),
    ("id,a,tag\n1,2,1\n2,3,2\n", {"tag_columns": ["tag"]}, "'2' is not 0, 1 or empty"),
    ("id,tag\n1,1\n", {"tag_columns": ["tag"]}, "no feature columns"),
    ("id,a\n1,2\n", {"feature_columns": ["a", "b"]}, "missing column(s) b"),
    ("id,a\n", {}, "header but no rows"),
    ("", {}, "the file is empty"),
])
def test_validation_errors_name_file_column_row(tmp_path: Path, text: str, kwargs: dict, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(DataError) as err:
        load_party_data(path, id_column="id", **kwargs)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_error_messages_never_contain_ids(tmp_path: Path) -> None:
    path = write(tmp_path, "id,a\n+447700900123,2\n+447700900123,3\n")
    with pytest.raises(DataError) as err:
        load_party_data(path, id_column="id")
    assert "+447700900123" not in str(err.value)


def test_fill_options(tmp_path: Path) -> None:
    path = write(tmp_path, "id,a\n1,2\n2,\n3,4\n")
    assert load_party_data(path, id_column="id", fill_missing="zero").features[1, 0] == 0
    assert load_party_data(path, id_column="id", fill_missing="mean").features[1, 0] == 3
    path = write(tmp_path, "id,a\n1,2\n2,inf\n")
    with pytest.raises(DataError, match="infinite"):
        load_party_data(path, id_column="id", fill_missing="zero")


def test_missing_file_and_bad_suffix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        load_party_data(tmp_path / "none.csv", id_column="id")
    with pytest.raises(DataError, match="unsupported file type"):
        load_party_data(write(tmp_path, "x", "data.xlsx"), id_column="id")


def test_schema_mismatch_at_scoring(tmp_path: Path) -> None:
    train = load_party_data(write(tmp_path, "id,a,b,tag\n1,1,2,1\n"), id_column="id", tag_columns=["tag"])
    ok = load_party_data(write(tmp_path, "id,a,b\n9,1,2\n", "s.csv"), id_column="id", expected_schema=train.schema)
    assert ok.feature_names == ["a", "b"]
    for text, message in [("id,a\n9,1\n", "missing feature column(s) b"),
                          ("id,a,b,c\n9,1,2,3\n", "unexpected feature column(s) c"),
                          ("id,b,a\n9,1,2\n", "different order")]:
        with pytest.raises(SchemaMismatch, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_party_data(write(tmp_path, text, "s.csv"), id_column="id", expected_schema=train.schema)
    assert train.schema.fingerprint() != ok.schema.fingerprint()  # tags differ


def test_take_reorders_and_refuses_unknown(tmp_path: Path) -> None:
    data = load_party_data(write(tmp_path, "id,a,t\nx,1,1\ny,2,0\nz,3,\n"), id_column="id", tag_columns=["t"])
    sub = data.take(["z", "x"])
    np.testing.assert_array_equal(sub.features[:, 0], [3, 1])
    assert list(sub.ids) == ["z", "x"]
    with pytest.raises(DataError, match="position 2 of the alignment"):
        data.take(["x", "nope"])


def test_real_fate_datasets_load() -> None:
    guest = load_party_data(SHARED / "breast_hetero_guest.csv", id_column="id", tag_columns=["y"])
    host = load_party_data(SHARED / "breast_hetero_host.csv", id_column="id")
    assert guest.features.shape == (569, 10) and host.features.shape == (569, 20)
    assert set(np.unique(guest.labels)) == {0.0, 1.0}
    assert set(guest.ids) == set(host.ids)


@pytest.mark.parametrize("fill", ["error", "zero", "mean"])
def test_all_missing_column_is_dropped_with_a_warning(tmp_path: Path, fill: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "id,a,empty,b,tag\n1,2,,5,1\n2,3,,6,0\n")
    warnings: list[str] = []
    with caplog.at_level("WARNING", logger="party_common.data_loading"):
        data = load_party_data(path, id_column="id", tag_columns=["tag"], fill_missing=fill,  # type: ignore[arg-type]
                               on_warning=warnings.append)
    assert data.feature_names == ["a", "b"] and data.features.shape == (2, 2)
    assert data.schema.feature_columns == ("a", "b")
    assert len(warnings) == 1 and "'empty'" in warnings[0] and str(path) in warnings[0]
    assert warnings[0] in caplog.text


def test_all_missing_parquet_column_dropped_and_all_empty_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pd.DataFrame({"id": ["a", "b"], "x": [1.0, 2.0], "none": [None, None]}).to_parquet(path)
    assert load_party_data(path, id_column="id").feature_names == ["x"]
    with pytest.raises(DataError, match="every feature column is entirely missing"):
        load_party_data(write(tmp_path, "id,a,b\n1,,\n2,,\n"), id_column="id")


def test_scoring_matches_training_after_a_dropped_column(tmp_path: Path) -> None:
    train = load_party_data(write(tmp_path, "id,a,empty\n1,1,\n2,2,\n"), id_column="id")
    score = load_party_data(write(tmp_path, "id,a,empty\n9,1,\n", "s.csv"), id_column="id",
                            expected_schema=train.schema)
    assert score.feature_names == ["a"]


@pytest.mark.parametrize("text", ["id,a\n1,2\n2,1e300\n", "id,a\n1,2\n2,-2e151\n"])
def test_values_that_would_overflow_standardisation_are_refused(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(DataError, match="column 'a', row 2: value of magnitude above 1e\\+150") as err:
        load_party_data(path, id_column="id", fill_missing="zero")
    assert str(path) in str(err.value)
    assert load_party_data(write(tmp_path, "id,a\n1,2\n2,1e100\n"), id_column="id").features[1, 0] == 1e100


def test_centralized_report_uses_the_fill_setting(tmp_path: Path) -> None:
    from simulations.run import centralized_report

    rng = np.random.default_rng(0)
    n = 80
    ids = [f"c{i}" for i in range(n)]
    x = rng.normal(size=n)
    y = (x + rng.normal(scale=0.5, size=n) > 0).astype(int)
    bank = pd.DataFrame({"id": ids, "x": x, "gone": "", "y": y})
    platform = pd.DataFrame({"id": ids, "z": rng.normal(size=n)})
    bank["x"] = bank["x"].astype(object)
    bank.loc[::7, "x"] = ""  # a few missing values
    platform["z"] = platform["z"].astype(object)
    platform.loc[::9, "z"] = ""
    bank.to_csv(tmp_path / "bank.csv", index=False)
    platform.to_csv(tmp_path / "platform.csv", index=False)

    class Cluster:
        def bank_alignment(self, _job: str) -> object:
            return type("Alignment", (), {"ids": ids})()

    args = (Cluster(), tmp_path / "bank.csv", "id", tmp_path / "platform.csv", "id", ["y"], "job", {"seed": 1})
    with pytest.raises(DataError, match="missing value"):
        centralized_report(*args)  # type: ignore[arg-type]
    central = centralized_report(*args, fill_missing="zero")  # type: ignore[arg-type]
    assert central["y"]["auc"] is not None
