"""`bank-node stability` and `bank-node scorecard`: a model's population stability and its bank-side points table.

    bank-node stability --config bank.toml JOB --batch campaign/march.parquet
    bank-node stability --config bank.toml [JOB] [--online]        (default: the latest model, online)
    bank-node scorecard --config bank.toml JOB [--tag T] --out scorecard.csv|.json

The node computes both (``party_bank.stability``, ``protocols.scorecard``); these commands print the indices
with their warning bands and write the points table on this machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from party_bank.client import BankClient
from party_common.storage.files import atomic_write_with
from protocols.scorecard import DEFAULT_BASE_ODDS, DEFAULT_BASE_SCORE, DEFAULT_PDO, to_csv
from protocols.stability import ALERT, BANDS, WARN

COMMANDS = ("stability", "scorecard")
BAND_STYLE = {BANDS[0]: "green", BANDS[1]: "yellow", BANDS[2]: "bold red"}


def add_parsers(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """The commands' flags, on ``add(name, help)`` (bank-node's subcommand maker)."""
    st = add("stability", "population stability index of each tag's score and each feature (both parties') "
             f"against the model's training population; warnings above {WARN} and {ALERT}")
    st.add_argument("model", nargs="?", default="latest", help="the train job ID, an alias NAME@LABEL, or 'latest'")
    which = st.add_mutually_exclusive_group()
    which.add_argument("--batch", metavar="FILE", help="a batch-score file on the bank node, relative to "
                       "<state_dir>/scores/ (written by `bank-node batch-score`)")
    which.add_argument("--online", action="store_true", help="the node's recent online scores (kept since it "
                       "started; the default without --batch)")
    st.add_argument("--json", action="store_true", help="print JSON")
    sc = add("scorecard", "the bank's half of a binned model as a points table per tag (CSV or JSON by --out's "
             "suffix): base points and points per bin of each bank feature; never the platform's weights")
    sc.add_argument("model", help="the train job ID or an alias NAME@LABEL")
    sc.add_argument("--tag", action="append", help="a tag (repeat for more; default: every tag of the model)")
    sc.add_argument("--out", required=True, help="file to write on this machine: .csv or .json")
    sc.add_argument("--base-score", type=float, default=DEFAULT_BASE_SCORE, help="points at the base odds")
    sc.add_argument("--pdo", type=float, default=DEFAULT_PDO, help="points to double the odds (the platform's "
                    "half must use the same)")
    sc.add_argument("--base-odds", type=float, default=DEFAULT_BASE_ODDS, help="the tag's odds p/(1-p) at the base "
                    "score (50 = 50:1)")
    sc.add_argument("--overwrite", action="store_true", help="replace the file if it exists")


def stability_tables(result: dict[str, Any]) -> list[Table]:
    """The answer as rich tables: scores per tag, then features, the largest index first, bands coloured."""
    where = result["batch"] if result["source"] == "batch" else "recent online scores"
    scores = Table(title=f"score stability of model {result['model']}: {where}")
    for column in ("tag", "psi", "band", "rows"):
        scores.add_column(column, justify="right" if column in ("psi", "rows") else "left")
    for row in result["scores"]:
        scores.add_row(row["tag"], f"{row['psi']:.4f}", f"[{BAND_STYLE[row['band']]}]{row['band']}[/]",
                       str(row["rows"]))
    features = Table(title=f"feature stability (reference: {', '.join(f'{k} {v}' for k, v in result['reference'].items())}"
                           f"; rows: {', '.join(f'{k} {v}' for k, v in result['rows'].items())})")
    for column in ("party", "feature", "psi", "band"):
        features.add_column(column, justify="right" if column == "psi" else "left")
    for row in result["features"]:
        features.add_row(row["party"], row["feature"], f"{row['psi']:.4f}",
                         f"[{BAND_STYLE[row['band']]}]{row['band']}[/]")
    return [scores, features]


def run(client: BankClient, args: argparse.Namespace) -> None:
    """One of :data:`COMMANDS`, already parsed."""
    if args.command == "stability":
        result = client.stability(args.model, batch_file=args.batch, online=not args.batch)
        if args.json:
            print(json.dumps(result, indent=2, sort_keys=True))
        else:
            console = Console()
            for table in stability_tables(result):
                console.print(table)
            console.print(f"bands: stable < {WARN} <= moderate shift <= {ALERT} < significant shift")
        for note in result["notes"]:
            print(f"note: {note}", file=sys.stderr)
        return
    out = Path(args.out)
    if out.suffix not in (".csv", ".json"):
        raise ValueError(f"{out}: a scorecard is written as .csv or .json")
    table = client.scorecard(args.model, args.tag, base_score=args.base_score, pdo=args.pdo,
                             base_odds=args.base_odds)
    text = to_csv(table) if out.suffix == ".csv" else json.dumps(table, indent=2, sort_keys=True) + "\n"
    try:
        atomic_write_with(out, lambda f: f.write(text.encode()), mode=0o600, overwrite=args.overwrite)
    except FileExistsError:
        raise FileExistsError(f"{out} exists: pass --overwrite to replace it") from None
    print(f"wrote the bank's scorecard of model {table['model']} ({', '.join(table['tags'])}) to {out}")


__all__ = ["COMMANDS", "add_parsers", "run", "stability_tables"]
