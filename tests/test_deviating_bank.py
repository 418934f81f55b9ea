"""A bank that deviates from the protocol, against the platform's checks and its per-customer disclosure budget
(issue 23, items 2 and 3; docs/security.md, "Outside the model: a party that deviates"). 1024-bit keys."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from party_common.audit import DEVIATION_EVENT as CHECK_EVENT
from party_common.storage import memory_node_stores
from party_platform.disclosure import RELEASE_EVENT, DisclosureLedger
from protocols.channel import LocalChannel, Message, PeerError
from protocols.errors import ProtocolError
from protocols.packing import unpack_signed
from protocols.paillier import CipherVector, PublicKey
from protocols.party_data import PartyData, Schema
from protocols.vfl_lr import PlatformTrainHandler, TrainParams, make_platform_train_handler, run_bank_training
from protocols.vfl_lr import bank as bank_module
from protocols.vfl_lr.disclosure import DisclosureRefused, EvaluationLimits, Projection, validation_epochs
from protocols.vfl_lr.encoding import encode_z
from protocols.vfl_lr.messages import Field, Step, ints_from_bytes, ints_to_bytes
from protocols.vfl_lr.params import STAT_BITS
from tests.nodes_fixture import FAST_TRAIN, SimulatedFiles, make_nodes, simulated_files
from tests.test_private_evaluation import Call, TappedPeer, parties


class Platform:
    """The platform's session factory with a real ledger (``party_platform.disclosure``) in ``state_dir``."""

    def __init__(self, data: PartyData, state_dir: Path, limit: int, limits: EvaluationLimits | None = None) -> None:
        self.data, self.limits = data, limits
        self.stores = memory_node_stores()
        self.ledger = DisclosureLedger(state_dir, lambda: limit, self.stores.jobs)
        self.handlers: list[PlatformTrainHandler] = []

    def __call__(self, kind: str, job_id: str, params: Message) -> PlatformTrainHandler:
        handler = make_platform_train_handler(job_id, params, self.data, on_result=lambda model: None, compute=1,
                                              limits=self.limits, budget=self.ledger, insecure_for_tests=True)
        self.handlers.append(handler)
        return handler


def run(bank: PartyData, platform: Platform, tap: Any = None, job: str = "job-deviant", **params: Any) -> Any:
    p = TrainParams(**{"key_bits": 1024, "label_dp": "off", "batch_size": 64, "epochs": 2, "validation_share": 0.3,
                       **params})
    return run_bank_training(TappedPeer(platform, tap), job, bank, p, compute=1, insecure_for_tests=True)


def crafted_tags(bank: PartyData, n_tags: int) -> PartyData:
    """The crafted-tags attack's labels: tag t's positive class holds one validation-sized slice of rows, so
    every class is tiny (here one row each of the first rows, the rest negative)."""
    n = len(bank.ids)
    labels = np.zeros((n, n_tags))
    for t in range(n_tags):
        labels[t, t] = 1.0  # one positive row per tag
        labels[n_tags + t::n_tags * 3, t] = 1.0  # and a few in training, so that each tag can be trained
    tags = [f"crafted{t}" for t in range(n_tags)]
    return PartyData(bank.source, bank.ids, bank.features, bank.feature_names, labels, tags,
                     Schema("id", tuple(bank.feature_names), ("float64",) * len(bank.feature_names), tuple(tags)))


# ---- (1) what the platform decrypts for the bank in train.gradient ----


def shifted_up(pk: PublicKey, data: bytes, shift: int) -> bytes:
    """The bank's crafted message: the first ciphertext's value moved 2^shift up in its first slot (beyond the
    honest mask, where a bank would read high bits), the others as sent."""
    cv = CipherVector.from_bytes(pk, data)
    values = list(cv.values)
    values[0] = values[0] * pk.encrypt([1 << shift]).values[0] % pk.nsquare
    return CipherVector(pk, values).to_bytes()


CRAFTED = [  # (the step the bank crafts, the field, how far up its first value moves, the step and check that stop it)
    (Step.GRADIENT, Field.MASKED_GRADIENT, lambda plan: plan.cross_slot - 2, "train.gradient", "masked gradient range"),
    (Step.GRADIENT, Field.MASKED_RESIDUALS, lambda plan: plan.pair_slot - 2, "train.gradient", "masked residuals range"),
    (Step.EMASK_OPEN, Field.VALUES, lambda plan: plan.emask_slot - 2, "train.emask_open", "mask-path range"),
    # in the mask path's range, but X_Bq^T e no longer matches the residuals' masks
    (Step.EMASK_OPEN, Field.VALUES, lambda plan: plan.emask_bits - 1, "train.gradient", "gradient range"),
]


