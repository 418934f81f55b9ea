"""`bank-node console`: the bank's browser console, a local web server that calls its node's control API with
the operator's own certificate, exactly as `bank-node` does (``party_common.console`` has the shared parts).

Pages: jobs (live progress, validation AUC per epoch, time left, failure reason; submit, cancel, rerun), a
job's report (the HTML report's content, its figures drawn one at a time, the data and parameters that went
in), a comparison of trainings, models and aliases (and which model serves each tag), segments and their A/B
readouts, a score box, and the node's health with the platform's reachability. Every action is the control
call the CLI makes, so the node's gate and audit apply unchanged.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import grpc
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from party_bank import views
from party_bank.client import BankClient
from party_bank.console_views import (
    flat_params,
    params_text,
    progress_of,
    readout_rows,
    served_of,
    summary_of,
    validation_curve,
)
from party_bank.score_files import read_outcomes
from party_common.console import line_chart, make_app, number, page, problem
from party_common.grpc_errors import is_gate_refusal, rpc_error_line
from protocols.errors import FedProfileError

NAV = (("/jobs", "Jobs"), ("/compare", "Compare"), ("/models", "Models"), ("/segments", "Segments"),
       ("/score", "Score"), ("/health", "Health"))
ENDED = ("succeeded", "failed", "cancelled")
REFRESH_MS = 1500  # the live part of a page with a job in flight
JOBS_SHOWN = 200  # jobs on the list unless ?limit= asks for more (at most MAX_JOBS)
MAX_JOBS = 5000
class LRU:
    """A few finished reports' documents and figures: they never change once a job has ended."""

    def __init__(self, size: int) -> None:
        self.size, self.items, self.lock = size, OrderedDict[Any, Any](), threading.Lock()

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        value = make()
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return value


Form = Mapping[str, Any]  # a POST's fields (an upload is a starlette UploadFile, already read), {} for a GET


