"""Training resumed from checkpoints ends with the model of an uninterrupted run; a replay leaks nothing new.

Both parties in one process (the wire's rules enforced by LocalPeer); a "kill" is an exception at a chosen
step, before the bank sends it or after the platform answered it, and the resumed parties keep only what a
restarted node keeps: their checkpoint documents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from protocols.channel import LocalPeer, Message, PeerChannel
from protocols.errors import PeerError, ProtocolError
from protocols.party_data import PartyData
from protocols.vfl_lr import (
    PlatformModel,
    TrainingError,
    TrainParams,
    make_platform_train_handler,
    run_bank_training,
)
from protocols.vfl_lr.messages import Field, Step
from protocols.vfl_lr.platform import PlatformTrainHandler
from protocols.vfl_lr.resume import KeyedRandom, MemoryCheckpoints, new_noise_key, read_platform_checkpoint
from simulations.generate import SimulationConfig
from tests.bank_keys import bank_key_fields
from tests.test_vfl_lr import simulate

KEY = bytes(range(32))
PARAMS = {"key_bits": 1024, "epochs": 2, "batch_size": 48, "validation_share": 0.2, "checkpoint_every": 2}


class Killed(Exception):
    """A node "killed" mid-job: raised in place of a step."""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[PartyData, PartyData]:
    config = SimulationConfig(n_bank=330, n_platform=360, overlap=0.8, n_tags=2, label_share=0.7, seed=5)
    return simulate(tmp_path_factory.mktemp("resume"), config)


@dataclass
class Kill:
    """Kill before the bank sends the ``nth`` call of ``step`` (``after``: after the platform answered it)."""

    step: str
    nth: int
    after: bool = False
    seen: int = 0


@dataclass
class RecordingPlatform:
    """The platform's side; keeps its checkpoints across kills, and every gradient it stepped with."""

    data: PartyData
    checkpoints: MemoryCheckpoints = field(default_factory=MemoryCheckpoints)
    models: list[PlatformModel] = field(default_factory=list)
    gradients: list[dict[tuple[int, int], np.ndarray]] = field(default_factory=list)  # per session

    def __call__(self, kind: str, job_id: str, params: Message) -> PlatformTrainHandler:
        handler = make_platform_train_handler(job_id, params, self.data, on_result=self.models.append, compute=1,
                                              checkpoints=self.checkpoints, insecure_for_tests=True)
        seen: dict[tuple[int, int], np.ndarray] = {}
        self.gradients.append(seen)
        original = handler._gradient

        def gradient(message: Message) -> Message:  # what a curious platform keeps: its gradient per batch
            state = handler.state
            step = state.optimizer.step

            def record(W: np.ndarray, grad: np.ndarray, *rest: Any) -> None:
                seen[(state.epoch, state.next_batch)] = grad.copy()
                step(W, grad, *rest)

            state.optimizer.step = record  # type: ignore[method-assign]
            try:
                return original(message)
            finally:
                state.optimizer.step = step  # type: ignore[method-assign]

        handler._steps[Step.GRADIENT] = gradient
        return handler


class KillingPeer:
    def __init__(self, platform: RecordingPlatform, kill: Kill | None) -> None:
        self.peer = LocalPeer(platform)
        self.kill = kill

    def open(self, kind: str, job_id: str, params: Message) -> PeerChannel:
        channel = self.peer.open(kind, job_id, params)
        channel.keep_transcript = True
        kill, call = self.kill, channel.call

        def killing_call(step: str, message: Message) -> Message:
            if kill is None or step != kill.step:
                return call(step, message)
            kill.seen += 1
            if kill.seen == kill.nth and not kill.after:
                raise Killed(step)
            reply = call(step, message)
            if kill.seen == kill.nth:
                raise Killed(step)
            return reply

        channel.call = killing_call  # type: ignore[method-assign]
        return channel


def train(bank: PartyData, platform: RecordingPlatform, bank_ckpt: MemoryCheckpoints, kill: Kill | None = None,
          peers: list[KillingPeer] | None = None, **kw: Any) -> Any:
    params = TrainParams(**{**PARAMS, **kw})
    peer = KillingPeer(platform, kill)
    if peers is not None:
        peers.append(peer)
    return run_bank_training(peer, "job-resume", bank, params, compute=1, checkpoints=bank_ckpt, noise_key=KEY,
                             insecure_for_tests=True)


def weights(outcome: Any, platform: RecordingPlatform) -> list[np.ndarray]:
    m, pm = outcome.model, platform.models[-1]
    return [m.weights, m.intercept, m.calibration, pm.weights]


def uninterrupted(bank: PartyData, platform_data: PartyData, **kw: Any) -> tuple[Any, RecordingPlatform]:
    platform = RecordingPlatform(platform_data)
    return train(bank, platform, MemoryCheckpoints(), **kw), platform


