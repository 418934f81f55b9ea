"""A training job's report as one self-contained HTML page for the bank's data scientists (plots inline).

The page is a header and a list of sections, :data:`SECTIONS`: each a function of the stored report and its
summary (``protocols.uncertainty.summarise``) that returns its HTML, or "" to leave itself out. Another
module adds its own section with one line, ``add_section(its_renderer, before=privacy_section)``
(or as a decorator); every number goes through ``format_metric``, the rounding the console uses too.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Mapping
from html import escape
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from party_bank.report_binning import binning_section
from party_bank.report_screen import screen_section
from party_bank.report_stability import stability_section
from party_bank.scores import served_model
from protocols.uncertainty import calibration_bins, format_interval, format_metric, gains_by_decile, summarise

PROTOCOL_DOC = "docs/protocol.md#what-each-party-learns"
MODEL_NAMES = {"joint": "joint (bank + platform)", "bank_only": "bank-only"}
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3} td.tag,th.tag{text-align:left;white-space:nowrap}
.warnings{background:#fff4e5;border:2px solid #e69500;padding:.6em 1em;margin:1em 0}
.warnings li{margin:.2em 0} .ok{background:#eef8ee;border:1px solid #7a7;padding:.6em 1em}
.meta td{text-align:left} .note{color:#555} img{max-width:100%}
"""


def _f(x: float | None, fmt: str | None = None) -> str:
    """A metric (:func:`format_metric`, as the console), or a count/number in ``fmt``."""
    if fmt is None:
        return format_metric(x)
    return "-" if x is None else fmt.format(x)


def uplift_text(s: Mapping[str, Any]) -> str:
    """A tag's uplift with its interval in words (this page and the console's report page)."""
    ci = s["intervals"].get("uplift")
    if s["uplift"] is None:
        return "not available"
    return f"{format_metric(s['uplift'], signed=True)} AUC" + (
        f" (95% interval {format_metric(ci[0], signed=True)} to {format_metric(ci[1], signed=True)})" if ci else "")


def _cell(tag: str, key: str, text: str) -> str:
    return f'<td data-tag="{escape(tag)}" data-key="{key}">{escape(text)}</td>'


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def privacy_statement(report: Mapping[str, Any]) -> dict[str, list[str]]:
    """What each party learned in this job and which privacy settings were on, in plain words."""
    lp = report.get("label_privacy") or {}
    enc = report.get("encoding") or {}
    disclosure = report.get("scoring_disclosure") or {}
    mode = lp.get("mode")
    if mode == "dp":
        label_guard = (f"Label differential privacy was on: the platform's view of the training is noisy enough that "
                       f"each customer's labels are protected at epsilon = {_f(lp.get('epsilon'), '{:.3g}')}, "
                       f"delta = {_f(lp.get('delta'), '{:.3g}')} (smaller epsilon = stronger protection).")
    elif mode == "floor":
        label_guard = (f"Label protection by batch size: every training batch held at least {lp.get('floor')} "
                       "labelled customers per tag, a measured margin against known label-recovery attacks "
                       "(no formal differential-privacy guarantee).")
    elif mode == "unprotected":
        label_guard = "WARNING: labels were NOT protected in this job (a test-only setting)."
    else:
        label_guard = "The report does not say how labels were protected (an older job)."
    mask = enc.get("label_mask")
    if mask == "hidden from the platform":
        mask_line = "The platform did not learn which customers have a known value for each tag."
    elif mask:
        mask_line = ("The platform learned, for each training customer and tag, whether the bank knows the tag's "
                     "value (not the value itself), and how many labelled customers each batch held.")
    else:
        mask_line = "The report does not say whether the label mask was sent to the platform."
    projections = disclosure.get("projections_per_customer")
    bank = [
        "Its own part of the model (the weights on its own features) and the model's quality figures below.",
        "For evaluation, per tag, only a shuffled set of (joint score, label) pairs: never the platform's "
        "contribution to any single customer's score, nor any platform data.",
        ("When it scores a shared customer with this model, one number per tag from the platform "
         f"({projections} per customer), counted against the platform's disclosure budget."
         if projections is not None else "When it scores a shared customer, one number per tag from the platform."),
        "Which customers both parties share (from the matching step), and how many features the platform has.",
    ]
    platform = [
        "Which customers both parties share (from the matching step), never any other bank customer.",
        "Masked and encrypted values only: never a label, a bank feature, the bank's scores or these metrics.",
        mask_line,
        "The split and the batches the bank chose, the training settings, and each tag's best epoch.",
        "When the bank scores: which shared customers are scored, when and with which model.",
    ]
    settings = [label_guard, mask_line,
                "Evaluation: " + (enc.get("evaluation") or "not recorded") + " (the platform cannot read it)."]
    return {"bank": bank, "platform": platform, "settings": settings}


