"""The Ray backend: the same results as the process pool, bit for bit, and keys that never leave the actors.

The tests that need Ray start a private local cluster (2 CPUs, a small object store). Ray is in the dev extra
(``make test`` installs it); where it is not importable (``pip install .`` without extras) they are skipped,
and pytest says so (``-rs``). The tests of the error a node gives when Ray is configured but missing run
everywhere.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

from party_common.config import ComputeConfig
from party_common.data_loading import load_party_data
from party_common.storage import memory_node_stores
from party_platform.node import PlatformNode
from protocols.channel import LocalPeer
from protocols.compute import InlineCompute, ProcessPoolCompute, make_compute
from protocols.paillier import PrivateKey, generate_keypair
from protocols.paillier_pool import PaillierPool
from protocols.party_data import PartyData, Schema
from protocols.psi import make_platform_psi_handler, run_bank_psi
from protocols.scoring import partial_scores_on
from protocols.vfl_lr import TrainParams, make_platform_train_handler, run_bank_training
from simulations.generate import SimulationConfig, generate, write


def test_ray_configured_but_not_installed_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from protocols.compute_ray import RayUnavailable

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(RayUnavailable, match=r"pip install 'fedprofile\[ray\]'"):
        make_compute("ray", 2, "auto")
    with pytest.raises(ValueError, match="must be one of pool, ray"):
        make_compute("spark")


def node_with_compute(tmp_path: Any, compute: ComputeConfig) -> PlatformNode:
    from dataclasses import replace

    from tests.nodes_fixture import node_config

    config = replace(node_config(tmp_path, "platform", tmp_path / "unused.csv"), compute=compute)
    data = PartyData(source="mem", ids=np.array(["a", "b"], dtype=object), features=np.zeros((2, 1)),
                     feature_names=["x"], labels=np.zeros((2, 0)), tag_names=[],
                     schema=Schema("id", ("x",), ("float64",)))
    return PlatformNode(config, data=data, stores=memory_node_stores())


def test_a_node_configured_for_missing_ray_refuses_to_start(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from protocols.compute_ray import RayUnavailable

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RayUnavailable, match="Ray is not installed"):
        node_with_compute(tmp_path, ComputeConfig(backend="ray"))
    assert isinstance(node_with_compute(tmp_path, ComputeConfig()).new_compute(), InlineCompute)  # workers = 1


def test_sealed_secrets_open_only_for_their_actor() -> None:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from protocols.compute_ray import _raw_public, seal, unseal

    actor, other = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    secret = b"\x07" * 32
    sender, nonce, sealed = seal(secret, _raw_public(actor))
    assert secret not in sealed
    assert unseal(actor, sender, nonce, sealed) == secret
    with pytest.raises(InvalidTag):
        unseal(other, sender, nonce, sealed)


ray = pytest.importorskip("ray", reason="ray is not installed (optional extra: pip install '.[ray]'); "
                          "the Ray backend's identical-results tests are skipped")


@pytest.fixture(scope="module")
def cluster() -> Any:
    from protocols.compute_ray import connect

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, object_store_memory=80 * 1024 * 1024, include_dashboard=False, log_to_driver=False)
    yield connect()
    if started:
        ray.shutdown()


class Recording:
    """A RayCompute that records every argument it ships to the actors. Both parties share the test's
    2-CPU cluster here, so each actor reserves half a CPU (each party has its own cluster in production)."""

    def __new__(cls, workers: int) -> Any:
        from protocols.compute_ray import RayCompute

        compute = RayCompute(workers, cpus_per_worker=0.5)
        compute.shipped = []  # type: ignore[attr-defined]
        share = compute._share

        def recording(arg: Any) -> Any:
            compute.shipped.append(arg)  # type: ignore[attr-defined]
            return share(arg)

        compute._share = recording  # type: ignore[method-assign]
        return compute


def test_paillier_kernels_match_the_pool_and_keys_stay_in_the_actors(cluster: Any) -> None:
    pk, sk = generate_keypair(1024, allow_insecure=True)
    rng = np.random.default_rng(5)
    ints = rng.integers(-10**6, 10**6, 600)
    X = rng.integers(-127, 128, (600, 10)).astype(np.int64)
    results = []
    for compute in (ProcessPoolCompute(2), Recording(2)):
        with PaillierPool(compute) as pool:
            cv = pool.encrypt(pk, ints, mask=True)
            noise = pool.make_noise(sk, 200)  # CRT path: needs the private key on the workers
            assert len(noise) == 200 and len(set(noise)) == 200
            results.append((pool.decrypt(sk, cv), pool.decrypt(sk, pool.matvec_t(cv, X))))
    ray_compute = compute
    assert results[0] == results[1]
    assert results[0][0] == ints.tolist() and results[0][1] == (ints @ X).tolist()
    assert ray_compute.shipped and not any(isinstance(a, PrivateKey) for a in ray_compute.shipped)
    with pytest.raises(RuntimeError, match="closed"):
        ray_compute.submit(abs, -1)


def test_a_node_configured_for_ray_gives_each_session_its_actors(cluster: Any, tmp_path: Any) -> None:
    from protocols.compute_ray import RayCompute

    node = node_with_compute(tmp_path, ComputeConfig(backend="ray", workers=1))
    compute = node.new_compute()
    assert isinstance(compute, RayCompute) and compute.workers == 1
    assert compute.submit(abs, -3).result() == 3
    compute.close()


def run_training(bank: Any, platform: Any, compute: Any) -> tuple[Any, Any]:
    models: list[Any] = []
    params = TrainParams(key_bits=1024, epochs=1, batch_size=128, label_dp="off", validation_share=0.0)

    def factory(kind: str, job_id: str, raw: dict) -> Any:
        return make_platform_train_handler(job_id, raw, platform, on_result=models.append, compute=compute(),
                                           insecure_for_tests=True)

    outcome = run_bank_training(LocalPeer(factory), "job-ray", bank, params, compute=compute(),
                                insecure_for_tests=True)
    return outcome.model, models[0]


def test_training_psi_and_scoring_are_identical_on_ray_and_the_pool(cluster: Any, tmp_path: Any) -> None:
    data = generate(SimulationConfig(n_bank=300, n_platform=300, overlap=0.9, n_tags=2, label_share=0.7, seed=9))
    paths = write(data, tmp_path)
    bank_all = load_party_data(paths["bank"], id_column="id", tag_columns=data.tag_columns)
    platform_all = load_party_data(paths["platform"], id_column="id")
    bank_ids, platform_ids = list(bank_all.ids), list(platform_all.ids)
    outcomes = {}
    for name, compute in (("pool", lambda: ProcessPoolCompute(2)), ("ray", lambda: Recording(2))):
        reports: list[Any] = []

        def psi_factory(kind: str, job_id: str, raw: dict, compute: Any = compute, reports: list = reports) -> Any:
            return make_platform_psi_handler(job_id, raw, platform_ids, on_result=reports.append, compute=compute())

        psi = run_bank_psi(LocalPeer(psi_factory), "job-psi-ray", bank_ids, mode="both", batch_size=200,
                           compute=compute())
        assert psi.ids is not None and reports[0].ids is not None
        # The agreed order is random (it follows the blinded values); the intersection is not.
        ids = sorted(psi.ids)
        assert sorted(reports[0].ids) == ids
        bank, platform = bank_all.take(ids), platform_all.take(ids)
        bank_model, platform_model = run_training(bank, platform, compute)
        scorer = compute()
        try:
            scores = partial_scores_on(scorer, platform_model, platform.features, chunk_rows=64)
        finally:
            scorer.close()
        outcomes[name] = (ids, bank_model.weights.tobytes(),
                          bank_model.intercept.tobytes(), platform_model.weights.tobytes(), scores.tobytes())
    assert len(outcomes["ray"][0]) > 240
    assert outcomes["ray"] == outcomes["pool"]
