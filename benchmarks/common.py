"""What every benchmark shares: timing, ratios, atomic JSON output, a printed table."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console(width=None if sys.stdout.isatty() else 200)  # logs to files: never cut names


def best_time(fn: Callable[[], object], repeats: int = 1,
              setup: Callable[[], object] | None = None) -> tuple[float, object]:
    """The shortest of ``repeats`` runs of ``fn`` (seconds) and the last result; ``setup`` runs untimed
    before each. The minimum, not the mean: on a shared machine other jobs only ever add time."""
    best, result = float("inf"), None
    for _ in range(max(1, repeats)):
        if setup is not None:
            setup()
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return max(best, 1e-9), result


def rate(count: int, fn: Callable[[], object], repeats: int = 1,
         setup: Callable[[], object] | None = None) -> tuple[float, object]:
    """Items per second for ``fn`` doing ``count`` items (best of ``repeats``), and what it returned."""
    seconds, result = best_time(fn, repeats, setup)
    return count / seconds, result


def ratio(ours: float | None, theirs: float | None) -> float | None:
    if not ours or not theirs:
        return None
    return round(ours / theirs, 2)


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    os.replace(tmp, target)


def print_table(title: str, rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    table = Table(title=title)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"
