"""Label DP's utility parts: the platform's declared row-norm bound and its clipping, the Newton optimiser,
and the protocol checks around them (train.setup's bound, train.epoch's optimizer and label_dp)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.channel import LocalPeer
from protocols.errors import ProtocolError
from protocols.paillier import generate_keypair
from protocols.vfl_lr import TrainingError, TrainParams, make_platform_train_handler, run_bank_training
from protocols.vfl_lr.label_privacy import (
    ROW_NORM_FRACTION,
    clip_rows,
    platform_sensitivity,
    row_norm_bound,
    worst_row_norm,
)
from protocols.vfl_lr.messages import Field, Step
from protocols.vfl_lr.params import F_BITS, VERSION
from protocols.vfl_lr.state import Optimizer, resolve_optimizer
from tests.test_label_privacy import synthetic


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 40), st.integers(1, 3000))
def test_clipped_rows_stay_within_the_bound_and_short_rows_are_untouched(seed: int, d: int, bound: int) -> None:
    rng = np.random.default_rng(seed)
    Xq = rng.integers(-127, 128, size=(30, d))
    Xq[0] = 0
    out = clip_rows(Xq, bound)
    norms_in = np.sqrt((Xq.astype(float) ** 2).sum(axis=1))
    norms_out = np.sqrt((out.astype(float) ** 2).sum(axis=1))
    assert out.dtype == np.int64 and (norms_out <= bound).all()
    short = norms_in <= bound
    assert np.array_equal(out[short], Xq[short])
    assert (np.abs(out) <= np.abs(Xq)).all() and (out * Xq >= 0).all()  # shrunk towards zero, never flipped


def test_the_declared_bound_is_a_rule_of_public_numbers() -> None:
    for q, d in ((8, 1), (8, 20), (8, 120), (12, 7)):
        assert row_norm_bound(q, d) == math.floor(ROW_NORM_FRACTION * ((1 << (q - 1)) - 1) * math.sqrt(d))
        assert 1 <= row_norm_bound(q, d) <= worst_row_norm(q, d)
    # the sensitivity scales with it: a quarter of the worst case, a quarter of the noise
    assert platform_sensitivity(row_norm_bound(8, 16), 4) == 4 * (1 << F_BITS) * row_norm_bound(8, 16) * 2
    assert platform_sensitivity(worst_row_norm(8, 16), 1) / platform_sensitivity(row_norm_bound(8, 16), 1) \
        == pytest.approx(4, rel=0.01)


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
    bank_key, _ = generate_keypair(1024, allow_insecure=True)
    train = np.arange(150)
    mask = np.zeros((200, 1), np.uint8)
    mask[train] = 1
    reply = handler.handle(Step.SETUP, {Field.BANK_KEY: bank_key.to_bytes(), Field.N_ROWS: 200, Field.BANK_COLUMNS: 5,
                                        Field.TRAIN_ROWS: train, Field.VALIDATION_ROWS: np.arange(150, 170),
                                        Field.TEST_ROWS: np.arange(170, 200), Field.LABEL_MASK: mask})
    return handler, reply


def test_the_platform_declares_its_bound_and_refuses_another_optimizer() -> None:
    handler, reply = _platform(TrainParams(epochs=1, batch_size=150, key_bits=1024, optimizer="adam"))
    try:
        assert reply[Field.ROW_NORM_BOUND] == row_norm_bound(8, 8)
        epoch = {Field.EPOCH: 0, Field.BATCH_ROWS: np.arange(150), Field.BATCH_SIZES: np.array([150])}
        with pytest.raises(ProtocolError, match="'label_dp' is missing"):
            handler.handle(Step.EPOCH, epoch)
        with pytest.raises(ProtocolError, match="optimizer 'newton' is not the job's 'adam'"):
            handler.handle(Step.EPOCH, {**epoch, Field.LABEL_DP: True, Field.OPTIMIZER: "newton"})
        assert handler.state.epoch == -1  # refused before anything moved
        handler.handle(Step.EPOCH, {**epoch, Field.LABEL_DP: True, Field.OPTIMIZER: "adam"})
        assert handler.Xq is handler.Xq_clipped and handler.state.optimizer.kind == "adam"
    finally:
        handler.close()


def test_the_bank_refuses_a_row_bound_beyond_the_worst_case() -> None:
    bank, platform = synthetic(200, 8)

    def factory(kind: str, job_id: str, message: dict) -> Any:
        handler = make_platform_train_handler(job_id, message, platform, on_result=lambda m: None, compute=1,
                                              insecure_for_tests=True)
        setup = handler._steps[Step.SETUP]

        def lying(msg: dict) -> dict:
            return {**setup(msg), Field.ROW_NORM_BOUND: 10_000}

        handler._steps[Step.SETUP] = lying
        return handler

    params = TrainParams(epochs=1, batch_size=64, key_bits=1024, validation_share=0.0)
    with pytest.raises(ProtocolError, match=r"row-norm bound of 10000, outside 1\.\.359 for 8 features"):
        run_bank_training(LocalPeer(factory), "job-lie", bank, params, compute=1, insecure_for_tests=True)
