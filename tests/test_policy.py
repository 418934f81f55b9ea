"""The platform's policy: each knob refused with its name, approval mode, the operator's commands, the audit."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

import party_bank.node as bank_node
from party_bank.node import BankNode
from party_common.config import ConfigError, load_config
from party_common.jobs import JobError
from party_common.link import LocalPlatformLink, SessionContext
from party_common.policy import PolicyConfig, QuotaExceeded, is_awaiting_approval, parse_policy
from party_common.storage import NodeStores, NotAwaitingApproval, SqliteJobStore, UnknownJob, open_node_stores
from party_common.watch import POLLER
from party_platform import admin
from party_platform.cli import main as platform_main
from party_platform.node import PlatformNode
from party_platform.sessions import SessionRegistry
from protocols.errors import PeerError, ProtocolError
from protocols.shuffle import secret_permutation
from protocols.vfl_lr import TrainingError, TrainParams, run_bank_training
from tests.nodes_fixture import FAST_TRAIN, SimulatedFiles, node_config, simulated_files


@dataclass
class Pair:
    bank: BankNode
    platform: PlatformNode


@dataclass
class World:
    files: SimulatedFiles
    state: Path
    bank_stores: NodeStores
    platform_stores: NodeStores
    align: str
    model: str

    def nodes(self, **policy: Any) -> Pair:
        """Both nodes over this world's stores, the platform with ``policy``."""
        config = node_config(self.state, "platform", self.files.platform)
        platform = PlatformNode(replace(config, policy=PolicyConfig(**policy)), stores=self.platform_stores)
        bank = BankNode(node_config(self.state, "bank", self.files.bank, self.files.tags),
                        LocalPlatformLink(platform), stores=self.bank_stores)
        return Pair(bank, platform)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    state = tmp_path_factory.mktemp("state")
    files = simulated_files(tmp_path_factory.mktemp("data"))
    w = World(files, state, open_node_stores(state / "bank"), open_node_stores(state / "platform"), "", "")
    pair = w.nodes()
    align = pair.bank.wait(pair.bank.submit("align", "", {}), timeout_s=120)
    assert align.status == "succeeded", align.error
    train = pair.bank.wait(pair.bank.submit("train", "", {"train": FAST_TRAIN}), timeout_s=300)
    assert train.status == "succeeded", train.error
    w.align, w.model = align.job_id, train.job_id
    pair.bank.shutdown()
    yield w


def members(w: World, n: int = 3) -> list[str]:
    ids = [str(i) for i in w.bank_stores.alignments.load(w.align).ids or []]
    return ids[:n]


def run(pair: Pair, kind: str, params: dict[str, Any]) -> Any:
    record = pair.bank.wait(pair.bank.submit(kind, "", params), timeout_s=300)
    pair.bank.shutdown()
    return record


def test_policy_config_parses_and_names_bad_keys(tmp_path: Path) -> None:
    policy = parse_policy({"allowed_tags": ["a"], "min_intersection": 5, "approval": "manual"}, "p.toml [policy]")
    assert policy.allowed_tags == ("a",) and policy.min_intersection == 5 and policy.approval == "manual"
    for table, message in [({"allowed_tag": ["a"]}, "unknown key 'allowed_tag'"),
                           ({"min_intersection": 0}, "'min_intersection' must be a whole number"),
                           ({"allowed_models": "m"}, "'allowed_models' must be a list"),
                           ({"approval": "maybe"}, "'approval' must be one of auto, manual"),
                           ({"max_concurrent_jobs": True}, "'max_concurrent_jobs' must be a whole number")]:
        with pytest.raises(ValueError, match=message):
            parse_policy(table, "p.toml [policy]")
    path = tmp_path / "platform.toml"
    (tmp_path / "p.csv").write_text("id,x\n1,0.5\n")
    path.write_text('[node]\nname = "p"\nlisten = "127.0.0.1:1"\nstate_dir = "s"\n[data]\npath = "p.csv"\n'
                    'id_column = "id"\n[policy]\nmax_psi_rows = 0\n')
    with pytest.raises(ConfigError, match=r"platform.toml \[policy\]: 'max_psi_rows'"):
        load_config(path, expected_role="platform", require_tls=False)


