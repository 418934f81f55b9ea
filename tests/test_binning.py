"""Label-free binning of one party's columns: properties of the bins, the [binning] table, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from party_common.certs import init_local_pki
from party_common.config import ConfigError, load_config
from protocols.binning import BinningError, BinningModel, BinningSpec
from simulations.cluster import write_configs

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
maybe_missing = st.one_of(finite, st.just(float("nan")))


@st.composite
def numeric_columns(draw: st.DrawFn) -> np.ndarray:
    """A matrix of 2..4 columns; values repeat (a few distinct ones) or not, some missing."""
    rows = draw(st.integers(2, 60))
    cols = []
    for _ in range(draw(st.integers(1, 4))):
        pool = draw(st.lists(finite, min_size=1, max_size=draw(st.sampled_from([2, 5, 200]))))
        values = draw(st.lists(st.one_of(st.sampled_from(pool), st.just(float("nan"))), min_size=rows,
                               max_size=rows))
        cols.append(values)
    return np.array(cols, dtype=np.float64).T


def _fit_or_all_constant(matrix: np.ndarray, bins: int = 10) -> BinningModel | None:
    try:
        return BinningModel.fit(matrix, spec=BinningSpec(bins=bins))
    except BinningError as err:
        assert "no column left to bin" in str(err)
        return None


@settings(max_examples=150, deadline=None)
@given(numeric_columns(), st.integers(2, 12))
def test_every_value_lands_in_exactly_one_bin_and_missing_in_its_own(matrix: np.ndarray, bins: int) -> None:
    model = _fit_or_all_constant(matrix, bins)
    if model is None:
        return
    out = model.transform(matrix)
    assert out.shape == (len(matrix), len(model.columns)) and out.dtype == np.int32
    onehot = model.one_hot(out)
    assert (onehot.sum(axis=1) == len(model.columns)).all()  # one bin per column, no more, no less
    at = {name: i for i, name in enumerate(model.input_columns)}
    for j, column in enumerate(model.columns):
        values = matrix[:, at[column.name]]
        missing = np.isnan(values)
        assert out[:, j].min() >= 0 and out[:, j].max() < column.n_bins
        assert column.n_bins <= bins + 1  # quantile bins plus the missing one
        if missing.any():
            assert (out[missing, j] == column.missing_bin).all()
            assert not (out[~missing, j] == column.missing_bin).any()
        else:
            assert column.missing_bin is None
        # left-closed intervals: a present value's bin lies between its edges
        edges = np.array([-np.inf, *column.edges, np.inf])
        present = values[~missing]
        assert (edges[out[~missing, j]] <= present).all() and (present < edges[out[~missing, j] + 1]).all()
        # fitted quantile bins each hold a training row; the counts are the training rows per bin
        assert all(c > 0 for c in column.counts) and sum(column.counts) == len(values)
        assert list(np.bincount(out[:, j], minlength=column.n_bins)) == list(column.counts)
    for name in model.dropped:  # only constant columns are left out here
        values = matrix[:, at[name]]
        assert len(np.unique(values[~np.isnan(values)])) + int(np.isnan(values).any()) <= 1


@settings(max_examples=80, deadline=None)
@given(numeric_columns())
def test_serialisation_round_trip_bins_the_same(matrix: np.ndarray) -> None:
    model = _fit_or_all_constant(matrix)
    if model is None:
        return
    again = BinningModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again.to_dict() == model.to_dict()
    assert (again.transform(matrix) == model.transform(matrix)).all()
    assert again.one_hot_names() == model.one_hot_names()


@settings(max_examples=80, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(list("abcdefghij")), st.none()), min_size=2, max_size=80),
       st.integers(1, 12))
def test_categories_keep_the_most_frequent_levels_and_other(values: list[str | None], keep: int) -> None:
    frame = pd.DataFrame({"city": values})
    spec = BinningSpec(max_categories=keep)
    try:
        model = BinningModel.fit(frame, spec=spec)
    except BinningError:
        assert len({v for v in values if v is not None}) + int(None in values) <= 1
        return
    column = model.column("city")
    counts = pd.Series([v for v in values if v is not None]).value_counts()
    assert len(column.levels) == min(keep, len(counts))
    assert column.has_other == (len(counts) > keep)
    kept_counts = [counts[level] for level in column.levels]
    assert all(counts[level] <= min(kept_counts) for level in counts.index if level not in column.levels)
    out = model.transform(frame)[:, 0]
    labels = column.labels()
    for value, b in zip(values, out, strict=True):
        expected = "missing" if value is None else value if value in column.levels else "other"
        assert labels[b] == expected
    again = BinningModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert (again.transform(frame) == model.transform(frame)).all()


def test_labels_and_one_hot_names() -> None:
    matrix = np.array([[1.0, 0.0], [2.0, 1.0], [3.0, np.nan], [4.0, 1.0]])
    model = BinningModel.fit(matrix, ["amount", "flag"], BinningSpec(bins=2))
    assert model.labels("amount") == ["[-inf, 3)", "[3, inf)"]
    assert model.labels("flag") == ["[-inf, 1)", "[1, inf)", "missing"]
    assert model.one_hot_names() == ["amount=[-inf, 3)", "amount=[3, inf)", "flag=[-inf, 1)", "flag=[1, inf)",
                                     "flag=missing"]
    assert model.n_bins == [2, 3]
    assert model.transform(np.array([[-100.0, 7.0], [3.0, np.nan]])).tolist() == [[0, 1], [1, 2]]


def test_explicit_edges_and_numeric_codes_as_categories() -> None:
    frame = pd.DataFrame({"age": [18, 25, 40, 70, 33], "education": [1, 2, 2, 3, 1]})
    spec = BinningSpec.from_dict({"columns": {"age": {"edges": [30, 60]}, "education": {"kind": "categorical"}}})
    model = BinningModel.fit(frame, spec=spec)
    assert model.labels("age") == ["[-inf, 30)", "[30, 60)", "[60, inf)"]
    assert model.labels("education") == ["1", "2", "3"]  # by frequency, ties by label
    assert model.transform(frame).tolist() == [[0, 0], [0, 1], [1, 1], [2, 2], [1, 0]]


def test_constant_column_is_left_out_and_named() -> None:
    matrix = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    model = BinningModel.fit(matrix, ["income", "country"])
    assert model.feature_names == ["income"]
    assert "constant" in model.dropped["country"]
    assert model.dropped_notes() == ["column 'country' left out of binning: constant (one value in every row): "
                                     "nothing to learn from it"]
    assert model.transform(matrix).shape == (3, 1)
    with pytest.raises(BinningError, match="column 'country' is not binned \\(left out: constant"):
        model.column("country")
    with pytest.raises(BinningError, match="no column left to bin: all 1 left out \\(constant: 'country'\\)"):
        BinningModel.fit(matrix[:, 1:], ["country"])


def test_a_column_of_100000_categories_is_refused_as_an_identifier_naming_it() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"customer_code": [f"c{i}" for i in range(100_000)],
                          "shop": rng.choice([f"s{i}" for i in range(40)], size=100_000)})
    model = BinningModel.fit(frame)
    assert model.feature_names == ["shop"]
    assert model.dropped["customer_code"].startswith("identifier-like: 100000 distinct levels on 100000 rows")
    assert model.n_bins == [21]  # 20 most frequent shops + other
    # many levels that each group many rows are a category column, not an identifier: top levels + other
    zip_codes = pd.DataFrame({"zip": rng.integers(0, 5000, size=100_000).astype(str)})
    assert BinningModel.fit(zip_codes).n_bins == [21]


def test_transform_errors_name_the_column() -> None:
    model = BinningModel.fit(pd.DataFrame({"city": ["a", "b", "a"], "amount": [1.0, 2.0, 3.0]}),
                             spec=BinningSpec(max_categories=5))
    with pytest.raises(BinningError, match="column 'city': 1 row\\(s\\) have a level not seen in training"):
        model.transform(pd.DataFrame({"city": ["a", "zzz"], "amount": [1.0, 1.0]}))
    with pytest.raises(BinningError, match="column 'amount': 1 missing value\\(s\\), but training had none"):
        model.transform(pd.DataFrame({"city": ["a", "a"], "amount": [1.0, None]}))
    with pytest.raises(BinningError, match="column\\(s\\) amount missing from the data"):
        model.transform(pd.DataFrame({"city": ["a"]}))
    with pytest.raises(BinningError, match="column 'amount', row 2: not a number"):
        BinningModel.fit(pd.DataFrame({"amount": ["1", "x"]}),
                         spec=BinningSpec.from_dict({"columns": {"amount": {"kind": "numeric"}}}))
    with pytest.raises(BinningError, match="expected \\(rows, 2\\)"):
        model.transform(np.zeros((2, 3)))
    with pytest.raises(BinningError, match="column\\(s\\) nope are not feature columns"):
        BinningModel.fit(np.zeros((2, 1)), ["a"], BinningSpec.from_dict({"columns": {"nope": {"bins": 3}}}))


def test_damaged_stored_binning_is_refused() -> None:
    doc = BinningModel.fit(np.arange(20.0).reshape(10, 2), ["a", "b"]).to_dict()
    doc["columns"][0]["counts"] = [1, 2]
    with pytest.raises(BinningError, match="model.json: column 'a': stored bins are inconsistent"):
        BinningModel.from_dict(doc, where="model.json")
    with pytest.raises(BinningError, match="not a binning of format version 1"):
        BinningModel.from_dict({"version": 99})


@pytest.mark.parametrize(("table", "message"), [
    ({"bins": 1}, "'bins' must be a whole number from 2"),
    ({"bins": "ten"}, "'bins' must be a whole number"),
    ({"columns": {"x": {"kind": "text"}}}, "column 'x': 'kind' must be one of numeric, categorical"),
    ({"columns": {"x": {"edges": [3, 1]}}}, "column 'x': 'edges' must be finite and strictly increasing"),
    ({"columns": {"x": {"edges": [1], "bins": 4}}}, "column 'x': give 'edges' or 'bins', not both"),
    ({"columns": {"x": {"kind": "categorical", "edges": [1]}}}, "'edges' are for numeric columns"),
])
def test_spec_errors_name_the_key_and_column(table: dict, message: str) -> None:
    with pytest.raises(BinningError, match=message.replace("(", r"\(")):
        BinningSpec.from_dict(table)


@pytest.fixture()
def bank_config(tmp_path: Path) -> Path:
    init_local_pki(tmp_path / "certs")
    (tmp_path / "b.csv").write_text("id,x,tag\n1,0.5,1\n")
    (tmp_path / "p.csv").write_text("id,y\n1,0.5\n")
    bank, _ = write_configs(tmp_path, bank_data=tmp_path / "b.csv", bank_id_column="id", bank_tag_columns=["tag"],
                            platform_data=tmp_path / "p.csv", platform_id_column="id", bank_port=7001,
                            platform_port=7002)
    return bank


def test_binning_table_in_the_node_config(bank_config: Path) -> None:
    assert load_config(bank_config, expected_role="bank").binning == BinningSpec()
    with bank_config.open("a") as f:
        f.write('\n[binning]\nbins = 5\n[binning.columns.x]\nkind = "categorical"\nmax_categories = 3\n')
    spec = load_config(bank_config, expected_role="bank").binning
    assert spec.bins == 5 and spec.for_column("x").kind == "categorical" and spec.for_column("x").max_categories == 3


@pytest.mark.parametrize(("extra", "message"), [
    ("[binning]\nbin = 5\n", r"\[binning\]: unknown key 'bin'; did you mean 'bins'\?"),
    ("[binning.columns.x]\nkinds = 'categorical'\n", r"\[binning\] column 'x': unknown key 'kinds'; did you mean 'kind'"),
    ("[binning]\nbins = 0\n", r"\[binning\]: 'bins' must be a whole number"),
])
def test_binning_table_errors_name_the_file_and_key(bank_config: Path, extra: str, message: str) -> None:
    with bank_config.open("a") as f:
        f.write("\n" + extra)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(bank_config, expected_role="bank")
    assert str(bank_config) in str(err.value)
