"""The screen job: federated WOE and IV (protocols/screen), its checks, its label protection, and both nodes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gmpy2 import mpz

from protocols.channel import LocalPeer, Message
from protocols.errors import DeviationDetected, UserError
from protocols.screen import (
    PlatformScreenHandler,
    ScreenFeatures,
    ScreenParams,
    encoding,
    rr,
    run_bank_screen,
)
from protocols.screen.params import Field, Step
from protocols.screen.platform import feature_groups, merge_by_rows
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


@pytest.fixture(scope="module")
def aligned_nodes(tmp_path_factory):
    from tests.nodes_fixture import make_nodes, simulated_files

    tmp = tmp_path_factory.mktemp("screen-nodes")
    files = simulated_files(tmp / "data")
    nodes = make_nodes(files, tmp / "state")
    align = nodes.bank.wait(nodes.bank.submit("align", "a", {}), timeout_s=120)
    assert align.status == "succeeded", align.error
    return nodes, files, align


def test_a_screen_job_on_both_nodes(aligned_nodes) -> None:
    nodes, files, align = aligned_nodes
    job = nodes.bank.wait(nodes.bank.submit("screen", "iv", {"screen": {"min_labelled_rows": 5}}), timeout_s=120)
    assert job.status == "succeeded", job.error
    result = job.result
    features = {(r["party"], r["feature"]) for r in result["iv"]}
    assert {p for p, _ in features} == {"bank", "platform"}
    assert {r["tag"] for r in result["iv"]} == set(files.tags)
    assert result["label_privacy"]["mode"] == "randomised_response" and result["label_privacy"]["epsilon"] == 4.0
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
    # `bank-node screen` prints the table per tag, highest IV first, with the bins' event rates.
    from party_bank.cli import build_parser
    from party_bank.cli_screen import iv_table, screen_params

    text = iv_table({"job_id": job.job_id, "result": result}, top=3)
    assert f"tag {files.tags[0]}" in text and "event rate per bin" in text and "epsilon 2 per tag, 4 per customer" in text
    args = build_parser().parse_args(["screen", "--epsilon", "off", "--tags", files.tags[0]])
    assert screen_params(args)["screen"]["label_epsilon"] is None and screen_params(args)["tags"] == [files.tags[0]]
    from party_bank.cli_screen import selection_params

    train_args = build_parser().parse_args(["train", "--screen", job.job_id, "--top-k", "3"])
    assert selection_params(train_args) == {"screen": {"job_id": job.job_id, "top_k": 3}}


# ---- what each party sees on the wire ----


def test_the_wire_holds_the_documented_fields_and_nothing_that_depends_on_labels() -> None:
    """docs/protocol.md "Screen": the bank sends its key, the row count, the slot layout and per-row ciphertexts
    (every row, labelled or not); the platform sends its feature names, bin counts, ordinal bin names, its
    policy's floors and the bin ciphertexts. The same rows with other labels give the same clear fields."""
    labels, platform, bank = make_data()
    transcripts = []
    for ys in (labels, np.where(np.isnan(labels), np.nan, 1 - np.nan_to_num(labels))):
        peer = platform_peer(platform, [])
        original = peer.open

        def recording(*a, _open=original, **k):
            channel = _open(*a, **k)
            channel.keep_transcript = True
            return channel

        peer.open = recording  # type: ignore[method-assign]
        run_bank_screen(peer, "job-wire", ys, ["t0", "t1"], bank, ScreenParams(**FAST), compute=1,
                        insecure_for_tests=True)
        transcripts.append(peer.channels[0].transcript)
    for transcript in transcripts:
        steps = [(step, set(sent), set(got)) for step, sent, got in transcript]
        assert steps[0] == (Step.DESCRIBE, {Field.BANK_KEY, Field.N_ROWS, Field.TAGS_PER_CIPHERTEXT},
                            {Field.FEATURES, Field.N_BINS, Field.BIN_LABELS, Field.MIN_BIN_ROWS,
                             Field.MIN_LABELLED_ROWS})
        assert all(s == (Step.ROWS, {Field.OFFSET, Field.CIPHERTEXTS}, {Field.RECEIVED}) for s in steps[1:-1])
        assert steps[-1] == (Step.BINS, set(), {Field.BIN_CIPHERTEXTS})
        sent_rows = sum(len(sent[Field.CIPHERTEXTS]) for step, sent, _ in transcript if step == Step.ROWS)
        assert sent_rows == len(labels) * 1024 // 4  # one 2048-bit ciphertext per row, labelled or not
    clear = [[(step, {k: v for k, v in sent.items() if k not in (Field.BANK_KEY, Field.CIPHERTEXTS)})
              for step, sent, _ in t] for t in transcripts]
    assert clear[0] == clear[1]  # nothing in the clear depends on the labels
    assert json.loads(transcripts[0][0][2][Field.BIN_LABELS])[0][0] == "b0"  # no cut points from the platform


