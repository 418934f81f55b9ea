"""Private evaluation (train.evaluate): what a curious bank can attribute to platform rows, the metrics it
still gets, the platform's refusals, and unlinkable shuffles. 1024-bit keys throughout, for speed."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from protocols.channel import LocalChannel, LocalPeer, Message, PeerError, ProtocolError
from protocols.evaluation_metrics import tag_metrics
from protocols.he import get_scheme
from protocols.packing import unpack_signed
from protocols.paillier import CipherVector, NoisePool, PrivateKey, PublicKey, generate_keypair
from protocols.paillier_pool import PaillierPool
from protocols.party_data import PartyData, Schema
from protocols.vfl_lr import (
    PlatformModel,
    PlatformTrainHandler,
    TrainParams,
    make_platform_train_handler,
    run_bank_training,
    sigmoid,
)
from protocols.vfl_lr.disclosure import EvaluationLimits
from protocols.vfl_lr.encoding import encode_z
from protocols.vfl_lr.evaluation import (
    EVAL_SLOT,
    TEST,
    UNKNOWN,
    VALIDATION,
    encrypt_rows,
    eval_slots,
    label_codes,
    open_scores,
    scores_metrics,
    secret_permutation,
    shuffle_and_add,
)
from protocols.vfl_lr.messages import Field, Step
from protocols.vfl_lr.params import F_BITS

PAILLIER = get_scheme("paillier")

EVERY_EPOCH = EvaluationLimits(max_validation_evaluations=1000)
D_A, D_B = 3, 16  # the platform has many more features than the bank
KNOWN_CUSTOMERS = 30

# Every reply field the bank gets, by step: a new field must be classified in the transcript test.
REPLY_FIELDS = {Step.SETUP: {Field.PLATFORM_KEY, Field.PLATFORM_KEY_PROOF, Field.HE_SCHEME, Field.N_FEATURES,
                             Field.PLATFORM_BINNING, Field.MAX_VALIDATION_EVALUATIONS},
                Step.EPOCH: set(),
                Step.EMASK: {Field.MASKED_PRODUCTS}, Step.EMASK_OPEN: set(),
                Step.FORWARD: {Field.ROWS, Field.PAIRS}, Step.GRADIENT: {Field.MASKED_GRADIENT},
                Step.EVALUATE: {Field.SHUFFLED_SCORES}, Step.FINISH: set()}


def parties(n: int, n_tags: int, seed: int) -> tuple[PartyData, PartyData]:
    """Aligned bank and platform tables where the platform's features carry most of the signal."""
    rng = np.random.default_rng(seed)
    XA, XB = rng.normal(size=(n, D_A)), rng.normal(size=(n, D_B))
    logits = XA @ rng.normal(0, 0.5, (D_A, n_tags)) + XB @ rng.normal(0, 0.6, (D_B, n_tags))
    labels = (rng.random((n, n_tags)) < sigmoid(logits)).astype(np.float64)
    labels[rng.random((n, n_tags)) < 0.1] = np.nan
    ids = np.array([f"c{i:05d}" for i in range(n)], dtype=object)
    tags = [f"tag{t}" for t in range(n_tags)]
    a_names, b_names = [f"a{j}" for j in range(D_A)], [f"b{j}" for j in range(D_B)]
    bank = PartyData("bank.csv", ids, XA, a_names, labels, tags,
                     Schema("id", tuple(a_names), ("float64",) * D_A, tuple(tags)))
    platform = PartyData("platform.csv", ids, XB, b_names, np.zeros((n, 0)), [],
                         Schema("id", tuple(b_names), ("float64",) * D_B))
    return bank, platform


class Recorder:
    """The platform's session factory; keeps each handler (the harness's view of the platform)."""

    def __init__(self, data: PartyData) -> None:
        self.data = data
        self.handlers: list[PlatformTrainHandler] = []
        self.models: list[PlatformModel] = []

    def __call__(self, kind: str, job_id: str, params: Message) -> PlatformTrainHandler:
        # These tests study the multisets of every epoch: the platform allows a validation evaluation per epoch.
        handler = make_platform_train_handler(job_id, params, self.data, on_result=self.models.append, compute=1,
                                              limits=EVERY_EPOCH, insecure_for_tests=True)
        self.handlers.append(handler)
        return handler


Call = Callable[[str, Message], Message]