def header_table(report: Mapping[str, Any], job: Mapping[str, Any]) -> str:
    split = report.get("split") or {}
    rows = [("Job", job.get("job_id") or report.get("job_id") or "-"),
            ("Alignment", report.get("alignment_job_id") or "-"),
            ("Aligned customers (rows)", report.get("rows", "-")),
            ("Split (train / validation / test)",
             f"{split.get('train', '-')} / {split.get('validation', '-')} / {split.get('test', '-')}"),
            ("Tags", ", ".join(report.get("tags") or (report.get("metrics") or {}).keys())),
            ("Epochs run", report.get("epochs_run", "-")), ("Protocol", report.get("protocol", "-")),
            ("Submitted", job.get("created_at") or "-"), ("Finished", job.get("finished_at") or "-")]
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in rows)
    return f'<table class="meta">{body}</table>'


def warnings_box(summary: Mapping[str, Any]) -> str:
    items = [f"<li><b>{escape(tag)}</b>: {escape(w['message'])}</li>"
             for tag, s in summary["tags"].items() for w in s["warnings"]]
    if not items:
        return '<div class="ok">No warnings: every tag has enough positives and a measurable uplift.</div>'
    return f'<div class="warnings"><b>Warnings</b><ul>{"".join(items)}</ul></div>'