# ---- a deviating platform ----


class TamperingHandler(PlatformScreenHandler):
    """Returns what the honest protocol never produces as the bins."""

    def __init__(self, *a, how: str, **k) -> None:
        super().__init__(*a, **k)
        self.how, self.rows_seen = how, []

    def _rows(self, message: Message) -> Message:
        self.rows_seen.extend(self.scheme.ciphertexts_from_bytes(self.public_key, message[Field.CIPHERTEXTS]).values)
        return super()._rows(message)

    def _bins(self, message: Message) -> Message:
        reply = super()._bins(message)
        cv = self.scheme.ciphertexts_from_bytes(self.public_key, reply[Field.BIN_CIPHERTEXTS])
        values, n2 = list(cv.values), self.scheme.ciphertext_modulus(self.public_key)
        if self.how == "single row":  # feature 0: the first row alone, and every other row
            rest = mpz_product(self.rows_seen[1:], n2)
            values[0], values[1:self.n_bins[0]] = self.rows_seen[0], [rest] + [1] * (self.n_bins[0] - 2)
        elif self.how == "extra":
            values.append(values[0])
        elif self.how == "added row":
            values[0] = values[0] * self.rows_seen[0] % n2
        elif self.how == "subtracted":  # a negative combination of rows
            values[0] = pow(self.rows_seen[0], -2, n2)  # [[-2 x row 0]]
        crafted = self.scheme.ciphertexts(self.public_key, [mpz(v) for v in values])
        return {Field.BIN_CIPHERTEXTS: crafted.to_bytes()}


def mpz_product(values, modulus):
    out = 1
    for v in values:
        out = out * v % modulus
    return out


@pytest.mark.parametrize(("how", "check"), [("single row", "bin rows"), ("extra", "ciphertext count"),
                                            ("added row", "bin partition"), ("subtracted", "slot range")])
def test_the_bank_stops_at_bins_the_honest_protocol_never_sends(how: str, check: str) -> None:
    labels, platform, _ = make_data()

    def factory(kind: str, job_id: str, params: Message) -> PlatformScreenHandler:
        return TamperingHandler(job_id, params, platform, on_result=lambda r: None, insecure_for_tests=True,
                                compute=1, min_bin_rows=1, min_labelled_rows=1, how=how)

    with pytest.raises(DeviationDetected) as err:
        run_bank_screen(LocalPeer(factory), "job-dev", labels, ["t0", "t1"], None, ScreenParams(**FAST), compute=1,
                        insecure_for_tests=True)
    assert err.value.step == Step.BINS and err.value.check == check


def overlapping_set_features(n: int, targets: range, base: range) -> ScreenFeatures:
    """Per target row i, two "features" whose first bins are ``base`` + {i} and ``base``: every bin is large,
    each feature's bins partition the rows, and the difference of the two first bins is row i alone."""
    columns, names = [], []
    for i in targets:
        with_i = np.ones(n, dtype=np.int64)
        with_i[list(base)] = 0
        without = with_i.copy()
        with_i[i] = 0
        columns += [with_i, without]
        names += [f"x{i}+", f"x{i}-"]
    return ScreenFeatures(names, np.stack(columns, axis=1), [2] * len(names))


