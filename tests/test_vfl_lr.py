"""Vertical LR: both parties in one process over the in-memory channel (the wire's rules enforced).

Most tests run 1024-bit keys to stay fast, so their slot plans are those of a 1024-bit key (14 pairs per
ciphertext); ``test_2048_bit_keys_pack_full_ciphertexts`` runs one training with 2048-bit keys, where a
ciphertext holds 29 labelled pairs, end to end.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from party_common.data_loading import load_party_data
from protocols.channel import LocalPeer, PeerError, ProtocolError
from protocols.errors import UserError
from protocols.evaluation_metrics import centralized_baseline
from protocols.packing import unpack_signed
from protocols.paillier import CipherVector, generate_keypair
from protocols.party_data import PartyData
from protocols.vfl_lr import (
    VERSION,
    BankModel,
    BankTrainState,
    ModelError,
    PlatformModel,
    PlatformTrainHandler,
    PlatformTrainState,
    SlotPlan,
    TrainingError,
    TrainParams,
    make_platform_train_handler,
    plaintext_reference,
    run_bank_training,
)
from protocols.vfl_lr.messages import Field, Step
from protocols.vfl_lr.params import F_BITS
from protocols.vfl_lr.state import Scaler
from simulations.generate import SimulationConfig, generate, write

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
FAST = {"key_bits": 1024, "validation_share": 0.0}


def aligned(bank: PartyData, platform: PartyData) -> tuple[PartyData, PartyData]:
    members = set(platform.ids)
    ids = [i for i in bank.ids if i in members]
    return bank.take(ids), platform.take(ids)


def simulate(out: Path, config: SimulationConfig) -> tuple[PartyData, PartyData]:
    data = generate(config)
    paths = write(data, out)
    bank = load_party_data(paths["bank"], id_column="id", tag_columns=data.tag_columns)
    platform = load_party_data(paths["platform"], id_column="id")
    return aligned(bank, platform)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[PartyData, PartyData]:
    config = SimulationConfig(n_bank=900, n_platform=1000, overlap=0.8, n_tags=3, label_share=0.3, seed=3)
    return simulate(tmp_path_factory.mktemp("sim"), config)


class Platform:
    """The platform's side in-process; keeps what it received and its private key, as a curious platform would."""

    def __init__(self, data: PartyData) -> None:
        self.data = data
        self.models: list[PlatformModel] = []
        self.handlers: list[PlatformTrainHandler] = []
        self.secret_keys: list[Any] = []

    def __call__(self, kind: str, job_id: str, params: dict) -> PlatformTrainHandler:
        handler = make_platform_train_handler(job_id, params, self.data, on_result=self.models.append, compute=1,
                                              insecure_for_tests=True)
        original_close = handler.close

        def close() -> None:
            self.secret_keys.append(getattr(handler, "sk", None))
            original_close()

        handler.close = close  # type: ignore[method-assign]
        self.handlers.append(handler)
        return handler


def train(bank: PartyData, platform: PartyData, transcript: bool = False, **kw: Any):
    plat = Platform(platform)
    peer = LocalPeer(plat)
    if transcript:
        original_open = peer.open

        def open_with_transcript(*a: Any, **k: Any):
            channel = original_open(*a, **k)
            channel.keep_transcript = True
            return channel

        peer.open = open_with_transcript  # type: ignore[method-assign]
    params = TrainParams(**{**FAST, **kw})
    outcome = run_bank_training(peer, "job-test", bank, params, compute=1, insecure_for_tests=True)
    return outcome, plat, peer, BoundParams.of(params, bank.ids)


class BoundParams(TrainParams):
    """The job's parameters, whose :meth:`split` of this bank's labels defaults to its customer IDs (the split
    is keyed by the IDs), so callers of ``params.split(bank.labels)`` get the split the bank trained on."""

    ids: Any = None  # not a dataclass field: never in to_dict

    @classmethod
    def of(cls, params: TrainParams, ids: Any) -> BoundParams:
        bound = cls(**params.to_dict())
        bound.ids = ids
        return bound

    def split(self, labels: np.ndarray, ids: Any = None) -> Any:
        if ids is None and self.ids is not None and len(self.ids) == len(labels):
            ids = self.ids
        return super().split(labels, ids)