def resumed(bank: PartyData, platform_data: PartyData, kills: list[Kill], *, platform_restarts: bool = False,
            **kw: Any) -> tuple[Any, RecordingPlatform, MemoryCheckpoints]:
    platform, bank_ckpt = RecordingPlatform(platform_data), MemoryCheckpoints()
    for kill in kills:
        with pytest.raises(Killed):
            train(bank, platform, bank_ckpt, kill, **kw)
        if platform_restarts:  # a restarted platform keeps its checkpoints only
            platform = RecordingPlatform(platform_data, checkpoints=platform.checkpoints, gradients=platform.gradients)
    return train(bank, platform, bank_ckpt, **kw), platform, bank_ckpt


@pytest.mark.parametrize("label_dp", ["on", "off"])
def test_a_resumed_job_ends_with_the_uninterrupted_model(data, label_dp):
    bank, platform_data = data
    reference, ref_platform = uninterrupted(bank, platform_data, label_dp=label_dp)
    assert reference.report["label_privacy"]["mode"] == ("dp" if label_dp == "on" else "unprotected")
    # With label DP a kill at every kind of step (the platform restarting too); without it, two kills.
    kills = [Kill(Step.EMASK_OPEN, 3), Kill(Step.FORWARD, 2, after=True), Kill(Step.EVALUATE, 1, after=True),
             Kill(Step.GRADIENT, 2, after=True), Kill(Step.FINISH, 1, after=True)]
    if label_dp == "off":
        kills = [Kill(Step.GRADIENT, 3, after=True), Kill(Step.EVALUATE, 2)]
    outcome, platform, bank_ckpt = resumed(bank, platform_data, kills, platform_restarts=label_dp == "on",
                                           label_dp=label_dp)
    for got, want in zip(weights(outcome, platform), weights(reference, ref_platform), strict=True):
        assert np.array_equal(got, want)  # bit for bit
    assert outcome.report["history"] == [{**h, "seconds_ahead": a["seconds_ahead"],
                                          "seconds_online": a["seconds_online"]}
                                         for h, a in zip(reference.report["history"], outcome.report["history"],
                                                         strict=True)]
    if label_dp == "on":  # the replayed epochs are not counted twice
        assert outcome.report["label_privacy"]["epsilon"] == reference.report["label_privacy"]["epsilon"]
    # Fresh keys per session: a resumed session is a new one.
    assert outcome.model.key_fingerprints != reference.model.key_fingerprints
    assert bank_ckpt.doc is not None and "done" in bank_ckpt.doc


def test_a_bank_with_its_outcome_saved_finishes_without_the_platform(data):
    bank, platform_data = data
    platform, bank_ckpt = RecordingPlatform(platform_data), MemoryCheckpoints()
    first = train(bank, platform, bank_ckpt, epochs=1)
    again = train(bank, RecordingPlatform(platform_data), bank_ckpt, kill=Kill(Step.SETUP, 1), epochs=1)
    assert np.array_equal(again.model.weights, first.model.weights) and again.report == first.report


def test_a_replayed_batch_gives_the_platform_no_second_noisy_view(data):
    """The attack: a platform that sees one batch's gradient twice, with independent label-DP noise, averages
    the two and halves the noise variance. Replayed batches carry the noise they carried before (the keyed
    stream of resume.py), so both views are the same to the bit and averaging gains nothing. The control
    resumes with the noise key lost (fresh noise): then the second view differs by a fresh draw."""
    bank, platform_data = data
    platform, bank_ckpt, peers = RecordingPlatform(platform_data), MemoryCheckpoints(), []
    with pytest.raises(Killed):  # checkpoint_every 2: batch 2 is replayed after the kill
        train(bank, platform, bank_ckpt, Kill(Step.FORWARD, 4), peers, label_dp="on")
    train(bank, platform, bank_ckpt, None, peers, label_dp="on")
    # On the wire: the resumed session names the bank's position, and repeats epoch 0 from batch 2.
    resumed_wire: dict[str, Message] = {}
    for step, request, _ in peers[1].peer.channels[0].transcript:
        resumed_wire.setdefault(step, request)  # the first of each step
    assert resumed_wire[Step.SETUP][Field.RESUME_STEPS] == 2 and resumed_wire[Step.EPOCH][Field.FIRST_BATCH] == 2
    assert Field.RESUME_STEPS not in peers[0].peer.channels[0].transcript[0][1]
    first, second = platform.gradients[0], platform.gradients[1]
    replayed = sorted(set(first) & set(second))
    assert replayed == [(0, 2)]
    for key in replayed:
        assert np.array_equal(first[key], second[key])

    # Control: a resume that drew fresh noise would hand the platform a second, independent view.
    platform, bank_ckpt = RecordingPlatform(platform_data), MemoryCheckpoints()
    with pytest.raises(Killed):
        train(bank, platform, bank_ckpt, Kill(Step.FORWARD, 4), label_dp="on")
    assert bank_ckpt.doc is not None
    bank_ckpt.doc = {**bank_ckpt.doc, "noise_key": new_noise_key().hex()}
    train(bank, platform, bank_ckpt, label_dp="on")
    diff = platform.gradients[0][(0, 2)] - platform.gradients[1][(0, 2)]
    assert np.abs(diff).max() > 0