@pytest.mark.parametrize("epsilon", [None, 0.5])
def test_a_platform_that_differences_overlapping_bins_reads_only_randomised_labels(epsilon: float | None) -> None:
    """The attack no check can see (every bin large, every feature a partition): the difference of two
    overlapping bins is one row. Without randomised response the bank's released counts give every target's
    label; with it, each (row, tag) is epsilon-LDP and the attack's accuracy stays at what RR allows."""
    n = 600
    rng = np.random.default_rng(5)
    y = (rng.random(n) < 0.4).astype(float)[:, None]
    targets, base = range(0, 120), range(300, 400)
    crafted = overlapping_set_features(n, targets, base)
    outcome = run_bank_screen(platform_peer(crafted, [], min_bin_rows=1, min_labelled_rows=1), "job-att", y, ["t0"],
                              None, ScreenParams(**{**FAST, "label_epsilon": epsilon, "min_labelled_rows": 1}),
                              compute=1, insecure_for_tests=True)
    first_bin = {row.feature: row.bins[0] for row in outcome.table}
    guesses = []
    for i in targets:
        events = first_bin[f"x{i}+"]["events"] - first_bin[f"x{i}-"]["events"]
        labelled = first_bin[f"x{i}+"]["labelled"] - first_bin[f"x{i}-"]["labelled"]
        guesses.append(1.0 if events > 0 else 0.0 if labelled > events else float(y.mean() >= 0.5))
    accuracy = float(np.mean(np.array(guesses) == y[list(targets), 0]))
    if epsilon is None:
        assert accuracy == 1.0
    else:
        p = rr.keep_probability(epsilon)
        assert accuracy <= p + (1 - p) / 2 + 0.12  # what randomised response allows (binomial slack, 120 rows)
        assert accuracy < 0.9


# ---- bad input and merging ----


def test_a_tag_without_positives_is_named_and_the_rest_screened() -> None:
    labels, platform, bank = make_data()
    labels[:, 1] = np.where(np.isnan(labels[:, 1]), np.nan, 0.0)
    outcome = run_bank_screen(platform_peer(platform, []), "job-nopos", labels, ["t0", "t1"], bank,
                              ScreenParams(**FAST), compute=1, insecure_for_tests=True)
    assert "'t1' has no positive" in outcome.skipped_tags["t1"]
    assert {f.tag for f in outcome.table} == {"t0"} and outcome.summary["tags"] == ["t0"]
    with pytest.raises(UserError, match="no tag can be screened.*'t0' has no positive"):
        run_bank_screen(platform_peer(platform, []), "job-nopos2", np.zeros((len(labels), 1)), ["t0"], bank,
                        ScreenParams(**FAST), compute=1, insecure_for_tests=True)


def test_small_bins_are_merged_by_the_platform_before_summing_and_by_the_bank_per_tag() -> None:
    labels, platform, _ = make_data()
    bins = platform.bins.copy()
    bins[:, 1] = np.where(bins[:, 1] == 4, 3, bins[:, 1])
    bins[:3, 1] = 4  # a bin of three rows
    small = ScreenFeatures(platform.names, bins, platform.n_bins)
    outcome = run_bank_screen(platform_peer(small, [], min_bin_rows=10), "job-merge", labels, ["t0", "t1"], None,
                              ScreenParams(**{**FAST, "min_labelled_rows": 60}), compute=1, insecure_for_tests=True)
    p1 = next(f for f in outcome.table if f.feature == "p1" and f.tag == "t0")
    assert min(b["rows"] for b in p1.bins) >= 10 and sum(b["rows"] for b in p1.bins) == len(labels)
    assert all(b["labelled"] >= 60 for f in outcome.table for b in f.bins)  # bank-side merging per tag
    assert any(f.merged for f in outcome.table if f.tag == "t1")  # half of t1 is unlabelled: fewer labelled per bin
    col, groups = merge_by_rows(np.array([0, 0, 0, 1, 2, 2, 2]), 3, 2)
    assert groups == [[0, 1], [2]] and col.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert merge_small(np.array([5, 1, 5, 5]), 4) == [[0, 1], [2], [3]]
    # The platform sums features in joint groups (one multiplication per row for the group): the tests above
    # with 400 rows and 5 bins run the grouped path (pairs), and IV matches the centralized computation.
    assert feature_groups([5, 5, 5], 400) == [range(0, 2), range(2, 3)]
    assert feature_groups([10] * 7, 100_000) == [range(0, 3), range(3, 6), range(6, 7)]


