"""Both nodes in one process over the in-memory link: align, train, score, batch-score, the job store."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.privacy_bank_view import RecordingPlatform
from party_bank.node import BankNode
from party_common.jobs import JobError
from party_common.link import LocalPlatformLink, SessionContext
from party_common.storage import open_node_stores
from party_platform.node import RELEASE_EVENT
from protocols.errors import NotFound, PeerError, ProtocolError, UserError
from protocols.party_data import SchemaMismatch
from protocols.vfl_lr import BankModel, PlatformModel, TrainParams
from tests.nodes_fixture import FAST_TRAIN, Nodes, SimulatedFiles, make_nodes, simulated_files


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> SimulatedFiles:
    return simulated_files(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained(files: SimulatedFiles, tmp_path_factory: pytest.TempPathFactory) -> tuple[Nodes, str, str]:
    """Nodes on durable stores that have run one align and one train job."""
    state = tmp_path_factory.mktemp("state")
    nodes = make_nodes(files, state, bank_stores=open_node_stores(state / "bank"),
                       platform_stores=open_node_stores(state / "platform"))
    align = nodes.bank.wait(nodes.bank.submit("align", "first alignment", {}), timeout_s=120)
    assert align.status == "succeeded", align.error
    train = nodes.bank.wait(nodes.bank.submit("train", "both tags", {"train": FAST_TRAIN}), timeout_s=300)
    assert train.status == "succeeded", train.error
    return nodes, align.job_id, train.job_id


def test_align_gives_both_nodes_the_true_intersection(trained: tuple[Nodes, str, str],
                                                      files: SimulatedFiles) -> None:
    nodes, align_id, _ = trained
    bank_side = nodes.bank.stores.alignments.load(align_id)
    platform_side = nodes.platform.stores.alignments.load(align_id)
    assert set(bank_side.ids or ()) == files.shared_ids
    assert bank_side.ids == platform_side.ids and bank_side.content_hash == platform_side.content_hash
    record = nodes.bank.stores.jobs.get(align_id)
    assert record.result["intersection_size"] == len(files.shared_ids) and record.name == "first alignment"
    platform_record = nodes.platform.stores.jobs.get(align_id)
    assert platform_record.status == "succeeded" and platform_record.name == "first alignment"
    # Both records name the protocol that ran: the OT-based one by default (an ECDH alignment also names its
    # X25519 kernel: test_end_to_end).
    assert record.params["protocol"] == "ot"
    assert record.result["psi_protocol"] == platform_record.result["psi_protocol"] == "ot"


def test_train_keeps_both_halves_and_a_report(trained: tuple[Nodes, str, str]) -> None:
    nodes, align_id, train_id = trained
    bank_model = BankModel.from_dict(nodes.bank.stores.models.load(train_id), where="test")
    platform_model = PlatformModel.from_dict(nodes.platform.stores.models.load(train_id), where="test")
    assert bank_model.alignment_job_id == platform_model.alignment_job_id == align_id
    assert bank_model.tag_names == platform_model.tag_names and len(bank_model.tag_names) == 2
    assert bank_model.key_fingerprints == platform_model.key_fingerprints
    report = nodes.bank.stores.reports.load(train_id)
    assert set(report["metrics"]) == set(bank_model.tag_names)
    assert report["alignment_job_id"] == align_id
    assert nodes.platform.stores.jobs.get(train_id).status == "succeeded"
    assert nodes.bank.stores.jobs.get(train_id).params["alignment_job_id"] == align_id


def test_online_scores_add_the_platform_part_only_for_shared_customers(trained: tuple[Nodes, str, str],
                                                                       files: SimulatedFiles) -> None:
    nodes, _, train_id = trained
    bank_ids = list(nodes.bank.data.ids)
    shared = [i for i in bank_ids if i in files.shared_ids][:4]
    alone = [i for i in bank_ids if i not in files.shared_ids][:3]
    scores = nodes.bank.score(train_id, shared + alone)
    tags, probs = scores.tags, scores.probabilities
    assert scores.platform_known.tolist() == [True] * 4 + [False] * 3
    model = BankModel.from_dict(nodes.bank.stores.models.load(train_id), where="test")
    rows = [nodes.bank.data.row_of(i) for i in shared + alone]
    z_bank = model.partial_scores(nodes.bank.data.features[rows])
    platform_model = PlatformModel.from_dict(nodes.platform.stores.models.load(train_id), where="test")
    z_platform = platform_model.partial_scores(nodes.platform.data.features[[nodes.platform.data.row_of(i)
                                                                             for i in shared]])
    # FAST_TRAIN serves the joint model (serve "joint"); with "best" a tag whose joint model does not beat the
    # bank's own on validation is served by the bank's own, without the platform's part.
    part = np.array(model.platform_part)
    report = nodes.bank.stores.reports.load(train_id)
    assert [report["metrics"][t]["served"]["model"] == "joint" for t in tags] == part.tolist() == [True, True]
    np.testing.assert_allclose(probs[:4], model.probabilities(z_bank[:4] + z_platform * part), rtol=1e-12)
    np.testing.assert_allclose(probs[4:], model.probabilities(z_bank[4:]), rtol=1e-12)
    assert scores.projections_released == int(part.sum())  # only the joint tags' projections were asked for
    for t, tag in enumerate(tags):
        one_tag = nodes.bank.score(train_id, shared[:2], [tag])
        assert one_tag.tags == [tag] and np.allclose(one_tag.probabilities[:, 0], probs[:2, t])
        assert one_tag.projections_limit == len(platform_model.scaler.mean) // 2
    # A tag served by the bank-only model (serve "best" and a joint model that did not beat it) adds no platform
    # part: the node's cached model is flipped for tag 1 here, as a fallback would store it.
    cached = nodes.bank.model(train_id, BankModel.from_dict)
    cached.platform_part = [True, False]
    try:
        mixed = nodes.bank.score(train_id, shared[:2])
        np.testing.assert_allclose(mixed.probabilities[:, 0], probs[:2, 0], rtol=1e-12)
        np.testing.assert_allclose(mixed.probabilities[:, 1], model.probabilities(z_bank[:2])[:, 1], rtol=1e-12)
        alone_tag = nodes.bank.score(train_id, shared[:2], [tags[1]])
        assert alone_tag.projections_released == alone_tag.projections_limit == 0  # no call to the platform
    finally:
        cached.platform_part = [True, True]


def test_each_customer_gets_a_status_and_an_unknown_id_fails_nothing(trained: tuple[Nodes, str, str],
                                                                      files: SimulatedFiles) -> None:
    nodes, _, train_id = trained
    ids = list(nodes.bank.data.ids)
    shared = next(i for i in ids if i in files.shared_ids)
    alone = next(i for i in ids if i not in files.shared_ids)
    scores = nodes.bank.score(train_id, [shared, "+440000000000", alone])
    assert scores.status == ["ok", "unknown_customer", "not_in_intersection"] and not scores.note
    assert np.isnan(scores.probabilities[1]).all() and np.isfinite(scores.probabilities[[0, 2]]).all()
    assert scores.platform_known.tolist() == [True, False, False]
    alone_only = nodes.bank.score(train_id, ["+440000000000", "+440000000001"])  # nobody reaches the platform
    assert alone_only.status == ["unknown_customer"] * 2 and alone_only.projections_limit == 0


class DownLink(LocalPlatformLink):
    """The platform as the bank sees it while it is down (or refusing, with another ``code``)."""

    def __init__(self, platform: object, code: str = "UNAVAILABLE") -> None:
        super().__init__(platform)  # type: ignore[arg-type]
        self.code = code

    def partial_scores(self, model_job_id: str, rows: np.ndarray, tags: list[str]) -> object:  # type: ignore[override]
        raise PeerError("partial scores: the platform node at 10.0.0.9:7444 is unreachable since 09:00:00 UTC: "
                        "connection refused", code=self.code)


def test_bank_only_fallback_is_opt_in_flagged_and_only_for_an_unreachable_platform(
        trained: tuple[Nodes, str, str], files: SimulatedFiles) -> None:
    nodes, _, train_id = trained
    ids = list(nodes.bank.data.ids)
    shared = [i for i in ids if i in files.shared_ids][:2]
    alone = next(i for i in ids if i not in files.shared_ids)
    down = BankNode(nodes.bank.config, DownLink(nodes.platform), data=nodes.bank.data, stores=nodes.bank.stores)
    with pytest.raises(PeerError, match="unreachable"):
        down.score(train_id, shared + [alone])
    scores = down.score(train_id, shared + [alone, "+440000000000"], bank_only_fallback=True)
    assert scores.status == ["platform_unavailable"] * 2 + ["not_in_intersection", "unknown_customer"]
    assert not scores.platform_known.any() and "bank's features alone" in scores.note
    assert "10.0.0.9:7444" in scores.note
    assert "scored by the bank-only model" in scores.note
    model = BankModel.from_dict(nodes.bank.stores.models.load(train_id), where="test")
    features = nodes.bank.data.features[[nodes.bank.data.row_of(i) for i in shared + [alone]]]
    np.testing.assert_allclose(scores.probabilities[:2], model.bank_only_probabilities(features[:2]), rtol=1e-12)
    # not_in_intersection is no outage: the joint model's bank half, the platform's part at its mean, as always
    np.testing.assert_allclose(scores.probabilities[2], model.probabilities(model.partial_scores(features[2:]))[0])
    # A model stored before the yardstick was kept with it: the joint model's bank half, and the note says so.
    cached = down.model(train_id, BankModel.from_dict)
    cached.bank_only = None
    older = down.score(train_id, shared, bank_only_fallback=True)
    assert "was stored before bank-only weights were kept with it: scored by the joint model's bank half" in older.note
    np.testing.assert_allclose(older.probabilities, model.probabilities(model.partial_scores(features[:2])), rtol=1e-12)
    refusing = BankNode(nodes.bank.config, DownLink(nodes.platform, "FAILED_PRECONDITION"), data=nodes.bank.data,
                        stores=nodes.bank.stores)
    with pytest.raises(PeerError):  # a refusal is no outage: no silent fallback
        refusing.score(train_id, shared, bank_only_fallback=True)
    down.shutdown()
    refusing.shutdown()


def test_the_bank_only_fallback_scores_equal_the_yardsticks_predictions(trained: tuple[Nodes, str, str]) -> None:
    """The fallback scores with the bank-only yardstick the job trained (not the joint model's bank half): its
    scores of the test split's customers are the report's bank-only test predictions (labelled rows, sorted)."""
    nodes, align_id, train_id = trained
    report = nodes.bank.stores.reports.load(train_id)
    ids = list(nodes.bank.stores.alignments.load(align_id).ids or [])
    labels = nodes.bank.data.labels[[nodes.bank.data.row_of(i) for i in ids]]
    split = TrainParams.from_dict(report["params"]).split(labels, ids)
    test_ids = [ids[i] for i in split.test]
    down = BankNode(nodes.bank.config, DownLink(nodes.platform), data=nodes.bank.data, stores=nodes.bank.stores)
    try:
        scores = down.score(train_id, test_ids, bank_only_fallback=True)
    finally:
        down.shutdown()
    assert set(scores.status) == {"platform_unavailable"}
    model = BankModel.from_dict(nodes.bank.stores.models.load(train_id), where="test")
    joint_half = model.probabilities(model.partial_scores(nodes.bank.data.features[
        [nodes.bank.data.row_of(i) for i in test_ids]]))
    for t, tag in enumerate(scores.tags):
        labelled = ~np.isnan(labels[split.test, t])
        expected = report["test_predictions"][tag]["bank_only"]["p"]
        assert len(expected) == labelled.sum() > 5
        np.testing.assert_allclose(np.sort(scores.probabilities[labelled, t]), expected, atol=1e-6)
        assert not np.allclose(np.sort(joint_half[labelled, t]), expected, atol=1e-6)  # what it scored with before


def test_a_train_job_keeps_its_history_with_per_epoch_validation_metrics(trained: tuple[Nodes, str, str]) -> None:
    nodes, _, train_id = trained
    events = nodes.bank.stores.jobs.audit_events(train_id)
    kinds = [e.event for e in events]
    assert kinds[:2] == ["created", "running"] and kinds[-1] == "succeeded"
    stages = [e.detail for e in events if e.event == "progress"]
    assert "keys" in stages and any(s.startswith("epoch 1/") for s in stages)
    validation = [s for s in stages if "validation AUC" in s]
    assert len(validation) >= 1 and all(tag in validation[0] for tag in nodes.bank.data.tag_names)


def test_scoring_errors(trained: tuple[Nodes, str, str]) -> None:
    nodes, align_id, train_id = trained
    with pytest.raises(JobError, match="has no tag"):
        nodes.bank.score(train_id, [nodes.bank.data.ids[0]], ["tag_nope"])
    with pytest.raises(NotFound, match="no model for job"):
        nodes.bank.score(align_id, [nodes.bank.data.ids[0]])


def test_batch_score_writes_the_intersection(trained: tuple[Nodes, str, str], tmp_path: Path) -> None:
    nodes, align_id, train_id = trained
    path, rows = nodes.bank.batch_score(train_id, "intersection.parquet")
    frame = pd.read_parquet(path)
    ids = nodes.bank.stores.alignments.load(align_id).ids
    assert rows == len(frame) == len(ids or ())
    assert frame["id"].tolist() == ids and frame["platform_known"].all()
    assert ((frame.filter(like="p_") > 0) & (frame.filter(like="p_") < 1)).all().all()
    with pytest.raises(UserError, match=".csv or .parquet"):
        nodes.bank.batch_score(train_id, "scores.xlsx")
    with pytest.raises(UserError):
        nodes.bank.batch_score(train_id, str(tmp_path / "scores.parquet"))  # only under the state dir


def test_a_restart_keeps_every_job_and_model(trained: tuple[Nodes, str, str], files: SimulatedFiles) -> None:
    nodes, align_id, train_id = trained
    sample = list(nodes.bank.data.ids[:5])
    before = nodes.bank.score(train_id, sample).probabilities
    state = nodes.bank.config.state_dir
    restarted = BankNode(nodes.bank.config, nodes.link, data=nodes.bank.data, stores=open_node_stores(state))
    jobs = {r.job_id: r for r in restarted.stores.jobs.list()}
    assert jobs[align_id].status == jobs[train_id].status == "succeeded"
    assert jobs[train_id].result == nodes.bank.stores.jobs.get(train_id).result
    np.testing.assert_array_equal(restarted.score(train_id, sample).probabilities, before)
    restarted.shutdown()


def test_submit_refuses_bad_parameters_naming_them(trained: tuple[Nodes, str, str]) -> None:
    nodes, align_id, _ = trained
    bank = nodes.bank
    with pytest.raises(JobError, match="unknown job kind 'score'"):
        bank.submit("score", "", {})
    with pytest.raises(JobError, match="'mode' must be one of"):
        bank.submit("align", "", {"mode": "everything"})
    with pytest.raises(JobError, match="unknown align parameter 'rounds'"):
        bank.submit("align", "", {"rounds": 3})
    with pytest.raises(JobError, match="tag_nope"):
        bank.submit("train", "", {"tags": ["tag_nope"]})
    with pytest.raises(UserError, match="'lr'"):
        bank.submit("train", "", {"train": {"lr": 0.1}})
    with pytest.raises(JobError, match="no align job nope-123"):
        bank.submit("train", "", {"alignment_job_id": "nope-123"})
    with pytest.raises(JobError, match="not a finished align job"):
        bank.submit("train", "", {"alignment_job_id": bank.stores.jobs.list(kind="train")[0].job_id})


def test_training_needs_an_alignment_that_holds_ids(files: SimulatedFiles, tmp_path: Path) -> None:
    nodes = make_nodes(files, tmp_path)
    with pytest.raises(JobError, match="run `bank-node align` first"):
        nodes.bank.submit("train", "", {})
    count = nodes.bank.wait(nodes.bank.submit("align", "", {"mode": "cardinality"}), timeout_s=60)
    assert count.status == "succeeded" and count.result["intersection_size"] == len(files.shared_ids)
    assert nodes.bank.stores.alignments.load(count.job_id).ids is None
    with pytest.raises(JobError, match="run `bank-node align` first"):  # a size-only alignment cannot train
        nodes.bank.submit("train", "", {})
    with pytest.raises(JobError, match="training needs an align job in mode 'both'"):
        nodes.bank.submit("train", "", {"alignment_job_id": count.job_id})
    bank_only = nodes.bank.wait(nodes.bank.submit("align", "", {"mode": "bank_only"}), timeout_s=60)
    assert set(nodes.bank.stores.alignments.load(bank_only.job_id).ids or ()) == files.shared_ids
    assert nodes.platform.stores.alignments.load(bank_only.job_id).ids is None
    with pytest.raises(JobError, match="training needs an align job in mode 'both'"):
        nodes.bank.submit("train", "", {"alignment_job_id": bank_only.job_id})


def test_a_session_ended_early_is_interrupted_and_a_refused_step_fails_the_job(files: SimulatedFiles, tmp_path: Path) -> None:
    nodes = make_nodes(files, tmp_path)
    channel = nodes.link.open("psi", "psi-early-end", {"version": "psi-x25519-v2", "mode": "both",
                                                        "batch_size": 100}, context=SessionContext())
    assert nodes.platform.stores.jobs.get("psi-early-end").status == "running"
    channel.close()  # no result, no refusal here: the bank stopped, and may resume the job
    record = nodes.platform.stores.jobs.get("psi-early-end")
    assert record.status == "interrupted" and "before the protocol finished" in record.error
    # A refused step fails the job (which then never resumes), and the job row says which step.
    channel = nodes.link.open("psi", "psi-refused", {"version": "psi-x25519-v2", "mode": "both",
                                                      "batch_size": 100}, context=SessionContext())
    with pytest.raises(PeerError):
        channel.call("psi.finish", {})
    channel.close()
    record = nodes.platform.stores.jobs.get("psi-refused")
    assert record.status == "failed" and "psi.finish" in record.error


def test_platform_refuses_training_without_a_matching_alignment(trained: tuple[Nodes, str, str],
                                                                files: SimulatedFiles, tmp_path: Path) -> None:
    nodes, align_id, _ = trained
    for context, message in [(SessionContext(), "did not say which alignment"),
                             (SessionContext(alignment_job_id="align-none"), "no alignment 'align-none'"),
                             (SessionContext(alignment_job_id=align_id, alignment_hash="0" * 64),
                              "hold different intersections")]:
        job_id = f"train-refused-{len(message)}"
        with pytest.raises(PeerError, match=message):
            nodes.link.open("train", job_id, {}, context=context)
        assert nodes.platform.stores.jobs.get(job_id).status == "failed"


def test_scoring_checks_the_platform_data_against_the_training_schema(trained: tuple[Nodes, str, str],
                                                                      files: SimulatedFiles) -> None:
    nodes, _, train_id = trained
    data = nodes.platform.data
    fewer = data.__class__(source="users-v2.csv", ids=data.ids, features=data.features[:, 1:],
                           feature_names=data.feature_names[1:], labels=data.labels, tag_names=[],
                           schema=data.schema.__class__(data.schema.id_column, data.schema.feature_columns[1:],
                                                        data.schema.feature_dtypes[1:]))
    changed = make_nodes(files, nodes.platform.config.state_dir.parent, platform_stores=nodes.platform.stores,
                         platform_data=fewer)
    with pytest.raises(SchemaMismatch, match="users-v2.csv: does not match the training schema"):
        changed.platform.partial_scores(train_id, np.arange(2, dtype=np.int64), [])
    with pytest.raises(PeerError, match="missing feature column"):
        changed.link.partial_scores(train_id, np.arange(2, dtype=np.int64), [])


def test_scoring_never_sends_a_customer_id_and_only_members(trained: tuple[Nodes, str, str],
                                                            files: SimulatedFiles) -> None:
    nodes, align_id, train_id = trained
    recorder = RecordingPlatform(nodes.platform)
    bank = BankNode(nodes.bank.config, LocalPlatformLink(recorder), data=nodes.bank.data, stores=nodes.bank.stores)
    ids = list(nodes.bank.data.ids)
    members = [i for i in ids if i in files.shared_ids][:6]
    outsiders = [i for i in ids if i not in files.shared_ids][:6]
    asked = outsiders[:3] + members + outsiders[3:] + members[:2]  # repeats, mixed order
    scores = bank.score(train_id, asked)
    assert scores.platform_known.tolist() == [False] * 3 + [True] * 6 + [False] * 3 + [True] * 2
    alignment = nodes.bank.stores.alignments.load(align_id).ids or []
    [(model, rows, _)] = recorder.score_requests
    assert model == train_id and rows.dtype == np.int64
    assert sorted(alignment[r] for r in rows) == sorted(members)  # positions of members, each once
    np.testing.assert_allclose(scores.probabilities[-2:], scores.probabilities[3:5], rtol=1e-12)
    bank.shutdown()


def test_platform_refuses_bad_rows_and_scoring_past_its_budget(files: SimulatedFiles, tmp_path: Path) -> None:
    """The disclosure budget is per customer (party_platform/disclosure.py): the jobs' evaluations charge their
    validation and test customers; scoring charges each scored customer once per (model, tag) vector."""
    nodes = make_nodes(files, tmp_path)
    nodes.platform.config = replace(nodes.platform.config, max_released_projections=3)
    tag = files.tags[0]
    assert nodes.bank.wait(nodes.bank.submit("align", "", {})).status == "succeeded"
    first = nodes.bank.wait(nodes.bank.submit("train", "", {"train": FAST_TRAIN}), timeout_s=300)
    second = nodes.bank.wait(nodes.bank.submit("train", "", {"train": FAST_TRAIN, "tags": [tag]}), timeout_s=300)
    assert first.status == second.status == "succeeded"
    ledger = nodes.platform.ledger
    # Validation and test customers of both jobs hold 3 (2 + 1 tags); training customers none yet.
    assert max(ledger.held(i) for i in files.shared_ids) == 3
    member = [i for i in nodes.bank.data.ids if i in files.shared_ids and ledger.held(i) == 0][:3]
    for rows, message in [(np.array([], dtype=np.int64), "non-empty"), (np.array([0, 0]), "distinct"),
                          (np.array([10**6]), "distinct positions"), (np.array([0.5]), "int64")]:
        with pytest.raises(ProtocolError, match=message):
            nodes.platform.partial_scores(first.job_id, rows, [])
    with pytest.raises(PeerError, match="distinct positions"):
        nodes.link.partial_scores(first.job_id, np.array([-1]), [])
    nodes.platform.config = replace(nodes.platform.config, max_released_projections=2)  # read at every charge
    assert nodes.bank.score(first.job_id, member).projections_released == 2
    assert nodes.bank.score(first.job_id, member).projections_released == 2  # the same projections again
    with pytest.raises(PeerError, match="the limit 2 per customer") as refused:
        nodes.bank.score(second.job_id, member, [tag])
    assert refused.value.code == "FAILED_PRECONDITION"
    assert {ledger.held(i) for i in member} == {2}  # the refused call charged nothing
    released = [e.detail for e in nodes.platform.stores.jobs.audit_events(first.job_id) if e.event == RELEASE_EVENT]
    assert any(d.startswith(f"scoring model {first.job_id}: {first.job_id}:{tag}@0") for d in released)
    assert not any(i in d for d in released for i in member)  # counts and job IDs, never a customer
    calls = [e for e in nodes.platform.stores.jobs.audit_events(first.job_id) if e.event == "partial scores"]
    answered = [e for e in calls if e.outcome == "ok"]
    assert len(answered) == 2 and all(e.detail == "3 rows, 2 tags" and e.count == 3 for e in answered)
    assert [e.outcome for e in calls if e.outcome != "ok"] == ["refused (FAILED_PRECONDITION)"] * 5


def test_models_stored_without_a_family_still_score(trained: tuple[Nodes, str, str], files: SimulatedFiles) -> None:
    """Both model files rewritten as a node stored them before the model-family field (the stores never replace
    a model, so the test writes the files itself): after a restart (empty model cache) they load as vfl-lr
    through the registry, and the scores are the same bits."""
    nodes, _, train_id = trained
    shared = [i for i in nodes.bank.data.ids if i in files.shared_ids][:5]
    before = nodes.bank.score(train_id, shared)
    paths = [node.stores.models.path(train_id) for node in (nodes.bank, nodes.platform)]  # type: ignore[attr-defined]
    originals = [path.read_bytes() for path in paths]
    docs = [json.loads(data) for data in originals]
    assert [doc["family"] for doc in docs] == ["vfl-lr", "vfl-lr"]
    try:
        for path, doc in zip(paths, docs, strict=True):
            path.write_text(json.dumps({k: v for k, v in doc.items() if k != "family"}))
        for node in (nodes.bank, nodes.platform):
            assert "family" not in node.stores.models.load(train_id)
            node._cache.pop(("model", train_id), None)  # as after a restart
        after = nodes.bank.score(train_id, shared)
        np.testing.assert_array_equal(after.probabilities, before.probabilities)
        assert after.status == before.status and nodes.platform._model(train_id).family == "vfl-lr"
    finally:
        for path, data in zip(paths, originals, strict=True):
            path.write_bytes(data)
        for node in (nodes.bank, nodes.platform):
            node._cache.pop(("model", train_id), None)
