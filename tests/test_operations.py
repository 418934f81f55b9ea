"""Issue 25, "no surprises for the people who run it": the real CLI against real node processes.

One cluster (two node processes over mutual TLS, one alignment, one small training job) serves every test
here; each test drives `bank-node` / `platform-node` as an operator would and reads what they print.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulations.cluster import LocalCluster, free_port
from tests.nodes_fixture import FAST_TRAIN, SimulatedFiles, simulated_files


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> SimulatedFiles:
    return simulated_files(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def cluster(files: SimulatedFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("cluster"), bank_data=files.bank, bank_id_column="id",
                      bank_tag_columns=files.tags, platform_data=files.platform, platform_id_column="id",
                      workers=1) as running:
        yield running


def node_cli(role: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``bank-node ARGS`` or ``platform-node ARGS`` in a process of its own, as typed in a shell."""
    return subprocess.run([sys.executable, "-m", f"party_{role}.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


# ---- config, one process per state directory, a taken port ----


def test_a_second_serve_on_the_same_state_directory_is_refused_naming_the_pid(cluster: LocalCluster) -> None:
    for role, config in (("bank", cluster.bank_config), ("platform", cluster.platform_config)):
        second = node_cli(role, "serve", "--config", str(config), timeout=60)
        assert second.returncode == 2, second.stderr
        pid = cluster.pids()[role]
        assert f"is in use: PID {pid} already serves this state directory as the {role} node" in second.stderr
    cluster.bank_client().wait_ready(timeout_s=5.0)  # the first ones still serve


def test_a_taken_port_is_refused_clearly(cluster: LocalCluster, tmp_path: Path) -> None:
    moved = tmp_path / "platform.toml"
    moved.write_text(cluster.platform_config.read_text().replace('state_dir = "state/platform"',
                                                                 f'state_dir = "{tmp_path / "other"}"'))
    second = node_cli("platform", "serve", "--config", str(moved), timeout=60)
    assert second.returncode == 2
    assert f"cannot listen on 127.0.0.1:{cluster.platform_port}: port {cluster.platform_port} is taken by " \
           "another process" in second.stderr, second.stderr


def test_a_misspelled_key_is_refused_with_the_right_spelling(cluster: LocalCluster, tmp_path: Path) -> None:
    bank = tmp_path / "bank.toml"
    bank.write_text(cluster.bank_config.read_text().replace("tag_columns =", "tag_colums =")
                    .replace('state_dir = "state/bank"', f'state_dir = "{tmp_path / "state"}"'))
    done = node_cli("bank", "serve", "--config", str(bank), timeout=60)
    assert done.returncode == 2
    assert re.search(r"\[data\]: unknown key 'tag_colums'; did you mean 'tag_columns'\? \(valid keys: .*fill_missing",
                     done.stderr), done.stderr
    bank.write_text(bank.read_text().replace("tag_colums =", "# tag_columns ="))
    done = node_cli("bank", "serve", "--config", str(bank), timeout=60)
    assert done.returncode == 2 and "the bank node needs at least one tag: add 'tag_columns'" in done.stderr
    assert not (tmp_path / "state" / "jobs.sqlite").exists()
