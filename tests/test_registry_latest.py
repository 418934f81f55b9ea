"""'latest' resolved without a query of the job list per call, and never stale: a finished train job, a
retirement here or a registry file changed by hand moves it."""

from __future__ import annotations

from pathlib import Path

import pytest

from party_bank.registry import ModelRegistry
from party_common.link import Retirement
from party_common.storage import NodeStores, open_node_stores
from protocols.errors import NotFound


class PlatformRetires:
    def retire_model(self, model_job_id: str) -> Retirement:
        return Retirement(model_job_id, "2026-01-01T00:00:00Z", False)


def finished_train_job(stores: NodeStores, job_id: str) -> str:
    stores.jobs.create(job_id, "train", "m", {})
    stores.jobs.mark_running(job_id)
    stores.jobs.finish(job_id, {})
    stores.models.save(job_id, {"job_id": job_id})
    return job_id


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(open_node_stores(tmp_path / "bank"), PlatformRetires())  # type: ignore[arg-type]


def test_latest_is_kept_between_calls_and_moves_with_jobs_and_retirement(registry: ModelRegistry,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    stores = registry.stores
    with pytest.raises(NotFound, match="no trained model"):
        registry.resolve("latest")
    first = finished_train_job(stores, "train-first-0001")
    assert registry.resolve("latest") == first  # a job that finished after a miss is found

    listed = []
    real_list = stores.jobs.list
    monkeypatch.setattr(stores.jobs, "list", lambda *a, **kw: listed.append(1) or real_list(*a, **kw))
    for _ in range(5):
        assert registry.resolve("latest") == first
    assert listed == []  # kept: no query of the job list per call

    second = finished_train_job(stores, "train-second-0002")
    assert registry.resolve("latest") == second
    stores.jobs.create("train-running-003", "train", "m", {})  # not finished: 'latest' stays
    assert registry.resolve("latest") == second

    registry.retire(second)
    assert registry.resolve("latest") == first

    # A registry document written by another process (by hand): seen at the watcher's next poll.
    stores.registry.save(first, {"model": first, "status": "retired", "retired_at": "2026-01-02T00:00:00Z"})
    registry._docs.poll()
    with pytest.raises(NotFound, match="no trained model"):
        registry.resolve("latest")


def test_a_status_change_moves_the_version_only_once_it_is_readable(tmp_path: Path) -> None:
    jobs = open_node_stores(tmp_path / "bank").jobs
    before = jobs.status_version
    jobs.create("train-x-00000001", "train", "m", {})
    assert jobs.status_version == before + 1
    jobs.set_progress("train-x-00000001", "halfway")  # not a status change
    assert jobs.status_version == before + 1
    jobs.mark_running("train-x-00000001")
    jobs.finish("train-x-00000001", {})
    assert jobs.status_version == before + 3
    assert [r.job_id for r in jobs.list(-1, status="succeeded")] == ["train-x-00000001"]
