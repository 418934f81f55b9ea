"""A party's features as its model sees them when a job trains on bins: its own binning, fitted on its
training rows only (label-free), and every row one-hot encoded with it.

Both parties do this locally, before anything of the protocol sees the matrix: the width the platform
declares at ``train.setup`` (what the label-privacy batch floor counts) is then the number of its bins, not of
its raw columns. The schema stays the raw one: scoring checks and reads raw columns, and the stored binning
maps them to bins (``protocols.scoring``).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from protocols.binning.model import BinningModel
from protocols.binning.spec import BinningError, BinningSpec
from protocols.party_data import DataError, PartyData
from protocols.rowblocks import map_rows, take_rows

log = logging.getLogger(__name__)
FEATURE_MODES: tuple[str, ...] = ("raw", "binned")


def fit_binning(data: PartyData, train_rows: np.ndarray, spec: BinningSpec | None = None) -> BinningModel:
    """The party's binning of its own columns, fitted on ``train_rows`` (its values alone, never a label);
    errors name the data's source."""
    try:
        binning = BinningModel.fit(take_rows(data.features, np.asarray(train_rows)), data.feature_names, spec)
    except BinningError as err:
        raise DataError(f"{data.source}: {err}") from None
    for note in binning.dropped_notes():  # column names and reasons only, never a value
        log.warning("%s: %s", data.source, note)
    return binning


def encode(binning: BinningModel, features: np.ndarray) -> np.ndarray:
    """One-hot bins (float64, rows x sum of bins) of raw feature rows, a block at a time (on disk beside
    ``features`` when those are)."""
    width = int(binning.offsets()[-1])
    return map_rows(features, lambda block: binning.one_hot(binning.transform(block)), width, np.float64)


def binned_party_data(data: PartyData, train_rows: np.ndarray,
                      spec: BinningSpec | None = None) -> tuple[PartyData, BinningModel]:
    """``data`` with its features replaced by their one-hot bins (named ``column=bin``), and the binning."""
    binning = fit_binning(data, train_rows, spec)
    return replace(data, features=encode(binning, data.features), feature_names=binning.one_hot_names()), binning


__all__ = ["FEATURE_MODES", "binned_party_data", "encode", "fit_binning"]
