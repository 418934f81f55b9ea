"""Label-free binning of one party's own columns (quantile bins, categories, a missing bin), fitted on its
training population and stored with its model half: ``BinningSpec`` (the node's ``[binning]`` table) and
``BinningModel`` (fit, transform to bin indices, one-hot, JSON)."""

from protocols.binning.encode import FEATURE_MODES, binned_party_data, encode, fit_binning
from protocols.binning.model import MISSING_LABEL, OTHER_LABEL, BinningModel, ColumnBins
from protocols.binning.spec import DEFAULT_BINS, DEFAULT_MAX_CATEGORIES, BinningError, BinningSpec, ColumnSpec

__all__ = ["DEFAULT_BINS", "DEFAULT_MAX_CATEGORIES", "FEATURE_MODES", "binned_party_data", "encode", "fit_binning", "MISSING_LABEL", "OTHER_LABEL", "BinningError", "BinningModel",
           "BinningSpec", "ColumnBins", "ColumnSpec"]
