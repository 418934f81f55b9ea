"""Training on binned features (TrainParams.features = "binned"): each party bins its own columns from its
training rows, the platform's declared width and batch floor count its bins, and both halves score raw rows
through their stored binning, in-process and through both nodes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from party_bank.node import BankNode
from party_common.data_loading import load_party_data
from party_common.link import LocalPlatformLink
from party_common.storage import memory_node_stores
from party_platform.node import PlatformNode
from protocols.binning import BinningModel, BinningSpec, ColumnSpec
from protocols.channel import LocalPeer
from protocols.party_data import DataError, PartyData
from protocols.scoring import standardise
from protocols.vfl_lr import (
    BankModel,
    PlatformModel,
    TrainParams,
    make_platform_train_handler,
    run_bank_training,
)
from protocols.vfl_lr.label_privacy import batch_floor
from simulations.generate import SimulationConfig
from tests.nodes_fixture import FAST_TRAIN, SimulatedFiles, node_config, simulated_files
from tests.test_vfl_lr import simulate

# bins "configured": these tests are about binning itself; on their few labelled rows bins "auto" would train the
# platform on its raw columns (tests/test_bin_width.py tests that rule)
FAST = {"key_bits": 1024, "features": "binned", "bins": "configured", "epochs": 2, "batch_size": 128}


@pytest.fixture(scope="module")
def parties(tmp_path_factory: pytest.TempPathFactory) -> tuple[PartyData, PartyData]:
    config = SimulationConfig(n_bank=700, n_platform=800, overlap=0.8, n_tags=2, label_share=0.5, seed=5)
    return simulate(tmp_path_factory.mktemp("sim"), config)


def run(bank: PartyData, platform: PartyData, platform_spec: BinningSpec | None = None,
        bank_spec: BinningSpec | None = None, **kw: Any) -> tuple[Any, Any, list[PlatformModel]]:
    handlers, models = [], []

    def factory(kind: str, job_id: str, message: dict) -> Any:
        handler = make_platform_train_handler(job_id, message, platform, on_result=models.append, compute=1,
                                              binning=platform_spec, insecure_for_tests=True)
        handlers.append(handler)
        return handler

    outcome = run_bank_training(LocalPeer(factory), "job-binned", bank, TrainParams(**{**FAST, **kw}), compute=1,
                                binning=bank_spec, insecure_for_tests=True)
    return outcome, handlers[-1], models


def test_each_party_bins_its_own_columns_and_the_floor_counts_the_platforms_bins(parties) -> None:
    bank, platform = parties
    first = platform.feature_names[0]
    spec = BinningSpec(bins=5, columns={first: ColumnSpec(kind="categorical", max_categories=3)})
    outcome, handler, models = run(bank, platform, platform_spec=spec, bank_spec=BinningSpec(bins=4))
    split = TrainParams(**FAST).split(bank.labels, bank.ids)
    # label-free: the platform's binning is a function of its own values on the training rows alone
    expected = BinningModel.fit(platform.features[split.train], platform.feature_names, spec)
    plat_model = models[-1]
    assert plat_model.binning is not None and plat_model.binning.to_dict() == expected.to_dict()
    assert plat_model.binning.column(first).kind == "categorical"
    width = int(expected.offsets()[-1])
    assert width > len(platform.feature_names)
    # what the platform declared at train.setup, and the floor it enforces, count its bins
    assert handler.X.shape[1] == width == plat_model.weights.shape[0]
    assert handler.floor == batch_floor(width, 2)
    assert outcome.report["binning"]["platform"] == {"bins": width, "rule": "configured", "width_cap": None,
                                                     "configured_bins": 5, "mode": "binned", "bins_per_column": 5}
    bank_model = outcome.model
    assert bank_model.binning is not None and bank_model.binning.spec.bins == 4
    assert outcome.report["binning"]["bank"]["bins"] == bank_model.weights.shape[0]
    # the bank-only yardstick trained on the same bins as the bank's half
    assert bank_model.bank_only is not None and bank_model.bank_only.weights.shape == bank_model.weights.shape
    assert bank_model.schema == bank.schema and plat_model.schema == platform.schema  # raw columns to score


def test_halves_score_raw_rows_through_their_binning_and_round_trip(parties) -> None:
    bank, platform = parties
    outcome, _, models = run(bank, platform)
    for model, data in ((outcome.model, bank), (models[-1], platform)):
        rows = data.features[:7]
        assert model.binning is not None
        onehot = model.binning.one_hot(model.binning.transform(rows))
        s = model.scaler
        expected = standardise(onehot, s.mean, s.std, s.clip) @ model.weights
        if isinstance(model, BankModel):
            expected = expected + model.intercept
        np.testing.assert_allclose(model.partial_scores(rows), expected, rtol=1e-12)
        cls = type(model)
        again = cls.from_dict(json.loads(json.dumps(model.to_dict())), where="test")
        np.testing.assert_array_equal(again.partial_scores(rows), model.partial_scores(rows))
    damaged = models[-1].to_dict()
    damaged["binning"]["input_columns"] = ["other"] * len(damaged["binning"]["input_columns"])
    with pytest.raises(ValueError, match="test: damaged platform model"):
        PlatformModel.from_dict(damaged, where="test")


def test_a_constant_platform_column_is_left_out_and_training_goes_on(parties) -> None:
    bank, platform = parties
    features = platform.features.copy()
    features[:, 1] = 3.0
    constant = dataclasses.replace(platform, features=features)
    _, _, models = run(bank, constant, epochs=1)
    binning = models[-1].binning
    assert binning is not None and platform.feature_names[1] in binning.dropped
    assert platform.feature_names[1] not in binning.feature_names


def test_raw_stays_the_default_and_bad_modes_are_refused() -> None:
    assert TrainParams().features == "raw"
    with pytest.raises(ValueError, match="features must be 'raw' or 'binned'"):
        TrainParams(features="woe").validate()


# ---- through both nodes: the [binning] table, the job parameter, online and batch scoring ----


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> SimulatedFiles:
    return simulated_files(tmp_path_factory.mktemp("data"))


def test_nodes_train_on_bins_and_score_online_and_in_batch(files: SimulatedFiles, tmp_path: Path) -> None:
    platform_data = load_party_data(files.platform, id_column="id")
    first = platform_data.feature_names[0]
    platform_config = dataclasses.replace(node_config(tmp_path, "platform", files.platform),
                                          binning=BinningSpec(bins=4, columns={first: ColumnSpec(bins=3)}))
    platform = PlatformNode(platform_config, data=platform_data, stores=memory_node_stores())
    bank = BankNode(node_config(tmp_path, "bank", files.bank, files.tags), LocalPlatformLink(platform),
                    data=load_party_data(files.bank, id_column="id", tag_columns=files.tags),
                    stores=memory_node_stores())
    align = bank.wait(bank.submit("align", "binned", {}), timeout_s=120)
    assert align.status == "succeeded", align.error
    train = bank.wait(bank.submit("train", "binned", {"train": {**FAST_TRAIN, "features": "binned",
                                                                          "bins": "configured"}}),
                      timeout_s=300)
    assert train.status == "succeeded", train.error
    bank_model = BankModel.from_dict(bank.stores.models.load(train.job_id), where="test")
    plat_model = PlatformModel.from_dict(platform.stores.models.load(train.job_id), where="test")
    assert plat_model.binning is not None and plat_model.binning.column(first).n_bins <= 3
    assert plat_model.binning.spec.bins == 4 and bank_model.binning is not None
    shared = sorted(files.shared_ids)[:4]
    scores = bank.score(train.job_id, shared)
    rows_b = [bank.data.row_of(i) for i in shared]
    rows_p = [platform.data.row_of(i) for i in shared]
    z = bank_model.partial_scores(bank.data.features[rows_b]) + plat_model.partial_scores(
        platform.data.features[rows_p])
    np.testing.assert_allclose(scores.probabilities, bank_model.probabilities(z), rtol=1e-9)
    report = bank.stores.reports.load(train.job_id)
    assert report["binning"]["platform"]["bins"] == plat_model.weights.shape[0]
    html = bank.report_html(train.job_id).decode()
    assert "<h2>Binned features</h2>" in html and f"<td>{bank_model.weights.shape[0]}</td>" in html
    path, count = bank.batch_score(train.job_id, "binned.csv")
    frame = pd.read_csv(path, dtype={"id": str}).set_index("id")
    assert count == len(frame)
    p_columns = [c for c in frame.columns if c.startswith("p_")]
    np.testing.assert_allclose(frame.loc[shared, p_columns].to_numpy(), scores.probabilities, rtol=1e-6)


def test_a_platform_with_nothing_to_bin_stops_the_job_naming_its_columns(parties) -> None:
    bank, platform = parties
    constant = dataclasses.replace(platform, features=np.ones_like(platform.features))
    names = ", ".join(f"'{c}'" for c in platform.feature_names)
    with pytest.raises(DataError, match=f"platform.csv: no column left to bin: all {len(names.split(', '))} left "
                                        f"out \\(constant: {names}\\)"):
        run(bank, constant, epochs=1)


def test_the_cli_turns_binned_training_on() -> None:
    from party_bank.cli import build_parser, train_params

    args = build_parser().parse_args(["train", "--config", "b.toml", "--features", "binned"])
    assert train_params(args) == {"features": "binned"}
    args = build_parser().parse_args(["train", "--config", "b.toml", "--features", "binned", "--bins", "configured"])
    assert train_params(args) == {"features": "binned", "bins": "configured"}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--config", "b.toml", "--features", "woe"])


def test_a_resumed_binned_job_ends_with_the_uninterrupted_model(parties) -> None:
    """Each party refits its binning on resume, from the same training rows: the same bins, the same model."""
    from protocols.vfl_lr.messages import Step
    from tests.test_resume import Kill, resumed, uninterrupted, weights

    bank, platform = parties
    reference, ref_platform = uninterrupted(bank, platform, features="binned", label_dp="on")
    outcome, again, _ = resumed(bank, platform, [Kill(Step.GRADIENT, 2, after=True)], platform_restarts=True,
                                features="binned", label_dp="on")
    for got, want in zip(weights(outcome, again), weights(reference, ref_platform), strict=True):
        assert np.array_equal(got, want)  # bit for bit
    assert again.models[-1].binning is not None and ref_platform.models[-1].binning is not None
    assert again.models[-1].binning.to_dict() == ref_platform.models[-1].binning.to_dict()


def test_with_bins_auto_too_few_labels_train_the_platform_on_raw_columns_and_the_report_says_so(parties) -> None:
    """About 200 labelled training rows per tag leave room for 20 platform bins: not even 5 bins of each of its
    columns fit, so the platform trains on its raw columns, its half scores them, and the bank's
    report names the rule's choice."""
    bank, platform = parties
    outcome, handler, models = run(bank, platform, bins="auto", epochs=None, batch_size=None)
    assert handler.binning is None and handler.X.shape[1] == len(platform.feature_names)
    plat_model = models[-1]
    assert plat_model.binning is None and plat_model.weights.shape[0] == len(platform.feature_names)
    side = outcome.report["binning"]["platform"]
    assert side["mode"] == "raw" and side["bins"] == len(platform.feature_names) and side["rule"] == "auto"
    assert "trains on the platform's" in side["note"] and side["width_cap"] < 5 * len(platform.feature_names)
    assert outcome.model.binning is not None  # the bank still trains on its own bins
    rows = platform.features[:5]
    s = plat_model.scaler
    np.testing.assert_allclose(plat_model.partial_scores(rows), standardise(rows, s.mean, s.std, s.clip)
                               @ plat_model.weights, rtol=1e-12)
