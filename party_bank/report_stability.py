"""The training report's stability section: the model's latest population stability answers (a batch-score
file, the recent online scores), per tag's score and per feature of both parties, with their bands.

``party_bank.report_html`` calls :func:`stability_section` on the stored report, to which
``BankNode.report_document`` adds the model's latest answers (``party_common.stability.latest_answers``)
under :data:`REPORT_KEY`.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from protocols.stability import ALERT, BANDS, WARN

REPORT_KEY = "stability"
TOP_FEATURES = 15  # the largest indices shown per answer; the CLI and the JSON have them all
BAND_CLASS = {BANDS[0]: "ok", BANDS[1]: "warnings", BANDS[2]: "warnings"}


def _answer_html(answer: Mapping[str, Any]) -> str:
    where = f"batch-score file {answer.get('batch')}" if answer["source"] == "batch" else "recent online scores"
    rows = [f"<tr><td>score</td><td>{escape(r['tag'])}</td><td>{r['psi']:.4f}</td>"
            f"<td class=\"{BAND_CLASS[r['band']]}\">{escape(r['band'])}</td></tr>" for r in answer["scores"]]
    rows += [f"<tr><td>{escape(r['party'])} feature</td><td>{escape(r['feature'])}</td><td>{r['psi']:.4f}</td>"
             f"<td class=\"{BAND_CLASS[r['band']]}\">{escape(r['band'])}</td></tr>"
             for r in answer["features"][:TOP_FEATURES]]
    flagged = [r for r in answer["scores"] + answer["features"] if r["band"] != BANDS[0]]
    head = (f"<h3>{escape(where)} ({escape(str(answer.get('at', '')))})</h3>"
            + (f'<p class="warnings">{len(flagged)} index(es) above {WARN}: see the rows marked below.</p>'
               if flagged else '<p class="ok">Every index is below the warning threshold.</p>'))
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in answer.get("notes", []))
    return (head + "<table><tr><th>what</th><th>name</th><th>PSI</th><th>band</th></tr>" + "".join(rows)
            + "</table>" + notes)


def stability_section(report: Mapping[str, Any], summary: Mapping[str, Any] | None = None) -> str:
    """The section's HTML, or nothing when no stability answer was asked for the model yet."""
    answers = report.get(REPORT_KEY) or {}
    if not answers:
        return ""
    return ("<h2>Population stability</h2>"
            f'<p class="note">Population stability index against the training population: below {WARN} stable, '
            f"{WARN} to {ALERT} a moderate shift, above {ALERT} a significant shift (`bank-node stability`).</p>"
            + "".join(_answer_html(answers[s]) for s in ("batch", "online") if s in answers))


__all__ = ["REPORT_KEY", "stability_section"]
