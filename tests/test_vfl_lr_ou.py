"""Training under Okamoto-Uchiyama (he_scheme = "ou"): the same model as under Paillier (every decryption is exact,
so the weights agree bit for bit), the scheme recorded in both model halves and the report, both parties checking
the scheme, and the platform's policy on schemes and key sizes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from party_common.policy import PolicyConfig, PolicyRefused, parse_policy
from party_common.storage.jobs import MemoryJobStore
from party_platform.policy import PlatformPolicy
from protocols.channel import LocalPeer, ProtocolError
from protocols.he import get_scheme
from protocols.vfl_lr import TrainParams, run_bank_training
from protocols.vfl_lr.messages import Field, Step
from protocols.vfl_lr.model import BankModel, PlatformModel
from protocols.vfl_lr.params import SlotPlan, plaintext_bits
from tests.test_vfl_lr import FAST, Platform, simulated, train  # noqa: F401  (simulated: the shared data fixture)

SAME = {"epochs": 2, "batch_size": 128, "optimizer": "sgd", "learning_rate": 0.5, "label_dp": "off"}


def test_ou_training_gives_the_paillier_model_and_records_the_scheme(simulated):  # noqa: F811
    bank, platform = simulated
    paillier, plat_p, _, _ = train(bank, platform, **SAME)
    ou, plat_o, _, params = train(bank, platform, he_scheme="ou", **SAME)
    assert params.he_scheme == "ou" and paillier.model.he_scheme == "paillier"
    np.testing.assert_array_equal(ou.model.weights, paillier.model.weights)
    np.testing.assert_array_equal(ou.model.intercept, paillier.model.intercept)
    np.testing.assert_array_equal(plat_o.models[0].weights, plat_p.models[0].weights)
    assert ou.model.he_scheme == plat_o.models[0].he_scheme == "ou"
    assert ou.report["he_scheme"] == ou.report["params"]["he_scheme"] == "ou"
    assert paillier.report["he_scheme"] == "paillier"
    assert BankModel.from_dict(ou.model.to_dict(), where="m").he_scheme == "ou"
    assert PlatformModel.from_dict(plat_o.models[0].to_dict(), where="m").he_scheme == "ou"
    stored_before = {k: v for k, v in plat_p.models[0].to_dict().items() if k != "he_scheme"}
    assert PlatformModel.from_dict(stored_before, where="m").he_scheme == "paillier"
    # The keys the parties made are the scheme's own.
    handler = plat_o.handlers[0]
    assert handler.scheme.name == "ou" and handler.pk.to_bytes()[:3] == b"OU1"


def test_the_slot_plan_follows_the_schemes_plaintext_capacity():
    ou, paillier = get_scheme("ou"), get_scheme("paillier")
    ou_pk, _ = ou.generate_keypair(2048)
    pa_pk, _ = paillier.generate_keypair(2048)
    assert plaintext_bits(ou_pk, scheme="ou") == 680 and plaintext_bits(pa_pk, scheme="paillier") in (2045, 2046)
    p = TrainParams(he_scheme="ou")
    plan = SlotPlan.for_params(p, 4096, 1, plaintext_bits(ou_pk, scheme="ou"))
    assert plan.pairs_per_ct == 680 // plan.pair_slot and plan.features_per_emask_ct(1) >= 1


class _OtherSchemePlatform(Platform):
    """A platform whose setup reply names another scheme than the job's."""

    def __call__(self, kind: str, job_id: str, params: dict) -> Any:
        handler = super().__call__(kind, job_id, params)
        original = handler.handle

        def handle(step: str, message: Any) -> Any:
            reply = original(step, message)
            if step == Step.SETUP:
                reply = {**reply, Field.HE_SCHEME: "paillier"}
            return reply

        handler.handle = handle  # type: ignore[method-assign]
        return handler


def test_the_bank_refuses_a_platform_on_another_scheme(simulated):  # noqa: F811
    bank, platform = simulated
    peer = LocalPeer(_OtherSchemePlatform(platform))
    params = TrainParams(**{**FAST, **SAME, "he_scheme": "ou"})
    with pytest.raises(ProtocolError, match="the platform runs HE scheme 'paillier'; this job uses 'ou'"):
        run_bank_training(peer, "job-ou", bank, params, compute=1, insecure_for_tests=True)