def test_tags_models_and_features_refused_with_the_knob(world: World) -> None:
    tag = world.files.tags[0]
    pair = world.nodes(allowed_tags=[world.files.tags[1]])
    job = run(pair, "train", {"tags": [tag], "train": FAST_TRAIN})
    assert job.status == "failed" and "[policy] allowed_tags" in job.error and tag in job.error
    with pytest.raises(PeerError, match=r"\[policy\] allowed_tags") as refused:
        pair.bank.score(world.model, members(world), [tag])
    assert refused.value.code == "PERMISSION_DENIED"
    pair = world.nodes(allowed_models=["train-someother1"])
    with pytest.raises(PeerError, match=r"\[policy\] allowed_models"):
        pair.bank.score(world.model, members(world))
    # A model trained on features the policy no longer allows is refused by name.
    platform = world.nodes().platform
    kept = platform.data.feature_names[:2]
    pair = world.nodes(allowed_feature_columns=kept)
    assert pair.platform.data.feature_names == kept and pair.platform.data.features.shape[1] == 2
    with pytest.raises(PeerError, match=r"\[policy\] allowed_feature_columns"):
        pair.bank.score(world.model, members(world))
    with pytest.raises(ConfigError, match="'allowed_feature_columns' names column"):
        world.nodes(allowed_feature_columns=["no_such_column"])


def test_score_quotas_rate_and_rows_per_day(world: World) -> None:
    pair = world.nodes(partial_score_rows_per_day=10**9, partial_score_calls_per_minute=2)
    for _ in range(2):
        pair.bank.score(world.model, members(world))
    with pytest.raises(PeerError, match=r"\[policy\] partial_score_calls_per_minute") as refused:
        pair.bank.score(world.model, members(world))
    assert refused.value.code == "RESOURCE_EXHAUSTED"
    # Rows answered in the last 24 hours are read back from the audit after a restart.
    answered = sum(e.count for e in world.platform_stores.jobs.audit_events(event="partial scores")
                   if e.outcome == "ok")
    pair = world.nodes(partial_score_rows_per_day=answered + 3)
    assert pair.platform.policy.rows_today() == answered
    pair.bank.score(world.model, members(world, 3))
    with pytest.raises(PeerError, match=r"\[policy\] partial_score_rows_per_day"):
        pair.bank.score(world.model, members(world, 1))
    last = world.platform_stores.jobs.audit_events(world.model, event="partial scores")[-1]
    assert last.outcome == "refused (RESOURCE_EXHAUSTED)" and last.actor == "(in process)"


def test_intersection_and_psi_size_limits(world: World) -> None:
    pair = world.nodes(min_intersection=10**6)
    job = run(pair, "align", {})
    assert job.status == "failed" and "[policy] min_intersection" in job.error
    job = run(world.nodes(min_intersection=10**6), "train", {"alignment_job_id": world.align, "train": FAST_TRAIN})
    assert job.status == "failed" and "[policy] min_intersection" in job.error
    job = run(world.nodes(max_psi_rows=10), "align", {})
    assert job.status == "failed" and "[policy] max_psi_rows" in job.error and "at most 10 per PSI" in job.error


def test_concurrent_jobs_limit_names_the_knob() -> None:
    registry = SessionRegistry(lambda *a: object(), kinds=["psi"], max_sessions=1)  # type: ignore[arg-type,return-value]
    registry.open("psi", "job-aaaaaaaa", {}, SessionContext())
    with pytest.raises(QuotaExceeded, match=r"runs 1 jobs.*\[policy\] max_concurrent_jobs"):
        registry.open("psi", "job-bbbbbbbb", {}, SessionContext())


