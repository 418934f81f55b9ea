"""The platform's ``[policy]`` read again when its config file changes, with no restart and no file read per call.

The node's file watcher (``party_common.watch.POLLER``) looks at the config file's stamp every
``CHECK_EVERY_S``; on a change it loads the whole file with the same checks as at start
(``party_common.config.load_config``). A valid new ``[policy]`` replaces the node's at once: every later
session and partial-score call is checked against it (the quotas' running counts carry over). Two knobs shape
what the node built at start and need a restart: ``allowed_feature_columns`` (the data the node serves) and
``max_concurrent_jobs`` (its session registry); a change to either applies nothing and says so in the log. A
file that no longer loads changes nothing either: the error is logged and the policy in force stays. Each
applied change is one audit row ("policy changed", the keys that changed; never a value).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from party_common.config import ConfigError, NodeConfig, load_config
from party_common.watch import POLLER, is_recent, stamp_of

log = logging.getLogger(__name__)

POLICY_EVENT = "policy changed"  # audit row of a [policy] read again from the config file
NEEDS_RESTART = ("allowed_feature_columns", "max_concurrent_jobs")


def changed_keys(old: NodeConfig, new: NodeConfig) -> list[str]:
    """The ``[policy]`` keys whose values differ between two configs."""
    before = {**old.policy.describe(), "max_released_projections": old.max_released_projections}
    after = {**new.policy.describe(), "max_released_projections": new.max_released_projections}
    return sorted(k for k in after if before.get(k) != after[k])


class PolicyFile:
    """Watches ``config.source`` for the node whose policy ``apply(new_config)`` replaces."""

    def __init__(self, config: NodeConfig, apply: Callable[[NodeConfig, list[str]], None]) -> None:
        self.path = Path(config.source)
        self._config = config
        self._apply = apply
        self._stamp: Any = stamp_of(self.path)
        # What the file itself said at start: a change is the file's own, against this, never a difference
        # between the file and a config a program adjusted in code before starting the node (a benchmark's
        # budget, say), which a first read of a just-written file would otherwise undo.
        try:
            self._from_file = load_config(self.path, expected_role="platform", require_tls=config.tls is not None)
        except ConfigError:
            self._from_file = config
        POLLER.add(self)

    def poll(self) -> None:
        stamp = stamp_of(self.path)
        if stamp == self._stamp and not is_recent(stamp):
            return
        self._stamp = stamp
        try:
            new = load_config(self.path, expected_role="platform", require_tls=self._config.tls is not None)
        except ConfigError as err:
            log.error("%s changed but does not load (%s): the policy in force stays", self.path, err)
            return
        keys = changed_keys(self._from_file, new)
        if not keys:
            return
        self._from_file = new
        restart = [k for k in keys if k in NEEDS_RESTART]
        if restart:
            log.warning("%s: [policy] %s changed: that needs a restart of the node; nothing of the change "
                        "applies until then", self.path, ", ".join(restart))
            return
        self._config = dataclasses.replace(self._config, policy=new.policy,
                                           max_released_projections=new.max_released_projections)
        self._apply(self._config, keys)
        log.info("%s: [policy] read again: %s changed", self.path, ", ".join(keys))


__all__ = ["NEEDS_RESTART", "POLICY_EVENT", "PolicyFile", "changed_keys"]
