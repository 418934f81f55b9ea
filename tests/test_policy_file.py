"""The platform's [policy] read again when its config file changes (party_platform/policy_file.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from party_common.config import load_config
from party_common.policy import PolicyRefused
from party_common.storage import memory_node_stores
from party_common.storage.files import atomic_write
from party_common.watch import POLLER
from party_platform.node import PlatformNode
from party_platform.policy_file import POLICY_EVENT
from tests.nodes_fixture import simulated_files


def write_config(path: Path, data: Path, state: Path, policy: str) -> None:
    atomic_write(path, f"""[node]
name = "platform"
role = "platform"
listen = "127.0.0.1:7443"
state_dir = "{state}"

[data]
path = "{data}"
id_column = "id"

[policy]
{policy}
""".encode())


def test_a_changed_policy_applies_without_a_restart_and_one_needing_it_applies_nothing(tmp_path: Path) -> None:
    files = simulated_files(tmp_path / "data")
    path = tmp_path / "platform.toml"
    write_config(path, files.platform, tmp_path / "state", "max_released_projections = 4")
    node = PlatformNode(load_config(path, expected_role="platform", require_tls=False), stores=memory_node_stores())
    assert node.projections_limit == 4 and node.policy.config.allowed_models is None
    node.policy.check_scoring("train-00000001", [], 1)  # any model may be scored

    write_config(path, files.platform, tmp_path / "state",
                 'max_released_projections = 6\nallowed_models = ["train-00000002"]')
    POLLER.poll_all()  # what the node's poller does every CHECK_EVERY_S
    assert node.projections_limit == 6
    with pytest.raises(PolicyRefused, match=r"\[policy\] allowed_models"):
        node.policy.check_scoring("train-00000001", [], 1)
    (event,) = node.stores.jobs.audit_events(event=POLICY_EVENT)
    assert event.detail == "allowed_models, max_released_projections" and event.actor == "(config file)"

    # The data the node serves was restricted at start: a change of its columns waits for a restart, and so
    # does everything else changed with it.
    columns = node.data.feature_names[:2]
    write_config(path, files.platform, tmp_path / "state",
                 f'max_released_projections = 8\nallowed_feature_columns = {columns!r}'.replace("'", '"'))
    POLLER.poll_all()
    assert node.projections_limit == 6 and node.policy.config.allowed_feature_columns is None

    atomic_write(path, b"[node\nbroken")  # a file that no longer loads changes nothing
    POLLER.poll_all()
    assert node.projections_limit == 6 and len(node.stores.jobs.audit_events(event=POLICY_EVENT)) == 1


def test_a_config_adjusted_in_code_keeps_its_values_until_the_file_itself_changes(tmp_path: Path) -> None:
    """A program that starts the node on its file's config with a knob changed in code (a benchmark's budget)
    keeps that knob: the first reads of the just-written file compare the file with itself, not with the code."""
    import dataclasses

    files = simulated_files(tmp_path / "data")
    path = tmp_path / "platform.toml"
    write_config(path, files.platform, tmp_path / "state", "max_released_projections = 4")
    config = dataclasses.replace(load_config(path, expected_role="platform", require_tls=False),
                                 max_released_projections=1)
    node = PlatformNode(config, stores=memory_node_stores())
    POLLER.poll_all()  # the file's stamp is recent: it is read again, and found unchanged
    assert node.projections_limit == 1
    write_config(path, files.platform, tmp_path / "state", "max_released_projections = 5")
    POLLER.poll_all()
    assert node.projections_limit == 5