class TappedPeer(LocalPeer):
    """Keeps every session's transcript; ``tap(call, channel, step, message)`` may act before each call
    (``call`` is the channel's own, which does not pass through the tap again)."""

    def __init__(self, factory: Any, tap: Callable[[Call, LocalChannel, str, Message], None] | None = None) -> None:
        super().__init__(factory)
        self.tap = tap

    def open(self, kind: str, job_id: str, params: Message) -> LocalChannel:
        channel = super().open(kind, job_id, params)
        channel.keep_transcript = True
        if self.tap is not None:
            tap, call = self.tap, channel.call

            def tapped(step: str, message: Message) -> Message:
                tap(call, channel, step, message)
                return call(step, message)

            channel.call = tapped  # type: ignore[method-assign]
        return channel


def train(bank: PartyData, platform: PartyData, monkeypatch: pytest.MonkeyPatch, tap: Any = None,
          **params: Any) -> tuple[Any, Recorder, TappedPeer, list[tuple[PublicKey, PrivateKey]]]:
    """A training run whose bank keys the test keeps (the curious bank decrypts all it can)."""
    keys: list[tuple[PublicKey, PrivateKey]] = []

    def keep(*a: Any, **k: Any) -> tuple[PublicKey, PrivateKey]:
        keys.append(generate_keypair(*a, **k))
        return keys[-1]

    # Through the HE seam both parties draw keys from the one scheme: the bank's two pairs come first (it makes
    # them before it opens the session), the platform's after.
    monkeypatch.setattr(PAILLIER, "generate_keypair", keep)
    recorder = Recorder(platform)
    peer = TappedPeer(recorder, tap)
    p = TrainParams(**{"key_bits": 1024, **params})
    outcome = run_bank_training(peer, "job-eval", bank, p, compute=1, insecure_for_tests=True)
    return outcome, recorder, peer, keys


def reconstruction_error(Z: np.ndarray, X: np.ndarray, known: np.ndarray) -> float:
    """The finding's attack: from per-row values Z = X W (rows x epochs) and the features of ``known`` rows,
    solve for W, then for every other row's features; and, for noisy Z, ridge regressions of the features on
    Z fit on the known rows. The best attack's mean squared error over the features' variance."""
    others = np.setdiff1d(np.arange(len(X)), known)
    W, *_ = np.linalg.lstsq(X[known], Z[known], rcond=None)
    errors = [((Z[others] @ np.linalg.pinv(W) - X[others]) ** 2).mean()]
    A = np.hstack([Z, np.ones((len(Z), 1))])
    for lam in (1e-2, 1.0, 1e2, 1e4):
        B = np.linalg.solve(A[known].T @ A[known] + lam * np.eye(A.shape[1]), A[known].T @ X[known])
        errors.append(((A[others] @ B - X[others]) ** 2).mean())
    return float(min(errors) / X[others].var())


def row_determined(XA: np.ndarray) -> int:
    """How many of a batch's rows the bank could solve for from ``XA^T v`` (d equations, len(XA) unknowns):
    row i is pinned exactly when the unit vector e_i lies in the row space of ``XA^T``."""
    projection = np.linalg.pinv(XA.T) @ XA.T
    return int((np.abs(np.diag(projection) - 1) < 1e-9).sum())