def test_keyed_noise_is_reproducible_and_keyed():
    a, b = KeyedRandom(KEY, "0:1:bank"), KeyedRandom(KEY, "0:1:bank")
    assert [a.gauss(0, 1) for _ in range(5)] == [b.gauss(0, 1) for _ in range(5)]
    assert KeyedRandom(KEY, "0:1:bank").random() != KeyedRandom(KEY, "0:2:bank").random()
    assert KeyedRandom(KEY, "x").random() != KeyedRandom(new_noise_key(), "x").random()
    draws = np.array([KeyedRandom(KEY, "stats").gauss(0, 1)] + [KeyedRandom(KEY, f"s{i}").gauss(0, 1)
                                                                   for i in range(2000)])
    assert abs(draws.mean()) < 0.1 and abs(draws.std() - 1) < 0.1
    with pytest.raises(ValueError, match="32 bytes"):
        KeyedRandom(b"short", "x")


def test_the_platform_refuses_a_resume_it_has_no_checkpoint_for(data):
    bank, platform_data = data
    platform, bank_ckpt = RecordingPlatform(platform_data), MemoryCheckpoints()
    with pytest.raises(Killed):
        train(bank, platform, bank_ckpt, Kill(Step.FORWARD, 4))
    with pytest.raises(PeerError, match="no checkpoint of this job on the platform node"):
        train(bank, RecordingPlatform(platform_data), bank_ckpt)  # the platform lost its state directory
    with pytest.raises(TrainingError, match="other training parameters"):
        train(bank, platform, bank_ckpt, learning_rate=0.2)
    with pytest.raises(TrainingError, match="has no checkpoint at step 1 "):
        read_platform_checkpoint(platform.checkpoints.doc, TrainParams(**PARAMS), 1, where="job x")


def test_the_platform_refuses_a_resumed_epoch_at_another_batch(data, tmp_path: Path):
    bank, platform_data = data
    platform, bank_ckpt = RecordingPlatform(platform_data), MemoryCheckpoints()
    with pytest.raises(Killed):
        train(bank, platform, bank_ckpt, Kill(Step.FORWARD, 4))
    doc = bank_ckpt.doc
    assert doc is not None and doc["state"]["steps"] == 2
    handler = platform(*_open(bank, platform_data))
    from protocols.paillier import generate_keypair

    keys = bank_key_fields("job-resume", generate_keypair(1024, allow_insecure=True),
                           generate_keypair(1024, allow_insecure=True))
    n = len(bank.ids)
    split = TrainParams(**PARAMS).split(bank.labels, bank.ids)
    mask = np.zeros((n, 2), np.uint8)
    mask[split.train] = (~np.isnan(bank.labels[split.train])).astype(np.uint8)
    handler.handle(Step.SETUP, {**keys, Field.N_ROWS: n, Field.TRAIN_ROWS: split.train,
                                Field.BANK_COLUMNS: bank.features.shape[1] + 1,
                                Field.VALIDATION_ROWS: split.validation, Field.TEST_ROWS: split.test,
                                Field.LABEL_MASK: mask, Field.RESUME_STEPS: 2})
    rows = split.train[:96]
    with pytest.raises(ProtocolError, match="resumes at epoch 0 batch 2"):
        handler.handle(Step.EPOCH, {Field.EPOCH: 0, Field.BATCH_ROWS: rows, Field.FIRST_BATCH: 1,
                                    Field.BATCH_SIZES: np.array([48, 48], dtype=np.int64)})


def _open(bank: PartyData, platform_data: PartyData) -> tuple[str, str, Message]:
    import json

    from protocols.vfl_lr.params import VERSION

    return "train", "job-resume", {Field.VERSION: VERSION, Field.PARAMS: TrainParams(**PARAMS).to_json(),
                                   Field.TAGS: json.dumps(list(bank.tag_names))}


def test_keyed_normals_are_reproducible_and_standard_normal() -> None:
    """Label DP's noise on every (row, tag) comes from the job's keyed stream at once: the same key and label give
    the same draws (a resumed job trains on the same noisy labels), another label others, and they are N(0, 1)."""
    from scipy import stats

    key = bytes(range(32))
    draws = KeyedRandom(key, "labels").normals(50_001)
    assert len(draws) == 50_001 and np.array_equal(draws, KeyedRandom(key, "labels").normals(50_001))
    assert not np.array_equal(draws, KeyedRandom(key, "other").normals(50_001))
    assert stats.kstest(draws, "norm").pvalue > 1e-4
