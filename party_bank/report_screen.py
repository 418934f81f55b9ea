"""The screen in reports: a screen job's own page (the IV table per tag, each bin's rows, event rate and WOE),
and, in a training report, the section naming the screen selection it trained on and the labels' budget that
screen spent (its randomised response adds to the training's label privacy)."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

PROTOCOL_DOC = "docs/protocol.md#screen-federated-woe-and-iv-for-every-tag-protocolsscreen-job-kind-screen"


def _privacy(privacy: Mapping[str, Any]) -> str:
    if privacy.get("mode") != "randomised_response":
        return ("Label protection: OFF (no randomised response): a deviating platform could read labels through "
                "the bins this bank decrypted.")
    return (f"Label protection: randomised response before encryption, epsilon {privacy.get('epsilon_per_tag'):g} "
            f"per customer and tag ({privacy.get('epsilon'):g} per customer over the screen's tags; a label is kept "
            f"with probability {privacy.get('keep_probability')}), counts debiased. It adds to the labels' "
            "budget of every other job that releases them.")


def screen_section(report: Mapping[str, Any], summary: Mapping[str, Any] | None = None) -> str:
    """HTML for a training report's ``screen_selection``; empty for a job trained without one."""
    chosen = report.get("screen_selection")
    if not isinstance(chosen, Mapping):
        return ""
    rule = f"IV >= {chosen['min_iv']:g}" if chosen.get("min_iv") is not None else f"top {chosen.get('top_k')} per tag"
    rows = [("Screen job", chosen.get("job_id", "-")), ("Rule (per tag and party)", rule),
            ("Bank features kept", ", ".join(chosen.get("bank_features") or []) or "all"),
            ("Platform features kept", ", ".join(chosen.get("platform_features") or []) or "all")]
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in rows)
    privacy = chosen.get("label_privacy") or {}
    return (f'<h2>Features selected by a screen</h2><table class="meta">{body}</table>'
            f"<p>{escape(_privacy(privacy))}</p>" if privacy else
            f'<h2>Features selected by a screen</h2><table class="meta">{body}</table>')


def render_page(report: Mapping[str, Any], job: Mapping[str, Any], css: str = "") -> str:
    """A screen job's report as one HTML page: per tag, the features by IV with their bins."""
    title = f"Screen {job.get('job_id', '')}"
    parts = [f"<h1>{escape(title)}</h1>",
             f"<p>{report.get('rows', '?')} shared customers; {report.get('platform_features', 0)} platform and "
             f"{report.get('bank_features', 0)} bank features; HE scheme {escape(str(report.get('he_scheme')))}, "
             f"{report.get('key_bits')}-bit keys.</p>",
             f"<p>{escape(_privacy(report.get('label_privacy') or {}))}</p>",
             f'<p class="note">What each party learns: <a href="{PROTOCOL_DOC}">docs/protocol.md, "Screen"</a>.</p>']
    table = report.get("table") or []
    for tag in report.get("tags") or sorted({r["tag"] for r in table}):
        parts.append(f"<h2>Tag {escape(tag)}</h2><table><tr><th>feature</th><th>party</th><th>IV</th><th>band</th>"
                     "<th>bins: rows / event rate / WOE</th></tr>")
        for r in sorted((r for r in table if r["tag"] == tag), key=lambda r: -r["iv"]):
            bins = "; ".join(f"{escape(' + '.join(b['bins']))}: {b['rows']} / "
                             f"{'-' if b['event_rate'] is None else format(b['event_rate'], '.3f')} / {b['woe']:+.2f}"
                             for b in r["bins"])
            parts.append(f"<tr><td>{escape(r['feature'])}</td><td>{escape(r['party'])}</td><td>{r['iv']:.4f}</td>"
                         f"<td>{escape(r['band'])}</td><td style=\"text-align:left\">{bins}</td></tr>")
        parts.append("</table>")
    for tag, why in (report.get("skipped_tags") or {}).items():
        parts.append(f"<p>Tag {escape(tag)}: {escape(why)}</p>")
    for note in report.get("notes") or []:
        parts.append(f"<p class=\"note\">{escape(note)}</p>")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{css}</style></head><body>{''.join(parts)}</body></html>\n")


__all__ = ["render_page", "screen_section"]
