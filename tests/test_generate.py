"""The simulator: deterministic for a seed, the configured overlap and label coverage, realistic IDs,
and a platform signal that really adds to the bank's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from party_common.data_loading import load_party_data
from simulations.generate import SimulationConfig, generate, main, write


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    config = SimulationConfig(n_bank=500, n_platform=700, seed=3)
    a = write(generate(config), tmp_path / "a")
    b = write(generate(config), tmp_path / "b")
    c = write(generate(SimulationConfig(n_bank=500, n_platform=700, seed=4)), tmp_path / "c")
    for key in ("bank", "platform", "truth"):
        assert a[key].read_bytes() == b[key].read_bytes()
        assert a[key].read_bytes() != c[key].read_bytes()


@pytest.mark.parametrize("overlap", [0.0, 0.3, 1.0])
def test_overlap_and_label_coverage(overlap: float) -> None:
    config = SimulationConfig(n_bank=4000, n_platform=5000, overlap=overlap, label_share=0.1, seed=1)
    data = generate(config)
    shared = set(data.bank["id"]) & set(data.platform["id"])
    assert len(shared) == round(overlap * config.n_bank)
    assert len(data.bank) == 4000 and len(data.platform) == 5000
    assert data.truth["in_platform"].sum() == len(shared)
    for tag in data.tag_columns:
        share = data.bank[tag].notna().mean()
        assert 0.08 < share < 0.12, (tag, share)


def test_ids_unique_realistic_and_rows_shuffled() -> None:
    data = generate(SimulationConfig(n_bank=2000, n_platform=3000, seed=2))
    for frame in (data.bank, data.platform):
        assert frame["id"].is_unique
        assert all(re.fullmatch(r"\+447\d{9}", x) for x in frame["id"])
    platform_ids, bank_ids = set(data.platform["id"]), set(data.bank["id"])
    shared = [x for x in data.bank["id"] if x in platform_ids]
    platform_order = [x for x in data.platform["id"] if x in bank_ids]
    assert shared != platform_order  # each side shuffled on its own


def test_written_files_load_cleanly(tmp_path: Path) -> None:
    for fmt in ("csv", "parquet"):
        data = generate(SimulationConfig(n_bank=300, n_platform=400, n_tags=3, file_format=fmt))
        paths = write(data, tmp_path / fmt)
        bank = load_party_data(paths["bank"], id_column="id", tag_columns=data.tag_columns)
        platform = load_party_data(paths["platform"], id_column="id")
        assert bank.labels.shape == (300, 3) and platform.features.shape[0] == 400
        assert 10 <= bank.features.shape[1] <= 20 and 20 <= platform.features.shape[1] <= 35


def test_platform_features_add_signal() -> None:
    data = generate(SimulationConfig(n_bank=6000, n_platform=6000, overlap=1.0, label_share=1.0, seed=5))
    joined = data.bank.set_index("id").join(data.platform.set_index("id"), how="inner")
    bank_cols = [c for c in data.bank.columns if c != "id" and not c.startswith("tag_")]
    both = bank_cols + [c for c in data.platform.columns if c != "id"]
    y = joined["tag_young_family"].astype(int).to_numpy()
    half = len(y) // 2
    aucs = {}
    for name, cols in (("bank", bank_cols), ("joint", both)):
        X = StandardScaler().fit_transform(joined[cols].to_numpy(dtype=float))
        model = LogisticRegression(max_iter=500).fit(X[:half], y[:half])
        aucs[name] = roc_auc_score(y[half:], model.predict_proba(X[half:])[:, 1])
    assert aucs["bank"] > 0.6
    assert aucs["joint"] > aucs["bank"] + 0.05


def test_bad_config_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="n_tags"):
        generate(SimulationConfig(n_tags=9))
    assert main(["--out", str(tmp_path), "--overlap", "2"]) == 2
    assert "overlap" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # a refused config writes nothing
    assert main(["--out", str(tmp_path), "--n-bank", "50", "--n-platform", "60"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.csv", "platform.csv", "truth.csv"]