def assert_matches_plaintext(bank: PartyData, platform: PartyData, outcome: Any, plat: Platform,
                             params: TrainParams) -> None:
    """Plain SGD: the update is linear in the gradient, so the weights themselves must agree."""
    ref = plaintext_reference(bank, platform, params)
    joint_a = np.vstack([outcome.model.weights, outcome.model.intercept])
    joint_b = plat.models[0].weights
    # The bank quantises only the cross term; the platform's whole gradient uses 8-bit features
    # (docs/protocol.md: a few per cent of the largest weight at most).
    for joint, plain, bound in ((joint_a, ref["bank"], 0.01), (joint_b, ref["platform"], 0.06)):
        err = np.abs(joint - plain).max() / np.abs(plain).max()
        assert err < bound, err
    # Scores agree almost perfectly.
    za = outcome.model.partial_scores(bank.features) + plat.models[0].partial_scores(platform.features)
    XA = np.hstack([standardised(bank, bank, params), np.ones((len(bank), 1))])
    zr = XA @ ref["bank"] + standardised(bank, platform, params) @ ref["platform"]
    for t in range(za.shape[1]):
        assert np.corrcoef(za[:, t], zr[:, t])[0, 1] > 0.995


def standardised(bank: PartyData, data: PartyData, params: TrainParams) -> np.ndarray:
    """A party's features as training standardised them (the split comes from the bank's labels)."""
    split = params.split(bank.labels, bank.ids)
    return Scaler.fit(data.features[split.train], params.clip).transform(data.features)


def test_joint_training_matches_plaintext_taylor_lr(simulated):
    bank, platform = simulated
    outcome, plat, _, params = train(bank, platform, epochs=2, batch_size=128, optimizer="sgd", learning_rate=0.5)
    assert_matches_plaintext(bank, platform, outcome, plat, params)
    metrics = outcome.report["metrics"]
    assert set(metrics) == set(bank.tag_names)
    for tag in bank.tag_names:
        # ~40 labelled test rows per tag: the ID-keyed split (since the split moved off row positions) drew a
        # test set where one tag scores 0.58 after these 2 SGD epochs; 0.55 still tells a model from chance.
        assert metrics[tag]["joint"]["auc"] > 0.55
        assert metrics[tag]["bank_only"]["auc"] is not None


