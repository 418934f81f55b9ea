"""Both nodes as separate processes over mutual TLS, driven through the control API as a data scientist would."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest

from simulations.cluster import LocalCluster
from tests.nodes_fixture import FAST_TRAIN, simulated_files


def test_align_train_score_and_batch_score_between_two_processes(tmp_path: Path) -> None:
    files = simulated_files(tmp_path / "data")
    with LocalCluster(tmp_path / "cluster", bank_data=files.bank, bank_id_column="id", bank_tag_columns=files.tags,
                      platform_data=files.platform, platform_id_column="id", workers=1) as cluster:
        client = cluster.bank_client()
        align = client.align(mode="both", protocol="ecdh")  # the OT protocol (the default) is in test_nodes
        assert align["intersection_size"] == len(files.shared_ids) and align["psi_protocol"] == "ecdh"
        assert align["psi_kernel"]["name"] in ("multi-buffer", "cryptography")
        train = client.train(tags=files.tags, train=FAST_TRAIN)
        assert train["alignment_job_id"] == align["job_id"] and set(train["metrics"]) == set(files.tags)

        bank_ids = pd.read_csv(files.bank, dtype=str)["id"].tolist()
        shared = [i for i in bank_ids if i in files.shared_ids][:3]
        alone = [i for i in bank_ids if i not in files.shared_ids][:2]
        scores = client.score(train["job_id"], shared + alone)
        probs = scores.probabilities
        assert scores.tags == files.tags and probs.shape == (5, 2) and ((probs > 0) & (probs < 1)).all()
        assert scores.platform_known.tolist() == [True, True, True, False, False]
        assert scores.status == ["ok"] * 3 + ["not_in_intersection"] * 2
        assert (scores.projections_released, scores.projections_limit) == (2, scores.projections_limit)
        assert scores.projections_limit >= 2
        path, rows = client.batch_score(train["job_id"], "scores.csv")
        assert rows == len(files.shared_ids) and Path(path).exists()

        # Errors reach the data scientist as statuses with a message, not as traces.
        unknown = client.score(train["job_id"], ["+440000000000", shared[0]])
        assert unknown.status == ["unknown_customer", "ok"] and np.isnan(unknown.probabilities[0]).all()
        with pytest.raises(grpc.RpcError) as refused:
            client.score("train-20000101-000000-000000", [shared[0]])
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND and "/" not in (refused.value.details() or "")
        with pytest.raises(grpc.RpcError) as bad:
            client.submit("train", {"train": {"lr": 0.1}})
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'lr'" in (bad.value.details() or "")
        jobs = client.jobs()
        assert [j["kind"] for j in jobs] == ["train", "align"] and all(j["status"] == "succeeded" for j in jobs)
        assert np.isfinite(probs).all()
    assert cluster.stop() == {"platform": 0, "bank": 0}
