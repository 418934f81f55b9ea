"""Weight of evidence and information value from per-bin counts (either party's features, one tag).

``WOE_b = ln(((e_b + a) / (E + a B)) / ((n_b + a) / (N + a B)))`` with ``a`` the smoothing added to every
bin's events ``e_b`` and non-events ``n_b`` (``E``, ``N`` their totals over the ``B`` bins), and
``IV = sum_b (e_b / E - n_b / N) WOE_b``. Bins with fewer labelled rows than the minimum are merged with
their smaller neighbour first (bins are ordered: quantiles, then categories), so no WOE rests on a handful of
labels. The bands are the usual ones (Siddiqi, "Credit risk scorecards", 2006).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocols.errors import UserError

BANDS = ((0.02, "unpredictive"), (0.1, "weak"), (0.3, "medium"), (0.5, "strong"), (math.inf, "suspicious"))


class NoEvents(UserError):
    """A tag whose labelled rows hold no event, or no non-event: WOE and IV are undefined for it."""


def band(iv: float) -> str:
    for upper, name in BANDS:
        if iv < upper:
            return name
    return BANDS[-1][1]


def merge_small(labelled: np.ndarray, minimum: int) -> list[list[int]]:
    """Groups of adjacent bin indices such that each group holds at least ``minimum`` labelled rows (or one
    group of all bins when the total is below it): the smallest group merges with its smaller neighbour first."""
    groups = [[b] for b in range(len(labelled))]
    counts = [float(c) for c in labelled]
    while len(groups) > 1:
        i = min(range(len(groups)), key=lambda g: counts[g])
        if counts[i] >= minimum:
            break
        if i == 0:
            j = 1
        elif i == len(groups) - 1:
            j = i - 1
        else:
            j = i - 1 if counts[i - 1] <= counts[i + 1] else i + 1
        a, b = min(i, j), max(i, j)
        groups[a] = groups[a] + groups[b]
        counts[a] += counts[b]
        del groups[b], counts[b]
    return groups


@dataclass
class FeatureIV:
    """One (feature, tag): its bins after merging and its information value."""

    feature: str
    party: str  # "bank" or "platform"
    tag: str
    iv: float
    bins: list[dict[str, Any]] = field(default_factory=list)
    merged: int = 0  # bins merged away for too few labelled rows

    @property
    def band(self) -> str:
        return band(self.iv)

    def to_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "party": self.party, "tag": self.tag, "iv": round(self.iv, 6),
                "band": self.band, "merged_bins": self.merged, "bins": self.bins}


def feature_iv(feature: str, party: str, tag: str, rows: np.ndarray, events: np.ndarray, non_events: np.ndarray,
               labels: Sequence[str], *, min_labelled: int, smoothing: float) -> FeatureIV:
    """WOE and IV of one feature for one tag from per-bin counts (floats: debiased counts may be fractional;
    negative estimates count as 0). :class:`NoEvents` when the tag has no event or no non-event at all."""
    e = np.clip(np.asarray(events, dtype=np.float64), 0, None)
    n = np.clip(np.asarray(non_events, dtype=np.float64), 0, None)
    if e.sum() <= 0 or n.sum() <= 0:
        raise NoEvents(f"tag {tag!r} has {'no events' if e.sum() <= 0 else 'no non-events'} among the screened "
                       "rows: its WOE and IV are undefined")
    groups = merge_small(e + n, min_labelled)
    ge = np.array([e[g].sum() for g in groups])
    gn = np.array([n[g].sum() for g in groups])
    gr = np.array([float(np.asarray(rows)[g].sum()) for g in groups])
    k = len(groups)
    pe = (ge + smoothing) / (ge.sum() + smoothing * k)
    pn = (gn + smoothing) / (gn.sum() + smoothing * k)
    woe = np.log(pe / pn)
    iv = float(np.sum((ge / ge.sum() - gn / gn.sum()) * woe))
    bins = [{"bins": [labels[b] for b in g], "rows": int(round(r)), "labelled": round(float(a + b), 1),
             "events": round(float(a), 1), "event_rate": round(float(a / (a + b)), 4) if a + b > 0 else None,
             "woe": round(float(w), 4)}
            for g, r, a, b, w in zip(groups, gr, ge, gn, woe, strict=True)]
    return FeatureIV(feature, party, tag, iv, bins, merged=len(rows) - k)


def local_counts(bins: np.ndarray, n_bins: int, cats: np.ndarray) -> np.ndarray:
    """Per bin: rows, events, labelled of one feature's bin column and one tag's categories (exact, in the
    clear: the bank's own features, and the centralized reference of the tests)."""
    out = np.zeros((n_bins, 3), dtype=np.int64)
    np.add.at(out[:, 0], bins, 1)
    np.add.at(out[:, 1], bins, (cats == 2).astype(np.int64))
    np.add.at(out[:, 2], bins, (cats != 0).astype(np.int64))
    return out


__all__ = ["BANDS", "FeatureIV", "NoEvents", "band", "feature_iv", "local_counts", "merge_small"]