def test_2048_bit_keys_pack_full_ciphertexts(tmp_path):
    """One run with production-size keys: 28 labelled pairs share a ciphertext (room for label-DP noise), and the
    result still holds."""
    config = SimulationConfig(n_bank=300, n_platform=320, overlap=0.9, n_tags=3, label_share=0.5, seed=11)
    bank, platform = simulate(tmp_path, config)
    outcome, plat, peer, params = train(bank, platform, transcript=True, key_bits=2048, epochs=1, batch_size=64,
                                        optimizer="sgd", learning_rate=0.5)
    handler = plat.handlers[0]
    plan = handler.plan
    assert plan.pairs_per_ct == 28 and outcome.report["encoding"]["pairs_per_ciphertext"] == 28  # 29 with label_dp "off"
    assert plan.groups == [range(0, 3)]  # all three tags in one per-row ciphertext
    pairs_per_batch = [int(handler.mask[rows].sum()) for rows in handler.batches]
    assert max(pairs_per_batch) >= plan.pairs_per_ct
    # Every batch's residuals travel ceil(pairs / 28) to a ciphertext, and the first of a full batch holds 28.
    sk = plat.secret_keys[0]
    gradients = [request for step, request, _ in peer.channels[0].transcript if step == Step.GRADIENT]
    assert len(gradients) == len(pairs_per_batch)
    full = 0
    for request, n_pairs in zip(gradients, pairs_per_batch, strict=True):
        cts = CipherVector.from_bytes(sk.public_key, request[Field.MASKED_RESIDUALS])
        assert len(cts) == -(-n_pairs // plan.pairs_per_ct)
        if n_pairs >= plan.pairs_per_ct:
            slots = unpack_signed(sk.decrypt(cts)[0], plan.pairs_per_ct, plan.pair_slot)
            assert all(abs(s) > 2 ** (F_BITS + 8) for s in slots)  # 28 masked residuals, none empty
            full += 1
    assert full >= 1
    assert_matches_plaintext(bank, platform, outcome, plat, params)


def test_unknown_labels_take_no_part(simulated):
    """Full batch: tag 0's model trained alongside other tags equals tag 0 trained alone."""
    bank, platform = simulated
    together, plat_together, _, _ = train(bank, platform, epochs=2, batch_size=4096)
    alone, plat_alone, _, _ = train(bank.select_tags([bank.tag_names[0]]), platform, epochs=2, batch_size=4096)
    assert np.allclose(together.model.weights[:, 0], alone.model.weights[:, 0], atol=1e-6)
    assert np.allclose(plat_together.models[0].weights[:, 0], plat_alone.models[0].weights[:, 0], atol=1e-6)


def test_what_the_platform_decrypts_is_masked(simulated):
    bank, platform = simulated
    outcome, plat, peer, params = train(bank, platform, transcript=True, epochs=1, batch_size=256)
    sk = plat.secret_keys[0]
    handler = plat.handlers[0]
    plan = SlotPlan.for_params(params, params.batch_size, len(bank.tag_names), handler.plan.plaintext_bits)
    residuals, gradients = [], []
    for step, request, _reply in peer.channels[0].transcript:
        if step == Step.GRADIENT:
            res = sk.decrypt(CipherVector.from_bytes(sk.public_key, request[Field.MASKED_RESIDUALS]))
            for value in res:
                residuals.extend(unpack_signed(value, plan.pairs_per_ct, plan.pair_slot))
            gradients.extend(sk.decrypt(CipherVector.from_bytes(sk.public_key, request[Field.MASKED_GRADIENT])))
    assert len(residuals) > 100 and gradients
    # The true residuals d' 2^F are below 2^27 in magnitude; what the platform sees spreads over ~2^67.
    values = np.array([abs(v) for v in residuals if v != 0], dtype=float)
    assert np.median(values) > 2.0 ** 60
    assert (values > 2.0 ** (F_BITS + 8)).mean() > 0.99
    # No request or reply holds a label, a bank feature value or a partial score in the clear.
    for step, request, reply in peer.channels[0].transcript:
        for message in (request, reply):
            for name, value in message.items():
                assert not (isinstance(value, np.ndarray) and value.dtype.kind == "f"), (step, name)


def test_breast_auc_within_bound_of_centralized():
    bank = load_party_data(DATASETS / "breast_hetero_guest.csv", id_column="id", tag_columns=["y"])
    platform = load_party_data(DATASETS / "breast_hetero_host.csv", id_column="id")
    bank, platform = aligned(bank, platform)
    params = {"epochs": 10, "batch_size": 128, "l2": 0.1}
    outcome, _, _, p = train(bank, platform, **params)
    joint = outcome.report["metrics"]["y"]["joint"]["auc"]
    central = centralized_baseline(bank, platform, p.split(bank.labels, bank.ids), l2=p.l2)["y"]["auc"]
    assert joint >= central - 0.005, (joint, central)


def json_round_trip(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, allow_nan=False))


def test_model_halves_round_trip_as_dicts(simulated):
    bank, platform = simulated
    outcome, plat, _, _ = train(bank, platform, epochs=1)
    outcome.model.alignment_job_id = "align-1"
    loaded = BankModel.from_dict(json_round_trip(outcome.model.to_dict()), where="bank.model")
    assert loaded.alignment_job_id == "align-1" and loaded.tag_names == bank.tag_names
    assert loaded.schema == outcome.model.schema and loaded.key_fingerprints == outcome.model.key_fingerprints
    assert np.array_equal(loaded.weights, outcome.model.weights)
    assert np.array_equal(loaded.intercept, outcome.model.intercept)
    assert np.array_equal(loaded.partial_scores(bank.features), outcome.model.partial_scores(bank.features))
    platform_dict = json_round_trip(plat.models[0].to_dict())
    loaded_p = PlatformModel.from_dict(platform_dict, where="platform.model")
    assert np.array_equal(loaded_p.partial_scores(platform.features), plat.models[0].partial_scores(platform.features))


