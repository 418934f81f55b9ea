"""The model registry: names, aliases (NAME@LABEL) for scoring, retirement on both nodes, over restarts and gRPC."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest

from party_bank import cli
from party_bank.cli_models import models_command, models_table
from party_bank.client import BankClient
from party_bank.control import ControlServicer
from party_bank.grpc_link import GrpcPlatformLink
from party_bank.registry import (
    ALIASES_DOC,
    ModelRegistry,
    ModelRetired,
    UnknownAlias,
)
from party_common.jobs import SESSION_KINDS
from party_common.link import Retirement
from party_common.storage import open_node_stores
from party_platform.node import RETIRE_EVENT
from party_platform.service import NodeServicer
from party_platform.sessions import SessionRegistry
from proto import fedprofile_v1_pb2 as pb
from proto import fedprofile_v1_pb2_grpc as pb_grpc
from protocols.errors import NotFound, PeerError, UserError
from tests.nodes_fixture import FAST_TRAIN, Nodes, SimulatedFiles, make_nodes, simulated_files


@dataclass
class Trained:
    nodes: Nodes
    state: Path
    align: str
    first: str  # "car-owner", tag 0
    second: str  # "car-owner-v2", both tags
    doomed: str  # "old", tag 0: retired by the tests


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> SimulatedFiles:
    return simulated_files(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained(files: SimulatedFiles, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    state = tmp_path_factory.mktemp("state")
    nodes = make_nodes(files, state, bank_stores=open_node_stores(state / "bank"),
                       platform_stores=open_node_stores(state / "platform"))
    bank = nodes.bank
    align = bank.wait(bank.submit("align", "alignment", {}), timeout_s=120)
    assert align.status == "succeeded", align.error
    ids = []
    for name, tags in (("car-owner", files.tags[:1]), ("car-owner-v2", files.tags), ("old", files.tags[:1])):
        job = bank.wait(bank.submit("train", name, {"tags": tags, "train": FAST_TRAIN}), timeout_s=300)
        assert job.status == "succeeded", job.error
        ids.append(job.job_id)
    return Trained(nodes, state, align.job_id, *ids)


def shared_ids(t: Trained, files: SimulatedFiles, n: int = 4) -> list[str]:
    return [i for i in t.nodes.bank.data.ids if i in files.shared_ids][:n]


def test_list_shows_name_tags_auc_alignment_and_status(trained: Trained, files: SimulatedFiles) -> None:
    models = {m["model"]: m for m in trained.nodes.bank.registry.list()}
    first = models[trained.first]
    assert first["name"] == "car-owner" and first["tags"] == files.tags[:1] and first["status"] == "active"
    assert first["alignment"] == trained.align and first["created_at"]
    report_auc = trained.nodes.bank.stores.reports.load(trained.first)["metrics"][files.tags[0]]["joint"]["auc"]
    assert first["test_auc"] == {files.tags[0]: report_auc} and 0 < report_auc < 1
    assert models[trained.second]["tags"] == files.tags and set(models[trained.second]["test_auc"]) == set(files.tags)
    table = models_table(list(models.values()))
    served = "joint" if first["served"][files.tags[0]] == "joint" else "bank-only"
    cell = f"{files.tags[0]}={served} {first['served_test_auc'][files.tags[0]]:.3f}"
    assert "car-owner-v2" in table and cell in table and "STATUS" in table


def test_an_alias_scores_like_the_job_id_online_in_batch_and_in_segments(trained: Trained,
                                                                         files: SimulatedFiles) -> None:
    bank = trained.nodes.bank
    bank.registry.set_alias("owner@staging", trained.first)
    ids = shared_ids(trained, files)
    by_alias, by_id = bank.score("owner@staging", ids), bank.score(trained.first, ids)
    assert by_alias.tags == by_id.tags and np.allclose(by_alias.probabilities, by_id.probabilities)
    path, rows = bank.batch_score("owner@staging", "alias.csv")
    frame = pd.read_csv(path, dtype=str)
    assert rows == len(files.shared_ids) and set(frame["model"]) == {trained.first}
    reply = ControlServicer(bank).Segment(pb.SegmentRequest(  # the control API resolves the alias, once
        model_job_id="owner@staging", tag=files.tags[0], name="alias-seg", top_share=0.5, control_share=0.2,
        seed=3), None)  # type: ignore[arg-type]
    assert '"model": "' + trained.first + '"' in reply.segment_json


def test_moving_an_alias_is_one_write_and_audited(trained: Trained, files: SimulatedFiles) -> None:
    registry = trained.nodes.bank.registry
    assert registry.set_alias("car-owner@prod", trained.first)["previous"] is None
    moved = registry.set_alias("car-owner@prod", trained.second)
    assert moved == {"alias": "car-owner@prod", "model": trained.second, "previous": trained.first}
    assert registry.resolve("car-owner@prod") == trained.second
    assert trained.nodes.bank.score("car-owner@prod", shared_ids(trained, files, 2)).tags == files.tags
    assert trained.nodes.bank.stores.registry.load(ALIASES_DOC)["aliases"]["car-owner@prod"] == trained.second
    events = trained.nodes.bank.stores.jobs.audit_events(trained.second)
    assert any(e.event == "alias set" and f"was {trained.first}" in e.detail for e in events)
    assert any(e.event == "alias moved away" for e in trained.nodes.bank.stores.jobs.audit_events(trained.first))
    listed = {m["model"]: m["aliases"] for m in registry.list()}
    assert "car-owner@prod" in listed[trained.second] and "car-owner@prod" not in listed[trained.first]
    registry.set_alias("tmp@x", trained.second)
    assert registry.remove_alias("tmp@x")["model"] == trained.second
    with pytest.raises(UnknownAlias, match="tmp@x"):
        registry.resolve("tmp@x")


def test_unknown_and_malformed_references_are_named(trained: Trained, files: SimulatedFiles) -> None:
    bank = trained.nodes.bank
    with pytest.raises(UnknownAlias, match="nope@prod"):
        bank.score("nope@prod", shared_ids(trained, files, 1))
    with pytest.raises(UnknownAlias, match="nope@prod"):
        bank.batch_score("nope@prod", "never.csv")
    with pytest.raises(UserError, match="NAME@LABEL"):
        bank.registry.set_alias("no-label", trained.first)
    with pytest.raises(NotFound, match="no model train-19990101-000000-abcdef"):
        bank.registry.set_alias("x@y", "train-19990101-000000-abcdef")
    with pytest.raises(NotFound, match=trained.align):  # an align job is not a model
        bank.registry.retire(trained.align)


class DownLink:
    def retire_model(self, model_job_id: str) -> Retirement:
        raise PeerError("retire model: peer unreachable", code="UNAVAILABLE")


def test_retire_refuses_scoring_on_both_nodes_and_is_idempotent(trained: Trained, files: SimulatedFiles) -> None:
    bank, platform = trained.nodes.bank, trained.nodes.platform
    ids = shared_ids(trained, files, 2)
    bank.score(trained.doomed, ids)  # cached on both nodes before it is retired
    # A platform that is down: retiring fails and nothing changes on the bank.
    with pytest.raises(PeerError, match="unreachable"):
        ModelRegistry(bank.stores, DownLink()).retire(trained.doomed)  # type: ignore[arg-type]
    assert bank.registry.retirement(trained.doomed) is None
    bank.registry.set_alias("old@prod", trained.doomed)
    result = bank.registry.retire("old@prod")
    assert result["model"] == trained.doomed and not result["already_retired"]
    assert result["aliases_removed"] == ["old@prod"] and "old@prod" not in bank.registry.aliases()
    with pytest.raises(ModelRetired, match=f"{trained.doomed} was retired"):
        bank.score(trained.doomed, ids)
    with pytest.raises(ModelRetired, match="retired"):
        bank.batch_score(trained.doomed, "retired.csv")
    with pytest.raises(NotFound, match=f"model {trained.doomed} was retired on the platform node"):
        platform.partial_scores(trained.doomed, np.array([0, 1], dtype=np.int64), [])
    with pytest.raises(PeerError, match="retired"):  # as the bank would meet it through the link
        trained.nodes.link.partial_scores(trained.doomed, np.array([0], dtype=np.int64), [])
    with pytest.raises(ModelRetired):
        bank.registry.set_alias("old@again", trained.doomed)
    again = bank.registry.retire(trained.doomed)
    assert again["already_retired"] and again["retired_at"] == result["retired_at"]
    assert platform.retire_model(trained.doomed).already_retired
    assert [e.event for e in platform.stores.jobs.audit_events(trained.doomed)].count(RETIRE_EVENT) == 1
    assert {m["model"]: m["status"] for m in bank.registry.list()}[trained.doomed] == "retired"
    bank.score(trained.first, ids)  # the others still score


def test_the_registry_survives_a_restart(trained: Trained, files: SimulatedFiles) -> None:
    bank = trained.nodes.bank
    bank.registry.set_alias("restart@prod", trained.second)
    bank.registry.retire(trained.doomed)  # idempotent: retired here or by the test above
    again = make_nodes(files, trained.state, bank_stores=open_node_stores(trained.state / "bank"),
                       platform_stores=open_node_stores(trained.state / "platform"))
    assert again.bank.resolve_model("restart@prod") == trained.second
    with pytest.raises(ModelRetired):
        again.bank.resolve_model(trained.doomed)
    with pytest.raises(NotFound, match="retired"):
        again.platform.partial_scores(trained.doomed, np.array([0], dtype=np.int64), [])
    assert (trained.state / "bank" / "registry" / f"{ALIASES_DOC}.json").exists()
    assert (trained.state / "platform" / "registry" / f"{trained.doomed}.json").exists()


@pytest.fixture
def grpc_pair(trained: Trained) -> Iterator[tuple[BankClient, GrpcPlatformLink]]:
    """The bank's control API and the platform's Node service on loopback (plaintext), in this process."""
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_BankControlServicer_to_server(ControlServicer(trained.nodes.bank), server)
    platform = trained.nodes.platform
    pb_grpc.add_NodeServicer_to_server(NodeServicer(platform, SessionRegistry(platform.open_session, SESSION_KINDS),
                                                    max_payload_bytes=2**24), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = BankClient(f"127.0.0.1:{port}", cert=None, key=None, ca=None, insecure=True)
    link = GrpcPlatformLink(grpc.insecure_channel(f"127.0.0.1:{port}"), node_name="bank",
                            address=f"127.0.0.1:{port}")
    try:
        yield client, link
    finally:
        client.close()
        link.close()
        server.stop(None)


def test_registry_over_grpc(trained: Trained, files: SimulatedFiles,
                            grpc_pair: tuple[BankClient, GrpcPlatformLink]) -> None:
    client, link = grpc_pair
    assert models_command(client, "alias", ["grpc@prod", trained.first]) == f"alias grpc@prod -> {trained.first}"
    scores = client.score("grpc@prod", shared_ids(trained, files, 2))
    assert scores.tags == files.tags[:1]
    table = models_command(client, "list", [])
    assert "grpc@prod" in table and "car-owner" in table
    listed = {m["model"]: m for m in client.models()}
    assert listed[trained.first]["name"] == "car-owner"
    with pytest.raises(grpc.RpcError) as missing:
        client.score("nope@prod", ["x"])
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND and "nope@prod" in (missing.value.details() or "")
    assert "removed" in models_command(client, "unalias", ["grpc@prod"])
    with pytest.raises(UserError, match="usage"):
        models_command(client, "retire", [])
    client.retire_model(trained.doomed)  # idempotent: already retired or retired now
    # The platform's RetireModel RPC, through the real link: already retired, so idempotent.
    answer = link.retire_model(trained.doomed)
    assert answer.already_retired and answer.retired_at
    with pytest.raises(grpc.RpcError) as retired:
        client.score(trained.doomed, shared_ids(trained, files, 1))
    assert retired.value.code() == grpc.StatusCode.NOT_FOUND and "retired" in (retired.value.details() or "")


def bank_toml(tmp_path: Path, files: SimulatedFiles, *, listen: str, state_dir: Path,
              client_address: str | None = None) -> Path:
    """A bank node's TOML for the CLI on these files; without ``client_address`` the CLI dials ``listen``."""
    config = tmp_path / "bank.toml"
    tags = ", ".join(f'"{t}"' for t in files.tags)
    client = f'[client]\naddress = "{client_address}"\n\n' if client_address else ""
    config.write_text(f'[node]\nname = "bank"\nrole = "bank"\nlisten = "{listen}"\nstate_dir = "{state_dir}"\n\n'
                      f'{client}[peer]\naddress = "127.0.0.1:1"\n\n'
                      f'[data]\npath = "{files.bank}"\nid_column = "id"\ntag_columns = [{tags}]\n')
    return config