@pytest.mark.parametrize(("step", "field", "shift", "where", "check"), CRAFTED, ids=[c[-1] for c in CRAFTED])
def test_a_crafted_value_outside_the_honest_range_stops_the_job(tmp_path: Path, step: str, field: str, shift: Any,
                                                               where: str, check: str) -> None:
    """The bank moves a value up past the honest slot range (as a bank reading high bits would), or sends a mask
    path that disagrees with its residuals: the platform refuses before it answers, names the step and the
    check, and answers no step of the job after."""
    bank, data = parties(240, 1, seed=21)
    platform = Platform(data, tmp_path, limit=10)

    def tap(call: Call, channel: LocalChannel, at: str, message: Message) -> None:
        if at == step and message[Field.EPOCH] == 1 and message[Field.BATCH] == 0:
            handler = platform.handlers[0]
            if field == Field.VALUES:  # plaintexts the bank decrypted under its own key
                values = ints_from_bytes(message[field], handler.bpk.byte_len)
                values[0] += 1 << shift(handler.plan)
                message[field] = ints_to_bytes(values, handler.bpk.byte_len)
            else:
                message[field] = shifted_up(handler.pk, message[field], shift(handler.plan))

    with pytest.raises(PeerError, match=f"{where}: check '{check}' failed"):
        run(bank, platform, tap)
    with pytest.raises(ProtocolError, match="stopped by a failed check"):
        platform.handlers[0].handle(Step.FORWARD, {Field.EPOCH: 1, Field.BATCH: 1})


def test_an_in_range_replay_of_the_platforms_own_scores_is_read_and_bounded(tmp_path: Path) -> None:
    """What the checks cannot stop, measured: the bank puts the platform's own [[z_B]] of batch rows, masked by
    its own R of the honest R_A's width, in the masked gradient. Every slot lies in the honest range, so the
    platform answers and the bank reads those rows' z_B exactly. The bound: per train.gradient the platform
    decrypts bank_columns packed values per tag group, one slot per tag, each of cross_bits + STAT_BITS + 1
    bits; bank_columns is fixed at setup and capped by [policy] max_bank_columns."""
    bank, data = parties(240, 1, seed=22)
    platform = Platform(data, tmp_path, limit=10)
    read: list[tuple[int, int]] = []  # (z_B 2^F the bank read, the platform's true one) per replayed row

    def tap(call: Call, channel: LocalChannel, step: str, message: Message) -> None:
        handler = platform.handlers[0]
        if step == Step.GRADIENT and message[Field.BATCH] == 0 and message[Field.EPOCH] == 1:
            forward = [reply for s, _, reply in channel.transcript if s == Step.FORWARD][-1]
            pk, plan = handler.pk, handler.plan
            rows = CipherVector.from_bytes(pk, forward[Field.ROWS]).values
            count = len(CipherVector.from_bytes(pk, message[Field.MASKED_GRADIENT]))
            masks = [secrets.randbits(plan.cross_bits + STAT_BITS) for _ in range(count)]
            crafted = [rows[j] * pk.encrypt([masks[j]]).values[0] % pk.nsquare for j in range(count)]
            message[Field.MASKED_GRADIENT] = CipherVector(pk, crafted).to_bytes()
            reply = call(step, message)
            opened = ints_from_bytes(reply[Field.MASKED_GRADIENT], pk.byte_len, expected=count)
            batch = handler.batches[0]
            z_true = encode_z(handler.X[batch] @ handler.snapshots_before_step)
            for j, value in enumerate(opened):
                (z_read,) = unpack_signed(value - masks[j], 1, plan.cross_slot)
                read.append((z_read, int(z_true[j, 0]) if handler.mask[batch[j], 0] else 0))
            raise StopTraining

    original = PlatformTrainHandler._forward

    def forward(self: PlatformTrainHandler, message: Message) -> Message:
        self.snapshots_before_step = self.state.W.copy()  # type: ignore[attr-defined]
        return original(self, message)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PlatformTrainHandler, "_forward", forward)
        with pytest.raises(StopTraining):
            run(bank, platform, tap)
    handler = platform.handlers[0]
    assert len(read) == handler.bank_columns == 4  # 3 features and the intercept: 4 rows read in this step
    assert all(a == b for a, b in read) and any(a != 0 for a, _ in read)  # exact, and the checks let it through