def test_damaged_model_dicts_are_refused(simulated):
    bank, platform = simulated
    outcome, plat, _, _ = train(bank, platform, epochs=1)
    good = outcome.model.to_dict()
    with pytest.raises(ModelError, match=f"bank.model: not a platform model of {VERSION}"):
        PlatformModel.from_dict(good, where="bank.model")
    # Models of protocol v1 have the same format and still load.
    assert VERSION != "vfl-lr-taylor-v1" and good["version"] == VERSION
    old = BankModel.from_dict({**good, "version": "vfl-lr-taylor-v1"}, where="v1.model")
    assert np.array_equal(old.weights, outcome.model.weights)
    with pytest.raises(ModelError, match="old.model: not a bank model"):
        BankModel.from_dict({**good, "version": "vfl-lr-taylor-v0"}, where="old.model")
    with pytest.raises(ModelError, match="m1: damaged bank model: missing 'weights'"):
        BankModel.from_dict({k: v for k, v in good.items() if k != "weights"}, where="m1")
    with pytest.raises(ModelError, match="m2: damaged bank model: weights, scaler and schema"):
        BankModel.from_dict({**good, "weights": good["weights"][:-1]}, where="m2")
    with pytest.raises(ModelError, match="m3: damaged bank model: the intercepts"):
        BankModel.from_dict({**good, "intercept": [0.0]}, where="m3")
    with pytest.raises(ModelError, match="m4: damaged platform model"):
        PlatformModel.from_dict({**plat.models[0].to_dict(), "scaler": "none"}, where="m4")
    with pytest.raises(ModelError, match="m5: not a bank model"):
        BankModel.from_dict([1, 2], where="m5")  # type: ignore[arg-type]
    assert issubclass(ModelError, UserError)


def test_train_params_from_dict():
    params = TrainParams(epochs=3, learning_rate=0.1, optimizer="sgd", fit_intercept=False, seed=9)
    assert TrainParams.from_dict(json_round_trip(params.to_dict())) == params
    assert TrainParams.from_json(params.to_json()) == params
    assert TrainParams.from_dict({"learning_rate": 1}).learning_rate == 1.0  # an integer is a number
    with pytest.raises(TrainingError, match=r"unknown training parameter 'lr'; known: batch_size, bins, checkpoint_every, clip, decay, "):
        TrainParams.from_dict({"lr": 0.1})
    with pytest.raises(TrainingError, match="'epochs' must be an integer, got str"):
        TrainParams.from_dict({"epochs": "10"})
    with pytest.raises(TrainingError, match="'epochs' must be an integer, got float"):
        TrainParams.from_dict({"epochs": 10.0})
    with pytest.raises(TrainingError, match="'fit_intercept' must be true or false, got int"):
        TrainParams.from_dict({"fit_intercept": 1})
    with pytest.raises(TrainingError, match="'l2' must be a number, got bool"):
        TrainParams.from_dict({"l2": True})
    with pytest.raises(TrainingError, match="'l2' must be a number, got a number that is not finite"):
        TrainParams.from_dict({"l2": float("nan")})
    with pytest.raises(TrainingError, match="not valid JSON"):
        TrainParams.from_json("{epochs")
    with pytest.raises(TrainingError, match="must be an object"):
        TrainParams.from_json("[1]")
    assert issubclass(TrainingError, UserError)


def test_bad_parameters_are_refused():
    with pytest.raises(TrainingError, match="batch_size"):
        TrainParams(batch_size=3).validate()
    with pytest.raises(TrainingError, match="insecure"):
        TrainParams(key_bits=1024).validate()
    with pytest.raises(TrainingError, match="optimizer"):
        TrainParams(optimizer="lbfgs").validate()
    with pytest.raises(TrainingError, match="'epochs' must be an integer"):
        TrainParams(epochs="5").validate()  # type: ignore[arg-type]


def assert_states_equal(a: BankTrainState | PlatformTrainState, b: BankTrainState | PlatformTrainState) -> None:
    arrays = ["W", "best_epoch"] + (["best_metric"] if isinstance(a, BankTrainState) else [])
    for name in arrays:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    for name in ("m", "v", "t", "penalty"):
        assert np.array_equal(getattr(a.optimizer, name), getattr(b.optimizer, name)), name
    assert len(a.snapshots) == len(b.snapshots)
    assert all(np.array_equal(x, y) for x, y in zip(a.snapshots, b.snapshots, strict=True))
    assert (a.epoch, a.next_batch) == (b.epoch, b.next_batch)


