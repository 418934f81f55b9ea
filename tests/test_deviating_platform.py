"""A platform that deviates in training: what the bank refuses, detects or bounds (issue 23, items 1 and 4).

The attacks run the real state machines over the in-memory channel; the platform's handler is the real one with
one step swapped. ``benchmarks.deviation`` runs the same attacks against the nodes and measures them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from protocols.channel import LocalPeer
from protocols.errors import DeviationDetected, ProtocolError
from protocols.paillier import CipherVector
from protocols.vfl_lr import TrainParams, make_platform_train_handler, run_bank_training
from protocols.vfl_lr.disclosure import EvaluationLimits
from protocols.vfl_lr.messages import Field, Step
from tests.test_label_privacy import synthetic


def test_evaluation_ciphertexts_sent_back_on_the_mask_path_open_nothing() -> None:
    """The mask path is the one decryption the bank does for the platform. A platform that returns there the
    bank's evaluation ciphertexts (held-out label codes and z_A) would read them if they shared a key; they are
    under the bank's evaluation key, so the bank's checks stop the job and nothing decrypted goes back."""
    bank, platform = synthetic(240, 6)
    kept: dict[str, Any] = {}
    opened_after_evaluation: list[int] = []

    def factory(kind: str, job_id: str, message: dict) -> Any:
        handler = make_platform_train_handler(job_id, message, platform, on_result=lambda m: None, compute=1,
                                              limits=EvaluationLimits(max_validation_evaluations=2),
                                              insecure_for_tests=True)
        evaluate, emask, emask_open = (handler._steps[s] for s in (Step.EVALUATE, Step.EMASK, Step.EMASK_OPEN))

        def keep(msg: dict) -> dict:
            kept.setdefault("scores", msg[Field.ENCRYPTED_SCORES])
            return evaluate(msg)

        def substitute(msg: dict) -> dict:
            honest = emask(msg)
            if "scores" not in kept:
                return honest
            want = len(CipherVector.from_bytes(handler.bpk, honest[Field.MASKED_PRODUCTS]))
            scores = CipherVector.from_bytes(handler.bepk, kept["scores"])
            return {Field.MASKED_PRODUCTS: CipherVector(handler.bpk, scores.values[:want]).to_bytes()}

        def note(msg: dict) -> dict:
            if "scores" in kept:
                opened_after_evaluation.append(1)
            return emask_open(msg)

        handler._steps.update({Step.EVALUATE: keep, Step.EMASK: substitute, Step.EMASK_OPEN: note})
        return handler

    params = TrainParams(epochs=2, batch_size=200, key_bits=1024, validation_share=0.2, label_dp="on")
    with pytest.raises(ProtocolError, match="train.emask"):
        run_bank_training(LocalPeer(factory), "job-oracle", bank, params, compute=1, insecure_for_tests=True)
    assert "scores" in kept and opened_after_evaluation == []


def test_a_mask_path_slot_beyond_its_range_stops_the_job_before_anything_goes_back() -> None:
    """A platform that scales its products 2^200 up (to read the masks from the bank's answer) overflows the
    slot's honest range: detected, and the bank answers nothing."""
    bank, platform = synthetic(240, 6)
    answered: list[int] = []

    def factory(kind: str, job_id: str, message: dict) -> Any:
        handler = make_platform_train_handler(job_id, message, platform, on_result=lambda m: None, compute=1,
                                              insecure_for_tests=True)
        emask, emask_open = handler._steps[Step.EMASK], handler._steps[Step.EMASK_OPEN]

        def scaled(msg: dict) -> dict:
            honest = CipherVector.from_bytes(handler.bpk, emask(msg)[Field.MASKED_PRODUCTS])
            n2 = handler.bpk.nsquare
            return {Field.MASKED_PRODUCTS: CipherVector(handler.bpk, [pow(int(c), 1 << 200, n2)
                                                                      for c in honest.values]).to_bytes()}

        handler._steps[Step.EMASK] = scaled
        handler._steps[Step.EMASK_OPEN] = lambda msg: answered.append(1) or emask_open(msg)
        return handler

    params = TrainParams(epochs=1, batch_size=200, key_bits=1024, validation_share=0.0, label_dp="on")
    with pytest.raises(DeviationDetected, match="train.emask: check 'masked products' failed: a "):
        run_bank_training(LocalPeer(factory), "job-scaled", bank, params, compute=1, insecure_for_tests=True)
    assert answered == []


def test_the_label_dp_noise_does_not_depend_on_anything_the_platform_declares() -> None:
    """The same job against platforms of 6 and of 60 features: the residual noise's scale is the same."""
    sigmas = []
    for features in (6, 60):
        bank, platform = synthetic(240, features)

        def factory(kind: str, job_id: str, message: dict, platform: Any = platform) -> Any:
            return make_platform_train_handler(job_id, message, platform, on_result=lambda m: None, compute=1,
                                               insecure_for_tests=True)

        params = TrainParams(epochs=1, batch_size=200, key_bits=1024, validation_share=0.0, label_dp="on")
        outcome = run_bank_training(LocalPeer(factory), "job-sigma", bank, params, compute=1, insecure_for_tests=True)
        sigmas.append(outcome.report["label_privacy"]["residual_sigma_fixed_point"])
    assert sigmas[0] == sigmas[1] and np.isfinite(sigmas[0])


def test_shuffled_scores_beyond_their_range_stop_the_job() -> None:
    """Evaluation's reply is decrypted by the bank for its own metrics: a platform that scales it (to move a row's
    score past the others) sends slots the honest protocol never makes, and the job stops naming the check."""
    bank, platform = synthetic(240, 6)

    def factory(kind: str, job_id: str, message: dict) -> Any:
        handler = make_platform_train_handler(job_id, message, platform, on_result=lambda m: None, compute=1,
                                              insecure_for_tests=True)
        evaluate = handler._steps[Step.EVALUATE]

        def scaled(msg: dict) -> dict:
            honest = CipherVector.from_bytes(handler.bepk, evaluate(msg)[Field.SHUFFLED_SCORES])
            n2 = handler.bepk.nsquare
            return {Field.SHUFFLED_SCORES: CipherVector(handler.bepk, [pow(int(c), 1 << 8, n2)
                                                                       for c in honest.values]).to_bytes()}

        handler._steps[Step.EVALUATE] = scaled
        return handler

    params = TrainParams(epochs=1, batch_size=200, key_bits=1024, validation_share=0.2, label_dp="on")
    with pytest.raises(DeviationDetected, match=r"train.evaluate \(validation\): check 'shuffled scores' failed"):
        run_bank_training(LocalPeer(factory), "job-eval-scaled", bank, params, compute=1, insecure_for_tests=True)
