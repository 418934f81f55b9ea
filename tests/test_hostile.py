"""Both nodes as processes over mutual TLS: a demo-shaped job leaves no customer IDs, feature values, labels or
keys in either node's log or audit, every call is audited with the caller's certificate name, and a short
fuzz run (``benchmarks.fuzz``) is refused message by message with 0 crashes and 0 hangs."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
import pytest

from benchmarks.fuzz import fuzz_cluster
from party_common.audit import INSECURE_CALLER, LOCAL_CALLER
from simulations.cluster import LocalCluster
from tests.nodes_fixture import FAST_TRAIN, SimulatedFiles, simulated_files

NUMBER = re.compile(r"[-+]?\d+\.\d+")


@dataclass
class Demo:
    cluster: LocalCluster
    files: SimulatedFiles
    align: str
    model: str


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    files = simulated_files(tmp_path_factory.mktemp("data"))
    with LocalCluster(tmp_path_factory.mktemp("cluster"), bank_data=files.bank, bank_id_column="id",
                      bank_tag_columns=files.tags, platform_data=files.platform, platform_id_column="id",
                      workers=1) as cluster:
        client = cluster.bank_client()
        align = client.align(mode="both")["job_id"]
        model = client.train(tags=files.tags, train=FAST_TRAIN)["job_id"]
        ids = pd.read_csv(files.bank, dtype=str)["id"].tolist()
        client.score(model, ids[:5])  # members and not
        client.batch_score(model, "all.csv", all_customers=True)
        yield Demo(cluster, files, align, model)


def secrets_of(demo: Demo) -> tuple[set[str], set[str], list[str]]:
    """What must never be written: every customer ID of both files, feature values (those of 100 or more with a
    fractional part: no count, metric or timestamp looks like one), and the lines of every private key."""
    ids: set[str] = set()
    values: set[str] = set()
    for path in (demo.files.bank, demo.files.platform):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        ids |= set(frame["id"])
        for column in frame.columns.drop("id"):
            values |= {v for v in frame[column] if NUMBER.fullmatch(v) and abs(float(v)) >= 100}
    key_lines = [line for key in sorted((demo.cluster.workdir / "certs").rglob("*.key"))
                 for line in key.read_text().splitlines() if len(line) >= 40]
    return ids, values, key_lines


def written_text(demo: Demo) -> dict[str, str]:
    """Both nodes' logs, and every audit row and job row (errors, parameters, results) of both job stores."""
    texts = {f"{role}.log": (demo.cluster.workdir / f"{role}.log").read_text(errors="replace")
             for role in ("bank", "platform")}
    for role in ("bank", "platform"):
        with sqlite3.connect(demo.cluster.workdir / "state" / role / "jobs.sqlite") as db:
            audit = db.execute("SELECT * FROM audit").fetchall()
            jobs = db.execute("SELECT * FROM jobs").fetchall()
        texts[f"{role} audit"] = "\n".join("\t".join(map(str, row)) for row in audit)
        texts[f"{role} jobs"] = "\n".join("\t".join(map(str, row)) for row in jobs)
    return texts


def check_nothing_private(demo: Demo) -> None:
    ids, values, key_lines = secrets_of(demo)
    assert len(ids) > 300 and len(values) > 100 and key_lines
    for where, text in written_text(demo).items():
        assert "PRIVATE KEY" not in text, where
        assert not [line for line in key_lines if line in text], where
        words = set(re.findall(r"[+\w.-]+", text))
        assert not ids & words, f"{where}: customer IDs {sorted(ids & words)[:3]}"
        assert not values & words, f"{where}: feature values {sorted(values & words)[:3]}"  # whole tokens
        # Labels are 0/1 and only ever tied to a person by an ID or a row; neither may appear. Row numbers may
        # appear only in messages about input files, never in these logs of jobs and calls.
        assert "row " not in text.lower().replace("rows", ""), where


def test_a_demo_job_writes_no_ids_features_labels_or_keys_and_audits_every_call(demo: Demo) -> None:
    check_nothing_private(demo)
    with sqlite3.connect(demo.cluster.workdir / "state" / "bank" / "jobs.sqlite") as db:
        bank = db.execute("SELECT event, actor, outcome, count FROM audit WHERE actor != ''").fetchall()
    with sqlite3.connect(demo.cluster.workdir / "state" / "platform" / "jobs.sqlite") as db:
        platform = db.execute("SELECT event, actor, outcome, count FROM audit WHERE actor != ''").fetchall()
    operator = {actor for event, actor, *_ in bank if event == "score"}
    assert operator and not operator & {INSECURE_CALLER, LOCAL_CALLER, ""}  # the operator certificate's name
    assert ("score", *operator, "ok", 5) in bank
    assert [row for row in bank if row[0] == "batch score" and row[2] == "ok" and row[3] > 200]
    assert [row for row in bank if row[0] == "created" and row[1] in operator]  # both jobs, by whom
    scored = [row for row in platform if row[0] == "partial scores"]
    assert scored and all(row[1] not in (INSECURE_CALLER, LOCAL_CALLER) and row[2] == "ok" for row in scored)
    assert {row[0] for row in platform} >= {"created", "partial scores"}  # sessions record the bank's name


def test_hostile_messages_are_refused_and_a_normal_job_runs_after(demo: Demo) -> None:
    result = fuzz_cluster(demo.cluster, demo.files.bank, demo.files.tags, demo.align, demo.model, 300, seed=3,
                          train_after=False, per_step=8)
    assert result["sent"] == 300 and result["refused"] == 300, result["problems"]
    assert result["crashes"] == result["hangs"] == result["accepted"] == result["unclear"] == 0
    assert result["hooked_sessions"] == {"psi": "finished", "train": "finished"}
    assert result["normal_job_after"] and result["internal_errors_logged"] == 0
    assert {"in session: ciphertext: ciphertext N, not invertible", "in session: replayed step",
            "wrong-version handshake", "oversized message"} <= set(result["by_category"])
    check_nothing_private(demo)  # the fuzzer's own PSI used the bank's IDs: still none written
