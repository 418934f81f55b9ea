"""What both nodes' command lines share: help that shows every default, and `--version`."""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

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


__all__ = ["DefaultsFormatter", "version_string"]