def test_parameters_are_checked_with_their_names() -> None:
    for bad, word in [({"label_epsilon": -1}, "label_epsilon"), ({"key_bits": 1000}, "key_bits"),
                      ({"he_scheme": "rot13"}, "he_scheme"), ({"min_labelled_rows": 0}, "min_labelled_rows"),
                      ({"smoothing": 0}, "smoothing")]:
        with pytest.raises(UserError, match=word):
            ScreenParams(**bad).validate()
    with pytest.raises(UserError, match="unknown screen parameter 'epsilon'"):
        ScreenParams.from_dict({"epsilon": 1})


def test_randomised_response_keeps_at_the_stated_rate_and_debiasing_is_unbiased() -> None:
    cats = np.repeat(np.array([[0], [1], [2]], dtype=np.int8), 4000, axis=0)
    noisy = rr.randomise(cats, 1.0)
    kept = float(np.mean(noisy == cats))
    assert abs(kept - rr.keep_probability(1.0)) < 0.02
    observed = np.array([[np.sum(noisy == k) for k in range(3)]])
    est = rr.debias(observed, np.array([len(cats)]), 1.0)[0]
    # Five standard deviations of each debiased count (the responses are random by design: secrets, no seed):
    # a count k observes its 4000 rows kept with p and the other 8000 turned into k with q.
    p = rr.keep_probability(1.0)
    q = (1 - p) / 2
    sd = np.sqrt(4000 * p * (1 - p) + 8000 * q * (1 - q)) / (p - q)
    assert np.allclose(est, [4000, 4000, 4000], atol=5 * sd), (est, sd)


def test_packed_rows_and_their_checks() -> None:
    cats = np.array([[0, 1], [2, 2], [1, 0]], dtype=np.int8)
    packed = encoding.pack_rows(cats, range(2), 6)
    total = sum(packed)
    out = encoding.open_bins([total], [1], 3, 2, 6, min_bin_rows=1, step="s")
    assert out.tolist() == [[3, 1, 2, 1, 2]]
    with pytest.raises(DeviationDetected, match="bin order"):
        encoding.open_bins([total + (2 << 6)], [1], 3, 2, 6, min_bin_rows=1, step="s")


def test_the_platform_policy_refuses_screens_naming_its_key(aligned_nodes) -> None:
    from dataclasses import replace

    from party_platform.policy import PlatformPolicy

    nodes, files, _ = aligned_nodes
    original = nodes.platform.policy
    try:
        for change, key in [({"allow_screen": False}, "[policy] allow_screen"),
                            ({"allowed_tags": (files.tags[0],)}, "[policy] allowed_tags")]:
            nodes.platform.policy = PlatformPolicy(replace(original.config, **change), platform_rows=300,
                                                   jobs=nodes.platform.stores.jobs)
            job = nodes.bank.wait(nodes.bank.submit("screen", "refused", {}), timeout_s=60)
            assert job.status == "failed" and key in job.error, job.error
    finally:
        nodes.platform.policy = original
    with pytest.raises(UserError, match="tag.*nope"):
        nodes.bank.submit("screen", "bad", {"tags": ["nope"]})
    with pytest.raises(UserError, match="label_epsilon"):
        nodes.bank.submit("screen", "bad", {"screen": {"label_epsilon": 0}})


