"""Label DP's utility parts: the residual noise's scale, the Newton optimiser, and the protocol checks around
them (the mask path's width, train.epoch's optimizer and label_dp)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from protocols.channel import LocalPeer
from protocols.errors import DeviationDetected, ProtocolError
from protocols.paillier import generate_keypair
from protocols.vfl_lr import TrainingError, TrainParams, make_platform_train_handler, run_bank_training
from protocols.vfl_lr.label_privacy import LabelPrivacy, residual_noise_room, residual_sensitivity
from protocols.vfl_lr.messages import Field, Step
from protocols.vfl_lr.params import F_BITS, VERSION
from protocols.vfl_lr.state import Optimizer, resolve_optimizer
from tests.bank_keys import bank_key_fields
from tests.test_label_privacy import synthetic


def test_the_residual_sensitivity_is_one_label_step_whatever_the_features() -> None:
    """The noise sits on the residuals before the platform's features touch them: its scale is a label's step
    (4 in d', 4 * 2^F in fixed point) over a customer's tags, and no number the platform declares enters it."""
    assert residual_sensitivity(1) == 4 * (1 << F_BITS)
    assert residual_sensitivity(4) == 4 * (1 << F_BITS) * 2


def test_a_job_whose_noise_would_not_fit_the_residual_slots_is_refused_before_training() -> None:
    bank, _ = synthetic(400, 8)
    labels = np.repeat(bank.labels, 12, axis=1)  # 12 tags: wider noise per residual
    mask = ~np.isnan(labels)
    params = TrainParams(epochs=2, batch_size=400, key_bits=1024, label_dp="on", dp_epsilon=0.05)
    with pytest.raises(TrainingError, match="raise dp_epsilon, or train fewer tags per job"):
        LabelPrivacy.plan(params, np.arange(400), mask, 8, strict=True)
    noise = LabelPrivacy.plan(dataclasses.replace(params, dp_epsilon=3.0, epochs=2), np.arange(400), mask, 8,
                              strict=True).noise
    assert noise is not None and 8 * noise.residual_sigma < residual_noise_room()


def test_resolve_optimizer() -> None:
    assert resolve_optimizer(TrainParams(), True) == "newton"  # one full batch per epoch
    assert resolve_optimizer(TrainParams(), False) == "adam"  # mini-batches, with or without label DP
    assert resolve_optimizer(TrainParams(optimizer="sgd"), True) == "sgd"
    with pytest.raises(TrainingError, match="optimizer must be 'auto', 'adam', 'sgd' or 'newton'"):
        TrainParams(optimizer="lbfgs").validate()


def test_newton_reaches_the_taylor_loss_optimum() -> None:
    """The Taylor loss is quadratic: its minimiser solves (X^T M X / 4m + l2 P) w = X^T M (4y - 2) / 4m."""
    rng = np.random.default_rng(0)
    n, d = 400, 5
    X = np.hstack([rng.normal(size=(n, d)) @ rng.normal(size=(d, d)), np.ones((n, 1))])  # correlated columns
    y = (rng.random((n, 2)) < 0.3).astype(float)
    mask = rng.random((n, 2)) < 0.8
    params = TrainParams(l2=0.05, optimizer="newton")
    W = np.zeros((d + 1, 2))
    opt = Optimizer(params, W.shape, unpenalised=[d])
    for step in range(400):
        grad = X.T @ ((X @ W + 2 - 4 * y) * mask) / (4 * mask.sum(axis=0))
        opt.step(W, grad, step, np.ones(2, bool), X, mask)
    P = np.diag([1.0] * d + [0.0])
    for t in range(2):
        Xt = X * mask[:, t:t + 1]
        m = mask[:, t].sum()
        expected = np.linalg.solve(Xt.T @ Xt / (4 * m) + 0.05 * P, Xt.T @ (4 * y[:, t] - 2) / (4 * m))
        assert np.allclose(W[:, t], expected, atol=1e-6)
    with pytest.raises(TrainingError, match="needs the batch's features"):
        opt.step(W, np.zeros_like(W), 0, np.ones(2, bool))


def _platform(params: TrainParams) -> tuple[Any, Any]:
    _, platform = synthetic(200, 8)
    message = {Field.VERSION: VERSION, Field.PARAMS: params.to_json(), Field.TAGS: '["y"]'}
    handler = make_platform_train_handler("job-x", message, platform, on_result=lambda m: None, compute=1,
                                          insecure_for_tests=True)
    train = np.arange(150)
    mask = np.zeros((200, 1), np.uint8)
    mask[train] = 1
    keys = bank_key_fields("job-x", generate_keypair(1024, allow_insecure=True),
                           generate_keypair(1024, allow_insecure=True))
    reply = handler.handle(Step.SETUP, {**keys, Field.N_ROWS: 200, Field.BANK_COLUMNS: 5,
                                        Field.TRAIN_ROWS: train, Field.VALIDATION_ROWS: np.arange(150, 170),
                                        Field.TEST_ROWS: np.arange(170, 200), Field.LABEL_MASK: mask})
    return handler, reply


def test_the_platform_refuses_another_optimizer_and_a_label_dp_flag_against_the_job() -> None:
    handler, reply = _platform(TrainParams(epochs=1, batch_size=150, key_bits=1024, optimizer="adam"))
    try:
        # nothing of the bank's protection to declare: its key, its width, how often it evaluates validation
        assert set(reply) == {Field.PLATFORM_KEY, Field.PLATFORM_KEY_PROOF, Field.HE_SCHEME, Field.N_FEATURES,
                              Field.PLATFORM_BINNING, Field.MAX_VALIDATION_EVALUATIONS}
        epoch = {Field.EPOCH: 0, Field.BATCH_ROWS: np.arange(150), Field.BATCH_SIZES: np.array([150])}
        with pytest.raises(ProtocolError, match="'label_dp' is missing"):
            handler.handle(Step.EPOCH, epoch)
        with pytest.raises(ProtocolError, match="optimizer 'newton' is not the job's 'adam'"):
            handler.handle(Step.EPOCH, {**epoch, Field.LABEL_DP: True, Field.OPTIMIZER: "newton"})
        assert handler.state.epoch == -1  # refused before anything moved
        handler.handle(Step.EPOCH, {**epoch, Field.LABEL_DP: True, Field.OPTIMIZER: "adam"})
        assert handler.state.optimizer.kind == "adam"
    finally:
        handler.close()
    handler, _ = _platform(TrainParams(epochs=1, batch_size=150, key_bits=1024, label_dp="off"))
    try:
        epoch = {Field.EPOCH: 0, Field.BATCH_ROWS: np.arange(150), Field.BATCH_SIZES: np.array([150])}
        with pytest.raises(ProtocolError, match="label_dp True contradicts the job's label_dp 'off'"):
            handler.handle(Step.EPOCH, {**epoch, Field.LABEL_DP: True, Field.OPTIMIZER: "adam"})
    finally:
        handler.close()


def test_the_bank_refuses_a_mask_path_wider_than_the_features_the_platform_declared() -> None:
    """Issue 23, attack 4: a platform that declares 1 feature (so that the floor drops to 10 x 1 x epochs) but
    answers the mask path for all of its features is stopped before anything the bank decrypted reaches it (here
    all 8 products fit one ciphertext, as the declared one does, so the layout check catches it; more features
    would fail the count before any decryption): the floor counts the width the bank opens, the declared one."""
    bank, platform = synthetic(200, 8)
    opened: list[int] = []

    def factory(kind: str, job_id: str, message: dict) -> Any:
        handler = make_platform_train_handler(job_id, message, platform, on_result=lambda m: None, compute=1,
                                              insecure_for_tests=True)
        setup, emask_open = handler._steps[Step.SETUP], handler._steps[Step.EMASK_OPEN]
        handler._steps[Step.SETUP] = lambda msg: {**setup(msg), Field.N_FEATURES: 1}
        handler._steps[Step.EMASK_OPEN] = lambda msg: opened.append(1) or emask_open(msg)
        return handler

    params = TrainParams(epochs=1, batch_size=64, key_bits=1024, validation_share=0.0, label_dp="off")
    with pytest.raises(DeviationDetected, match=r"train.emask: check 'masked products' failed: a packed value holds more than its 1 slots"):
        run_bank_training(LocalPeer(factory), "job-lie", bank, params, compute=1, insecure_for_tests=True)
    assert opened == []  # nothing decrypted went back to it
