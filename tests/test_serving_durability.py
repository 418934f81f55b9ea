"""The platform node killed (SIGKILL) under a load of Score calls: after its restart, every projection the bank
was answered is in the disclosure ledger, and every answered partial-score call has its audit row.

Both nodes are processes over mutual TLS (``simulations.cluster``); the ledger and the audit log are read from
the platform's state directory as its operator would. Group commit (``party_common.storage.group_commit``)
commits a call's charge and audit row before its answer leaves, so a kill at any moment loses none of them.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from party_bank.client import BankClient
from party_common.storage import MemoryJobStore
from party_common.storage.jobs import SqliteJobStore
from party_platform.disclosure import DisclosureLedger
from party_platform.policy import SCORE_EVENT
from simulations.cluster import LocalCluster
from simulations.generate import generate, write
from tests.nodes_fixture import FAST_TRAIN, SIMULATION

CLIENTS = 4
KILL_AFTER = 50  # answered calls before the kill: the load is well under way, most customers not scored yet


def score_until_refused(client: BankClient, model: str, customers: list[str], answered: list[str],
                        failed: list[BaseException], lock: threading.Lock) -> None:
    """One customer per call, each customer once (a first answer: a charge unless its evaluation paid it), until
    a call fails."""
    for customer in customers:
        try:
            scores = client.score(model, [customer])
        except grpc.RpcError as err:  # the platform died: the bank's call to it fails (UNAVAILABLE)
            with lock:
                failed.append(err)
            return
        assert scores.status == ["ok"] and bool(scores.platform_known[0]), (scores.status, scores.note)
        with lock:
            answered.append(customer)


@pytest.mark.timeout(120)
def test_every_answered_projection_is_in_the_ledger_after_a_kill(tmp_path: Path) -> None:
    data = generate(SIMULATION)
    paths = write(data, tmp_path / "data")
    shared = sorted(set(data.bank["id"]) & set(data.platform["id"]))
    with LocalCluster(tmp_path / "cluster", bank_data=paths["bank"], bank_id_column="id",
                      bank_tag_columns=list(data.tag_columns), platform_data=paths["platform"],
                      platform_id_column="id", workers=1) as cluster:
        setup = cluster.bank_client()
        setup.align()
        model = setup.train(train=FAST_TRAIN)["job_id"]
        order = [shared[i] for i in np.random.default_rng(0).permutation(len(shared))]
        answered: list[str] = []
        failed: list[BaseException] = []
        lock = threading.Lock()
        clients = [cluster.bank_client() for _ in range(CLIENTS)]
        threads = [threading.Thread(target=score_until_refused, args=(c, model, order[k::CLIENTS], answered,
                                                                        failed, lock)) for k, c in enumerate(clients)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(answered) < KILL_AFTER and time.monotonic() < deadline and any(t.is_alive() for t in threads):
            time.sleep(0.002)
        cluster.kill("platform")  # SIGKILL: no shutdown of any kind, calls in flight
        for t in threads:
            t.join(timeout=60)
        assert len(answered) >= KILL_AFTER and len(failed) == CLIENTS, (len(answered), failed[:1])
        assert len(answered) < len(shared)  # killed mid-load, not after it

        cluster.restart("platform")
        started = time.monotonic()
        while True:  # the restarted node answers again (the bank reconnects)
            try:
                setup.score(model, [answered[0]])
                break
            except grpc.RpcError:
                assert time.monotonic() - started < 30, cluster.log_tail("platform")
                time.sleep(0.1)

        state = cluster.workdir / "state" / "platform"
        ledger = DisclosureLedger(state, lambda: 1, MemoryJobStore())  # read-only use, beside the node
        tags = list(data.tag_columns)
        try:
            missing = [c for c in answered
                       if {p.tag for p in ledger.released_to(c) if p.job_id == model} != set(tags)]
        finally:
            ledger.close()
        assert missing == [], f"{len(missing)} of {len(answered)} answered customers lost their charge"
        # Every answered call's partial-score row is in the audit log too (one row per call, count = rows).
        jobs = SqliteJobStore(state / "jobs.sqlite", recover=False)
        rows = [e for e in jobs.audit_events(model, event=SCORE_EVENT) if e.outcome == "ok"]
        assert sum(e.count for e in rows) >= len(answered) + 1  # and the call after the restart

