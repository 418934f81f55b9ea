"""A party's features as the screen bins them: label-free binning (:mod:`protocols.binning`) of the aligned rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from protocols.binning import BinningError, BinningModel, BinningSpec, ColumnBins
from protocols.screen.platform import ScreenFeatures


def ordinal_labels(column: ColumnBins) -> list[str]:
    """Bin names that say which bin it is and nothing of the party's values: quantile ``q3/10``, category
    ``c2``, ``other``, ``missing`` (the platform's cut points and levels stay with it)."""
    labels = column.labels()
    k = len(column.edges) + 1 if column.kind == "numeric" else len(column.levels)
    names = [f"q{b + 1}/{k}" if column.kind == "numeric" else f"c{b + 1}" for b in range(k)]
    return names + labels[k:]  # "other" and "missing" keep their names


def bin_features(features: np.ndarray, names: Sequence[str], spec: BinningSpec | None, *,
                 ordinal: bool) -> tuple[ScreenFeatures | None, list[str]]:
    """Bin ``features`` (rows x names) on these rows; the screen's view of them, and one note per column left
    out (constant, identifier-like: named, never a crash). None when no column is left to bin."""
    try:
        model = BinningModel.fit(np.asarray(features), list(names), spec)
    except BinningError as err:
        return None, [str(err)]
    labels = [ordinal_labels(c) if ordinal else c.labels() for c in model.columns]
    return ScreenFeatures(model.feature_names, model.transform(np.asarray(features)).astype(np.int64),
                          model.n_bins, labels), model.dropped_notes()


__all__ = ["bin_features", "ordinal_labels"]