class Console:
    """The pages, over one BankClient (a gRPC channel is safe to share between the server's threads). Every
    page is a plain function of (request, form) run in a worker thread; :meth:`endpoint` reads the form and
    turns a refusal or an error into a page that says what went wrong and shows no data."""

    def __init__(self, client: BankClient | None, *, refusal: str = "", config_path: str = "",
                 id_column: str = "id") -> None:
        self.client = client
        self.refusal = refusal  # no client: why (no operator certificate, unreadable key), shown on every page
        self.config_path = config_path
        self.id_column = id_column  # of outcome files, as `bank-node segment-result` reads them
        self.documents = LRU(4)
        self.figures = LRU(64)
        self.figure_lock = threading.Lock()  # matplotlib's Agg canvas: one figure at a time

    @property
    def node(self) -> BankClient:
        assert self.client is not None
        return self.client

    def endpoint(self, handler: Callable[[Request, Form], Response]) -> Callable[[Request], Any]:
        async def run(request: Request) -> Response:
            form: dict[str, Any] = {}
            if request.method == "POST":
                async with request.form() as data:
                    for key, value in data.multi_items():
                        form[key] = (value.filename, await value.read()) if isinstance(value, UploadFile) else value
            return await run_in_threadpool(self.guarded, handler, request, form)
        return run

    def guarded(self, handler: Callable[[Request, Form], Response], request: Request, form: Form) -> Response:
        if self.client is None:
            return problem(request, "No operator certificate", self.refusal,
                           hint="The console calls the bank node with your own operator certificate, as bank-node "
                                "does; start it again with --cert/--key.")
        try:
            return handler(request, form)
        except grpc.RpcError as err:
            line = rpc_error_line(err, server="the bank node", address=self.node.address,
                                  own_cert=self.node.own_cert, name_key="[client] tls_name")
            code = err.code() if hasattr(err, "code") else None
            if is_gate_refusal(err) or code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED) \
                    or line.startswith("certificate refused"):
                return problem(request, "Refused by the bank node", line,
                               hint="The node serves only operator certificates of the bank's CA that have neither "
                                    "expired nor been revoked; ask the bank's CA for yours "
                                    "(fedprofile-certs operator NAME).")
            if code == grpc.StatusCode.NOT_FOUND:
                return problem(request, "Not found", line, status=404)
            if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                        grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.OUT_OF_RANGE):
                return problem(request, "The bank node refused the request", line, status=400)
            return problem(request, "The bank node did not answer", line, status=502)
        except (FedProfileError, ValueError) as err:
            return problem(request, "Not done", str(err), status=400)

    # ---- jobs ----

    def jobs(self, request: Request, form: Form) -> Response:
        try:
            limit = max(1, min(MAX_JOBS, int(request.query_params.get("limit", JOBS_SHOWN))))
        except ValueError:
            limit = JOBS_SHOWN
        jobs = self.node.jobs(limit, brief=True)
        rows = [{**j, "headline": views.headline(j), "tags": views.job_tags(j), "progress_of": progress_of(j)}
                for j in jobs]
        live = any(j["status"] not in ENDED for j in jobs)
        return page(request, "bank/jobs.html", {
            "title": "Jobs", "jobs": rows, "limit": limit, "more": len(jobs) == limit,
            "refresh_ms": REFRESH_MS if live else 0, "flash": request.query_params.get("done", "")})

    def submit(self, request: Request, form: Form) -> Response:
        kind = str(form.get("kind") or "train")
        name = str(form.get("name") or "").strip()
        params: dict[str, Any]
        if kind == "align":
            params = {"mode": str(form.get("mode") or "both")}
        else:
            extra = str(form.get("params") or "").strip()
            try:
                train = json.loads(extra) if extra else {}
            except json.JSONDecodeError as err:
                raise ValueError(f"parameters are not valid JSON: {err}") from None
            if not isinstance(train, dict):
                raise ValueError('parameters must be a JSON object, e.g. {"l2": 0.1}')
            for key, cast in (("epochs", int), ("learning_rate", float), ("seed", int), ("batch_size", int)):
                value = str(form.get(key) or "").strip()
                if value:
                    try:
                        train[key] = cast(value)
                    except ValueError:
                        raise ValueError(f"{key}: {value!r} is not a number") from None
            params = {"train": train}
            tags = [t.strip() for t in str(form.get("tags") or "").split(",") if t.strip()]
            if tags:
                params["tags"] = tags
            if str(form.get("alignment") or "").strip():
                params["alignment_job_id"] = str(form.get("alignment")).strip()
        return RedirectResponse(f"/jobs/{self.node.submit(kind, params, name)}", status_code=303)

    def job(self, request: Request, form: Form) -> Response:
        job_id = request.path_params["job_id"]
        job = self.node.job(job_id)
        events, _ = self.node.events(job_id)
        curve = validation_curve(job, events)
        chart = line_chart(sorted(curve.items()), title="Validation AUC per epoch (joint model)", xlabel="epoch",
                           ylabel="AUC") if job["kind"] == "train" else None
        shown = [e for e in events if e["event"] not in views.ROUTINE]
        return page(request, "bank/job.html", {
            "title": f"Job {job_id}", "job": job, "progress": progress_of(job), "chart": chart,
            "events": shown, "score_calls": len(events) - len(shown), "params": flat_params(job),
            "headline": views.headline(job) if job["finished_at"] else "", "memory": views.memory_text(job.get("result") or {}),
            "refresh_ms": 0 if job["finished_at"] else REFRESH_MS,
            "flash": request.query_params.get("done", "")})

    def cancel(self, request: Request, form: Form) -> Response:
        job = self.node.cancel(request.path_params["job_id"])
        return RedirectResponse(f"/jobs/{job['job_id']}?" + urlencode({"done": views.cancelled_line(job)}),
                                status_code=303)

    def rerun(self, request: Request, form: Form) -> Response:
        old = self.node.job(request.path_params["job_id"])
        params = dict(old["params"])
        if old["kind"] == "train" and form.get("latest_alignment"):
            params.pop("alignment_job_id", None)
        return RedirectResponse(f"/jobs/{self.node.submit(old['kind'], params, old['name'])}", status_code=303)

    # ---- a training's report ----

    def document(self, job_id: str) -> dict[str, Any]:
        return self.documents.get(job_id, lambda: self.node.report_document(job_id))

    def report(self, request: Request, form: Form) -> Response:
        from party_bank import report_html  # matplotlib loads with the first report, not at start

        job_id = request.path_params["job_id"]
        job = self.node.job(job_id)
        if job["kind"] != "train" or job["status"] != "succeeded":
            return problem(request, "No report", f"job {job_id} is a {job['status']} {job['kind']} job: only a "
                           "finished train job has a report", status=404)
        report = job["result"]  # all but the test rows' (score, label) pairs, which only the figures need
        summary = summary_of(job)
        served = served_of(job)
        tags = []
        for tag, s in summary["tags"].items():
            tags.append({"tag": tag, "s": s, "served": served.get(tag) or {}, "uplift": report_html.uplift_text(s)})
        split = report.get("split") or {}
        data = [("Alignment", report.get("alignment_job_id") or "-"),
                ("Aligned customers (rows)", report.get("rows", "-")),
                ("Split (train / validation / test)",
                 " / ".join(str(split.get(k, "-")) for k in ("train", "validation", "test"))),
                ("Split scheme", report.get("split_scheme", "-")),
                ("Tags", ", ".join(report.get("tags") or [])),
                ("Epochs run", report.get("epochs_run", "-")),
                ("Time online / ahead of time / total", " / ".join(
                    views.duration(float(report.get(k) or 0.0))
                    for k in ("seconds_online", "seconds_ahead_of_time", "seconds_total")))]
        curve = validation_curve(job, [])
        return page(request, "bank/report.html", {
            "title": f"Report {job_id}", "job": job, "data": data, "params": flat_params(job),
            "trained_with": report.get("params") or {},
            "warnings": Markup(report_html.warnings_box(summary)),
            "table": Markup(report_html.summary_table(report, summary)),
            "note": Markup(report_html.intervals_note(summary)) if summary.get("tags") else "",
            "inputs": Markup(report_html.inputs_html(report)),
            "sections": Markup("".join(section(report, summary) for section in report_html.added_sections())),
            "privacy": report_html.privacy_statement(report), "tags": tags,
            "chart": line_chart(sorted(curve.items()), title="Validation AUC per epoch (joint model)",
                                xlabel="epoch", ylabel="AUC"),
            "label_privacy": report.get("label_privacy") or {}, "encoding": report.get("encoding") or {}})

    def figure(self, request: Request, form: Form) -> Response:
        from party_bank import report_html

        job_id, tag = request.path_params["job_id"], request.path_params["tag"]

        def draw() -> bytes | None:
            report = self.document(job_id)
            if tag not in (report.get("metrics") or {}):
                return None
            with self.figure_lock:
                return report_html.tag_figure_png(report, tag)
        png = self.figures.get((job_id, tag), draw)
        if png is None:
            return Response(f"no figure for tag {tag!r} in job {job_id}", status_code=404, media_type="text/plain")
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    def report_page(self, request: Request, form: Form) -> Response:
        """The node's self-contained HTML report, as `bank-node report` writes it (to save or print)."""
        job_id = request.path_params["job_id"]
        return Response(self.node.report_html(job_id), media_type="text/html",
                        headers={"Content-Disposition": f'inline; filename="report-{job_id}.html"'})

    # ---- comparing trainings ----

    def compare(self, request: Request, form: Form) -> Response:
        chosen = list(dict.fromkeys(request.query_params.getlist("job")))
        trained = [j for j in self.node.jobs(200, brief=True) if j["kind"] == "train" and j["status"] == "succeeded"]
        context: dict[str, Any] = {"title": "Compare trainings", "jobs": [], "trained": trained, "chosen": chosen}
        if len(chosen) < 2:
            return page(request, "bank/compare.html", context)
        jobs = [self.node.job(j) for j in chosen]
        params = [flat_params(j) for j in jobs]
        keys = sorted(set().union(*params))
        differ = [(k, [params_text(p.get(k, "-")) for p in params]) for k in keys
                  if len({json.dumps(p.get(k), sort_keys=True) for p in params}) > 1]
        differing = {k for k, _ in differ}
        same = [(k, params_text(params[0].get(k))) for k in keys if k not in differing]
        summaries = [summary_of(j) for j in jobs]
        tags = list(dict.fromkeys(t for s in summaries for t in s["tags"]))
        rows = []
        for tag in tags:
            cells = []
            for j, s in zip(jobs, summaries, strict=True):
                t = s["tags"].get(tag)
                cells.append(None if t is None else {
                    "auc": (t.get("auc") or {}).get("joint"), "bank_only": (t.get("auc") or {}).get("bank_only"),
                    "uplift": t.get("uplift"), "ece": (t.get("ece") or {}).get("joint"),
                    "served": (served_of(j).get(tag) or {}).get("model") or "-"})
            rows.append({"tag": tag, "cells": cells})
        charts = [line_chart([(j["name"] or j["job_id"], validation_curve(j, []).get(tag, [])) for j in jobs],
                             title=f"{tag}: validation AUC per epoch", xlabel="epoch", ylabel="AUC") for tag in tags]
        context.update(jobs=jobs, rows=rows, differ=differ, same=same, charts=charts)
        return page(request, "bank/compare.html", context)

    # ---- models ----

    def models(self, request: Request, form: Form) -> Response:
        return page(request, "bank/models.html", {"title": "Models", "models": self.node.models(),
                                                  "flash": request.query_params.get("done", "")})

    def model_action(self, request: Request, form: Form) -> Response:
        action = request.path_params["action"]
        alias, model = str(form.get("alias") or "").strip(), str(form.get("model") or "").strip()
        if action == "alias":
            r = self.node.set_alias(alias, model)
            moved = f" (moved from {r['previous']})" if r["previous"] not in (None, r["model"]) else ""
            done = f"alias {r['alias']} -> {r['model']}{moved}"
        elif action == "unalias":
            r = self.node.remove_alias(alias)
            done = f"alias {r['alias']} removed (it pointed at {r['model']})"
        elif action == "retire":
            r = self.node.retire_model(model)
            done = (f"model {r['model']} was already retired" if r["already_retired"] else
                    f"model {r['model']} retired on both nodes")
        else:
            return problem(request, "Not found", f"no model action {action!r}", status=404)
        return RedirectResponse("/models?" + urlencode({"done": done}), status_code=303)

    # ---- segments ----

    def segments(self, request: Request, form: Form) -> Response:
        segments = sorted(self.node.segments(), key=lambda r: r.get("created_at", ""), reverse=True)
        models = [m for m in self.node.models() if m["status"] == "active"]
        readouts = {r["name"]: r["readout"] for r in segments if r.get("readout")}  # kept by the node
        return page(request, "bank/segments.html", {"title": "Segments", "segments": segments, "models": models,
                                                    "readouts": readouts})

    def create_segment(self, request: Request, form: Form) -> Response:
        def share(key: str) -> float | None:
            raw = str(form.get(key) or "").strip()
            if not raw:
                return None
            value = float(raw.rstrip("%"))
            return value / 100 if raw.endswith("%") or value > 1 else value

        rule, value = str(form.get("rule") or "top"), str(form.get("value") or "").strip()
        seed = str(form.get("seed") or "").strip()
        record, _path = self.node.segment(
            str(form.get("model") or ""), str(form.get("tag") or ""), name=str(form.get("name") or "").strip(),
            control_share=share("control") or 0.0, top_share=share("value") if rule == "top" else None,
            min_score=float(value) if rule == "min_score" and value else None,
            seed=int(seed) if seed else None, all_customers=bool(form.get("all_customers")))
        return RedirectResponse(f"/segments/{record['name']}", status_code=303)

    def segment(self, request: Request, form: Form) -> Response:
        name = request.path_params["name"]
        record = self.node.get_segment(name)
        readout = record.get("readout")  # the last A/B readout, kept with the segment on the node
        return page(request, "bank/segment.html", {"title": f"Segment {name}", "record": record,
                                                   "readout": readout, "id_column": self.id_column,
                                                   "readout_rows": list(readout_rows(readout)) if readout else []})

    def segment_result(self, request: Request, form: Form) -> Response:
        import tempfile

        name = request.path_params["name"]
        upload = form.get("outcomes")
        column = str(form.get("outcome_column") or "outcome").strip()
        if not isinstance(upload, tuple) or not upload[0]:
            raise ValueError("choose a CSV or Parquet file with the customer ID column and a 0/1 outcome column")
        filename, content = upload
        suffix = Path(filename).suffix.lower()
        if suffix not in (".csv", ".parquet"):
            raise ValueError(f"{filename}: give a .csv or .parquet file")
        with tempfile.TemporaryDirectory() as tmp:  # read on this machine, as the CLI reads --outcomes
            path = Path(tmp) / Path(filename).name
            path.write_bytes(content)
            ids, outcomes = read_outcomes(path, self.id_column, column)
        self.node.segment_result(name, ids, outcomes, source=Path(filename).name)
        return RedirectResponse(f"/segments/{name}#readout", status_code=303)

    # ---- scoring, health ----

    def score(self, request: Request, form: Form) -> Response:
        models = [m for m in self.node.models() if m["status"] == "active"]
        context: dict[str, Any] = {"title": "Score customers", "models": models, "scores": None, "ids": "",
                                   "model": "latest", "fallback": False}
        if request.method == "POST":
            ids = [i for i in re.split(r"[,\s]+", str(form.get("ids") or "")) if i]
            model = str(form.get("model") or "latest")
            fallback = bool(form.get("bank_only_fallback"))
            context.update(ids=", ".join(ids), model=model, fallback=fallback)
            if not ids:
                raise ValueError("give at least one customer ID")
            scores = self.node.score(model, ids, bank_only_fallback=fallback)
            context["scores"] = {
                "tags": scores.tags, "note": scores.note,
                "budget": (scores.projections_released, scores.projections_limit),
                "rows": [(cid, scores.status[i], [None if p != p else p for p in scores.probabilities[i].tolist()])
                         for i, cid in enumerate(ids)]}
        return page(request, "bank/score.html", context)

    def health(self, request: Request, form: Form) -> Response:
        return page(request, "bank/health.html", {"title": "Health", "status": self.node.node_status(),
                                                  "address": self.node.address, "config": self.config_path})

    def routes(self) -> list[Route]:
        def route(path: str, handler: Callable[[Request, Form], Response], *methods: str) -> Route:
            return Route(path, self.endpoint(handler), methods=list(methods or ("GET",)))
        return [
            Route("/", lambda r: RedirectResponse("/jobs", status_code=303)),
            route("/jobs", self.jobs), route("/jobs", self.submit, "POST"),
            route("/jobs/{job_id}", self.job), route("/jobs/{job_id}/cancel", self.cancel, "POST"),
            route("/jobs/{job_id}/rerun", self.rerun, "POST"), route("/jobs/{job_id}/report", self.report),
            route("/jobs/{job_id}/report.html", self.report_page),
            route("/jobs/{job_id}/figures/{tag}.png", self.figure),
            route("/compare", self.compare), route("/models", self.models),
            route("/models/{action}", self.model_action, "POST"),
            route("/segments", self.segments), route("/segments", self.create_segment, "POST"),
            route("/segments/{name}", self.segment), route("/segments/{name}/result", self.segment_result, "POST"),
            route("/score", self.score, "GET", "POST"), route("/health", self.health),
        ]