def test_approval_mode_waits_then_runs_and_the_operator_sees_everything(
        world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(bank_node, "APPROVAL_POLL_S", (0.05, 0.1))
    pair = world.nodes(approval="manual")
    job_id = pair.bank.submit("align", "needs approval", {}, actor="alice")
    assert _wait_for(lambda: _status(world.platform_stores, job_id) == "awaiting approval")
    assert _wait_for(lambda: _status(world.bank_stores, job_id) == "awaiting approval")
    config = tmp_config(world)
    assert platform_main(["jobs", "--config", str(config), "--status", "awaiting approval"]) == 0
    out = capsys.readouterr().out
    assert job_id in out and f"platform-node approve {job_id}" in out  # full names, never cut
    assert platform_main(["approve", job_id, "--config", str(config)]) == 0
    assert pair.bank.wait(job_id, timeout_s=120).status == "succeeded"
    assert platform_main(["jobs", "--config", str(config)]) == 0
    assert "; peak " in capsys.readouterr().out  # the platform's peak memory while the job ran
    events = [(e.event, e.actor) for e in world.platform_stores.jobs.audit_events(job_id)]
    assert events[0] == ("created", "(in process)") and ("approved", admin.operator_name()) in events
    assert ("created", "alice") in [(e.event, e.actor) for e in world.bank_stores.jobs.audit_events(job_id)]
    with pytest.raises(NotAwaitingApproval, match="succeeded, not awaiting approval"):
        world.platform_stores.jobs.approve(job_id, "bob")
    # Refused: the bank's job fails with the operator's refusal.
    refused_id = pair.bank.submit("align", "", {})
    assert _wait_for(lambda: _status(world.platform_stores, refused_id) == "awaiting approval")
    assert platform_main(["approve", refused_id, "--refuse", "--config", str(config)]) == 0
    record = pair.bank.wait(refused_id, timeout_s=60)
    pair.bank.shutdown()
    assert record.status == "failed" and "refused by the platform's operator" in record.error


def test_revoke_models_and_audit_commands(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_config(world)
    pair = world.nodes()
    pair.bank.score(world.model, members(world))
    assert platform_main(["models", "--config", str(config), "--json"]) == 0
    [row] = [m for m in json.loads(capsys.readouterr().out) if m["model"] == world.model]
    assert row["status"] == "active" and int(row["rows answered"]) >= 3
    assert platform_main(["revoke", "train-nosuchmodel", "--config", str(config)]) == 2
    assert "no model train-nosuchmodel" in capsys.readouterr().err
    assert platform_main(["audit", "--config", str(config), "--event", "partial scores"]) == 0
    assert "partial scores" in capsys.readouterr().out
    assert platform_main(["policy", "--config", str(config), "--json"]) == 0
    assert '"approval": "auto"' in capsys.readouterr().out
    assert platform_main(["policy", "--config", str(config)]) == 0  # for people: a table of knobs
    shown = capsys.readouterr().out
    assert re.search(r"^KNOB +VALUE$", shown, re.M) and re.search(r"^approval +auto$", shown, re.M), shown


def test_revoked_model_is_refused(world: World) -> None:
    # The command's own stores beside the node's (as on the platform's host); the revocation is undone after.
    pair = world.nodes()
    stores = open_node_stores(world.state / "platform", recover=False)
    message = admin.revoke(stores, world.model)
    try:
        assert "revoked" in message and "already" in admin.revoke(stores, world.model)
        POLLER.poll_all()  # what the poller does every CHECK_EVERY_S
        with pytest.raises(PeerError, match="revoked by the platform's operator") as refused:
            pair.bank.score(world.model, members(world))
        assert refused.value.code == "PERMISSION_DENIED"
    finally:
        stores.registry.delete(world.model)


def test_a_reused_job_id_is_refused_clearly(world: World) -> None:
    platform = world.nodes().platform
    with pytest.raises(ProtocolError, match=f"job ID {world.align} was already used"):
        platform.open_session("psi", world.align, {}, SessionContext())


def test_old_job_stores_migrate(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE jobs (job_id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL DEFAULT '',
                status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
                params_json TEXT NOT NULL DEFAULT '{}', result_json TEXT NOT NULL DEFAULT '{}',
                error TEXT NOT NULL DEFAULT '', progress TEXT NOT NULL DEFAULT '', created_at TEXT NOT NULL,
                finished_at TEXT NOT NULL DEFAULT '');
            CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, job_id TEXT,
                event TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '');
            INSERT INTO jobs (job_id, kind, status, created_at) VALUES ('align-00000001', 'align', 'succeeded', 't');
            INSERT INTO audit (at, job_id, event) VALUES ('t', 'align-00000001', 'created');
        """)
    store = SqliteJobStore(path)
    assert store.get("align-00000001").status == "succeeded"
    store.create("psi-000000002", "psi", "", {}, actor="bank", status="awaiting approval")
    store.approve("psi-000000002", "op")
    assert [(e.event, e.actor) for e in store.audit_events()][-1] == ("approved", "op")
    # A platform restart keeps what waits for (or got) its operator's approval, and marks a running job interrupted
    # (the bank resumes it); the bank's node marks both interrupted and runs them again.
    store.create("psi-000000003", "psi", "", {}, status="awaiting approval")
    store.create("psi-000000004", "psi", "", {})
    store.mark_running("psi-000000004")
    platform = SqliteJobStore(path, keep_waiting=True)
    assert [platform.get(f"psi-00000000{i}").status for i in (2, 3, 4)] == ["queued", "awaiting approval",
                                                                            "interrupted"]
    bank = SqliteJobStore(path)
    assert {bank.get(f"psi-00000000{i}").status for i in (2, 3)} == {"interrupted"}


def test_secret_permutations() -> None:
    for n in (0, 1, 2, 1000):
        assert sorted(secret_permutation(n).tolist()) == list(range(n))
    counts = Counter(tuple(secret_permutation(3).tolist()) for _ in range(3000))
    assert len(counts) == 6 and min(counts.values()) > 380  # each of 6 about 500 times


def test_is_awaiting_approval_reads_the_bank_view() -> None:
    assert is_awaiting_approval(PeerError("open psi session: job x is awaiting approval by the platform's "
                                          "operator", code="FAILED_PRECONDITION"))
    assert not is_awaiting_approval(PeerError("open psi session: refused", code="FAILED_PRECONDITION"))


def tmp_config(w: World) -> Path:
    path = w.state / "platform-cli.toml"
    path.write_text(f'[node]\nname = "platform"\nlisten = "127.0.0.1:1"\nstate_dir = "{w.state / "platform"}"\n'
                    f'[data]\npath = "{w.files.platform}"\nid_column = "id"\n')
    return path


def _status(stores: NodeStores, job_id: str) -> str:
    try:
        return stores.jobs.get(job_id).status
    except UnknownJob:
        return ""


def _wait_for(check: Any, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


def test_a_tiny_intersection_is_refused_before_any_work(world: World) -> None:
    pair = world.nodes()
    record = world.bank_stores.jobs.get(world.align)
    tiny = replace(record, job_id="align-tinytiny", result={**record.result, "intersection_size": 3})
    world.bank_stores.jobs.create(tiny.job_id, "align", "", {})
    world.bank_stores.jobs.finish(tiny.job_id, tiny.result)
    with pytest.raises(JobError, match="found 3 shared customers; training needs at least 10"):
        pair.bank.submit("train", "", {"alignment_job_id": tiny.job_id})
    pair.bank.shutdown()

    class NoPeer:
        def open(self, *args: Any) -> Any:
            raise AssertionError("a session was opened for an intersection too small to train on")

    bank = pair.bank.data.take([str(i) for i in pair.bank.data.ids[:3]])
    with pytest.raises(TrainingError, match="the intersection has 3 customers: too few to train on"):
        run_bank_training(NoPeer(), "train-tinytiny", bank, TrainParams(epochs=1, batch_size=64))  # type: ignore[arg-type]


def test_rows_per_day_are_counted_over_a_rolling_day_and_forgotten_after_it() -> None:
    from party_common.storage.jobs import MemoryJobStore
    from party_platform.policy import DAY_S, PlatformPolicy

    now = [1_000_000.0]
    policy = PlatformPolicy(PolicyConfig(partial_score_rows_per_day=100), platform_rows=10,
                            jobs=MemoryJobStore(), clock=lambda: now[0])
    policy.check_scoring("job-a", [], 60)
    now[0] += DAY_S / 2
    policy.check_scoring("job-a", [], 40)
    assert policy.rows_today() == 100
    with pytest.raises(QuotaExceeded, match="partial_score_rows_per_day"):
        policy.check_scoring("job-a", [], 1)
    now[0] += DAY_S / 2 + 1  # the first 60 rows are more than a day old now
    assert policy.rows_today() == 40
    policy.check_scoring("job-a", [], 60)
    assert policy.rows_today() == 100
