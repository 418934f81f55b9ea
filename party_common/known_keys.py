"""Unknown keys in a config table or a parameter set: refused, with the valid ones and the nearest spelling.

A misspelled key that is silently ignored changes what a node does without a word (``tag_colums`` made
the tag columns features); so every table of a node's TOML, and the policy, is checked here.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def unknown_key_message(given: Iterable[str], known: Iterable[str], where: str) -> str | None:
    """A one-line refusal for the first unknown key of ``given``, or None when every key is known."""
    known = sorted(known)
    unknown = sorted(set(given) - set(known))
    if not unknown:
        return None
    key = unknown[0]
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    more = f" ({len(unknown)} unknown keys: {', '.join(unknown)})" if len(unknown) > 1 else ""
    return f"{where}: unknown key '{key}'{hint}{more} (valid keys: {', '.join(known)})"


# The [binning] table of either node (protocols.binning.spec) and each [binning.columns.NAME] table in it.
BINNING_KEYS = frozenset({"bins", "max_categories", "columns"})
BINNING_COLUMN_KEYS = frozenset({"kind", "bins", "edges", "max_categories"})