def test_a_key_of_the_other_scheme_is_refused():
    pa_pk, _ = get_scheme("paillier").generate_keypair(1024, allow_insecure=True)
    with pytest.raises(Exception, match="not a serialised Okamoto-Uchiyama public key"):
        get_scheme("ou").public_key_from_bytes(pa_pk.to_bytes(), key_bits=1024, allow_insecure=True)
    ou_pk, _ = get_scheme("ou").generate_keypair(1024, allow_insecure=True)
    with pytest.raises(Exception, match="not a serialised public key"):
        get_scheme("paillier").public_key_from_bytes(ou_pk.to_bytes(), key_bits=1024, allow_insecure=True)


def test_unknown_scheme_is_a_bad_parameter():
    with pytest.raises(Exception, match="he_scheme must be one of ou, paillier"):
        TrainParams(he_scheme="rsa").validate()


def _session(**params: Any) -> dict[str, Any]:
    return {Field.PARAMS: TrainParams(**params).to_json(), Field.TAGS: "[]"}


def test_the_platforms_policy_on_schemes_and_key_sizes():
    default = PlatformPolicy(PolicyConfig(), platform_rows=10, jobs=MemoryJobStore())
    default.check_session("train", _session(he_scheme="ou"), None)
    default.check_session("train", _session(key_bits=3072), None)
    default.check_session("train", {Field.TAGS: "[]"}, None)  # names neither: Paillier, 2048 bits
    config = parse_policy({"he_schemes": ["paillier"], "key_bits": [3072]}, "p.toml [policy]")
    strict = PlatformPolicy(config, platform_rows=10, jobs=MemoryJobStore())
    with pytest.raises(PolicyRefused, match=r"HE scheme 'ou' \(\[policy\] he_schemes: paillier\)"):
        strict.check_session("train", _session(he_scheme="ou", key_bits=3072), None)
    with pytest.raises(PolicyRefused, match=r"2048-bit keys \(\[policy\] key_bits: 3072\)"):
        strict.check_session("train", _session(), None)
    strict.check_session("train", _session(key_bits=3072), None)
    for table, message in [({"he_schemes": ["rsa"]}, "'he_schemes' must be a non-empty list"),
                           ({"he_schemes": []}, "'he_schemes' must be a non-empty list"),
                           ({"key_bits": [1024]}, "'key_bits' must be a non-empty list of distinct values from 2048"),
                           ({"key_bits": [2048, 2048]}, "'key_bits' must be"),
                           ({"key_bits": [True]}, "'key_bits' must be")]:
        with pytest.raises(ValueError, match=message):
            parse_policy(table, "p.toml [policy]")


def _dp_models(bank, platform, *, hide: bool) -> dict[str, Any]:
    models = {}
    for scheme in ("paillier", "ou"):
        plat = Platform(platform)
        params = TrainParams(**{**FAST, **SAME, "label_dp": "on", "hide_label_mask": hide, "he_scheme": scheme})
        outcome = run_bank_training(LocalPeer(plat), "job-dp", bank, params, compute=1, insecure_for_tests=True,
                                    noise_key=bytes(32))
        assert outcome.report["label_privacy"]["mode"] == "dp" and outcome.model.he_scheme == scheme
        models[scheme] = (outcome.model, plat.models[0])
    return models


def test_label_dp_gives_the_same_model_under_both_schemes(simulated):  # noqa: F811
    """Label-DP noise from a fixed noise key, packed into OU's smaller plaintexts: the Paillier model, bit for bit."""
    models = _dp_models(*simulated, hide=False)
    np.testing.assert_array_equal(models["ou"][0].weights, models["paillier"][0].weights)
    np.testing.assert_array_equal(models["ou"][0].intercept, models["paillier"][0].intercept)
    np.testing.assert_array_equal(models["ou"][1].weights, models["paillier"][1].weights)


def test_a_hidden_label_mask_trains_under_ou(simulated):  # noqa: F811
    """The hidden mask's scaled residuals under OU. Their dither comes from ``secrets`` (label_mask.py), so two runs
    differ in the last digits under either scheme: the models agree to that dither's size, not bit for bit."""
    models = _dp_models(*simulated, hide=True)
    np.testing.assert_allclose(models["ou"][0].weights, models["paillier"][0].weights, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(models["ou"][1].weights, models["paillier"][1].weights, rtol=1e-3, atol=1e-6)
