"""Job control on the nodes: cancel (both sides), a stopping bank resumes its jobs, waiting for an unreachable
platform with backoff and a deadline, platform sessions replaced on resume and expired when idle."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import grpc
import pytest

import party_bank.node as bank_node
from party_bank.grpc_link import GrpcPlatformLink
from party_bank.node import BankNode
from party_common.jobs import SESSION_KINDS
from party_common.link import SessionContext
from party_common.storage import memory_node_stores
from party_platform.sessions import SessionRegistry
from protocols.errors import ProtocolError, UserError
from simulations.cluster import free_port
from tests.nodes_fixture import FAST_TRAIN, Nodes, SimulatedFiles, make_nodes, node_config, simulated_files

PSI_PARAMS = {"version": "psi-x25519-v2", "mode": "both", "batch_size": 100}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> SimulatedFiles:
    return simulated_files(tmp_path_factory.mktemp("data"))


@pytest.fixture
def aligned(files: SimulatedFiles, tmp_path: Path) -> Nodes:
    nodes = make_nodes(files, tmp_path)
    record = nodes.bank.wait(nodes.bank.submit("align", "", {}), timeout_s=120)
    assert record.status == "succeeded", record.error
    return nodes


def progress_reaches(node: BankNode, job_id: str, text: str, timeout_s: float = 120.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = node.stores.jobs.get(job_id)
        if text in record.progress:
            return record.progress
        assert record.status in ("queued", "running"), (record.status, record.error)
        time.sleep(0.02)
    raise AssertionError(f"progress never showed {text!r}")


def test_cancel_stops_training_on_both_nodes(aligned: Nodes) -> None:
    nodes = aligned
    job_id = nodes.bank.submit("train", "", {"train": FAST_TRAIN})
    progress_reaches(nodes.bank, job_id, "epoch 1/")
    assert nodes.platform.stores.jobs.get(job_id).status == "running"
    record = nodes.bank.cancel(job_id)
    assert (record.status, record.error) == ("cancelled", "cancelled by the data scientist")
    platform = nodes.platform.stores.jobs.get(job_id)
    assert platform.status == "cancelled" and "cancelled" in platform.error
    assert not nodes.bank.stores.checkpoints.exists(job_id) and not nodes.platform.stores.checkpoints.exists(job_id)
    assert not nodes.bank.stores.models.exists(job_id) and not nodes.platform.stores.models.exists(job_id)
    with pytest.raises(UserError, match="already ended: cancelled"):
        nodes.bank.cancel(job_id)


def test_a_stopping_bank_interrupts_its_job_and_resumes_it_when_it_starts_again(aligned: Nodes,
                                                                               files: SimulatedFiles) -> None:
    nodes = aligned
    job_id = nodes.bank.submit("train", "", {"train": FAST_TRAIN})
    progress_reaches(nodes.bank, job_id, "epoch 1/")
    nodes.bank.shutdown()  # SIGTERM: jobs stop at their next step
    record = nodes.bank.wait(job_id, timeout_s=60)
    assert record.status == "interrupted" and "resumes when the node starts again" in record.error
    assert nodes.bank.stores.checkpoints.exists(job_id)
    again = BankNode(nodes.bank.config, nodes.link, data=nodes.bank.data, stores=nodes.bank.stores)
    record = again.wait(job_id, timeout_s=300)
    assert record.status == "succeeded", record.error
    assert "resumed" in [e.event for e in again.stores.jobs.audit_events(job_id)]
    assert nodes.platform.stores.jobs.get(job_id).status == "succeeded"
    assert not again.stores.checkpoints.exists(job_id) and not nodes.platform.stores.checkpoints.exists(job_id)


def unreachable_bank(files: SimulatedFiles, tmp_path: Path, deadline_s: float) -> BankNode:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    config = dataclasses.replace(node_config(tmp_path, "bank", files.bank, files.tags), peer_address=address,
                                 peer_retry_deadline_s=deadline_s)
    link = GrpcPlatformLink(grpc.insecure_channel(address), node_name="bank", address=address)
    node = make_nodes(files, tmp_path).bank
    return BankNode(config, link, data=node.data, stores=memory_node_stores())


def test_a_job_waits_for_the_platform_with_backoff_then_fails_in_one_line(files: SimulatedFiles, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bank_node, "CONNECT_TIMEOUT_S", 0.3)
    bank = unreachable_bank(files, tmp_path, deadline_s=4)
    address = bank.config.peer_address
    job_id = bank.submit("align", "", {})
    first = progress_reaches(bank, job_id, "waiting for the platform")
    assert first.startswith(f"waiting for the platform at {address}, retry in 1 s (unreachable since ")
    second = progress_reaches(bank, job_id, "retry in 2 s")  # backoff doubles
    assert second.startswith(f"waiting for the platform at {address}, retry in 2 s")
    record = bank.wait(job_id, timeout_s=30)
    assert record.status == "failed" and "\n" not in record.error
    assert record.error.startswith(f"the platform at {address} has been unreachable since ")
    assert record.error.endswith("gave up after 4 s ([peer] retry_deadline_s)")


def test_a_job_waiting_for_the_platform_can_be_cancelled(files: SimulatedFiles, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bank_node, "CONNECT_TIMEOUT_S", 0.2)
    bank = unreachable_bank(files, tmp_path, deadline_s=600)
    job_id = bank.submit("align", "", {})
    progress_reaches(bank, job_id, "waiting for the platform")
    started = time.monotonic()
    assert bank.cancel(job_id).status == "cancelled"
    assert time.monotonic() - started < 5


def test_a_new_session_replaces_the_open_one_and_idle_sessions_expire(files: SimulatedFiles, tmp_path: Path) -> None:
    nodes = make_nodes(files, tmp_path)
    registry = SessionRegistry(nodes.platform.open_session, SESSION_KINDS, idle_s=60)
    registry.open("psi", "psi-resumed-1", PSI_PARAMS, SessionContext())
    with pytest.raises(ProtocolError, match="already has an open session"):  # not the same job run again
        registry.open("psi", "psi-resumed-1", PSI_PARAMS, SessionContext())
    registry.open("psi", "psi-resumed-1", PSI_PARAMS, SessionContext(resumed=True))  # the bank restarted
    jobs = nodes.platform.stores.jobs
    assert jobs.get("psi-resumed-1").status == "running"
    assert "resumed" in [e.event for e in jobs.audit_events("psi-resumed-1")]

    registry.open("psi", "psi-busy-0001", PSI_PARAMS, SessionContext())
    busy = registry.get("psi-busy-0001")
    assert registry.expire_idle(time.monotonic() + 30) == []  # not idle long enough
    with busy.lock:  # a step is running: never expired under it
        assert registry.expire_idle(time.monotonic() + 61) == ["psi-resumed-1"]
    record = jobs.get("psi-resumed-1")
    assert record.status == "interrupted" and record.error.startswith("expired: no step from the bank for 60 s")
    assert registry.expire_idle(time.monotonic() + 61) == ["psi-busy-0001"]
    with pytest.raises(Exception, match="no open session for job psi-resumed-1"):
        registry.get("psi-resumed-1")


def test_the_expiry_thread_closes_a_killed_banks_session(files: SimulatedFiles, tmp_path: Path) -> None:
    nodes = make_nodes(files, tmp_path)
    registry = SessionRegistry(nodes.platform.open_session, SESSION_KINDS, idle_s=0.3)
    registry.open("psi", "psi-orphaned-1", PSI_PARAMS, SessionContext())
    thread = registry.start_expiry()
    assert thread is not None
    deadline = time.monotonic() + 10
    while nodes.platform.stores.jobs.get("psi-orphaned-1").status == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert nodes.platform.stores.jobs.get("psi-orphaned-1").status == "interrupted"
    registry.close_all()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_cancelling_an_interrupted_job_marks_both_nodes(aligned: Nodes) -> None:
    nodes = aligned
    nodes.bank.stores.jobs.create("train-interrupted-1", "train", "", {})
    nodes.bank.stores.jobs.stop("train-interrupted-1", "interrupted", "node stopped while the job ran")
    nodes.link.open("psi", "train-interrupted-1", PSI_PARAMS, context=SessionContext())
    assert nodes.bank.cancel("train-interrupted-1").status == "cancelled"
    assert nodes.platform.stores.jobs.get("train-interrupted-1").status == "cancelled"
    threading.Event().wait(0)  # nothing left running


def test_an_align_job_stopped_after_storing_its_alignment_ends_with_it(aligned: Nodes) -> None:
    nodes = aligned
    align_id = nodes.bank.stores.jobs.list(1, kind="align")[0].job_id
    before = nodes.bank.stores.alignments.load(align_id)
    platform_before = nodes.platform.stores.alignments.load(align_id)
    # As if the bank node died after storing its alignment, before the job's row said so.
    nodes.bank.stores.jobs.stop(align_id, "interrupted", "node stopped while the job ran")
    again = BankNode(nodes.bank.config, nodes.link, data=nodes.bank.data, stores=nodes.bank.stores)
    record = again.wait(align_id, timeout_s=120)
    assert record.status == "succeeded", record.error
    # The platform had finished the job: it is not run again (an ended job never is); both keep what they stored.
    assert nodes.platform.stores.jobs.get(align_id).status == "succeeded"
    assert "resumed" not in [e.event for e in nodes.platform.stores.jobs.audit_events(align_id)]
    after = nodes.bank.stores.alignments.load(align_id)
    assert after.ids == before.ids == nodes.platform.stores.alignments.load(align_id).ids == platform_before.ids
    assert record.result["content_hash"] == after.content_hash == platform_before.content_hash
    assert record.result["seconds"] is None


def test_cancel_job_over_the_control_api(aligned: Nodes) -> None:
    from party_bank.client import BankClient
    from party_bank.control import ControlServicer
    from party_common.transport import make_server
    from proto import fedprofile_v1_pb2_grpc as pb_grpc

    nodes = aligned
    server = make_server(2)
    pb_grpc.add_BankControlServicer_to_server(ControlServicer(nodes.bank), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = BankClient(f"127.0.0.1:{port}", cert=None, key=None, ca=None, insecure=True)
    try:
        nodes.bank.stores.jobs.create("train-to-cancel-1", "train", "", {})
        nodes.bank.stores.jobs.stop("train-to-cancel-1", "interrupted", "node stopped while the job ran")
        job = client.cancel("train-to-cancel-1")
        assert (job["status"], job["error"]) == ("cancelled", "cancelled by the data scientist")
        with pytest.raises(grpc.RpcError) as again:
            client.cancel("train-to-cancel-1")
        assert again.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "already ended: cancelled" in (again.value.details() or "")
        with pytest.raises(grpc.RpcError) as unknown:
            client.cancel("train-unknown-1")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        client.close()
        server.stop(0)