def summary_table(report: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    heads = ["tag", "test rows", "positives", "AUC joint", "95% interval", "AUC bank-only", "95% interval",
             "uplift (AUC)", "95% interval", "KS joint", "95% interval", "log-loss joint", "log-loss bank-only",
             "ECE joint", "ECE bank-only", "best epoch", "served model"]
    out = ["<table><tr>" + "".join(f'<th class="{"tag" if h == "tag" else ""}">{h}</th>' for h in heads) + "</tr>"]
    for tag, s in summary["tags"].items():
        iv = s["intervals"]
        metrics = (report.get("metrics") or {}).get(tag) or {}
        best = metrics.get("best_epoch")
        cells = [f'<td class="tag">{escape(tag)}</td>', _cell(tag, "n", _f(s["n"], "{}")),
                 _cell(tag, "positives", _f(s["positives"], "{}")),
                 _cell(tag, "auc-joint", _f(s["auc"]["joint"])),
                 _cell(tag, "auc-joint-ci", format_interval((iv.get("joint") or {}).get("auc"))),
                 _cell(tag, "auc-bank_only", _f(s["auc"]["bank_only"])),
                 _cell(tag, "auc-bank_only-ci", format_interval((iv.get("bank_only") or {}).get("auc"))),
                 _cell(tag, "uplift", format_metric(s["uplift"], signed=True)),
                 _cell(tag, "uplift-ci", format_interval(iv.get("uplift"), signed=True)),
                 _cell(tag, "ks-joint", _f(s["ks"]["joint"])),
                 _cell(tag, "ks-joint-ci", format_interval((iv.get("joint") or {}).get("ks"))),
                 _cell(tag, "logloss-joint", _f(_logloss(metrics, "joint"))),
                 _cell(tag, "logloss-bank_only", _f(_logloss(metrics, "bank_only"))),
                 _cell(tag, "ece-joint", _f(s["ece"].get("joint"))),
                 _cell(tag, "ece-bank_only", _f(s["ece"].get("bank_only"))),
                 _cell(tag, "best_epoch", _f(best, "{}")),
                 _cell(tag, "served", served_model(report.get("metrics"), tag))]
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


def _logloss(metrics: Mapping[str, Any], model: str) -> float | None:
    """The test log-loss of the probabilities as served (calibrated; the raw sigmoid's for an older job)."""
    m = metrics.get(model) or {}
    value = m.get("logloss_calibrated", m.get("logloss"))
    return None if value is None else float(value)


def tag_figure_png(report: Mapping[str, Any], tag: str) -> bytes | None:
    """A tag's four plots (ROC, lift and gains, calibration, validation AUC per epoch) as one PNG; None when
    the report holds neither test predictions nor a validation history for it."""
    preds = (report.get("test_predictions") or {}).get(tag) or {}
    history = [(h["epoch"], (h.get("validation_auc") or {}).get(tag)) for h in report.get("history") or []]
    history = [(e, a) for e, a in history if a is not None]
    models = [m for m in ("joint", "bank_only") if len((preds.get(m) or {}).get("p") or ())]
    if not models and not history:
        return None
    fig = Figure(figsize=(11, 8.6), dpi=72)
    axes = fig.subplots(2, 2)
    (roc, gains), (cal, hist) = axes
    roc.plot([0, 1], [0, 1], ls=":", c="grey")
    cal.plot([0, 1], [0, 1], ls=":", c="grey", label="perfect calibration")
    width = 0.4
    for i, m in enumerate(models):
        p, y = np.asarray(preds[m]["p"], float), np.asarray(preds[m]["y"], float)
        if y.min() != y.max():
            fpr, tpr, _ = roc_curve(y, p)
            roc.plot(fpr, tpr, label=MODEL_NAMES[m])
        deciles = gains_by_decile(p, y)
        x = np.array([d["decile"] for d in deciles], float)
        gains.bar(x + (i - 0.5) * width, [d["lift"] for d in deciles], width=width, alpha=0.6,
                  label=f"lift, {MODEL_NAMES[m]}")
        bins = calibration_bins(p, y)
        cal.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], marker="o", label=MODEL_NAMES[m])
    if models:
        twin = gains.twinx()
        for m, c in zip(models, ("C0", "C1"), strict=False):
            d = gains_by_decile(np.asarray(preds[m]["p"], float), np.asarray(preds[m]["y"], float))
            twin.plot([r["decile"] for r in d], [r["cumulative_gain"] for r in d], marker=".", color=c,
                      label=f"cumulative gain, {MODEL_NAMES[m]}")
        twin.set_ylim(0, 1.05)
        twin.set_ylabel("share of all positives captured")
        gains.axhline(1.0, ls=":", c="grey")
        gains.set_xticks([r["decile"] for r in d])
    else:
        for ax in (roc, gains, cal):
            ax.text(0.5, 0.5, "no test predictions in this report", ha="center", va="center")
    roc.set(title="ROC on the test rows", xlabel="false positive rate", ylabel="true positive rate")
    gains.set(title="Lift (bars) and cumulative gain (lines) by score decile", xlabel="decile (1 = highest scores)",
              ylabel="lift over the average response")
    cal.set(title="Calibration: calibrated probabilities, as served",
            xlabel="mean predicted probability, calibrated (10 equal-mass bins)", ylabel="observed rate")
    if history:
        hist.plot([e for e, _ in history], [a for _, a in history], marker="o", label="joint, validation")
        hist.set_xticks([e for e, _ in history])
    else:
        hist.text(0.5, 0.5, "no validation history", ha="center", va="center")
    hist.set(title="Validation AUC per epoch", xlabel="epoch", ylabel="AUC")
    for ax in (roc, cal, hist):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
    if models:
        handles, labels = gains.get_legend_handles_labels()
        more, more_labels = twin.get_legend_handles_labels()
        # under the axes, not over the bars (the top deciles' bars are the ones worth reading)
        gains.legend(handles + more, labels + more_labels, loc="upper center", bbox_to_anchor=(0.5, -0.16),
                     ncol=2, fontsize=7, frameon=False)
    fig.suptitle(tag)
    fig.tight_layout()
    return _png(fig)