def decode(sk: PrivateKey, data: bytes, n: int, n_tags: int, *, packed: bool) -> np.ndarray:
    """(T, n) slot values 4 z 2^F + code of a train.evaluate request (one ciphertext per tag and row, in row
    order) or of its reply (``packed``: shuffled, many to a ciphertext)."""
    values = sk.decrypt(CipherVector.from_bytes(sk.public_key, data))
    if not packed:
        return np.array(values, dtype=np.int64).reshape(n_tags, n)
    k, slots = eval_slots(sk.public_key), []
    per_tag = -(-n // k)
    for t in range(n_tags):
        for j in range(per_tag):
            slots.extend(unpack_signed(values[t * per_tag + j], min(k, n - j * k), EVAL_SLOT))
    return np.array(slots, dtype=np.int64).reshape(n_tags, n)


def test_curious_bank_attributes_no_platform_value_to_a_row(monkeypatch):
    """(1) The finding, replayed against the new protocol: the bank records everything it receives during
    training and evaluation and decrypts what is under its own key. Nothing of it is a per-row vector of
    platform values, and the 30-known-customers regression now fails (it was exact with partial scores)."""
    bank, platform = parties(560, 1, seed=5)
    outcome, rec, peer, keys = train(bank, platform, monkeypatch, epochs=20, batch_size=128, learning_rate=0.1,
                                     validation_share=0.4, early_stopping_patience=0)
    (pk, sk), (_, esk) = keys[0], keys[1]  # the bank's training key pair, then its evaluation key pair
    handler = rec.handlers[0]
    validation, n_val = handler.validation, len(handler.validation)
    transcript = peer.channels[0].transcript
    attributable: dict[int, list[int]] = {}  # validation row -> platform values the bank can put on it
    z_a, joint = [], []  # per validation: the bank's own z_A (rows in order), the shuffled joint scores
    batches: list[np.ndarray] = []
    for step, request, reply in transcript:
        assert set(reply) == REPLY_FIELDS[step], step
        if step == Step.FORWARD:  # under the platform's key: the bank holds no key that opens them
            assert handler.pk != pk
        elif step == Step.SETUP:  # its key, the key's proof (about the key alone), its scheme and feature count
            assert reply[Field.N_FEATURES] == D_B and reply[Field.HE_SCHEME] == "paillier"
            assert json.loads(reply[Field.PLATFORM_BINNING]) == {}  # raw columns: no binning to describe
        elif step == Step.EMASK:  # X_B^T E + R_B: per platform feature, summed over the batch, masked
            opened = sk.decrypt(CipherVector.from_bytes(pk, reply[Field.MASKED_PRODUCTS]))
            assert len(opened) < D_B
        elif step == Step.EPOCH:
            sizes = np.cumsum(request[Field.BATCH_SIZES])[:-1]  # type: ignore[index]
            batches.extend(np.split(request[Field.BATCH_ROWS], sizes))  # type: ignore[arg-type]
        elif step == Step.GRADIENT:  # X_A^T z_B + R_A in the clear: per bank weight, summed over the batch
            assert len(reply[Field.MASKED_GRADIENT]) == (D_A + 1) * handler.pk.byte_len  # (checked below)
        elif step == Step.EVALUATE and request[Field.SPLIT] == VALIDATION:
            sent = decode(esk, request[Field.ENCRYPTED_SCORES], n_val, 1, packed=False)[0]
            got = decode(esk, reply[Field.SHUFFLED_SCORES], n_val, 1, packed=True)[0]
            assert sorted((got & 3).tolist()) == sorted((sent & 3).tolist())
            z_a.append(sent >> 2)
            joint.append(got)
            # A row is attributable only if it is alone in its label class (the shuffle keeps the labels).
            for code in range(3):
                alone = np.flatnonzero(sent & 3 == code)
                if len(alone) == 1:
                    attributable.setdefault(int(alone[0]), []).extend((got[(got & 3) == code] >> 2).tolist())
    assert len(joint) == 20 and len(batches) == 20 * len(handler.batches)
    # The gradient path: every batch has more rows than the bank has weights, so X_A^T v pins no row.
    for rows in batches:
        assert row_determined(np.hstack([bank.features[rows], np.ones((len(rows), 1))])) == 0
    # The matrix of per-row vectors the bank could attribute to rows: empty, rank 0 (v1: rank D_B, below).
    matrix = np.array(list(attributable.values()) or np.zeros((0, len(joint))), dtype=np.float64)
    assert (np.linalg.matrix_rank(matrix) if matrix.size else 0) == 0 and not attributable

    X = handler.X[validation]  # the platform's standardised features of the validation rows
    known = np.random.default_rng(0).choice(n_val, KNOWN_CUSTOMERS, replace=False)
    # What v1 gave the bank (z_B per validation row and epoch) spans the feature space: exact recovery.
    Z_old = X @ np.column_stack([s[:, 0] for s in handler.state.snapshots])
    assert np.linalg.matrix_rank(Z_old) == D_B
    assert reconstruction_error(Z_old, X, known) < 1e-8
    # Now the bank's best guess: within each label class, give the k-th smallest joint score to the row with
    # the k-th smallest z_A, and take joint - z_A as that row's z_B.
    Z_guess = np.zeros((n_val, len(joint)))
    codes = label_codes(bank.labels[validation])[:, 0]
    for e, (za, scores) in enumerate(zip(z_a, joint, strict=True)):
        for code in range(3):
            rows = np.flatnonzero(codes == code)
            mine = np.sort(scores[(scores & 3) == code] >> 2)
            Z_guess[rows[np.argsort(za[rows])], e] = mine - np.sort(za[rows])
    Z_guess /= 1 << F_BITS
    error = reconstruction_error(Z_guess, X, known)
    assert error > 0.9, error  # about as good as guessing every feature at its mean (error 1)


def test_shuffled_metrics_equal_plaintext_metrics():
    """(2) The metrics of the shuffled multiset are tag_metrics of the plaintext joint scores: AUC and KS
    exactly, log-loss to fixed-point precision; several tags, unknown labels, rows not a multiple of 31."""
    rng = np.random.default_rng(1)
    n, T = 257, 3
    z_a, z_b = rng.normal(0, 1.5, (n, T)), rng.normal(0, 1.0, (n, T))
    z_b[0, 0] = 80.0  # clipped at 32 like training
    labels = (rng.random((n, T)) < sigmoid(z_a + z_b)).astype(np.float64)
    labels[rng.random((n, T)) < 0.2] = np.nan
    pk, sk = generate_keypair(1024, allow_insecure=True)
    with PaillierPool(1) as pool:
        codes = label_codes(labels)
        cv = encrypt_rows(PAILLIER, pool, pk, sk, z_a, codes)
        noise = NoisePool(pk, mask=True)
        out = shuffle_and_add(PAILLIER, pool, cv, encode_z(z_b), noise)
        assert len(out) == T * -(-n // eval_slots(pk))
        opened = open_scores(pool, sk, out, codes, "test")
    fixed = encode_z(z_a) + encode_z(z_b)
    for t, (z, c) in enumerate(opened):
        assert sorted(zip(z.tolist(), c.tolist(), strict=True)) == \
            sorted(zip(fixed[:, t].tolist(), codes[:, t].tolist(), strict=True))
    for t, got in enumerate(scores_metrics(opened)):
        want = tag_metrics(labels[:, t], sigmoid(np.clip(z_a[:, t], -32, 32) + np.clip(z_b[:, t], -32, 32)))
        assert (got["n"], got["positives"], got["auc"], got["ks"]) == \
            (want["n"], want["positives"], want["auc"], want["ks"])
        assert abs(got["logloss"] - want["logloss"]) < 1e-5


def test_training_reports_the_plaintext_metrics(monkeypatch):
    """(2) In a run: validation AUC per epoch and the test metrics are those of the plaintext joint scores."""
    bank, platform = parties(300, 2, seed=2)
    outcome, rec, _, _ = train(bank, platform, monkeypatch, epochs=3, batch_size=64, validation_share=0.3,
                               early_stopping_patience=0)
    handler, model = rec.handlers[0], rec.models[0]
    assert isinstance(model, PlatformModel)
    test = handler.test
    joint = outcome.model.partial_scores(bank.features[test]) + model.partial_scores(platform.features[test])
    for t, tag in enumerate(bank.tag_names):
        got, want = outcome.report["metrics"][tag]["joint"], tag_metrics(bank.labels[test, t], sigmoid(joint[:, t]))
        assert (got["auc"], got["ks"], got["n"]) == (want["auc"], want["ks"], want["n"])
        assert abs(got["logloss"] - want["logloss"]) < 1e-5
    assert [set(h["validation_auc"]) for h in outcome.report["history"]] == [set(bank.tag_names)] * 3


def test_an_evaluation_of_the_wrong_ciphertext_count_stops_the_job(monkeypatch):
    """A count the honest bank never sends is a deviation: refused before anything is computed, and the platform's
    session answers no more steps (docs/protocol.md, "The bank's checks ..."; the platform's side likewise)."""
    bank, platform = parties(200, 1, seed=3)
    seen: dict[str, str] = {}

    def tap(call: Call, channel: LocalChannel, step: str, message: Message) -> None:
        if step == Step.EVALUATE and not seen:
            data, rows = message[Field.ENCRYPTED_SCORES], message[Field.EVALUATION_ROWS]
            assert isinstance(data, bytes) and isinstance(rows, np.ndarray)
            width = len(data) // len(rows)  # one tag: a ciphertext per row
            with pytest.raises(PeerError) as err:
                call(Step.EVALUATE, {**message, Field.ENCRYPTED_SCORES: data[:-width]})
            seen["count"] = str(err.value)

    with pytest.raises(PeerError, match="stopped by a failed check"):
        train(bank, platform, monkeypatch, tap, epochs=1, batch_size=64, validation_share=0.3)
    assert "check 'count' failed" in seen["count"] and "ciphertexts, expected" in seen["count"]


def test_platform_refuses_evaluations_outside_the_protocol(monkeypatch):
    """(3) Rows outside the split, a subset, an unknown split, the wrong epoch, a repeat in
    one epoch, the test rows before train.finish or twice, validation after train.finish: all refused."""
    bank, platform = parties(200, 1, seed=3)
    refusals: dict[str, str] = {}

    def refused(call: Call, name: str, message: Message) -> None:
        with pytest.raises(PeerError) as err:
            call(Step.EVALUATE, message)
        refusals[name] = str(err.value)

    def tap(call: Call, channel: LocalChannel, step: str, message: Message) -> None:
        if step == Step.EVALUATE and message[Field.SPLIT] == VALIDATION and message[Field.EPOCH] == 0:
            rows, data = message[Field.EVALUATION_ROWS], message[Field.ENCRYPTED_SCORES]
            assert isinstance(rows, np.ndarray) and isinstance(data, bytes)
            width = len(data) // len(rows)
            train_row = channel.transcript[0][1][Field.TRAIN_ROWS][0]  # type: ignore[index]
            refused(call, "outside", {**message, Field.EVALUATION_ROWS: np.sort(np.append(rows[1:], train_row))})
            refused(call, "subset", {**message, Field.EVALUATION_ROWS: rows[:5], Field.ENCRYPTED_SCORES:
                                        data[:5 * width]})
            refused(call, "split", {**message, Field.SPLIT: "train"})
            refused(call, "epoch", {**message, Field.EPOCH: 1})
            refused(call, "test_early", {**message, Field.SPLIT: TEST})
            refused(call, "rows_dtype", {**message, Field.EVALUATION_ROWS: rows.astype(np.int32)})
            refused(call, "scores_type", {**message, Field.ENCRYPTED_SCORES: "text"})
        if step == Step.EVALUATE and message[Field.SPLIT] == TEST:
            validation = [r for s, r, _ in channel.transcript if s == Step.EVALUATE][-1]
            refused(call, "validation_after_finish", {**validation, Field.EPOCH: message[Field.EPOCH]})
        if step == Step.EPOCH and message[Field.EPOCH] == 1:
            last = [r for s, r, _ in channel.transcript if s == Step.EVALUATE][-1]
            refused(call, "repeat", last)
        if step == Step.FINISH:
            last = [r for s, r, _ in channel.transcript if s == Step.EVALUATE][-1]
            refused(call, "repeat_before_finish", last)

    outcome, rec, peer, _ = train(bank, platform, monkeypatch, tap, epochs=2, batch_size=64,
                                  validation_share=0.3, early_stopping_patience=0)
    assert "exactly the" in refusals["outside"] and "exactly the" in refusals["subset"]
    assert "split must be" in refusals["split"]
    assert "expected epoch 0" in refusals["epoch"] and "out of order" in refusals["test_early"]
    assert "int64" in refusals["rows_dtype"] and "ciphertext bytes" in refusals["scores_type"]
    assert "already evaluated in epoch 1" in refusals["validation_after_finish"]
    assert "already evaluated in epoch 0" in refusals["repeat"]
    assert "already evaluated in epoch 1" in refusals["repeat_before_finish"]
    assert len(rec.models) == 1 and outcome.report["metrics"]["tag0"]["joint"]["auc"] is not None
    channel = peer.channels[0]
    test_request = [r for s, r, _ in channel.transcript if s == Step.EVALUATE][-1]
    assert test_request[Field.SPLIT] == TEST
    # After the session, the handler still refuses a second test evaluation and any further validation.
    h = rec.handlers[0]
    validation = {**test_request, Field.SPLIT: VALIDATION, Field.EVALUATION_ROWS: h.validation, Field.EPOCH: 2}
    for message, reason in ((test_request, "already evaluated in epoch 1"), (validation, "out of order")):
        with pytest.raises(ProtocolError, match=reason):
            h.handle(Step.EVALUATE, message)


def test_each_evaluation_draws_a_fresh_permutation():
    """(4) Two evaluations of the same rows come back in unrelated orders, with no ciphertext in common."""
    rng = np.random.default_rng(4)
    n = 40
    z_a, z_b = rng.normal(size=(n, 1)), rng.normal(size=(n, 1))
    codes = np.full((n, 1), UNKNOWN)
    pk, sk = generate_keypair(1024, allow_insecure=True)
    with PaillierPool(1) as pool:
        cv = encrypt_rows(PAILLIER, pool, pk, sk, z_a, codes)
        first = shuffle_and_add(PAILLIER, pool, cv, encode_z(z_b), NoisePool(pk, mask=True))
        second = shuffle_and_add(PAILLIER, pool, cv, encode_z(z_b), NoisePool(pk, mask=True))
        a, b = (open_scores(pool, sk, out, codes, "test")[0][0] for out in (first, second))
    assert sorted(a.tolist()) == sorted(b.tolist()) and not np.array_equal(a, b)
    assert not set(first.values) & set(second.values) and not set(first.values) & set(cv.values)
    # Where each row lands is drawn from the OS's CSPRNG, not a seeded generator.
    perms = []
    for _ in range(2):
        np.random.seed(0)
        perms.append(secret_permutation(n))
    assert sorted(perms[0].tolist()) == list(range(n)) and not np.array_equal(perms[0], perms[1])