def test_cli_models_commands(trained: Trained, files: SimulatedFiles, grpc_pair: tuple[BankClient, GrpcPlatformLink],
                             tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, link = grpc_pair
    config = bank_toml(tmp_path, files, listen=link.address, state_dir=tmp_path / "state")  # client: its listen
    base = ["--config", str(config), "--insecure-dev"]
    assert cli.main(["models", *base, "alias", "cli@prod", trained.second]) == 0
    assert f"alias cli@prod -> {trained.second}" in capsys.readouterr().out
    assert cli.main(["models", *base, "--json"]) == 0
    listed = {m["model"]: m for m in json.loads(capsys.readouterr().out)}
    assert "cli@prod" in listed[trained.second]["aliases"] and listed[trained.second]["name"] == "car-owner-v2"
    assert cli.main(["models", *base]) == 0
    assert "car-owner-v2" in capsys.readouterr().out
    assert cli.main(["models", *base, "unalias", "nope@x"]) == 1
    assert (capsys.readouterr().err) == "bank-node models: no model alias 'nope@x'\n"  # one plain line
    assert cli.main(["models", *base, "unalias", "cli@prod"]) == 0


def test_cli_job_commands_for_people(trained: Trained, files: SimulatedFiles,
                                     grpc_pair: tuple[BankClient, GrpcPlatformLink], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    _, link = grpc_pair
    config = bank_toml(tmp_path, files, listen="127.0.0.1:1", state_dir=tmp_path, client_address=link.address)
    base = ["--config", str(config), "--insecure-dev"]
    assert cli.main(["jobs", *base]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["JOB", "NAME", "KIND"] and "car-owner-v2" in table
    assert cli.main(["logs", *base, trained.second]) == 0
    history = capsys.readouterr().out
    assert "created: train" in history and "validation AUC" in history and "  succeeded" in history
    assert cli.main(["wait", *base, trained.second]) == 0  # an ended job: its history, then its results
    out, err = capsys.readouterr()
    assert f"model {trained.second} 'car-owner-v2': trained on alignment {trained.align}" in out
    assert "AUC JOINT" in out and all(tag in out for tag in files.tags) and "validation AUC" in err
    assert cli.main(["rerun", *base, trained.first, "--detach"]) == 0
    again = capsys.readouterr().out.strip()
    assert again.startswith("train-") and again != trained.first
    assert cli.main(["wait", *base, again, "--json"]) == 0
    job = json.loads(capsys.readouterr().out)
    original = trained.nodes.bank.stores.jobs.get(trained.first)
    assert job["status"] == "succeeded" and job["name"] == "car-owner" and job["params"] == original.params
    shared = shared_ids(trained, files, 1)[0]
    assert cli.main(["score", *base, "--model", "latest", "--ids", f"{shared},+440000000000"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[2].split()[:2] == [shared, "ok"] and rows[3].split() == ["+440000000000", "unknown_customer", "-"]
    assert cli.main(["logs", *base, "train-20000101-000000-000000"]) == 1
    assert capsys.readouterr().err == "bank-node logs: no job train-20000101-000000-000000\n"
