"""The training report's binning section (a job trained with ``features = "binned"``): how many bins each
party trained on, and the bank's columns left out of binning with the reason. The platform's side is its
width (``train.setup``'s feature count) and, from the same reply, its bins per column or its fallback to raw
columns under bins "auto", with the rule's note: never an edge or a count."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any


def binning_section(report: Mapping[str, Any], summary: Mapping[str, Any] | None = None) -> str:
    """HTML for ``report["binning"]``; empty for a job trained on raw columns."""
    binning = report.get("binning")
    if not isinstance(binning, Mapping):
        return ""
    bank, platform = binning.get("bank") or {}, binning.get("platform") or {}
    rows = [("Bank: columns binned", bank.get("columns", "-")), ("Bank: bins (one-hot width)", bank.get("bins", "-")),
            ("Platform: bins (one-hot width)", platform.get("bins", "-"))]
    if platform.get("mode") == "raw":
        rows.append(("Platform: trained on", "its raw columns (bins \"auto\": too few labelled rows for its bins)"))
    elif platform.get("bins_per_column") is not None:
        rows.append(("Platform: bins per column", platform["bins_per_column"]))
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in rows)
    dropped = bank.get("dropped") or {}
    left_out = "" if not dropped else "<ul>" + "".join(
        f"<li>{escape(f'{name}: {reason}')}</li>" for name, reason in dropped.items()) + "</ul>"
    note = f"<p>{escape(str(platform['note']))}</p>" if platform.get("note") else ""
    return (f'<h2>Binned features</h2><table class="meta">{body}</table>{note}'
            + (f"<p>Bank columns left out of binning:</p>{left_out}" if left_out else ""))


__all__ = ["binning_section"]
