"""The screen job: federated WOE and IV (protocols/screen), its checks, its label protection, and both nodes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from protocols.channel import LocalPeer, Message
from protocols.errors import DeviationDetected, PeerError, UserError
from protocols.screen import PlatformScreenHandler, ScreenFeatures, ScreenParams, run_bank_screen
from protocols.screen import encoding, rr
from protocols.screen.params import Field, Step
from protocols.screen.platform import merge_by_rows
from protocols.screen.woe import feature_iv, local_counts, merge_small

FAST = {"key_bits": 1024, "min_bin_rows": 5, "min_labelled_rows": 5}


def make_data(n: int = 400, seed: int = 3) -> tuple[np.ndarray, ScreenFeatures, ScreenFeatures]:
    """Labels (rows x 2 tags, tag 1 half unlabelled) that depend on the platform's first feature's bins."""
    rng = np.random.default_rng(seed)
    pbins = rng.integers(0, 5, size=(n, 3))
    bbins = rng.integers(0, 4, size=(n, 2))
    y0 = (rng.random(n) < 0.1 + 0.15 * pbins[:, 0]).astype(float)
    y1 = (rng.random(n) < 0.2 + 0.1 * bbins[:, 0]).astype(float)
    y1[rng.random(n) < 0.5] = np.nan
    platform = ScreenFeatures(["p0", "p1", "p2"], pbins, [5, 5, 5])
    bank = ScreenFeatures(["b0", "b1"], bbins, [4, 4])
    return np.stack([y0, y1], axis=1), platform, bank


def platform_peer(platform: ScreenFeatures, results: list, **kw) -> LocalPeer:
    def factory(kind: str, job_id: str, params: Message) -> PlatformScreenHandler:
        assert kind == "screen"
        return PlatformScreenHandler(job_id, params, platform, on_result=results.append,
                                     insecure_for_tests=True, compute=1, **{"min_bin_rows": 5,
                                                                            "min_labelled_rows": 5, **kw})
    return LocalPeer(factory)


def centralized(labels: np.ndarray, feats: ScreenFeatures, party: str, tags: list[str]) -> dict:
    cats = encoding.categories(labels)
    out = {}
    for j, name in enumerate(feats.names):
        for t, tag in enumerate(tags):
            c = local_counts(feats.bins[:, j], feats.n_bins[j], cats[:, t])
            f = feature_iv(name, party, tag, c[:, 0], c[:, 1], c[:, 2] - c[:, 1],
                           [f"b{b}" for b in range(feats.n_bins[j])], min_labelled=5, smoothing=0.5)
            out[(name, tag)] = f.iv
    return out


@pytest.mark.parametrize("epsilon", [None, 64.0])
def test_iv_matches_a_centralized_computation(epsilon: float | None) -> None:
    labels, platform, bank = make_data()
    results: list = []
    outcome = run_bank_screen(platform_peer(platform, results), "job-screen", labels, ["t0", "t1"], bank,
                              ScreenParams(label_epsilon=epsilon, **FAST), compute=1, insecure_for_tests=True)
    want = {**centralized(labels, platform, "platform", ["t0", "t1"]), **centralized(labels, bank, "bank", ["t0", "t1"])}
    got = {(f.feature, f.tag): f.iv for f in outcome.table}
    assert set(got) == set(want)
    for key, iv in want.items():
        assert got[key] == pytest.approx(iv, abs=1e-9 if epsilon is None else 1e-6), key
    assert got[("p0", "t0")] > 0.1 > got[("p1", "t0")]  # the informative feature stands out
    assert results and results[0]["rows"] == len(labels)
    assert outcome.label_privacy["mode"] == ("off" if epsilon is None else "randomised_response")


# ---- both nodes, in one process over the in-memory link ----


def test_a_screen_job_on_both_nodes(tmp_path) -> None:
    from tests.nodes_fixture import make_nodes, simulated_files

    files = simulated_files(tmp_path / "data")
    nodes = make_nodes(files, tmp_path / "state")
    align = nodes.bank.wait(nodes.bank.submit("align", "a", {}), timeout_s=120)
    assert align.status == "succeeded", align.error
    job = nodes.bank.wait(nodes.bank.submit("screen", "iv", {"screen": {"min_labelled_rows": 5}}), timeout_s=120)
    assert job.status == "succeeded", job.error
    result = job.result
    features = {(r["party"], r["feature"]) for r in result["iv"]}
    assert {p for p, _ in features} == {"bank", "platform"}
    assert {r["tag"] for r in result["iv"]} == set(files.tags)
    assert result["label_privacy"]["mode"] == "randomised_response" and result["label_privacy"]["epsilon"] == 8.0
    report = nodes.bank.stores.reports.load(job.job_id)
    assert all(row["bins"] and all("event_rate" in b for b in row["bins"]) for row in report["table"])
    # The platform merged its bins to its policy's floor before summing, and counted the screen in its ledger.
    assert all(sum(b["rows"] for b in row["bins"]) == result["rows"] for row in report["table"])
    assert min(b["rows"] for row in report["table"] if row["party"] == "platform" for b in row["bins"]) >= 50
    platform_job = nodes.platform.stores.jobs.get(job.job_id)
    assert platform_job.status == "succeeded" and platform_job.result["rows"] == result["rows"]
    from party_platform.disclosure import ledger_usage

    usage = ledger_usage(nodes.platform.config.state_dir)["projections"]
    assert (job.job_id, "screen", None, result["rows"]) in usage