def _tag_section(report: Mapping[str, Any], tag: str, s: Mapping[str, Any]) -> str:
    parts = [f"<h3>{escape(tag)}</h3>"]
    served = served_model(report.get("metrics"), tag)
    parts.append(f"<p>Test rows with a known label: {_f(s['n'], '{}')}, of which positive: "
                 f"{_f(s['positives'], '{}')}. Uplift of the joint model over the bank's own model: "
                 f"<b>{escape(uplift_text(s))}</b>. Scored by the <b>{escape(served)}</b> model.</p>")
    parts.extend(f'<p class="warnings">{escape(w["message"])}</p>' for w in s["warnings"])
    png = tag_figure_png(report, tag)
    if png:
        src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        parts.append(f'<img alt="plots for {escape(tag)}" src="{src}">')
    return "".join(parts)


def intervals_note(summary: Mapping[str, Any]) -> str:
    """How the results table's numbers were computed (under the table)."""
    return (f'<p class="note">AUC and KS on the held-out test rows. Intervals: {int(summary["confidence"] * 100)}% '
            f'percentile bootstrap, {summary["resamples"]} resamples (seed {summary["seed"]}), joint and bank-only '
            f'resampled independently. Uplift = joint AUC minus bank-only AUC. ECE (expected calibration error): '
            f'{escape(summary["ece_method"])}. A tag needs at least {summary["min_positives"]} positive test '
            "customers for its numbers to be acted on.</p>")


def _rows(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in rows)
    return f'<table class="meta">{body}</table>'


def _number(value: Any) -> str:
    if value is None:
        return "automatic"
    return f"{value:g}" if isinstance(value, float) else str(value)


