"""`bank-node segment`, `segment-result` and `segments`: campaign segments from the client's side.

    bank-node segment --config bank.toml --model JOB_ID --tag T --top 10% --control 10% --seed 7 --out NAME
    bank-node segment-result --config bank.toml NAME --outcomes outcomes.csv
    bank-node segments --config bank.toml [NAME]

The node draws and stores the groups (``party_bank.segments``); these commands parse the flags, read the
outcome file on this machine and print the results for people.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from party_bank import views
from party_bank.client import BankClient
from party_bank.score_files import read_outcomes
from party_common.cli_format import record_table
from party_common.config import NodeConfig

COMMANDS = ("segment", "segment-result", "segments")


def share(text: str) -> float:
    """'10%' or '0.1' as 0.1 (argparse type)."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share: write 10% or 0.1") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a share is more than 0% and at most 100%")
    return value


def _pct(x: float | None, *, signed: bool = False) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}%" if signed else f"{100 * x:.1f}%"


def _points(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}"


def describe_result(r: dict[str, Any]) -> str:
    """A segment result for people: rates, lift with its interval, what was ignored."""
    lines = [f"segment {r['segment']} ({r['tag']}, model {r['model']}), outcomes from {r['source']}"]
    for name in ("target", "control"):
        g = r["groups"][name]
        rate = g["responders"] / g["with_outcome"] if g["with_outcome"] else None
        lines.append(f"  {name:8s} {g['responders']:>7} of {g['with_outcome']:>7} responded ({_pct(rate)}); "
                     f"{g['members'] - g['with_outcome']} member(s) without an outcome")
    ci = r["absolute_lift_ci95"]
    lines.append(f"  absolute lift {_points(r['absolute_lift'])} percentage points"
                 + (f" (95% CI {_points(ci[0])} to {_points(ci[1])}; normal approximation)" if ci else ""))
    rci = r["relative_lift_ci95"]
    lines.append(f"  relative lift {_pct(r['relative_lift'], signed=True)}"
                 + (f" (95% CI {_pct(rci[0], signed=True)} to {_pct(rci[1], signed=True)}; log risk ratio)"
                    if rci else ""))
    lines.append(f"  {r['not_in_segment']} outcome row(s) for customers in neither group: ignored")
    if r.get("note"):
        lines.append(f"  note: {r['note']}")
    return "\n".join(lines)


def _print_record(record: dict[str, Any], as_json: bool) -> None:
    print(json.dumps(record, indent=2, sort_keys=True) if as_json
          else record_table(record, title=f"segment {record.get('name', '')}"))


def run(client: BankClient, args: argparse.Namespace, config: NodeConfig) -> None:
    """One of :data:`COMMANDS`, already parsed."""
    if args.command == "segment":
        record, path = client.segment(args.model, args.tag, name=args.out, control_share=args.control,
                                      top_share=args.top, min_score=args.min_score, seed=args.seed,
                                      all_customers=args.all_customers, fmt=args.format, overwrite=args.overwrite)
        _print_record(record, args.json)
        print(f"segment {record['name']}: {record['target_size']} target, {record['control_size']} control "
              f"(seed {record['seed']}); groups in {path} on the bank node", file=sys.stderr)
    elif args.command == "segment-result":
        ids, outcomes = read_outcomes(Path(args.outcomes), config.data.id_column, args.outcome_column)
        result = client.segment_result(args.segment, ids, outcomes, source=Path(args.outcomes).name)
        print(json.dumps(result, indent=2, sort_keys=True) if args.json else describe_result(result))
    elif args.command == "segments" and args.name:
        _print_record(client.get_segment(args.name), args.json)
    elif args.command == "segments":
        records = client.segments()
        if args.json:
            print(json.dumps(records, indent=2, sort_keys=True))
            return
        t = views.table("SEGMENT", "TAG", "TARGET", "CONTROL", "SEED", "MODEL", "CREATED (UTC)")
        for r in records:
            t.add_row(r["name"], r["tag"], str(r["target_size"]), str(r["control_size"]), str(r["seed"]),
                      str(r.get("model", "-")), str(r.get("created_at", ""))[:19].replace("T", " "))
        print(views.render(t) if records else "no segments yet: make one with `bank-node segment ...`")
    else:  # pragma: no cover - the parser offers only COMMANDS here
        raise ValueError(f"not a segment command: {args.command}")


def add_parsers(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """The segment commands' flags, on ``add(name, help)`` (bank-node's subcommand maker)."""
    seg = add("segment", "pick a campaign target by score and hold out a random control group")
    seg.add_argument("--model", required=True, help="the train job ID, an alias NAME@LABEL, or 'latest'")
    seg.add_argument("--tag", required=True, help="the tag whose score selects the target")
    rule = seg.add_mutually_exclusive_group(required=True)
    rule.add_argument("--top", type=share, help="select the highest-scored share, e.g. 10%% or 0.1")
    rule.add_argument("--min-score", type=float, help="select every customer scoring at least this (0-1)")
    seg.add_argument("--control", type=share, required=True,
                     help="share of the selection held out as control, e.g. 10%% (stratified by score decile)")
    seg.add_argument("--seed", type=int, help="seed of the control draw: same seed, same groups "
                     "(default: drawn by the node; recorded in the segment either way)")
    seg.add_argument("--all-customers", action="store_true",
                     help="select among every bank customer, not only the intersection")
    seg.add_argument("--out", required=True, help="the segment's name (1-56 letters, digits, '_', '-'); files "
                     "go to <state_dir>/segments/NAME.groups.parquet|csv on the bank node")
    seg.add_argument("--format", default="parquet", choices=["parquet", "csv"], help="groups file format")
    seg.add_argument("--overwrite", action="store_true", help="replace a segment of that name")
    seg.add_argument("--json", action="store_true", help="print the segment's record as JSON")
    res = add("segment-result", "response rates and lift of a segment's target over its control")
    res.add_argument("segment", help="the segment's name")
    res.add_argument("--outcomes", required=True,
                     help="CSV/Parquet on this machine: the bank's ID column and a 0/1 outcome column")
    res.add_argument("--outcome-column", default="outcome", help="name of the outcome column (default: outcome)")
    res.add_argument("--json", action="store_true", help="print the full result as JSON")
    segs = add("segments", "list segments, or show one")
    segs.add_argument("name", nargs="?", help="a segment's name: print its record")
    segs.add_argument("--json", action="store_true", help="JSON instead of a table")


__all__ = ["COMMANDS", "add_parsers", "describe_result", "run", "share"]
