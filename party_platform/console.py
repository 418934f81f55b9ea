"""`platform-node console`: the platform operator's browser console, on 127.0.0.1 of the node's own host.

It works on the node's state directory exactly as `platform-node jobs | approve | audit | policy | models |
revoke` do (``party_platform.admin``): the platform node has no control API, and its operator's authority is
the host account that may read (and write) the state directory. Pages: the approval queue (approve, refuse),
jobs with their resource use, the audit log with filters, the disclosure budget used per customer and
model, the model halves, and the policy. Approving or refusing is ``admin.approve``, audited with the
operator's name as the CLI's is. ``party_common.console`` has the shared parts (token, host check, frame).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from party_common.config import NodeConfig
from party_common.console import make_app, page, problem
from party_common.policy import AWAITING_APPROVAL
from party_common.storage import NodeStores
from party_common.storage.jobs import STATUSES, JobRecord
from party_platform import admin
from party_platform.disclosure import RELEASE_EVENT, ledger_usage
from party_platform.policy import SCORE_EVENT
from protocols.errors import FedProfileError

NAV = (("/queue", "Approval queue"), ("/jobs", "Jobs"), ("/audit", "Audit"), ("/budget", "Disclosure budget"),
       ("/models", "Models"), ("/policy", "Policy"))
AUDIT_SHOWN = 500  # newest audit rows on the page unless ?limit= asks otherwise
Form = Mapping[str, Any]


def seconds(record: JobRecord) -> float | None:
    """How long a job ran, by the node's clock (None while it runs or when a time does not parse)."""
    try:
        return (dt.datetime.fromisoformat(record.finished_at) - dt.datetime.fromisoformat(record.created_at)
                ).total_seconds() if record.finished_at else None
    except ValueError:
        return None


def budget(stores: NodeStores, state_dir: Path) -> dict[str, Any]:
    """The disclosure budget as the ledger holds it (per customer, across alignments: party_platform/disclosure.py)
    and the node's own "projection released" audit rows (which job released what, to how many customers)."""
    usage = ledger_usage(state_dir)
    releases = [{"job": e.job_id or "-", "detail": e.detail, "at": e.at}
                for e in reversed(stores.jobs.audit_events(event=RELEASE_EVENT))]
    return {"customers": [{"held": held, "customers": n} for held, n in usage["customers"]],
            "projections": [{"job": job, "tag": tag, "epoch": "-" if epoch is None else epoch + 1, "customers": n}
                            for job, tag, epoch, n in usage["projections"]],
            "releases": releases}


