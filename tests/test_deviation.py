"""Partners that deviate from the protocol (issue 23): each attack of ``benchmarks.deviation`` at a small size,
against the real nodes over the in-memory link (the benchmark runs them over gRPC with mutual TLS). Every
outcome must be "refused", "detected" or "bounded"; "open" means the attack still works."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import deviation
from protocols.party_data import PartyData

SMALL = {"epochs": 1, "batch_size": 128, "validation_share": 0.1, "early_stopping_patience": 0, "serve": "joint"}


@pytest.fixture(scope="module")
def breast() -> tuple[PartyData, PartyData]:
    return deviation.load_breast()


def check(result: dict) -> None:
    assert result["outcome"] in ("refused", "detected", "bounded"), result


def test_a_platform_crafting_the_mask_path_gets_no_more_than_label_dp_allows(tmp_path: Path, breast) -> None:
    """1. Crafted train.emask replies: the bank's masks, then every label, read from the residuals. Forced into label
    DP (its declared width misses the floor), it reads each row's noisy label and no more: at the default epsilon 3
    its accuracy stays under the Bayes bound of one mu-GDP release."""
    bank, platform = breast
    result = deviation.attack_mask_oracle(tmp_path, bank, platform, {**SMALL, "label_dp": "auto"}, wire=False)
    assert result["label_privacy_mode"] == "dp" and result["labels_read"] > 300, result
    assert result["within_dp_bound"], result


def test_a_platform_crafting_the_mask_path_under_label_dp_at_epsilon_1_gets_no_more_than_it_allows(
        tmp_path: Path, breast) -> None:
    """1. The same attack at epsilon 1, where the bound is the majority rate plus 0.001 (the issue's goal, within
    0.02 of the majority rate, is below what 410 labels can resolve in one run: BENCHMARKS.md)."""
    bank, platform = breast
    result = deviation.attack_mask_oracle(tmp_path, bank, platform, {**SMALL, "label_dp": "on", "dp_epsilon": 1.0},
                                          wire=False)
    assert result["dp_bound"] < result["majority_rate"] + 0.002 and result["within_dp_bound"], result


def test_crafted_tags_get_no_more_projections_than_the_budget(tmp_path: Path, breast) -> None:
    """3. Label classes of one row on the validation split: each multiset attributes z_B to those rows."""
    bank, platform = breast
    check(deviation.attack_crafted_tags(tmp_path, bank, platform, {**SMALL, "epochs": 2, "label_dp": "on"}, 7,
                                        budget=1, wire=False))


def test_a_platform_declaring_a_row_norm_bound_of_one_gains_nothing_under_label_dp(tmp_path: Path,
                                                                                   breast) -> None:
    """4. The bank reads no bound from the platform any more (v3); a platform that declares one anyway and runs the
    stacked least-squares attack on its unclipped gradients reads each row's noisy label at best: under the Bayes
    bound of label DP."""
    bank, platform = breast
    result = deviation.attack_floor(tmp_path, bank, platform, {**SMALL, "epochs": 3, "label_dp": "on"}, row_bound=1,
                                    wire=False)
    assert result["label_privacy_mode"] == "dp" and result["within_dp_bound"], result


def test_a_platform_declaring_one_feature_gains_nothing_over_an_honest_one(tmp_path: Path, breast) -> None:
    """4. One declared feature lowers the batch floor to 10 x epochs rows."""
    bank, platform = breast
    check(deviation.attack_floor(tmp_path, bank, platform, {"label_dp": "auto", "serve": "joint"}, n_features=1,
                                 wire=False))


def test_replayed_jobs_and_new_alignments_release_no_more_projections_than_the_budget(tmp_path: Path,
                                                                                      breast) -> None:
    """5. A finished job's ID re-opened with ``resumed``, then a new alignment of the same customers."""
    bank, platform = breast
    check(deviation.attack_replay(tmp_path, bank, platform, SMALL, wire=False))


def test_keys_of_the_wrong_size_or_with_small_factors_are_refused(tmp_path: Path, breast) -> None:
    """6. A 4096-bit key for a 2048-bit job (the benchmark: 8192), a factor above 20,000: refused by size and trial
    division. 32 primes of 64 bits pass both and are refused by the modulus proof (docs/security.md, "Checks on a
    received key")."""
    bank, platform = breast
    result = deviation.attack_keys(tmp_path, bank, platform, SMALL, quick=True, wire=False)
    keys = result["keys"]
    assert result["outcome"] == "refused" and all(k["outcome"] == "refused" for k in keys.values()), result
    assert "check 'modulus proof' failed" in keys["32_small_primes"]["error"], result


def test_an_output_path_through_a_symlink_creates_nothing_outside(tmp_path: Path) -> None:
    """7. ``safe_output_path`` with a symlinked parent."""
    result = deviation.attack_symlink(tmp_path)
    assert result == {"outcome": "refused", "created_outside": False}
