"""The contract every platform step handler keeps: unknown steps, wrong order, replays and malformed fields
are refused with a ProtocolError (never another exception), and the platform's job row then says why."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

import protocols.psi.messages as psi_wire
import protocols.psi.ot.messages as psi_ot_wire
from party_common.link import SessionContext
from protocols.channel import Message, StepHandler
from protocols.errors import ProtocolError
from protocols.paillier import generate_keypair
from protocols.psi.ot.baseot import BaseOtSender
from protocols.vfl_lr import VERSION as TRAIN_VERSION
from protocols.vfl_lr import TrainParams
from protocols.vfl_lr.messages import Field, Step
from tests.bank_keys import bank_key_fields
from tests.nodes_fixture import Nodes, make_nodes, simulated_files

WRONG_VALUES = (b"\x00" * 3, "text", -1, 2**40, 1.5, True, np.zeros((2, 2)), np.array([0, 0], dtype=np.int64))


@dataclass
class Case:
    kind: str
    first_step: str
    first: Callable[[Nodes], Message]  # a valid first request
    later_step: str  # a step that may not come first
    params: Callable[[Nodes], Message]
    context: Callable[[Nodes], SessionContext]


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Nodes:
    files = simulated_files(tmp_path_factory.mktemp("data"))
    nodes = make_nodes(files, tmp_path_factory.mktemp("state"))
    record = nodes.bank.wait(nodes.bank.submit("align", "", {}), timeout_s=60)
    assert record.status == "succeeded", record.error
    return nodes


def _alignment(nodes: Nodes) -> tuple[str, str, int]:
    job_id = nodes.bank.stores.jobs.list(kind="align")[0].job_id
    alignment = nodes.platform.stores.alignments.load(job_id)
    return job_id, alignment.content_hash, alignment.size


BANK_KEYS = generate_keypair(2048), generate_keypair(2048)
_opened = ["contract-train-none"]  # the job opened last: the bank's key proofs are bound to it


def _setup(nodes: Nodes) -> Message:
    _, _, n = _alignment(nodes)
    rows = np.arange(n, dtype=np.int64)
    return {**bank_key_fields(_opened[0], *BANK_KEYS), Field.N_ROWS: n,
            Field.BANK_COLUMNS: 3, Field.TRAIN_ROWS: rows[: n - 40],
            Field.VALIDATION_ROWS: rows[n - 40: n - 20], Field.TEST_ROWS: rows[n - 20:],
            Field.LABEL_MASK: np.ones((n, 2), dtype=np.uint8)}


CASES = [
    Case("psi", psi_wire.HELLO, lambda nodes: {psi_wire.BANK_NONCE: b"\x01" * 32, psi_wire.BANK_SIZE: 10},
         psi_wire.FINISH,
         lambda nodes: {psi_wire.PARAM_VERSION: psi_wire.VERSION, psi_wire.PARAM_MODE: "both",
                        psi_wire.PARAM_BATCH_SIZE: 100},
         lambda nodes: SessionContext()),
    Case("train", Step.SETUP, _setup, Step.GRADIENT,
         lambda nodes: {Field.VERSION: TRAIN_VERSION, Field.PARAMS: TrainParams(batch_size=64).to_json(),
                        Field.TAGS: json.dumps(["tag_a", "tag_b"])},
         lambda nodes: SessionContext(*_alignment(nodes)[:2])),
]
CASES.append(Case("psi", psi_ot_wire.HELLO,  # the OT-based PSI protocol, in a session of the same kind
                  lambda nodes: {psi_ot_wire.BANK_NONCE: b"\x01" * 32, psi_ot_wire.BANK_SIZE: 10,
                                 psi_ot_wire.BASE_OT_SENDER: BaseOtSender().message},
                  psi_ot_wire.FINISH,
                  lambda nodes: {psi_wire.PARAM_VERSION: psi_ot_wire.VERSION, psi_wire.PARAM_MODE: "both"},
                  lambda nodes: SessionContext()))
IDS = ["psi-ecdh", "train", "psi-ot"]
_counter = iter(range(10**6))
PROOF_FIELDS = {Field.BANK_KEY_PROOF, Field.BANK_EVALUATION_KEY_PROOF}


def open_handler(nodes: Nodes, case: Case) -> tuple[str, StepHandler]:
    job_id = _opened[0] = f"contract-{case.kind}-{next(_counter):06d}"
    return job_id, nodes.platform.open_session(case.kind, job_id, case.params(nodes), case.context(nodes))


def refused(handler: StepHandler, step: str, message: Message) -> str:
    with pytest.raises(ProtocolError) as err:
        handler.handle(step, message)
    return str(err.value)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_unknown_step_is_refused(nodes: Nodes, case: Case) -> None:
    job_id, handler = open_handler(nodes, case)
    assert "unknown" in refused(handler, f"{case.kind}.nope", {}).lower()
    handler.close()
    record = nodes.platform.stores.jobs.get(job_id)
    assert record.status == "failed" and f"{case.kind}.nope" in record.error


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_later_step_cannot_come_first(nodes: Nodes, case: Case) -> None:
    job_id, handler = open_handler(nodes, case)
    assert "order" in refused(handler, case.later_step, case.first(nodes)).lower()
    handler.close()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_replayed_step_is_refused(nodes: Nodes, case: Case) -> None:
    job_id, handler = open_handler(nodes, case)
    handler.handle(case.first_step, case.first(nodes))
    refused(handler, case.first_step, case.first(nodes))
    handler.close()
    assert nodes.platform.stores.jobs.get(job_id).status == "failed"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_missing_and_malformed_fields_are_refused(nodes: Nodes, case: Case) -> None:
    valid = case.first(nodes)
    for name in valid:
        candidates: list[Message] = [{k: v for k, v in valid.items() if k != name}]
        candidates += [{**valid, name: wrong} for wrong in WRONG_VALUES if type(wrong) is not type(valid[name])
                       or isinstance(wrong, np.ndarray)]
        for message in candidates:
            job_id, handler = open_handler(nodes, case)
            if case.kind == "train":  # the proofs the candidate left as they were, for this job
                message.update({k: v for k, v in _setup(nodes).items() if k in message and message[k] is valid[k]
                                and k in PROOF_FIELDS})
            refused(handler, case.first_step, message)
            handler.close()


def test_training_rows_must_not_overlap_held_out_rows(nodes: Nodes) -> None:
    case = CASES[1]
    train = case.first(nodes)[Field.TRAIN_ROWS]
    assert isinstance(train, np.ndarray)
    for overlapping in ({Field.VALIDATION_ROWS: train[:3]}, {Field.TEST_ROWS: train[-2:]}, {Field.TRAIN_ROWS: train[:0]}):
        job_id, handler = open_handler(nodes, case)
        message = case.first(nodes)  # after the job is opened: the key proofs are bound to it
        assert re.search("disjoint|no training rows", refused(handler, case.first_step, {**message, **overlapping}))
        handler.close()


def test_unknown_session_kind_is_refused(nodes: Nodes) -> None:
    with pytest.raises(ProtocolError, match="unknown session kind"):
        nodes.platform.open_session("score", "contract-kind-0001", {}, SessionContext())
