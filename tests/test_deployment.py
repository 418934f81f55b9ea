"""A two-node deployment as two organisations run it: separate state directories, the platform approving each
job by hand (`[policy] approval = "manual"`), every step through the real CLIs."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from party_bank.cli import main as bank_main
from party_platform.cli import main as platform_main
from simulations.cluster import LocalCluster
from tests.nodes_fixture import simulated_files


def test_manual_approval_is_explained_and_noticed_within_seconds(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    files = simulated_files(tmp_path / "data")
    cluster = LocalCluster(tmp_path / "deploy", bank_data=files.bank, bank_id_column="id",
                           bank_tag_columns=files.tags, platform_data=files.platform, platform_id_column="id",
                           workers=1)
    with cluster.platform_config.open("a") as toml:
        toml.write('\n[policy]\napproval = "manual"\n')
    bank_args = ["--config", str(cluster.bank_config), *cluster.operator_args]
    platform_args = ["--config", str(cluster.platform_config)]
    with cluster:
        assert (cluster.workdir / "state" / "bank") != (cluster.workdir / "state" / "platform")
        # preflight first: all set, and it says up front that every job will wait for the platform's operator
        assert bank_main(["preflight", *bank_args, "--platform-config", str(cluster.platform_config)]) == 0
        out = capsys.readouterr().out
        assert re.search(r"^platform policy +WARN +\[policy\] approval = \"manual\": every job waits", out, re.M), out
        assert "checks: 0 failed" in out
        assert bank_main(["align", *bank_args, "--detach"]) == 0
        job = capsys.readouterr().out.strip()
        deadline = time.monotonic() + 60
        while True:  # the bank's job waits, and says who must do what
            assert bank_main(["job", *bank_args, job]) == 0
            shown = capsys.readouterr().out
            if "awaiting approval" in shown and "platform-node approve" in shown:
                break
            assert time.monotonic() < deadline, shown
            time.sleep(0.5)
        assert f"waiting for the platform's operator to run `platform-node approve {job}`" in shown
        assert platform_main(["jobs", *platform_args, "--status", "awaiting approval"]) == 0
        assert job in capsys.readouterr().out
        assert platform_main(["approve", job, *platform_args]) == 0
        approved = time.monotonic()
        capsys.readouterr()
        assert bank_main(["wait", *bank_args, job]) == 0
        out = capsys.readouterr().out
        assert re.search(r"align job \S+ succeeded", out), out
        # the bank asked again within seconds of the approval (it asks every 3 s), and PSI on this data is quick
        assert time.monotonic() - approved < 30
        assert bank_main(["logs", *bank_args, job]) == 0
        assert "succeeded" in capsys.readouterr().out
    assert cluster.stop() == {"platform": 0, "bank": 0}
