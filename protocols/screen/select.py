"""Feature selection by information value, for a training job that follows a screen.

A rule is a minimum IV (``min_iv``) or the ``top_k`` features per tag, applied to each party's features
separately (so neither side is left without columns by the other's stronger ones), and the union over the
job's tags is kept (one feature matrix serves every tag's model). What the bank then tells the platform (the
names of its columns that passed) depends on the labels only through the screen's randomised counts, so it
is covered by the screen's label-privacy statement (``protocols.screen.rr``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from protocols.errors import UserError

PARTIES = ("bank", "platform")


def check_rule(rule: Mapping[str, Any]) -> tuple[float | None, int | None]:
    """``{"min_iv": x}`` or ``{"top_k": k}`` (with the screen's ``job_id``); :class:`UserError` otherwise."""
    unknown = sorted(set(rule) - {"job_id", "min_iv", "top_k"})
    if unknown:
        raise UserError(f"screen selection: unknown key {unknown[0]!r}; known: job_id, min_iv, top_k")
    min_iv, top_k = rule.get("min_iv"), rule.get("top_k")
    if (min_iv is None) == (top_k is None):
        raise UserError("screen selection: give exactly one of min_iv (a threshold) or top_k (features per tag)")
    if min_iv is not None and (isinstance(min_iv, bool) or not isinstance(min_iv, int | float) or min_iv < 0):
        raise UserError(f"screen selection: min_iv must be a number >= 0, got {min_iv!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise UserError(f"screen selection: top_k must be a whole number >= 1, got {top_k!r}")
    return (None if min_iv is None else float(min_iv)), top_k


def select_features(table: Sequence[Mapping[str, Any]], tags: Sequence[str], rule: Mapping[str, Any]) -> dict[str, list[str]]:
    """Per party, the features the rule keeps for any of ``tags`` (in the table's order); UserError naming the
    tag when the screen did not cover one, or the party when nothing passes."""
    min_iv, top_k = check_rule(rule)
    screened = {row["tag"] for row in table}
    missing = [t for t in tags if t not in screened]
    if missing:
        raise UserError(f"screen selection: the screen has no IV for tag(s) {', '.join(missing)} (not screened, or "
                        "left out for lack of events); train without a selection or screen them")
    out: dict[str, list[str]] = {}
    for party in PARTIES:
        rows = [r for r in table if r["party"] == party and r["tag"] in tags]
        if not rows:
            continue
        kept: set[str] = set()
        for tag in tags:
            ranked = sorted((r for r in rows if r["tag"] == tag), key=lambda r: -float(r["iv"]))
            kept.update(r["feature"] for r in (ranked[:top_k] if top_k is not None
                                               else [r for r in ranked if float(r["iv"]) >= (min_iv or 0.0)]))
        if not kept:
            raise UserError(f"screen selection: no {party} feature has IV >= {min_iv} for tag(s) {', '.join(tags)}; "
                            "lower min_iv")
        out[party] = [f for f in dict.fromkeys(r["feature"] for r in rows) if f in kept]
    return out


__all__ = ["check_rule", "select_features"]
