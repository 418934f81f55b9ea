"""The short soak: both nodes as processes over mTLS; SIGKILL the bank, then the platform, mid-training; each
job resumes from its checkpoints and ends with the uninterrupted run's model, bit for bit, on both nodes."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.quality import DATASETS
from benchmarks.soak import soak


@pytest.mark.skipif(not (DATASETS / "default_credit_hetero_guest.csv").exists(), reason="default_credit not found")
def test_killed_nodes_resume_training_with_the_same_model(tmp_path: Path) -> None:
    # 800 customers, one epoch of 6 batches, a checkpoint after every batch; each kill lands mid-epoch.
    result = soak(tmp_path, kills=2, rows=800, seed=3, workers=1, train={"epochs": 1, "checkpoint_every": 1},
                  kill_window=(0.3, 0.6), down_window=(0.1, 0.3), min_progress="epoch 1/1: ")
    assert [k["node"] for k in result["kills"]] == ["bank", "platform"]
    for kill in result["kills"]:
        assert kill["progress_at_kill"].startswith("epoch 1/1"), kill  # its batches, or its validation
        assert (kill["status"], kill["platform_status"]) == ("succeeded", "succeeded"), kill
    assert (result["survived"], result["identical_models"], result["total"]) == (2, 2, 2)