class StopTraining(Exception):
    pass


def test_bank_columns_past_the_policy_are_refused_at_setup(tmp_path: Path) -> None:
    bank, data = parties(240, 1, seed=23)
    platform = Platform(data, tmp_path, limit=10, limits=EvaluationLimits(max_bank_columns=3))
    with pytest.raises(PeerError, match=r"declared 4 model columns; the platform allows 1 to 3 "
                                        r"\(\[policy\] max_bank_columns\)"):
        run(bank, platform)


# ---- (2) evaluation: crafted tags, tiny splits, more evaluations than allowed ----


def test_crafted_tags_are_refused_before_they_pass_the_budget(tmp_path: Path) -> None:
    """31 tags with one-row classes would turn each multiset into per-row scores: 31 projections per validation
    customer, past a budget of 5. The platform refuses at setup, naming the knob; nothing is evaluated."""
    bank, data = parties(300, 1, seed=24)
    platform = Platform(data, tmp_path, limit=5)
    with pytest.raises(PeerError, match=r"more distinct projections.*\[policy\] max_released_projections"):
        run(crafted_tags(bank, 31), platform, validation_share=0.3)
    assert platform.ledger.epochs_evaluated("job-deviant") == set()
    assert all(platform.ledger.held(str(i)) == 0 for i in data.ids)


def test_within_the_budget_every_evaluated_customer_is_charged_and_never_past_it(tmp_path: Path) -> None:
    """4 crafted tags, budget 5: the job runs, each validation and test customer is charged one projection per
    tag (one validation evaluation, the test rows with the same final weights), scoring the model afterwards
    charges nothing more for them, and a second model on the same customers is refused at setup."""
    bank, data = parties(300, 1, seed=25)
    platform = Platform(data, tmp_path, limit=5)
    run(crafted_tags(bank, 4), platform, validation_share=0.3)
    handler = platform.handlers[0]
    held = {str(data.ids[i]): platform.ledger.held(str(data.ids[i])) for i in range(len(data.ids))}
    assert {held[str(data.ids[i])] for i in handler.validation} == {4}
    assert {held[str(data.ids[i])] for i in handler.test} == {4}
    assert max(held.values()) <= 5
    best = handler.state.best_epoch
    final = [Projection("job-deviant", f"crafted{t}", int(best[t])) for t in range(4)]
    assert platform.ledger.charge([str(data.ids[i]) for i in handler.test], final, what="scoring") == 4
    with pytest.raises(PeerError, match="max_released_projections"):
        run(crafted_tags(bank, 4), platform, job="job-deviant2", validation_share=0.3)
    assert max(platform.ledger.held(str(i)) for i in data.ids) <= 5


def test_more_validation_evaluations_than_allowed_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bank that ignores the setup's max_validation_evaluations and asks every epoch: the second is refused."""
    bank, data = parties(240, 1, seed=26)
    platform = Platform(data, tmp_path, limit=10)
    monkeypatch.setattr(bank_module, "validation_epochs", lambda epochs, limit: set(range(epochs)))
    with pytest.raises(PeerError, match=r"evaluated in 1 epochs already; the platform allows 1 "
                                        r"\(\[policy\] max_validation_evaluations\)"):
        run(bank, platform, validation_share=0.3, epochs=3)
    assert platform.ledger.epochs_evaluated("job-deviant") == {0}


def test_a_two_row_validation_split_is_refused(tmp_path: Path) -> None:
    bank, data = parties(240, 1, seed=27)
    platform = Platform(data, tmp_path, limit=10)

    def tap(call: Call, channel: LocalChannel, step: str, message: Message) -> None:
        if step == Step.SETUP:
            message[Field.VALIDATION_ROWS] = message[Field.VALIDATION_ROWS][:2]

    with pytest.raises(PeerError, match=r"the validation split holds 2 rows; the platform evaluates splits of at "
                                        r"least 20 \(\[policy\] min_evaluation_rows\)"):
        run(bank, platform, tap, validation_share=0.3)


def test_the_honest_bank_evaluates_only_the_allowed_epochs() -> None:
    assert validation_epochs(10, 1) == {9} and validation_epochs(10, None) == set(range(10))
    assert validation_epochs(10, 3) == {9, 6, 3} and validation_epochs(2, 5) == {0, 1}


# ---- (3) the ledger: per customer, across alignments, all or nothing ----


