"""How wide the platform's one-hot bins may be when labels are few: ``TrainParams.bins = "auto"``.

The batch floor (label_privacy.py) asks every batch for ``FLOOR_FACTOR x d_B x epochs`` labelled rows of each
tag, ``d_B`` the platform's width: its bins when a job trains on bins. Where a tag's labelled training rows
``L`` are few (simulated data at 10% labels known: about 860 per tag against 34 columns that become 214 bins),
no batch meets it, the defaults turn label DP on, and on so few labels its noise costs more than the bins gain
(joint below bank-only). With ``bins = "auto"`` the platform, which bins its own columns at ``train.setup``,
keeps its width within what one full batch per epoch can hold for ``AUTO_EPOCHS`` epoch (the Newton
optimiser's schedule where mini-batches cannot meet the floor, batching.py)::

    d_B <= L_min // (FLOOR_FACTOR x epochs)     (epochs: the job's, or AUTO_EPOCHS when automatic)

``L_min`` the fewest labelled training rows of any tag, counted on the label mask ``train.setup`` carries. Its
``[binning]`` table as configured when that fits; else the most quantile bins per column (at most the table's,
at least ``MIN_AUTO_BINS``) that fit; else its raw columns, with a note in the job's report. The rule and its
measurement: docs/protocol.md, "Binned features" (``benchmarks/sparse_bins.py``).

Nothing here reads a label: the mask is which rows have one, already the platform's, and the bank decides
the protection on the width the platform declares, as ever. With ``hide_label_mask`` the platform counts every
training row as labelled, the cap is loose and the floor, or label DP, decides as before.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np

from protocols.binning import BinningModel, BinningSpec, encode, fit_binning
from protocols.errors import ProtocolError
from protocols.party_data import PartyData
from protocols.vfl_lr.label_privacy import FLOOR_FACTOR
from protocols.vfl_lr.messages import Field
from protocols.vfl_lr.params import TrainParams

log = logging.getLogger(__name__)
SUMMARY_KEYS = {"rule", "width_cap", "configured_bins", "mode", "bins_per_column", "note"}
MAX_SUMMARY_CHARS = 2000
BINS_MODES = ("auto", "configured")
AUTO_EPOCHS = 1  # epochs the cap leaves room for (one full Newton batch each): measured, docs/protocol.md
MIN_AUTO_BINS = 5  # fewer quantile bins per column than this and the raw columns serve better: measured


class PlatformFeatures(NamedTuple):
    """What the platform trains on, and the note for the job's report (the setup reply carries it)."""
    data: PartyData
    binning: BinningModel | None  # None: the raw columns (the fallback)
    summary: dict[str, Any]


def width_cap(label_mask: np.ndarray, params: TrainParams) -> int | None:
    """The widest platform the floor leaves room for, from the labelled training rows per tag (``label_mask``,
    training rows x tags); None when nothing caps it (``bins`` "configured", ``label_dp`` "on", no labels)."""
    if params.bins != "auto" or params.label_dp == "on":
        return None
    fewest = fewest_labelled(label_mask)
    return None if fewest is None else fewest // (FLOOR_FACTOR * (params.epochs or AUTO_EPOCHS))


def fewest_labelled(label_mask: np.ndarray) -> int | None:
    """The fewest labelled rows of a tag that has some (None: no tag has any)."""
    counts = np.asarray(label_mask, dtype=bool).sum(axis=0)
    counts = counts[counts > 0]
    return int(counts.min()) if len(counts) else None


def platform_features(data: PartyData, train_rows: np.ndarray, spec: BinningSpec | None, label_mask: np.ndarray,
                      params: TrainParams) -> PlatformFeatures:
    """The platform's features for a job on bins: its bins by ``spec``, fewer bins, or its raw columns, by the
    rule above (a job on raw columns: ``data`` as it is, an empty summary). ``label_mask``: the training rows'
    label mask (rows x tags)."""
    if params.features != "binned":
        return PlatformFeatures(data, None, {})
    spec = spec or BinningSpec()
    cap = width_cap(label_mask, params)
    binning = fit_binning(data, train_rows, spec)
    width = int(binning.offsets()[-1])
    summary: dict[str, Any] = {"rule": params.bins, "width_cap": cap, "configured_bins": spec.bins}
    if cap is None or width <= cap:
        return _binned(data, binning, {**summary, "mode": "binned", "bins_per_column": spec.bins})
    epochs = params.epochs or AUTO_EPOCHS
    why = (f"{width} bins at {spec.bins} per column would need {FLOOR_FACTOR * width * epochs} labelled training "
           f"rows of every tag per batch ({FLOOR_FACTOR} x bins x {epochs} epoch{'s' if epochs != 1 else ''}) and a tag has "
           f"{fewest_labelled(label_mask)}: at most {cap} bins meet the batch floor")
    for bins in range(spec.bins - 1, MIN_AUTO_BINS - 1, -1):
        fewer = fit_binning(data, train_rows, replace(spec, bins=bins, max_categories=min(spec.max_categories, bins)))
        width = int(fewer.offsets()[-1])
        if width <= cap:
            note = f"bins = \"auto\": {why}, so {bins} bins per column ({width} bins in all)"
            log.warning("%s: %s", data.source, note)
            return _binned(data, fewer, {**summary, "mode": "binned", "bins_per_column": bins,
                                            "note": note})
    columns = len(data.feature_names)
    note = (f"bins = \"auto\": {why}, and {MIN_AUTO_BINS} bins per column would still need more, so this job "
            f"trains on the platform's {columns} raw columns")
    log.warning("%s: %s", data.source, note)
    return PlatformFeatures(data, None, {**summary, "mode": "raw", "bins_per_column": None, "note": note})


def read_platform_binning(raw: object) -> dict[str, Any]:
    """The platform's summary from ``train.setup``'s reply (absent, or a job on raw columns: {}), checked: only
    the keys :func:`platform_features` writes, each a number, a short text or null. It feeds the bank's report
    and nothing else (the width the bank protects is ``n_features``, checked on its own)."""
    if raw is None:
        return {}
    try:
        summary = json.loads(raw) if isinstance(raw, str) and len(raw) <= MAX_SUMMARY_CHARS else None
    except ValueError:
        summary = None
    if not isinstance(summary, dict) or not set(summary) <= SUMMARY_KEYS or not all(
            v is None or (isinstance(v, int | str) and not isinstance(v, bool)) for v in summary.values()):
        raise ProtocolError(f"train.setup: the platform's {Field.PLATFORM_BINNING} is not a binning summary")
    return summary


def _binned(data: PartyData, binning: BinningModel, summary: dict[str, Any]) -> PlatformFeatures:
    return PlatformFeatures(replace(data, features=encode(binning, data.features),
                                    feature_names=binning.one_hot_names()), binning, summary)


__all__ = ["AUTO_EPOCHS", "BINS_MODES", "MIN_AUTO_BINS", "PlatformFeatures", "fewest_labelled", "platform_features",
           "read_platform_binning", "width_cap"]