def test_training_states_round_trip_exactly(simulated):
    bank, platform = simulated
    # The platform's state after a real run (two epochs, a best epoch per tag chosen).
    _, plat, _, params = train(bank, platform, epochs=2, batch_size=256)
    state = plat.handlers[0].state
    assert state.epoch == 1 and len(state.snapshots) == 2 and state.best_epoch is not None
    restored = PlatformTrainState.from_dict(json_round_trip(state.to_dict()), params)
    assert_states_equal(state, restored)

    # The bank's state mid-training: Adam moments, the intercept unpenalised, a tag not yet improved (-inf).
    p = TrainParams(l1=0.01, seed=4)
    rng = np.random.default_rng(0)
    bank_state = BankTrainState.start(p, 6, 3)
    for step in range(3):
        bank_state.optimizer.step(bank_state.W, rng.normal(size=(6, 3)) / 3, 0, np.array([True, True, step > 0]))
    bank_state.snapshots.append(bank_state.W.copy())
    bank_state.best_epoch[:2] = 0
    bank_state.best_metric[:2] = [0.71234567890123, 0.6]
    bank_state.epoch, bank_state.next_batch, bank_state.stale = 1, 2, 1
    bank_state.history.append({"epoch": 1, "validation_auc": {"a": 0.7, "b": None}, "seconds_online": 0.5})
    d = json_round_trip(bank_state.to_dict())
    restored_bank = BankTrainState.from_dict(d, p)
    assert_states_equal(bank_state, restored_bank)
    assert restored_bank.best_metric[2] == -np.inf and restored_bank.history == bank_state.history
    assert restored_bank.optimizer.penalty[-1, 0] == 0.0  # the intercept stays unpenalised
    # Training goes on from the restored state exactly as from the original.
    grad = rng.normal(size=(6, 3))
    for s in (bank_state, restored_bank):
        s.optimizer.step(s.W, grad, 1, np.ones(3, dtype=bool))
    assert np.array_equal(bank_state.W, restored_bank.W)
    assert np.array_equal(bank_state.optimizer.m, restored_bank.optimizer.m)

    with pytest.raises(TrainingError, match="ckpt: damaged bank training state"):
        BankTrainState.from_dict({**d, "W": {**d["W"], "shape": [5, 3]}}, p, where="ckpt")
    with pytest.raises(TrainingError, match="damaged platform training state: not a platform-train-state"):
        PlatformTrainState.from_dict(d, p)


def test_tag_with_one_class_is_refused(simulated):
    bank, platform = simulated
    labels = bank.labels.copy()
    labels[~np.isnan(labels[:, 1]), 1] = 1.0
    with pytest.raises(TrainingError, match=f"'{bank.tag_names[1]}' has one class only"):
        train(replace(bank, labels=labels), platform, epochs=1)


def test_platform_refuses_steps_out_of_order_and_weak_keys(simulated):
    bank, platform = simulated
    plat = Platform(platform)
    params = {Field.VERSION: VERSION, Field.PARAMS: TrainParams(**FAST).to_json(), Field.TAGS: '["a"]'}
    channel = LocalPeer(plat).open("train", "job-x", params)
    with pytest.raises(PeerError, match="out of order"):
        channel.call(Step.FORWARD, {Field.EPOCH: 0, Field.BATCH: 0})
    strict = make_platform_train_handler("job-y", {**params, Field.PARAMS: TrainParams().to_json()}, platform,
                                         on_result=lambda m: None, compute=1)
    weak, _ = generate_keypair(1024, allow_insecure=True)
    with pytest.raises(ProtocolError, match="refused"):
        strict.handle(Step.SETUP, {Field.BANK_KEY: weak.to_bytes(), Field.N_ROWS: len(platform), Field.BANK_COLUMNS: 2,
                                   Field.TRAIN_ROWS: np.arange(3), Field.VALIDATION_ROWS: np.arange(0),
                                   Field.TEST_ROWS: np.arange(3, 5),
                                   Field.LABEL_MASK: np.ones((len(platform), 1), np.uint8)})
    with pytest.raises(ProtocolError, match="not supported"):
        make_platform_train_handler("job-z", {**params, Field.VERSION: "v0"}, platform, on_result=lambda m: None)
    with pytest.raises(ProtocolError, match="unknown training parameter 'lr'"):
        make_platform_train_handler("job-w", {**params, Field.PARAMS: '{"lr": 1}'}, platform,
                                    on_result=lambda m: None, compute=1)
