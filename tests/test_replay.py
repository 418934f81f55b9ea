"""A bank that replays job IDs: a finished job never runs again, a stored model half is never replaced, the
disclosure budget is not reset by a replay or a restart, and a resume goes through the operator's approval.

Both nodes in one process over the in-memory link, the platform's stores on disk (a restart is a new node on
the same state directory). The attack the tests stand for: reopen a finished train job with ``resumed``,
train it again under the same ID, and score the new model half under projections the budget already counted.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import party_bank.node as bank_node
from party_bank.node import BankNode
from party_common.link import LocalPlatformLink, SessionContext
from party_common.policy import PolicyConfig, is_awaiting_approval
from party_common.storage import DocumentError, DocumentExists, NodeStores, open_node_stores
from party_platform import admin
from party_platform.node import PlatformNode
from protocols.channel import LocalPeer, Message
from protocols.errors import PeerError, ProtocolError
from protocols.paillier import generate_keypair
from protocols.vfl_lr import PlatformModel, TrainParams, make_platform_train_handler, run_bank_training
from protocols.vfl_lr.messages import Field, Step
from protocols.vfl_lr.params import VERSION
from simulations.generate import SimulationConfig
from tests.nodes_fixture import FAST_TRAIN, Nodes, SimulatedFiles, make_nodes, node_config, simulated_files
from tests.test_job_control import progress_reaches
from tests.test_vfl_lr import simulate

PSI_PARAMS = {"version": "psi-x25519-v2", "mode": "both", "batch_size": 100}


@dataclass
class Trained:
    nodes: Nodes
    platform_stores: NodeStores
    align: str
    model: str
    alignment_hash: str


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> SimulatedFiles:
    return simulated_files(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained(files: SimulatedFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    state = tmp_path_factory.mktemp("state")
    stores = open_node_stores(state / "platform")
    nodes = make_nodes(files, state, platform_stores=stores)
    align = nodes.bank.wait(nodes.bank.submit("align", "", {}), timeout_s=120)
    assert align.status == "succeeded", align.error
    train = nodes.bank.wait(nodes.bank.submit("train", "", {"train": FAST_TRAIN}), timeout_s=300)
    assert train.status == "succeeded", train.error
    alignment = stores.alignments.load(align.job_id)
    yield Trained(nodes, stores, align.job_id, train.job_id, alignment.content_hash)
    nodes.bank.shutdown()


def _train_params(tags: list[str]) -> Message:
    return {Field.VERSION: VERSION, Field.PARAMS: TrainParams(**FAST_TRAIN).to_json(), Field.TAGS: json.dumps(tags)}


def _restarted(t: Trained) -> PlatformNode:
    """The platform node started again on the same state directory (caches, released sets: all rebuilt)."""
    old = t.nodes.platform
    return PlatformNode(old.config, data=old.data, stores=open_node_stores(old.config.state_dir))


def test_a_replayed_finished_job_is_refused_and_nothing_is_overwritten(trained: Trained) -> None:
    t = trained
    platform, stores = t.nodes.platform, t.platform_stores
    tags = list(t.nodes.bank.data.tag_names)
    rows = np.arange(5, dtype=np.int64)
    first = platform.partial_scores(t.model, rows, tags)
    assert first.projections_released == len(tags)
    model_file = stores.models.path(t.model)  # type: ignore[attr-defined]
    model_bytes = model_file.read_bytes()

    # The replay: the finished train job's ID opened again "resumed", then again as a new job; and the align job.
    context = SessionContext(alignment_job_id=t.align, alignment_hash=t.alignment_hash, resumed=True)
    with pytest.raises(PeerError, match=r"has ended on the platform node \(succeeded\): only an interrupted job"):
        t.nodes.link.open("train", t.model, _train_params(tags), context=context)
    with pytest.raises(PeerError, match="was already used on the platform node"):
        t.nodes.link.open("train", t.model, _train_params(tags), context=dataclasses.replace(context, resumed=False))
    with pytest.raises(PeerError, match=r"has ended on the platform node \(succeeded\)"):
        t.nodes.link.open("psi", t.align, PSI_PARAMS, context=SessionContext(resumed=True))
    assert stores.jobs.get(t.model).status == stores.jobs.get(t.align).status == "succeeded"
    refusals = [(e.detail, e.outcome) for e in stores.jobs.audit_events(event="session refused")]
    assert ("train: resume of a succeeded job", "refused (FAILED_PRECONDITION)") in refusals
    assert ("train: job ID reused", "refused (FAILED_PRECONDITION)") in refusals
    assert ("psi: resume of a succeeded job", "refused (FAILED_PRECONDITION)") in refusals

    # The store refuses a second model half under the same job ID, whatever the caller asks, and its deletion.
    other = {**stores.models.load(t.model), "weights": [[0.0] * len(tags)]}
    for overwrite in (False, True):
        with pytest.raises(DocumentExists, match="a stored model is never replaced"):
            stores.models.save(t.model, other, overwrite=overwrite)
    with pytest.raises(DocumentError, match="never deleted or replaced"):
        stores.models.delete(t.model)
    assert model_file.read_bytes() == model_bytes

    # After a restart the same projections are answered: the same scores, the budget count unchanged.
    again = _restarted(t).partial_scores(t.model, rows, tags)
    assert again.projections_released == first.projections_released == len(tags)
    assert np.array_equal(again.scores, first.scores)


def test_a_model_half_stored_before_an_interruption_is_never_replaced(trained: Trained) -> None:
    """The platform stopped between storing the model half and recording the job's end (the job reads
    interrupted): the bank may resume it, but the result it would store again is refused and audited."""
    t = trained
    stores = t.platform_stores
    stores.jobs.stop(t.model, "interrupted", "node stopped while the job ran")
    model_bytes = stores.models.path(t.model).read_bytes()  # type: ignore[attr-defined]
    context = SessionContext(alignment_job_id=t.align, alignment_hash=t.alignment_hash, resumed=True)
    params = _train_params(list(t.nodes.bank.data.tag_names))
    with pytest.raises(ProtocolError, match="a resumed job runs on the alignment it started on"):
        t.nodes.platform.open_session("train", t.model, params, dataclasses.replace(context, alignment_job_id="align-other-1"))
    assert ("train: resume on another alignment", "refused (FAILED_PRECONDITION)") in [
        (e.detail, e.outcome) for e in stores.jobs.audit_events(t.model, event="session refused")]
    session = t.nodes.platform.open_session("train", t.model, params, context)
    replayed = PlatformModel.from_dict(stores.models.load(t.model), where="test")
    replayed.weights = replayed.weights + 1.0
    with pytest.raises(ProtocolError, match="holds a model half of job .* already; a stored model half is never"):
        session.on_result(replayed)  # type: ignore[attr-defined]
    session.close()  # type: ignore[attr-defined]
    assert stores.models.path(t.model).read_bytes() == model_bytes  # type: ignore[attr-defined]
    record = stores.jobs.get(t.model)
    assert record.status == "failed" and "never replaced" in record.error
    [refused] = stores.jobs.audit_events(t.model, event="result refused")
    assert refused.detail == "train: a stored result is never replaced" and refused.outcome.startswith("refused")


def _platform_with(files: SimulatedFiles, state: Path, stores: NodeStores, **policy: Any) -> PlatformNode:
    config = dataclasses.replace(node_config(state, "platform", files.platform), policy=PolicyConfig(**policy))
    return PlatformNode(config, stores=stores)


def test_a_resume_waits_for_the_operators_approval(files: SimulatedFiles, tmp_path: Path) -> None:
    stores = open_node_stores(tmp_path / "platform")
    platform = _platform_with(files, tmp_path, stores, approval="manual")
    link = LocalPlatformLink(platform)
    job = "psi-resume-approval"
    with pytest.raises(PeerError) as waiting:
        link.open("psi", job, PSI_PARAMS, context=SessionContext())
    assert is_awaiting_approval(waiting.value)
    admin.approve(stores, job)
    link.open("psi", job, PSI_PARAMS, context=SessionContext()).close()  # approved: runs; the bank stops early
    assert stores.jobs.get(job).status == "interrupted"
    # The bank resumes: a new run, which the operator approves again.
    with pytest.raises(PeerError) as waiting:
        link.open("psi", job, PSI_PARAMS, context=SessionContext(resumed=True))
    assert is_awaiting_approval(waiting.value) and stores.jobs.get(job).status == "awaiting approval"
    [resume] = stores.jobs.audit_events(job, event="resume")
    assert resume.detail == "psi: resume awaits the operator's approval" and resume.outcome == "waiting"
    admin.approve(stores, job)
    channel = link.open("psi", job, PSI_PARAMS, context=SessionContext(resumed=True))
    assert stores.jobs.get(job).status == "running"
    # A step this node refuses fails the job; a failed job never resumes, approval or not.
    with pytest.raises(PeerError):
        channel.call("psi.finish", {})
    channel.close()
    assert stores.jobs.get(job).status == "failed"
    with pytest.raises(PeerError, match=r"has ended on the platform node \(failed\)"):
        link.open("psi", job, PSI_PARAMS, context=SessionContext(resumed=True))
    assert stores.jobs.get(job).status == "failed"


def test_a_bank_resuming_under_approval_mode_waits_then_finishes(files: SimulatedFiles, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bank_node, "APPROVAL_POLL_S", (0.05, 0.1))
    nodes = make_nodes(files, tmp_path)
    align = nodes.bank.wait(nodes.bank.submit("align", "", {}), timeout_s=120)
    assert align.status == "succeeded", align.error
    job_id = nodes.bank.submit("train", "", {"train": FAST_TRAIN})
    progress_reaches(nodes.bank, job_id, "epoch 1/")
    nodes.bank.shutdown()
    assert nodes.bank.wait(job_id, timeout_s=60).status == "interrupted"
    assert nodes.platform.stores.jobs.get(job_id).status == "interrupted"
    # The platform now runs in approval mode: the resumed job waits for its operator.
    platform = _platform_with(files, tmp_path, nodes.platform.stores, approval="manual")
    bank = BankNode(nodes.bank.config, LocalPlatformLink(platform), data=nodes.bank.data, stores=nodes.bank.stores)
    try:
        deadline = time.monotonic() + 60
        while platform.stores.jobs.get(job_id).status != "awaiting approval" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert platform.stores.jobs.get(job_id).status == "awaiting approval"
        assert bank.stores.jobs.get(job_id).status == "awaiting approval"
        admin.approve(platform.stores, job_id)
        record = bank.wait(job_id, timeout_s=300)
        assert record.status == "succeeded", record.error
        assert platform.stores.jobs.get(job_id).status == "succeeded"
        assert platform.stores.models.exists(job_id)
    finally:
        bank.shutdown()


# ---- keys: each party reads the other's key at the job's size ----


def test_a_key_of_another_size_than_the_jobs_is_refused_by_both_parties(tmp_path: Path) -> None:
    bank, platform = simulate(tmp_path, SimulationConfig(n_bank=200, n_platform=220, overlap=0.9, n_tags=1,
                                                         label_share=0.8, seed=3))
    params = TrainParams(key_bits=1024, epochs=1, batch_size=64, validation_share=0.0)
    opening = {Field.VERSION: VERSION, Field.PARAMS: params.to_json(), Field.TAGS: json.dumps(bank.tag_names)}
    strict = make_platform_train_handler("job-keysize", {**opening, Field.PARAMS: TrainParams().to_json()},
                                         platform, on_result=lambda m: None, compute=1)
    four_k = b"PK2" + (512).to_bytes(2, "big") + b"\xc3" * 511 + b"\x01"  # 4096 bits, never tested further
    with pytest.raises(ProtocolError, match="bank's public key was refused: key of 512 bytes .*exactly 2048 bits"):
        strict.handle(Step.SETUP, {Field.BANK_KEY: four_k, Field.N_ROWS: len(platform), Field.BANK_COLUMNS: 2,
                                   Field.TRAIN_ROWS: np.arange(3), Field.VALIDATION_ROWS: np.arange(0),
                                   Field.TEST_ROWS: np.arange(3, 5),
                                   Field.LABEL_MASK: np.ones((len(platform), 1), np.uint8)})
    strict.close()

    # The bank reads the platform's key the same way: a 2048-bit key in a 1024-bit job is refused.
    larger, _ = generate_keypair(2048)

    def platform_side(kind: str, job_id: str, message: Message) -> Any:
        handler = make_platform_train_handler(job_id, message, platform, on_result=lambda m: None, compute=1,
                                              insecure_for_tests=True)
        setup = handler._steps[Step.SETUP]

        def deviating_setup(request: Message) -> Message:
            return {**setup(request), Field.PLATFORM_KEY: larger.to_bytes()}

        handler._steps[Step.SETUP] = deviating_setup
        return handler

    with pytest.raises(ProtocolError, match="platform's public key was refused: key of 256 bytes .*exactly 1024"):
        run_bank_training(LocalPeer(platform_side), "job-keysize-bank", bank, params, compute=1,
                          insecure_for_tests=True)
