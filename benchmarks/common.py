"""What every benchmark shares: timing, ratios, atomic JSON output, a printed table."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


def rate(count: int, fn: Callable[[], object]) -> tuple[float, object]:
    """Items per second for ``fn`` doing ``count`` items, and what it returned."""
    started = time.perf_counter()
    result = fn()
    return count / max(time.perf_counter() - started, 1e-9), result


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
