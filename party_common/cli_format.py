"""What both nodes' command lines share: help that shows every default, `--version`, and records as tables."""

from __future__ import annotations

import argparse
import io
import os
from collections.abc import Iterator, Mapping
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from party_common.transport import PROTOCOL_VERSION


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's help ends with its default, unless the help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or action.default is argparse.SUPPRESS or not action.option_strings
                or action.required):
            return text
        if action.default is None or action.default is False:
            shown = "off" if action.default is False else "none"
            return f"{text} (default: {shown})"
        return f"{text} (default: %(default)s)"


def version_string(prog: str) -> str:
    """"bank-node 0.1.0 (wire protocol 1.2)"."""
    try:
        version = package_version("fedprofile")
    except PackageNotFoundError:  # run from a checkout without installing
        version = "unknown (not installed)"
    return f"{prog} {version} (wire protocol {PROTOCOL_VERSION})"


def _flatten(record: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{name}.")
        elif isinstance(value, (list, tuple)):
            yield name, ", ".join(str(v) for v in value) if value else "-"
        else:
            yield name, "-" if value is None or value == {} else (f"{value:.4g}" if isinstance(value, float)
                                                                   else str(value))


def record_table(record: Mapping[str, Any], *, title: str = "", header: tuple[str, str] = ("FIELD", "VALUE")) -> str:
    """A record (a segment, a policy) as a two-column table for people, nested keys dotted (``a.b``); every cell
    plain text (``[...]`` is shown, never read as markup). ``--json`` prints the record itself."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold", title=title or None)
    for h in header:
        table.add_column(h, overflow="fold")
    for key, value in _flatten(record):
        table.add_row(Text(key), Text(value))
    buffer = io.StringIO()
    Console(file=buffer, width=100_000, force_terminal=False, no_color=True, highlight=False,
            soft_wrap=False).print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


CONFIG_ENV = "FEDPROFILE_CONFIG"


def config_help(role: str) -> str:
    """The ``--config`` help text: where a node's TOML file is looked for when the option is left out."""
    return (f"the {role} node's TOML file (default: ${CONFIG_ENV}, else ./{role}.toml, else "
            f"~/.config/fedprofile/{role}.toml)")


def resolve_config(given: str | None, role: str, prog: str) -> str:
    """The config path a command uses: ``--config`` if given, else ``$FEDPROFILE_CONFIG``, else ``./ROLE.toml``,
    else ``~/.config/fedprofile/ROLE.toml`` (the first that exists); a clear error naming all of them otherwise."""
    if given:
        return given
    env = os.environ.get(CONFIG_ENV, "").strip()
    if env:
        return env
    candidates = [Path(f"{role}.toml"), Path.home() / ".config" / "fedprofile" / f"{role}.toml"]
    for path in candidates:
        if path.is_file():
            return str(path)
    raise SystemExit(f"{prog}: no config: give --config FILE, set {CONFIG_ENV}, or put it at "
                     f"{' or '.join(str(c) for c in candidates)}")


__all__ = ["CONFIG_ENV", "config_help", "resolve_config", "DefaultsFormatter", "record_table", "version_string"]
