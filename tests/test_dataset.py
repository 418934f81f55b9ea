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
