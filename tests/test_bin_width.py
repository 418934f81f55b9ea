"""bins = "auto" (protocols/vfl_lr/bin_width.py): the platform keeps its one-hot width within what the batch
floor leaves room for on the labelled rows per tag, by fewer bins per column or, when even those are too many,
its raw columns, and says so in a summary the bank's report shows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from protocols.binning import BinningSpec, ColumnSpec
from protocols.errors import ProtocolError
from protocols.party_data import PartyData, Schema
from protocols.vfl_lr import TrainParams
from protocols.vfl_lr.bin_width import AUTO_EPOCHS, platform_features, read_platform_binning, width_cap
from protocols.vfl_lr.label_privacy import FLOOR_FACTOR, batch_floor

ROWS, COLUMNS = 5000, 4
BINNED = TrainParams(features="binned")


@pytest.fixture(scope="module")
def platform() -> PartyData:
    rng = np.random.default_rng(0)
    names = [f"p{i}" for i in range(COLUMNS)]
    return PartyData("platform.csv", [f"id{i}" for i in range(ROWS)], rng.normal(size=(ROWS, COLUMNS)), names,
                     np.zeros((ROWS, 0)), [], Schema("id", tuple(names), ("float64",) * COLUMNS))


def mask(labelled: list[int], rows: int = ROWS) -> np.ndarray:
    """Training rows x tags, the first ``labelled[t]`` rows of tag t labelled."""
    out = np.zeros((rows, len(labelled)), dtype=bool)
    for t, n in enumerate(labelled):
        out[:n, t] = True
    return out


def test_the_cap_is_the_floor_of_the_fewest_labelled_tag() -> None:
    assert width_cap(mask([1000, 3000]), BINNED) == 1000 // (FLOOR_FACTOR * AUTO_EPOCHS)
    assert width_cap(mask([0, 861]), BINNED) == 861 // (FLOOR_FACTOR * AUTO_EPOCHS)  # a tag without labels: none
    assert width_cap(mask([1000]), TrainParams(features="binned", epochs=5)) == 1000 // (FLOOR_FACTOR * 5)
    # a platform at the cap meets the floor with one full batch per epoch
    cap = width_cap(mask([977]), BINNED)
    assert cap is not None and batch_floor(cap, AUTO_EPOCHS) <= 977 < batch_floor(cap + 1, AUTO_EPOCHS)
    for params in (TrainParams(features="binned", bins="configured"), TrainParams(features="binned", label_dp="on")):
        assert width_cap(mask([10]), params) is None
    assert width_cap(mask([0, 0]), BINNED) is None


def test_bins_as_configured_when_they_fit(platform: PartyData) -> None:
    train = np.arange(4000)
    chosen = platform_features(platform, train, None, mask([4000]), BINNED)  # cap 400 >= 40 bins
    assert chosen.binning is not None and chosen.binning.n_bins == [10] * COLUMNS
    assert chosen.data.features.shape == (ROWS, 40)
    assert chosen.summary == {"rule": "auto", "width_cap": 400, "configured_bins": 10, "mode": "binned",
                              "bins_per_column": 10}


def test_fewer_bins_per_column_when_the_configured_ones_miss_the_floor(platform: PartyData) -> None:
    train = np.arange(4000)
    chosen = platform_features(platform, train, None, mask([250, 2000]), BINNED)  # cap 25: 6 bins x 4 columns
    assert chosen.binning is not None and chosen.binning.n_bins == [6] * COLUMNS
    assert chosen.data.features.shape[1] == 24 <= chosen.summary["width_cap"] == 25
    assert chosen.summary["bins_per_column"] == 6 and chosen.summary["mode"] == "binned"
    assert "40 bins at 10 per column would need 400 labelled training rows of every tag per batch (10 x bins x 1 epoch)" in chosen.summary["note"]
    assert "a tag has 250: at most 25 bins meet the batch floor, so 6 bins per column" in chosen.summary["note"]
    # an operator's explicit edges stay as they are; the table's default bins give way around them
    spec = BinningSpec(columns={"p0": ColumnSpec(edges=(-1.0, 0.0, 1.0))})
    chosen = platform_features(platform, train, spec, mask([250]), BINNED)
    assert chosen.binning is not None and chosen.binning.n_bins == [4, 7, 7, 7]


def test_raw_columns_when_even_the_fewest_bins_miss_it(platform: PartyData) -> None:
    chosen = platform_features(platform, np.arange(4000), None, mask([190]), BINNED)  # cap 19 < 5 bins x 4
    assert chosen.binning is None and chosen.data is platform
    assert chosen.summary["mode"] == "raw" and chosen.summary["bins_per_column"] is None
    assert chosen.summary["note"].endswith("so this job trains on the platform's 4 raw columns")


def test_configured_bins_and_raw_jobs_are_left_alone(platform: PartyData) -> None:
    configured = platform_features(platform, np.arange(4000), None, mask([200]),
                                   TrainParams(features="binned", bins="configured"))
    assert configured.binning is not None and configured.data.features.shape[1] == 40
    assert "note" not in configured.summary and configured.summary["width_cap"] is None
    raw = platform_features(platform, np.arange(4000), None, mask([200]), TrainParams())
    assert raw.binning is None and raw.data is platform and raw.summary == {}
    with pytest.raises(Exception, match="bins must be 'auto' or 'configured'"):
        TrainParams(bins="some").validate()


def test_the_summary_the_bank_reads_is_checked() -> None:
    summary = {"rule": "auto", "width_cap": 25, "configured_bins": 10, "mode": "binned", "bins_per_column": 6,
               "note": "fewer bins"}
    assert read_platform_binning(json.dumps(summary)) == summary
    assert read_platform_binning(None) == {} and read_platform_binning("{}") == {}
    for bad in ("not json", json.dumps([1]), json.dumps({"edges": [1.0]}), json.dumps({"mode": True}),
                json.dumps({"note": "x" * 3000}), b"{}", json.dumps({"mode": {"nested": 1}})):
        with pytest.raises(ProtocolError, match="platform_binning is not a binning summary"):
            read_platform_binning(bad)


def test_the_html_report_shows_the_platforms_choice() -> None:
    from party_bank.report_binning import binning_section

    raw = {"binning": {"bank": {"columns": 3, "bins": 30}, "platform": {"bins": 4, "mode": "raw", "rule": "auto",
                                                                        "note": "so this job trains on <raw>"}}}
    html = binning_section(raw)
    assert "its raw columns" in html and "so this job trains on &lt;raw&gt;" in html
    fewer = {"binning": {"bank": {}, "platform": {"bins": 24, "mode": "binned", "bins_per_column": 6}}}
    assert "<th>Platform: bins per column</th><td>6</td>" in binning_section(fewer)