def build_app(client: BankClient | None, *, token: str, node_name: str, who: str, refusal: str = "",
              config_path: str = "", id_column: str = "id") -> Starlette:
    console = Console(client, refusal=refusal, config_path=config_path, id_column=id_column)
    # The report's figures need matplotlib and scikit-learn (a second to import): load them while nobody waits.
    threading.Thread(target=importlib.import_module, args=("party_bank.report_html",), daemon=True).start()
    return make_app(console.routes(), token=token,
                    site={"org": "Bank", "node_name": node_name, "who": who, "nav": NAV},
                    on_shutdown=client.close if client else None)





def run_console(args: Any, client_for: Callable[[Any, Any], BankClient]) -> int:
    """`bank-node console`: the browser console on 127.0.0.1, calling the node as the CLI does (``client_for``:
    the CLI's client from the node's config and the command's arguments)."""
    from cryptography import x509

    from party_common.auth import identity_of
    from party_common.config import ConfigError, load_config
    from party_common.console import new_token, serve_console

    config = load_config(args.config, expected_role="bank", require_tls=not args.insecure_dev)
    client: BankClient | None = None
    refusal = who = ""
    try:
        client = client_for(config, args)
        who = (identity_of(x509.load_pem_x509_certificate(client.own_cert)).describe() if client.own_cert
               else "--insecure-dev: no certificate")
    except (ConfigError, OSError, ValueError) as err:  # no certificate: the console refuses every page, says why
        refusal = str(err)
        print(f"bank-node console: {refusal}", file=sys.stderr)
    app = build_app(client, token=new_token(), node_name=config.name, who=who, refusal=refusal,
                    config_path=str(Path(args.config).resolve()), id_column=config.data.id_column)
    return serve_console(app, port=args.port, program="bank-node")

__all__ = ["Console", "build_app", "flat_params", "number", "progress_of", "run_console", "validation_curve"]
