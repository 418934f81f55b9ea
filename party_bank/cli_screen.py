"""`bank-node screen`: WOE and IV per (feature, tag) for both parties' features, printed as a table.

    bank-node screen --config bank.toml [--tags a,b] [--alignment JOB] [--epsilon 8 | --epsilon off] [--top 20]

The node runs the screen job (``party_common.jobs.screen``); this module builds its parameters from the
flags and prints the finished job's IV table with each feature's bins' event rates (rich).
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from protocols.errors import UserError
from protocols.he import scheme_names
from protocols.screen.params import ScreenParams

COMMANDS = ("screen",)
TABLE_WIDTH = 150


def _epsilon(text: str) -> float | None:
    if text.lower() in ("off", "none"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number (e.g. 8) or 'off'") from None


def add_parsers(add: Callable[[str, str], argparse.ArgumentParser],
                add_job_output: Callable[[argparse.ArgumentParser], None]) -> None:
    defaults = ScreenParams()
    s = add("screen", "WOE and IV per (feature, tag) for both parties' features on an alignment, before training")
    s.add_argument("--tags", help="comma-separated tag columns (default: all of [data] tag_columns)")
    s.add_argument("--alignment", help="align job ID (default: the latest finished align job in mode 'both')")
    s.add_argument("--epsilon", type=_epsilon, default=defaults.label_epsilon,
                   help="randomised response on the labels before encryption: epsilon per customer and tag (T tags: "
                        "T times it per customer), or 'off' (a deviating platform could then read labels; "
                        "docs/security.md)")
    s.add_argument("--he-scheme", choices=scheme_names(), default=defaults.he_scheme, help="the HE scheme")
    s.add_argument("--min-labelled-rows", type=int, default=defaults.min_labelled_rows,
                   help="per bin and tag: smaller bins are merged with a neighbour (the platform may ask more)")
    s.add_argument("--params", metavar="JSON", help="screen parameters as a JSON object; valid keys: "
                   f"{', '.join(sorted(ScreenParams.__dataclass_fields__))}")
    s.add_argument("--top", type=int, default=20, help="rows per tag in the table, highest IV first (0: all)")
    add_job_output(s)


def add_selection_flags(t: argparse.ArgumentParser) -> None:
    """`bank-node train --screen JOB --min-iv 0.02 | --top-k 20`: train on the features a screen selects."""
    t.add_argument("--screen", metavar="JOB", help="a finished screen job: train on the features it selects "
                   "(per tag and party, with --min-iv or --top-k); the platform keeps only columns its policy allows")
    rule = t.add_mutually_exclusive_group()
    rule.add_argument("--min-iv", type=float, help="with --screen: keep features with IV at least this (e.g. 0.02)")
    rule.add_argument("--top-k", type=int, help="with --screen: keep the k features of highest IV per tag and party")


def selection_params(args: argparse.Namespace) -> dict[str, Any]:
    """The train job's ``screen`` parameter from the flags ({} without --screen)."""
    if not getattr(args, "screen", None):
        if getattr(args, "min_iv", None) is not None or getattr(args, "top_k", None) is not None:
            raise UserError("--min-iv and --top-k need --screen JOB")
        return {}
    rule = {"min_iv": args.min_iv} if args.min_iv is not None else {"top_k": args.top_k} if args.top_k else {}
    return {"screen": {"job_id": args.screen, **rule}}


def screen_params(args: argparse.Namespace) -> dict[str, Any]:
    screen: dict[str, Any] = {}
    if args.params:
        try:
            screen = json.loads(args.params)
        except ValueError as err:
            raise UserError(f"--params: not JSON ({err})") from None
        if not isinstance(screen, dict):
            raise UserError("--params: a JSON object of screen parameters")
    screen.setdefault("label_epsilon", args.epsilon)
    screen.setdefault("he_scheme", args.he_scheme)
    screen.setdefault("min_labelled_rows", args.min_labelled_rows)
    params: dict[str, Any] = {"screen": screen}
    if args.tags:
        params["tags"] = args.tags.split(",")
    if args.alignment:
        params["alignment_job_id"] = args.alignment
    return params


def iv_table(job: dict[str, Any], top: int = 20) -> str:
    """The finished screen job's IV table per tag (highest first), bins' event rates, and what was left out."""
    result = job.get("result") or {}
    rows = result.get("iv") or []
    buf = io.StringIO()
    console = Console(file=buf, width=TABLE_WIDTH, force_terminal=False, color_system=None)
    privacy = result.get("label_privacy") or {}
    eps = privacy.get("epsilon")
    title = (f"screen {job.get('job_id', '')}: {result.get('rows', '?')} shared customers, label protection "
             + (f"randomised response, epsilon {privacy.get('epsilon_per_tag'):g} per tag, {eps:g} per customer "
                "over all tags" if eps is not None else "OFF"))
    console.print(title)
    for tag in result.get("tags") or sorted({r["tag"] for r in rows}):
        table = Table(title=f"tag {tag}", title_justify="left")
        for name, justify in (("feature", "left"), ("party", "left"), ("IV", "right"), ("band", "left"),
                              ("bins", "right"), ("event rate per bin", "left")):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        ranked = sorted((r for r in rows if r["tag"] == tag), key=lambda r: -r["iv"])
        for r in ranked[:top] if top > 0 else ranked:
            rates = " ".join("-" if x is None else f"{x:.2f}" for x in r.get("event_rates", []))
            table.add_row(r["feature"], r["party"], f"{r['iv']:.4f}", r["band"], str(len(r.get("event_rates", []))),
                          rates)
        console.print(table)
        if top > 0 and len(ranked) > top:
            console.print(f"({len(ranked) - top} more features for tag {tag}: --top 0 shows all)")
    for tag, why in (result.get("skipped_tags") or {}).items():
        console.print(f"tag {tag}: {why}")
    for note in result.get("notes") or []:
        console.print(f"note: {note}")
    return buf.getvalue().rstrip()


__all__ = ["COMMANDS", "add_parsers", "add_selection_flags", "iv_table", "screen_params", "selection_params"]