class PlatformConsole:
    def __init__(self, config: NodeConfig, stores: NodeStores | None, *, refusal: str = "") -> None:
        self.config = config
        self.stores_ = stores
        self.refusal = refusal  # the state directory could not be opened: why, on every page

    @property
    def stores(self) -> NodeStores:
        assert self.stores_ is not None
        return self.stores_

    def endpoint(self, handler: Callable[[Request, Form], Response]) -> Callable[[Request], Any]:
        async def run(request: Request) -> Response:
            form: dict[str, Any] = {}
            if request.method == "POST":
                async with request.form() as data:
                    form = {k: v for k, v in data.multi_items() if isinstance(v, str)}
            return await run_in_threadpool(self.guarded, handler, request, form)
        return run

    def guarded(self, handler: Callable[[Request, Form], Response], request: Request, form: Form) -> Response:
        if self.stores_ is None:
            return problem(request, "Cannot open the node's state", self.refusal,
                           hint="The platform's console works on the node's state directory, as platform-node "
                                "does: run it as the account that runs the node, on the node's host.")
        try:
            return handler(request, form)
        except PermissionError as err:
            return problem(request, "Refused", f"the state directory refused this account: {err}")
        except (FedProfileError, ValueError) as err:
            return problem(request, "Not done", str(err), status=400)

    def queue(self, request: Request, form: Form) -> Response:
        waiting = self.stores.jobs.list(-1, status=AWAITING_APPROVAL)
        rows = [{"job": r, "by": admin.requested_by(self.stores, r.job_id)} for r in waiting]
        return page(request, "platform/queue.html", {
            "title": "Approval queue", "rows": rows, "approval": self.config.policy.approval,
            "flash": request.query_params.get("done", ""), "refresh_ms": 3000})

    def decide(self, request: Request, form: Form) -> Response:
        job_id, action = request.path_params["job_id"], request.path_params["action"]
        if action not in ("approve", "refuse"):
            return problem(request, "Not found", f"no action {action!r}", status=404)
        done = admin.approve(self.stores, job_id, refuse=action == "refuse")
        return RedirectResponse("/queue?" + urlencode({"done": done}), status_code=303)

    def jobs(self, request: Request, form: Form) -> Response:
        status = request.query_params.get("status") or None
        if status is not None and status not in STATUSES:
            raise ValueError(f"status {status!r}: one of {', '.join(STATUSES)}")
        records = self.stores.jobs.list(int(request.query_params.get("limit", 200)), status=status)
        rows = []
        for r in records:
            memory = r.result.get("memory") or {}
            rows.append({"job": r, "by": admin.requested_by(self.stores, r.job_id), "seconds": seconds(r),
                         "node_mb": memory.get("node_peak_mb"), "workers_mb": memory.get("workers_peak_mb"),
                         "outcome": admin.outcome_text(r)})
        return page(request, "platform/jobs.html", {"title": "Jobs", "rows": rows, "status": status or "",
                                                    "statuses": STATUSES})

    def audit(self, request: Request, form: Form) -> Response:
        q = request.query_params
        job, event, actor = q.get("job") or None, q.get("event") or None, (q.get("actor") or "").strip()
        outcome = (q.get("outcome") or "").strip()
        limit = int(q.get("limit") or AUDIT_SHOWN)
        events = self.stores.jobs.audit_events(job, event=event)
        if actor:
            events = [e for e in events if actor.lower() in e.actor.lower()]
        if outcome:
            events = [e for e in events if e.outcome.startswith(outcome)]
        shown = list(reversed(events[-limit:])) if limit > 0 else []
        names = sorted({e.event for e in self.stores.jobs.audit_events()})
        return page(request, "platform/audit.html", {
            "title": "Audit log", "events": shown, "total": len(events),
            "filters": {"job": job or "", "event": event or "", "actor": actor, "outcome": outcome, "limit": limit},
            "event_names": names})

    def budget(self, request: Request, form: Form) -> Response:
        limit = self.config.max_released_projections
        models = admin.models_table(self.stores, self.config.policy.allowed_models)
        return page(request, "platform/budget.html", {
            "title": "Disclosure budget", **budget(self.stores, self.config.state_dir), "limit": limit,
            "models": models.as_dicts()})

    def models(self, request: Request, form: Form) -> Response:
        table = admin.models_table(self.stores, self.config.policy.allowed_models)
        calls = len(self.stores.jobs.audit_events(event=SCORE_EVENT))
        return page(request, "platform/models.html", {"title": "Models", "table": table, "calls": calls,
                                                      "flash": request.query_params.get("done", "")})

    def revoke(self, request: Request, form: Form) -> Response:
        done = admin.revoke(self.stores, request.path_params["model"])
        return RedirectResponse("/models?" + urlencode({"done": done}), status_code=303)

    def policy(self, request: Request, form: Form) -> Response:
        described = {**self.config.policy.describe(),
                     "max_released_projections": self.config.max_released_projections}
        return page(request, "platform/policy.html", {"title": "Policy", "policy": described,
                                                      "config": str(self.config.source)})

    def routes(self) -> list[Route]:
        def route(path: str, handler: Callable[[Request, Form], Response], *methods: str) -> Route:
            return Route(path, self.endpoint(handler), methods=list(methods or ("GET",)))
        return [Route("/", lambda r: RedirectResponse("/queue", status_code=303)),
                route("/queue", self.queue), route("/jobs/{job_id}/{action}", self.decide, "POST"),
                route("/jobs", self.jobs), route("/audit", self.audit), route("/budget", self.budget),
                route("/models", self.models), route("/models/{model}/revoke", self.revoke, "POST"),
                route("/policy", self.policy)]


def build_app(config: NodeConfig, *, token: str) -> Starlette:
    stores: NodeStores | None = None
    refusal = ""
    try:
        if not config.state_dir.is_dir():
            raise FileNotFoundError(f"{config.state_dir}: no state directory (has the node run yet?)")
        stores = admin.open_stores(config)
    except (OSError, FedProfileError) as err:
        refusal = str(err)
    console = PlatformConsole(config, stores, refusal=refusal)
    return make_app(console.routes(), token=token,
                    site={"org": "Platform", "node_name": config.name, "who": admin.operator_name(), "nav": NAV})


__all__ = ["PlatformConsole", "budget", "build_app"]
