"""The platform operator's view and controls over its own state directory (``platform-node jobs | models |
approve JOB | revoke MODEL | audit | policy | scorecard MODEL``).

The commands open the node's stores beside the running node (``recover=False``: they never touch a running
job) and change only what the node reads on every call: a job's status (approval), the registry entry of a
model (revocation). Every change is an audit row with the operator's name. Nothing here prints customer IDs,
features or labels: the stores hold none outside alignments, which these commands never read.
"""

from __future__ import annotations

import getpass
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from party_common.config import NodeConfig
from party_common.policy import AWAITING_APPROVAL, REFUSED_BY_OPERATOR
from party_common.storage import NodeStores, open_node_stores
from party_common.storage.jobs import JobRecord, now
from party_platform.node import RETIRE_EVENT, REVOKE_EVENT
from party_platform.policy import SCORE_EVENT
from protocols.errors import NotFound, UserError
from protocols.models import load_platform_half
from protocols.scorecard import Scaling, platform_table


def operator_name() -> str:
    """Who runs the command, as the audit log records it (the platform's operator works on its own host)."""
    try:
        return f"{getpass.getuser()} (platform-node)"
    except Exception:  # no user name in this environment
        return "(unknown user) (platform-node)"


def open_stores(config: NodeConfig) -> NodeStores:
    return open_node_stores(config.state_dir, recover=False)


@dataclass(frozen=True)
class Table:
    """Rows of text for the command to print (as a rich table) or emit (as JSON)."""

    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]

    def as_dicts(self) -> list[dict[str, str]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def requested_by(stores: NodeStores, job_id: str) -> str:
    for event in stores.jobs.audit_events(job_id, event="created"):
        return event.actor
    return ""


def outcome_text(record: JobRecord) -> str:
    if record.status == "failed":
        return record.error
    if record.status == AWAITING_APPROVAL:
        return f"platform-node approve {record.job_id}"
    result = record.result
    memory = result.get("memory") or {}
    peak = f"; peak {memory['node_peak_mb']:,.0f} MB" if "node_peak_mb" in memory else ""
    if "intersection_size" in result:
        return f"intersection {result['intersection_size']} ({result.get('mode', '?')}){peak}"
    if "tags" in result:
        return "tags " + ", ".join(map(str, result["tags"])) + peak
    return record.progress


def jobs_table(stores: NodeStores, *, limit: int = 50, status: str | None = None) -> Table:
    records = stores.jobs.list(limit, status=status)
    rows = [(r.job_id, r.kind, r.name, r.status, requested_by(stores, r.job_id), r.created_at, r.finished_at,
             outcome_text(r)) for r in records]
    return Table("Jobs the platform took part in (newest first)",
                 ("job", "kind", "name", "status", "requested by", "created", "finished", "result / error"), rows)


def scorecard(stores: NodeStores, model_job_id: str, tags: Sequence[str], *, pdo: float) -> dict[str, Any]:
    """The platform's half of a binned model as points per bin per tag (``protocols.scorecard``): its own
    features' points only; the base points, and the bank's features, are the bank's to export."""
    if not stores.models.exists(model_job_id):
        raise NotFound(f"no model {model_job_id} on this node (see `platform-node models`)")
    model = load_platform_half(stores.models.load(model_job_id), where=f"model {model_job_id}")
    return platform_table(model, tags, Scaling.of(pdo=pdo))


def model_status(stores: NodeStores, model_job_id: str, allowed: Sequence[str] | None) -> str:
    if stores.registry.exists(model_job_id):
        entry = stores.registry.load(model_job_id)
        return f"{entry.get('status', 'retired')} {entry.get('retired_at', '')}".strip()
    if allowed is not None and model_job_id not in allowed:
        return "not in [policy] allowed_models"
    return "active"


def models_table(stores: NodeStores, allowed_models: Sequence[str] | None) -> Table:
    rows = []
    for model_job_id in stores.models.list():
        doc = stores.models.load(model_job_id)
        calls = stores.jobs.audit_events(model_job_id, event=SCORE_EVENT)
        answered = [e for e in calls if e.outcome == "ok"]
        rows.append((model_job_id, str(doc.get("alignment_job_id", "")), ", ".join(doc.get("tags", [])),
                     model_status(stores, model_job_id, allowed_models), str(len(answered)),
                     str(len(calls) - len(answered)), str(sum(e.count for e in answered)),
                     answered[-1].at if answered else ""))
    return Table("The platform's model halves", ("model", "alignment", "tags", "status", "score calls",
                                                  "refused calls", "rows answered", "last scored"), rows)


def audit_table(stores: NodeStores, *, job_id: str | None = None, event: str | None = None,
                limit: int = 100) -> Table:
    events = stores.jobs.audit_events(job_id, event=event)[-limit:] if limit > 0 else []
    rows = [(e.at, e.job_id or "", e.event, e.actor, str(e.count) if e.count else "", e.outcome, e.detail)
            for e in events]
    return Table("Audit log (oldest first)", ("at", "job", "event", "by", "count", "outcome", "detail"), rows)


def approve(stores: NodeStores, job_id: str, *, refuse: bool = False) -> str:
    """Approve (or refuse) a job waiting for approval; the bank's next attempt runs (or fails) it."""
    actor = operator_name()
    if not refuse:
        stores.jobs.approve(job_id, actor)
        return f"job {job_id} approved: it runs when the bank node asks again (within a minute)"
    record = stores.jobs.get(job_id)
    if record.status != AWAITING_APPROVAL:
        raise UserError(f"job {job_id} is {record.status}, not {AWAITING_APPROVAL}")
    stores.jobs.fail(job_id, REFUSED_BY_OPERATOR)
    stores.jobs.audit(job_id, "refused", "", actor=actor, outcome="ok")
    return f"job {job_id} refused: the bank's job fails with \"{REFUSED_BY_OPERATOR}\""


def revoke(stores: NodeStores, model_job_id: str) -> str:
    """Revoke our half of a model: the node answers no more partial scores for it (read on every call)."""
    if not stores.models.exists(model_job_id):
        raise NotFound(f"no model {model_job_id} on this platform node (see `platform-node models`)")
    if stores.registry.exists(model_job_id):
        entry: dict[str, Any] = stores.registry.load(model_job_id)
        return f"model {model_job_id} is already {entry.get('status', 'retired')} ({entry.get('retired_at', '')})"
    actor = operator_name()
    entry = {"model": model_job_id, "status": "revoked", "retired_at": now(), "by": actor, "had_model_half": True}
    stores.registry.save(model_job_id, entry, overwrite=True)
    stores.jobs.audit(model_job_id, REVOKE_EVENT, "by the platform's operator", actor=actor, outcome="ok")
    return f"model {model_job_id} revoked: the platform answers no more partial scores for it"


__all__ = ["REFUSED_BY_OPERATOR", "RETIRE_EVENT", "Table", "approve", "audit_table", "jobs_table", "model_status",
           "models_table", "open_stores", "operator_name", "outcome_text", "requested_by", "revoke"]
