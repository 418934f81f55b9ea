"""What `bank-node` prints for people: tables (rich; a tag name is never cut), progress lines, one-line errors.

Tables fold a cell that does not fit a terminal onto the next line instead of cutting it; when the output is
not a terminal (a pipe, a file, a test) they are as wide as their contents need.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from party_bank.scores import Scores, served_model
from party_common.progress import duration
from protocols.uncertainty import format_interval, format_metric


def render(table: Table, *, out: TextIO | None = None) -> str:
    """``table`` as text: the terminal's width on a terminal, unlimited otherwise."""
    out = out or sys.stdout
    tty = bool(getattr(out, "isatty", lambda: False)())
    buffer = io.StringIO()
    console = Console(file=buffer, width=None if tty else 100_000, force_terminal=False, no_color=True,
                      highlight=False, soft_wrap=False)
    console.print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


class PlainTable(Table):
    """A rich table whose cells are plain text: ``[...]`` in a job's error or a name is shown, not read as markup."""

    def add_row(self, *cells: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().add_row(*(Text(c) if isinstance(c, str) else c for c in cells), **kwargs)


def table(*headers: str) -> Table:
    t = PlainTable(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for h in headers:
        t.add_column(h, overflow="fold")
    return t


def _auc(x: Any) -> str:
    return format_metric(x, missing="n/a")


def headline(job: Mapping[str, Any]) -> str:
    """One metric that says how a job went: the joint test AUC (and uplift) of a train job, the intersection
    of an align job, the reason of a failure."""
    if job.get("error"):
        return str(job["error"]).splitlines()[0]
    result = job.get("result") or {}
    if job.get("kind") == "align" and "intersection_size" in result:
        return f"{result['intersection_size']:,} shared customers ({result.get('mode', '?')})"
    tags = ((result.get("summary") or {}).get("tags")) or {}
    aucs = [s["auc"]["joint"] for s in tags.values() if s.get("auc", {}).get("joint") is not None]
    uplifts = [s["uplift"] for s in tags.values() if s.get("uplift") is not None]
    if not aucs:
        return job.get("progress") or ""
    what = "AUC" if len(tags) == 1 else f"mean AUC over {len(tags)} tags"
    up = f" ({format_metric(sum(uplifts) / len(uplifts), signed=True)} vs bank-only)" if uplifts else ""
    return f"{what} {format_metric(sum(aucs) / len(aucs))}{up}"


def job_tags(job: Mapping[str, Any]) -> str:
    tags = (job.get("params") or {}).get("tags") or (job.get("result") or {}).get("tags") or []
    return ", ".join(tags) or "-"


def jobs_table(jobs: Sequence[Mapping[str, Any]], config: str | None = None) -> str:
    """`bank-node jobs`: newest first, with name, duration, tags and the headline metric."""
    if not jobs:
        return f"no jobs on this node yet: start with `bank-node align {config_flag(config)}`"
    t = table("JOB", "NAME", "KIND", "STATUS", "DURATION", "TAGS", "RESULT", "CREATED (UTC)")
    for j in jobs:
        t.add_row(j["job_id"], j.get("name") or "-", j["kind"], j["status"], duration(j.get("elapsed_s") or 0.0),
                  job_tags(j), headline(j), (j.get("created_at") or "")[:19].replace("T", " "))
    return render(t)


def summary_table(result: Mapping[str, Any]) -> str:
    """A train job's results per tag, from the summary it stored: AUC joint / bank-only / uplift with their
    intervals, the test positives, and the warnings under the table."""
    summary = result.get("summary") or {}
    tags: Mapping[str, Any] = summary.get("tags") or {}
    level = int(round(100 * summary.get("confidence", 0.95)))
    t = table("TAG", "AUC JOINT", f"{level}% CI", "AUC BANK-ONLY", f"{level}% CI", "UPLIFT", f"{level}% CI",
              "TEST POSITIVES", "SERVED")
    for tag, s in tags.items():
        iv = s.get("intervals") or {}
        uplift = s.get("uplift")
        t.add_row(tag, _auc(s["auc"].get("joint")), format_interval((iv.get("joint") or {}).get("auc")),
                  _auc(s["auc"].get("bank_only")), format_interval((iv.get("bank_only") or {}).get("auc")),
                  format_metric(uplift, signed=True, missing="n/a"), format_interval(iv.get("uplift"), signed=True),
                  f"{s.get('positives', '?')} of {s.get('n', '?')}", served_model(result.get("metrics"), tag))
    lines = [render(t)]
    alone = [tag for tag in tags if served_model(result.get("metrics"), tag) == "bank-only"]
    if alone:
        lines.append(f"  SERVED bank-only: {', '.join(alone)} scored by the bank's own model (the joint model did "
                     "not beat it on validation): no platform call when scoring them")
    for tag, s in tags.items():
        lines += [f"  ! {tag}: {w['message']}" for w in s.get("warnings") or []]
    if not summary.get("has_predictions", True):
        lines.append("  (point estimates only: this report holds no test predictions)")
    return "\n".join(lines)


def memory_text(result: Mapping[str, Any]) -> str:
    """The node's peak memory while a job ran (its summary's ``memory``; empty for jobs from before it)."""
    m = result.get("memory") or {}
    if "node_peak_mb" not in m:
        return ""
    workers = f", workers {m['workers_peak_mb']:,.0f} MB" if m.get("workers_peak_mb") else ""
    return f"peak memory {m['node_peak_mb']:,.0f} MB{workers}"


def config_flag(config: str | None) -> str:
    """``--config PATH`` for a command to paste (quoted for a shell when it needs it); ``--config ...`` without."""
    return f"--config {shlex.quote(config)}" if config else "--config ..."


def train_done(job: Mapping[str, Any], config: str | None = None) -> str:
    """What `train` prints when the job ends: which model, on which alignment, how long, then the table."""
    result = job.get("result") or {}
    name = f" '{job['name']}'" if job.get("name") else ""
    head = (f"model {job['job_id']}{name}: trained on alignment {result.get('alignment_job_id', '?')} "
            f"({result.get('rows', '?')} shared customers) in {duration(job.get('elapsed_s') or 0.0)}"
            + (f"; {memory_text(result)}" if memory_text(result) else ""))
    dropped = ((result.get("data") or {}).get("bank") or {}).get("dropped_columns") or []
    if dropped:  # said where the data scientist looks, not only in the node's log
        head += (f"\ndropped column(s) of the bank's file: {', '.join(d['column'] for d in dropped)} "
                 f"({dropped[0]['why']})")
    if (result.get("resumed") or {}).get("text"):  # the node stopped while it ran: from its checkpoint on
        head += f"\n{result['resumed']['text']} (checkpoint): the same model an uninterrupted run makes"
    flag = config_flag(config)
    tail = (f"report: bank-node report {flag} {job['job_id']} --out report.html\n"
            f"score:  bank-node score {flag} --model {job['job_id']} --ids ID,ID")
    return "\n".join([head, "", summary_table(result), "", tail])


def scores_table(ids: Sequence[str], scores: Scores) -> str:
    """`bank-node score`: one row per ID with its status; unknown customers keep their row."""
    t = table("ID", "STATUS", *(f"p({tag})" for tag in scores.tags))
    for i, cid in enumerate(ids):
        cells = ["-" if math.isnan(p) else f"{p:.4f}" for p in scores.probabilities[i]]
        status = scores.status[i] if i < len(scores.status) else ("ok" if scores.platform_known[i] else "?")
        t.add_row(cid, status, *cells)
    return render(t)


def seconds_between(start: str, end: str) -> float:
    """Seconds from one ISO 8601 time to another (0 when either does not parse)."""
    try:
        return max(0.0, (dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds())
    except ValueError:
        return 0.0


def event_line(event: Mapping[str, str]) -> str:
    """One line of a job's history (`bank-node logs`)."""
    at = event["at"][:19].replace("T", " ")
    detail = event.get("detail") or ""
    if event["event"] == "progress":
        return f"{at}  {detail}"
    return f"{at}  {event['event']}" + (f": {detail}" if detail else "")


def follow_line(job: Mapping[str, Any]) -> str:
    """The live line of `wait` / `train --follow`: elapsed time and the stage in plain words."""
    return f"[{duration(job.get('elapsed_s') or 0.0)}] {job['status']}: {job.get('progress') or 'waiting to start'}"


ROUTINE = ("score",)  # one audit row per online Score call naming the model: counted, not listed


def events_text(events: Iterable[Mapping[str, str]], error: str = "") -> str:
    """A job's history for `bank-node logs`; the model's score calls as one count at the end; ``error`` (the
    job's failure reason) on the line that says it failed, when the event itself does not carry it."""
    events = list(events)
    lines = [event_line(e) if not (error and e["event"] in ("failed", "cancelled") and not e.get("detail"))
             else event_line({**e, "detail": error.splitlines()[0]})
             for e in events if e["event"] not in ROUTINE]
    routine = [e for e in events if e["event"] in ROUTINE]
    if routine:
        lines.append(f"(and {len(routine)} online score call(s) with this model, the last at "
                     f"{routine[-1]['at'][:19].replace('T', ' ')})")
    return "\n".join(lines) if lines else "no events"


def cancelled_line(job: Mapping[str, Any]) -> str:
    """What `bank-node cancel` prints: the job's status after the cancel (and its progress if still stopping)."""
    still = f" ({job['progress']})" if job["status"] != "cancelled" and job.get("progress") else ""
    return f"job {job['job_id']}: {job['status']}{still}"


__all__ = ["cancelled_line", "duration", "memory_text", "event_line", "seconds_between", "events_text", "follow_line", "headline", "jobs_table", "render", "scores_table",
           "summary_table", "train_done"]