def parameters_rows(report: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The training parameters people ask about first, as the job ran them."""
    p = report.get("params") or {}
    lp = report.get("label_privacy") or {}
    batching = report.get("batching") or {}
    mode = lp.get("mode")
    label_dp = ("on: epsilon " + format_metric(lp.get("epsilon")) + f", delta {_number(lp.get('delta'))}"
                if mode == "dp" else {"floor": f"off (batch floor of {lp.get('floor')} labelled rows per tag)",
                                      "unprotected": "off, no floor (test-only)"}.get(mode, f"{p.get('label_dp', '-')}"))
    return [("Learning rate", _number(p.get("learning_rate"))), ("L2 penalty", _number(p.get("l2"))),
            ("Optimiser", p.get("optimizer", "-")),
            ("Epochs (run / planned)", f"{report.get('epochs_run', '-')} / {_number(p.get('epochs'))}"),
            ("Batch size", _number(batching.get("batch_size", p.get("batch_size")))),
            ("Paillier key size (bits)", _number(p.get("key_bits"))), ("Label privacy", label_dp),
            ("Seed (split and batches)", _number(p.get("seed"))),
            ("Shares (test / validation)", f"{_number(p.get('test_share'))} / {_number(p.get('validation_share'))}"),
            ("Served model rule", p.get("serve", "-"))]


def inputs_html(report: Mapping[str, Any]) -> str:
    """What went in: files, features per party, dropped columns and why, label coverage per tag ("" for a job
    from before they were recorded)."""
    data = report.get("data") or {}
    parts = []
    if data:
        bank, platform = data.get("bank") or {}, data.get("platform") or {}
        dropped = bank.get("dropped_columns") or []
        parts.append(_rows([
            ("Bank file", bank.get("file", "-")),
            (f"Bank features ({bank.get('feature_count', '-')})", ", ".join(bank.get("features") or []) or "-"),
            ("Dropped columns", "; ".join(f"{d['column']}: {d['why']}" for d in dropped) or "none"),
            (f"Platform features ({_number(platform.get('feature_count'))})", platform.get("features", "-")),
        ]))
        labels = data.get("labels") or {}
        head = ("tag", "labelled rows", "share labelled", "positives", "labelled training rows", "served model")
        body = "".join(
            f'<tr><td class="tag">{escape(tag)}</td>' + _cell(tag, "labelled", f"{c['labelled']:,} of {c['rows']:,}")
            + _cell(tag, "labelled-share", f"{c['labelled'] / max(1, c['rows']):.0%}")
            + _cell(tag, "label-positives", f"{c['positives']:,}") + _cell(tag, "labelled-train", f"{c['labelled_train']:,}")
            + _cell(tag, "served-model", served_model(report.get("metrics"), tag)) + "</tr>"
            for tag, c in labels.items())
        parts.append('<table id="labels"><tr>' + "".join(f"<th>{h}</th>" for h in head) + f"</tr>{body}</table>")
    return "".join(parts)


def data_section(report: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    """What went in (:func:`inputs_html`) and the parameters as the job ran them."""
    inputs = inputs_html(report) or '<p class="note">This report predates the record of its inputs: parameters only.</p>'
    return "<h2>Data and parameters</h2>" + inputs + "<h3>Parameters</h3>" + _rows(parameters_rows(report))


def results_section(report: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    note = "" if summary["has_predictions"] else (
        '<p class="note">This report holds no test predictions (an older job): point estimates only.</p>')
    return "".join(["<h2>Results per tag</h2>", note, summary_table(report, summary), intervals_note(summary)])


def privacy_section(report: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    privacy = privacy_statement(report)

    def ul(items: list[str]) -> str:
        return "<ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>"

    return "".join([
        "<h2>What each party learned in this job</h2>",
        "<h3>Privacy settings</h3>", ul(privacy["settings"]),
        "<h3>The bank (us)</h3>", ul(privacy["bank"]),
        "<h3>The platform</h3>", ul(privacy["platform"]),
        f'<p class="note">Details and the tests behind each statement: <a href="{PROTOCOL_DOC}">docs/protocol.md, '
        "section \u201cWhat each party learns\u201d</a>.</p>"])


def per_tag_section(report: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    return "<h2>Per tag</h2>" + "".join(_tag_section(report, tag, s) for tag, s in summary["tags"].items())


Section = Callable[[Mapping[str, Any], Mapping[str, Any]], str]  # (report, summary) -> HTML, "" to leave out
SECTIONS: list[Section] = [results_section, data_section, privacy_section, per_tag_section]


def added_sections() -> list[Section]:
    """The sections other modules added (the console's report page shows them after its own)."""
    return [r for r in SECTIONS if r not in (results_section, data_section, privacy_section, per_tag_section)]


def add_section(renderer: Section, *, before: Section | None = None) -> Section:
    """Put ``renderer`` in the page: before ``before`` (one of :data:`SECTIONS`), else last. Returns it, so it
    serves as a decorator; adding one twice keeps one."""
    if renderer in SECTIONS:
        return renderer
    SECTIONS.insert(SECTIONS.index(before) if before in SECTIONS else len(SECTIONS), renderer)
    return renderer


add_section(binning_section, before=privacy_section)
add_section(screen_section, before=privacy_section)
add_section(stability_section)


def render(report: Mapping[str, Any], summary: Mapping[str, Any] | None = None, *,
           job: Mapping[str, Any] | None = None) -> str:
    """The HTML page of a training ``report``; ``summary`` is ``summarise(report)`` (computed if omitted),
    ``job`` the job record's fields (job_id, created_at, finished_at) for the header."""
    summary = summary if summary is not None else summarise(report)
    job = job or {}
    title = f"Training report {job.get('job_id') or report.get('job_id') or ''}".strip()
    body = [f"<h1>{escape(title)}</h1>", header_table(report, job), warnings_box(summary),
            *(section(report, summary) for section in SECTIONS)]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")


__all__ = ["SECTIONS", "Section", "add_section", "added_sections", "data_section", "inputs_html", "header_table", "intervals_note", "parameters_rows",
           "per_tag_section", "privacy_section", "privacy_statement", "render", "results_section", "summary_table",
           "tag_figure_png", "uplift_text", "warnings_box"]