def test_a_train_job_keeps_the_features_a_screen_selects_and_scores_with_them(aligned_nodes) -> None:
    from tests.nodes_fixture import FAST_TRAIN

    nodes, files, align = aligned_nodes
    screen = nodes.bank.wait(nodes.bank.submit("screen", "iv", {"screen": {"min_labelled_rows": 5}}), timeout_s=120)
    assert screen.status == "succeeded", screen.error
    rule = {"job_id": screen.job_id, "top_k": 2}
    job = nodes.bank.wait(nodes.bank.submit("train", "selected", {"train": FAST_TRAIN, "screen": rule}), timeout_s=300)
    assert job.status == "succeeded", job.error
    chosen = job.result["screen_selection"]
    bank_half, platform_half = nodes.bank.stores.models.load(job.job_id), nodes.platform.stores.models.load(job.job_id)
    assert 2 <= len(chosen["platform_features"]) <= 2 * len(files.tags) < len(nodes.platform.data.feature_names)
    assert platform_half["column_selection"] == chosen["platform_features"]
    assert bank_half["column_selection"] == chosen["bank_features"]
    # The training report names the selection and the screen's label budget; the screen has its own page.
    assert job.result["screen_selection"]["label_privacy"]["epsilon_per_tag"] == 2.0
    page = nodes.bank.report_html(job.job_id).decode()
    assert "Features selected by a screen" in page and "epsilon 2 per customer and tag" in page
    screen_page = nodes.bank.report_html(screen.job_id).decode()
    assert f"Tag {files.tags[0]}" in screen_page and "event rate" in screen_page
    ids = list(nodes.bank.stores.alignments.load(align.job_id).ids or [])[:5]
    scores = nodes.bank.score(job.job_id, ids)
    assert np.isfinite(scores.probabilities).all() and all(s == "ok" for s in scores.status)
    with pytest.raises(UserError, match="exactly one of min_iv"):
        nodes.bank.submit("train", "bad", {"train": FAST_TRAIN, "screen": {"job_id": screen.job_id}})
    with pytest.raises(UserError, match="not a finished screen job"):
        nodes.bank.submit("train", "bad", {"train": FAST_TRAIN, "screen": {"job_id": align.job_id, "top_k": 1}})
    # The platform still decides: a column its policy does not allow is refused, naming the key.
    from party_common.jobs.train import select_platform_features
    from protocols.screen.select import select_features
    from protocols.vfl_lr import TrainParams

    assert select_features(screen.result["iv"], files.tags, {"min_iv": 0.0})["platform"]
    with pytest.raises(Exception, match=r"\[policy\] allowed_feature_columns"):
        select_platform_features(nodes.platform.data, {"params": TrainParams(platform_features=["secret"]).to_json()})


def test_a_deviating_bank_reads_the_platforms_bins_of_rows_it_encodes() -> None:
    """What docs/security.md states for a deviating bank: the platform cannot check what a row's ciphertext
    holds, so a bank that encrypts 2^i for row i reads, from each bin's sum, exactly which rows are in it:
    every platform feature's (merged) bin of every row it encodes this way (here all 300, in one screen)."""
    from protocols.he import get_scheme

    _, platform, _ = make_data(n=300)
    handler = PlatformScreenHandler("job-bank-dev", {Field.VERSION: "screen/1", Field.HE_SCHEME: "paillier",
                                                     Field.KEY_BITS: 1024, Field.TAGS: json.dumps(["t0"])},
                                    platform, on_result=lambda r: None, min_bin_rows=5, compute=1,
                                    insecure_for_tests=True)
    scheme = get_scheme("paillier")
    pk, sk = scheme.generate_keypair(1024, allow_insecure=True)
    described = handler.handle(Step.DESCRIBE, {Field.BANK_KEY: pk.to_bytes(), Field.N_ROWS: 300,
                                               Field.TAGS_PER_CIPHERTEXT: 1})
    noise = scheme.noise_pool(pk, sk)
    noise.fill(300)
    crafted = scheme.encrypt(pk, [1 << i for i in range(300)], noise)
    handler.handle(Step.ROWS, {Field.OFFSET: 0, Field.CIPHERTEXTS: crafted.to_bytes()})
    sums = scheme.decrypt(sk, scheme.ciphertexts_from_bytes(pk, handler.handle(Step.BINS, {})[Field.BIN_CIPHERTEXTS]))
    n_bins = described[Field.N_BINS].tolist()
    start, recovered = 0, []
    for k in n_bins:
        column = np.full(300, -1)
        for b, value in enumerate(sums[start:start + k]):
            column[[i for i in range(300) if value >> i & 1]] = b
        recovered.append(column)
        start += k
    assert (np.stack(recovered, axis=1) == handler.bins).all()  # every row's bin of every feature, exactly
    handler.close()


def test_the_screen_policy_keys_are_parsed_with_their_names() -> None:
    from party_common.policy import parse_policy

    policy = parse_policy({"allow_screen": False, "min_screen_bin_rows": 100, "min_screen_labelled_rows": 30}, "[policy]")
    assert (policy.allow_screen, policy.min_screen_bin_rows, policy.min_screen_labelled_rows) == (False, 100, 30)
    assert parse_policy({}, "[policy]").allow_screen is True
    with pytest.raises(ValueError, match="'allow_screen' must be true or false"):
        parse_policy({"allow_screen": "yes"}, "[policy]")
    with pytest.raises(ValueError, match="'min_screen_bin_rows' must be a whole number"):
        parse_policy({"min_screen_bin_rows": 0}, "[policy]")