def test_the_ledger_keys_customers_by_a_private_hmac_and_charges_all_or_nothing(tmp_path: Path) -> None:
    stores = memory_node_stores()
    ledger = DisclosureLedger(tmp_path, lambda: 2, stores.jobs)
    assert (tmp_path / "disclosure.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "disclosure.sqlite").stat().st_mode & 0o777 == 0o600
    first = [Projection("train-aaaa", "t", 0), Projection("train-aaaa", "u", 0)]
    assert ledger.charge(["alice", "bob"], first, what="scoring") == 2
    assert ledger.charge(["alice"], first, what="scoring") == 2  # the same vectors again: nothing new
    with pytest.raises(DisclosureRefused, match="1 customers more"):
        ledger.charge(["bob", "carol"], [Projection("train-bbbb", "t", 3)], what="scoring")
    assert (ledger.held("bob"), ledger.held("carol")) == (2, 0)  # carol was not charged either
    raw = (tmp_path / "disclosure.sqlite").read_bytes() + b"".join(e.detail.encode() for e in stores.jobs.audit_events())
    assert b"alice" not in raw and b"bob" not in raw and b"carol" not in raw
    again = DisclosureLedger(tmp_path, lambda: 2, stores.jobs)  # a restart: the same key, the same counts
    assert again.held("alice") == 2 and again.epochs_evaluated("train-aaaa") == {0}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> SimulatedFiles:
    return simulated_files(tmp_path_factory.mktemp("sim"))


def test_a_second_alignment_of_the_same_customers_does_not_reset_the_budget(files: SimulatedFiles,
                                                                           tmp_path: Path) -> None:
    """The real nodes: a model on one alignment spends the budget of its validation and test customers; a new
    PSI of the same customers and a second model on it find the same counts and are refused at setup; scoring
    the first model's customers through either alignment's model charges the same ledger."""
    from dataclasses import replace

    nodes = make_nodes(files, tmp_path)
    nodes.platform.config = replace(nodes.platform.config, max_released_projections=3)
    first_align = nodes.bank.wait(nodes.bank.submit("align", "", {}))
    first = nodes.bank.wait(nodes.bank.submit("train", "", {"train": FAST_TRAIN}), timeout_s=300)
    assert first_align.status == first.status == "succeeded", first.error
    second_align = nodes.bank.wait(nodes.bank.submit("align", "", {}))
    assert second_align.status == "succeeded"
    second = nodes.bank.wait(nodes.bank.submit("train", "", {"train": FAST_TRAIN,
                                                             "alignment_job_id": second_align.job_id}), timeout_s=300)
    assert second.status == "failed" and "max_released_projections" in (second.error or "")
    ledger = nodes.platform.ledger
    assert max(ledger.held(i) for i in files.shared_ids) == len(files.tags) <= 3
    released = [e for e in nodes.platform.stores.jobs.audit_events(first.job_id) if e.event == RELEASE_EVENT]
    assert released and all("@" in e.detail for e in released)
    assert not [e for e in nodes.platform.stores.jobs.audit_events() if e.event == CHECK_EVENT]


def test_the_check_failure_is_audited_by_the_platform_node(files: SimulatedFiles, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A range check that fails on the node: the job fails on both sides, and the platform's audit names the
    step and the check (no value, no ID)."""
    nodes = make_nodes(files, tmp_path)
    original = PlatformTrainHandler._gradient

    def crafted(self: PlatformTrainHandler, message: Message) -> Message:  # what arrives from a deviating bank
        shifted = shifted_up(self.pk, message[Field.MASKED_GRADIENT], self.plan.cross_slot - 2)  # type: ignore[arg-type]
        return original(self, {**message, Field.MASKED_GRADIENT: shifted})

    assert nodes.bank.wait(nodes.bank.submit("align", "", {})).status == "succeeded"
    monkeypatch.setattr(PlatformTrainHandler, "_gradient", crafted)
    job = nodes.bank.wait(nodes.bank.submit("train", "", {"train": FAST_TRAIN}), timeout_s=300)
    assert job.status == "failed" and "check 'masked gradient range' failed" in (job.error or "")
    [event] = [e for e in nodes.platform.stores.jobs.audit_events(job.job_id) if e.event == CHECK_EVENT]
    assert event.detail == "step train.gradient: check 'masked gradient range'" and event.outcome == "stopped"
    assert nodes.platform.stores.jobs.get(job.job_id).status == "failed"


