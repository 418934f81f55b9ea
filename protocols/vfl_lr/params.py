"""Training parameters, the protocol's fixed encoding constants, and the slot plan both parties derive."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from protocols.errors import UserError
from protocols.evaluation_metrics import Split, split_rows
from protocols.he import DEFAULT_SCHEME, PublicKey, get_scheme, scheme_names
from protocols.params import check_field_types, dataclass_from_mapping

# v4: key proofs and the he_scheme in train.setup; v3: label-DP noise on the residuals (no row-norm bound); v2: private
# evaluation. A node of another version is refused when the session opens, by name.
VERSION = "vfl-lr-taylor-v4"
# The default HE scheme (protocols.he); a job picks its own with TrainParams.he_scheme, and every key, ciphertext
# and kernel of the session comes from that one (docs/security.md, "Okamoto-Uchiyama": why Paillier stays default).
HE_SCHEME = DEFAULT_SCHEME
F_BITS = 20  # fractional bits of z and d' in fixed point
Z_CLIP = 32.0  # |z_A|, |z_B| are clipped here before encoding (the Taylor loss is meaningless far beyond)
D_BITS = 27  # |d' * 2^F| <= (32 + 34) * 2^20 < 2^27
STAT_BITS = 40  # statistical hiding: every mask is 2^40 times wider than what it hides
# Label DP: the bank adds Gaussian noise to each labelled residual d' 2^F before the platform's features touch it;
# the residual's slot keeps this much headroom for it whenever the job may turn label DP on (label_dp not "off").
DP_NOISE_BITS = 4  # room for 2^11 - 2^7 units of d': 28 residuals per ciphertext, not 29
SCALE_MARGIN_BITS = 24  # hide_label_mask: the residuals' per-tag scale round(2^G / m_t) is at least 2^24


MAX_AUTO_EPOCHS = 10  # automatic epochs: the session's bound (the former default), and the most the bank runs


class TrainingError(UserError):
    """Training cannot run on this data or with these parameters; the message says why."""


LARGE_SPLIT = 20_000  # rows left after the test share from which the automatic validation share is 0.2


@dataclass
class TrainParams:
    # Epochs; None (the default): automatic, chosen by the bank after train.setup: the most (at most 10) whose
    # batch floor can be met, else 2 under label DP; 10 with label_dp "off" (batching.py, choose_schedule).
    epochs: int | None = None
    # Rows per mini-batch; None (the default): automatic, chosen by the bank after train.setup to meet the label
    # floor with at least 4 steps per epoch, else about 10 steps per epoch under label DP (batching.py).
    batch_size: int | None = None
    learning_rate: float = 0.05
    decay: float = 1.0  # learning rate of epoch e (0-based) is learning_rate / (1 + decay * e)
    # "auto" (Newton under label DP, Adam otherwise), "adam", "sgd" or "newton" (damped block Newton on the quadratic
    # Taylor loss, protocols/vfl_lr/state.py); each party runs it on its own gradient, locally.
    optimizer: str = "auto"
    l2: float = 1e-2  # objective: mean logistic loss + l2/2 |w|^2 (+ l1 |w|); the intercept is not penalised
    l1: float = 0.0
    fit_intercept: bool = True
    # Where each tag's intercept starts: "base_rate" (the log-odds of its base rate among the labelled training
    # rows: a model of few steps is not pulled towards 0.5) or "zero".
    intercept_init: str = "base_rate"
    test_share: float = 0.2
    # Of the rows left after the test share; 0 turns early stopping off. None (automatic): 0.2 where those rows
    # number LARGE_SPLIT or more, else 0.1. The calibration map and early stopping both read validation, and on a
    # large set the ECE of the calibrated probabilities is limited by the validation rows (default_credit: 0.028
    # with 2,400 of them, 0.018 with 4,800; BENCHMARKS.md), while a fifth fewer training rows costs a linear
    # model no measurable AUC there. A small set keeps its rows for training and the label floor.
    validation_share: float | None = None
    # Early stopping, checked after each epoch's validation: stop once this many optimiser steps (batches) have
    # passed since the last epoch that improved some tag's validation AUC; 0 = never stop. Counted in steps, so
    # a small data set (few batches per epoch) is not stopped by a noisy epoch or two, nor a large one kept on.
    patience_steps: int = 100
    early_stopping_patience: int | None = None  # legacy, in epochs: when set it replaces patience_steps (0: never)
    clip: float = 5.0  # standardised features are clipped to +-clip standard deviations
    quant_bits: int = 8  # features under encryption are signed quant_bits-bit integers
    key_bits: int = 2048
    # The additively homomorphic scheme of every key and ciphertext of the session: "paillier" or "ou"
    # (Okamoto-Uchiyama); named in the session's parameters, checked by both parties and the platform's policy.
    he_scheme: str = DEFAULT_SCHEME
    seed: int = 0
    # Label privacy (protocols/vfl_lr/label_privacy.py, docs/security.md "Labels"): "off" enforces the batch
    # floor, "on" adds Gaussian noise for (dp_epsilon, dp_delta)-DP of each customer's labels, "auto" turns it
    # on when the batches would miss the floor (a small data set or batch size) and enforces the floor otherwise.
    label_dp: str = "auto"
    dp_epsilon: float = 3.0
    dp_delta: float = 1e-5
    # Hide the label mask M (which (row, tag) labels the bank knows) from the platform (docs/protocol.md, "Label
    # mask"). Off by default: on, the platform sends one [[z_B]] per (row, tag) instead of one per row, the bank
    # Horner-packs the residuals itself and scales them by 1/m_t, and every training row joins the batches;
    # benchmarks/vfl_lr.py --hide-label-mask measures the cost. Both parties read it from the session's params.
    hide_label_mask: bool = False
    # Which model each tag serves: "best" (the joint model only where its validation AUC beats the bank-only
    # yardstick's, else the bank's own, said in the report's metrics[tag]["served"]) or "joint" (always).
    serve: str = "best"
    # Both parties checkpoint their training state after every this many batches of an epoch and at its end
    # (protocols/vfl_lr/resume.py): a node killed mid-job resumes from there with the same final model.
    checkpoint_every: int = 4
    # What each party trains on: "raw" (its columns, standardised) or "binned" (its columns' one-hot bins, each
    # party binning its own columns from their values on its training rows, by its node's [binning] table:
    # protocols/binning; docs/protocol.md, "Binned features").
    features: str = "raw"
    # With features "binned": "auto" lets the platform bin more coarsely, or train on its raw columns, when its
    # bins would be too many for the batch floor on the labelled rows per tag (protocols/vfl_lr/bin_width.py);
    # "configured" bins as each node's [binning] table says, whatever the floor.
    bins: str = "auto"
    # The platform's feature columns this job trains on (None: every column its policy allows); set from a
    # screen's IV selection (party_common/jobs/screen.py). The platform refuses a column its policy does not allow.
    platform_features: list[str] | None = None

    def validate(self, *, insecure_for_tests: bool = False) -> TrainParams:
        """Raise :class:`TrainingError` on a parameter of the wrong type or out of range; return self."""
        check_field_types(self, what="training parameter", error=TrainingError)
        _check_epochs(self.epochs)
        checks = [
            (self.epochs is None or (isinstance(self.epochs, int) and not isinstance(self.epochs, bool)
                                     and 1 <= self.epochs <= 1000),
             "epochs must be null (automatic) or an integer in 1..1000"),
            (self.batch_size is None or (isinstance(self.batch_size, int) and not isinstance(self.batch_size, bool)
                                         and 16 <= self.batch_size <= 65536),
             "batch_size must be null (automatic) or an integer in 16..65536"),
            (0 < self.learning_rate <= 10, "learning_rate must be in (0, 10]"),
            (self.decay >= 0, "decay must be >= 0"),
            (self.optimizer in ("auto", "adam", "sgd", "newton"), "optimizer must be 'auto', 'adam', 'sgd' or 'newton'"),
            (self.l2 >= 0 and self.l1 >= 0, "l1 and l2 must be >= 0"),
            (0 < self.test_share < 0.9, "test_share must be in (0, 0.9)"),
            (self.validation_share is None or 0 <= self.validation_share < 0.9,
             "validation_share must be null (automatic) or in [0, 0.9)"),
            (self.intercept_init in ("base_rate", "zero"), "intercept_init must be 'base_rate' or 'zero'"),
            (self.patience_steps >= 0, "patience_steps must be an integer >= 0"),
            (self.early_stopping_patience is None or (isinstance(self.early_stopping_patience, int) and not
             isinstance(self.early_stopping_patience, bool) and self.early_stopping_patience >= 0),
             "early_stopping_patience must be null or an integer >= 0"),
            (1 <= self.clip <= 30, "clip must be in [1, 30]"),
            (4 <= self.quant_bits <= 16, "quant_bits must be in 4..16"),
            (self.key_bits in (1024, 2048, 3072, 4096), "key_bits must be 2048, 3072 or 4096"),
            (self.key_bits >= 2048 or insecure_for_tests, "key_bits below 2048 are insecure"),
            (self.label_dp in ("auto", "on", "off"), "label_dp must be 'auto', 'on' or 'off'"),
            (self.he_scheme in scheme_names(), f"he_scheme must be one of {', '.join(scheme_names())}"),
            (self.serve in ("best", "joint"), "serve must be 'best' or 'joint'"),
            (0.05 <= self.dp_epsilon <= 100, "dp_epsilon must be in [0.05, 100]"),
            (0 < self.dp_delta <= 1e-3, "dp_delta must be in (0, 1e-3]"),
            (1 <= self.checkpoint_every <= 100_000, "checkpoint_every must be an integer in 1..100000"),
            (self.features in ("raw", "binned"), "features must be 'raw' or 'binned'"),
            (self.bins in ("auto", "configured"), "bins must be 'auto' or 'configured'"),
            (self.platform_features is None or (isinstance(self.platform_features, list) and 0 < len(
                self.platform_features) <= 100_000 and all(isinstance(c, str) and c for c in self.platform_features)
                and len(set(self.platform_features)) == len(self.platform_features)),
             "platform_features must be null or a non-empty list of distinct column names"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainingError(message)
        return self

    def split(self, labels: np.ndarray, ids: Sequence[str] | None = None) -> Split:
        """The train / validation / test split these parameters give the aligned rows of ``labels``, whose
        customer IDs are ``ids`` (:func:`protocols.evaluation_metrics.split_rows`; the bank passes its aligned IDs)."""
        return split_rows(labels, ids, test_share=self.test_share,
                          validation_share=self.validation_share_for(len(labels)), seed=self.seed)

    def validation_share_for(self, n_rows: int) -> float:
        """The validation share for ``n_rows`` aligned rows: the explicit one, or the automatic choice."""
        if self.validation_share is not None:
            return self.validation_share
        return 0.2 if n_rows * (1 - self.test_share) >= LARGE_SPLIT else 0.1

    def start_intercepts(self, labels: np.ndarray, train: np.ndarray) -> np.ndarray | None:
        """The intercepts training starts from (None: zeros), per :attr:`intercept_init`."""
        return base_rate_intercepts(labels, train) if self.intercept_init == "base_rate" else None

    def should_stop(self, stale_epochs: int, stale_steps: int) -> bool:
        """Whether early stopping ends training after an epoch, given what passed since the last improvement."""
        if self.early_stopping_patience is not None:
            return bool(self.early_stopping_patience) and stale_epochs >= self.early_stopping_patience
        return bool(self.patience_steps) and stale_steps >= self.patience_steps

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainParams:
        """Parameters from a mapping; missing ones take their defaults.

        :class:`TrainingError` names an unknown key (with the known ones) or a value of the wrong type;
        ranges are :meth:`validate`'s business. Integers are accepted where a number is expected.
        """
        if isinstance(d, Mapping):
            _check_epochs(d.get("epochs"))
        return dataclass_from_mapping(cls, d, what="training parameter", error=TrainingError)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainParams:
        try:
            d = json.loads(text)
        except ValueError as err:
            raise TrainingError(f"training parameters are not valid JSON: {err}") from err
        return cls.from_dict(d)

def _check_epochs(value: object) -> None:
    """Refuse epochs that are neither null (automatic) nor an integer, as for the other integer fields."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise TrainingError(f"training parameter 'epochs' must be an integer, got {type(value).__name__}")


@dataclass(frozen=True)
class SlotPlan:
    """Slot widths, derived from the batch size and the quantisation (see docs/protocol.md)."""

    quant_bits: int
    batch_size: int
    n_tags: int
    plaintext_bits: int  # usable signed bits of the smaller of the two keys
    hide_mask: bool = False  # TrainParams.hide_label_mask: residuals scaled by 2^G / m_t (G = scale_bits)
    dp_headroom: bool = False  # label_dp is not "off": residual slots hold d' 2^F plus label-DP noise

    @classmethod
    def for_params(cls, params: TrainParams, batch_rows: int, n_tags: int, plaintext_bits: int) -> SlotPlan:
        """The plan both parties derive from a session's parameters (the largest batch, the smaller key)."""
        return cls(params.quant_bits, batch_rows, n_tags, plaintext_bits, hide_mask=params.hide_label_mask,
                   dp_headroom=params.label_dp != "off")

    @property
    def residual_bits(self) -> int:  # |d' 2^F| (plus its label-DP noise, which the bank keeps inside this bound)
        return D_BITS + (DP_NOISE_BITS if self.dp_headroom else 0)

    @property
    def batch_bits(self) -> int:
        return max(1, math.ceil(math.log2(self.batch_size + 1)))

    @property
    def cross_bits(self) -> int:  # |sum_i xq * z_B 2^F| over a batch
        return self.quant_bits + self.batch_bits + 26

    @property
    def cross_slot(self) -> int:
        return self.cross_bits + STAT_BITS + 2

    @property
    def scale_bits(self) -> int:  # G: hide_label_mask scales d' 2^F by round(2^G / m_t) <= 2^G; else 0
        return self.batch_bits + SCALE_MARGIN_BITS if self.hide_mask else 0

    @property
    def e_bits(self) -> int:  # the mask e hiding d' 2^F (times the scale and its dither under hide_mask)
        return self.residual_bits + self.scale_bits + (1 if self.hide_mask else 0) + STAT_BITS

    @property
    def pair_slot(self) -> int:
        return self.e_bits + 2

    @property
    def emask_bits(self) -> int:  # |sum_i xq * e| over a batch
        return self.quant_bits + self.batch_bits + self.e_bits

    @property
    def emask_slot(self) -> int:
        return self.emask_bits + STAT_BITS + 2

    @property
    def group(self) -> int:  # tags per per-row ciphertext
        return max(1, min(self.n_tags, self.plaintext_bits // self.emask_slot))

    @property
    def groups(self) -> list[range]:
        return [range(s, min(s + self.group, self.n_tags)) for s in range(0, self.n_tags, self.group)]

    @property
    def pairs_per_ct(self) -> int:
        return self.plaintext_bits // self.pair_slot

    def pair_cts(self, n_pairs: int) -> int:
        """Ciphertexts that hold ``n_pairs`` densely packed (row, tag) values."""
        return -(-n_pairs // self.pairs_per_ct)

    def features_per_emask_ct(self, group_len: int) -> int:
        return max(1, self.plaintext_bits // (self.emask_slot * group_len))


def plaintext_bits(*keys: PublicKey, scheme: str = HE_SCHEME) -> int:
    """Usable signed plaintext bits of the smallest of ``keys`` under ``scheme``: what the scheme packs below its
    plaintext modulus (n / 3 for Paillier, below p for Okamoto-Uchiyama)."""
    he = get_scheme(scheme)
    return min(he.slots_per_plaintext(k, 1) for k in keys)


__all__ = ["DP_NOISE_BITS", "D_BITS", "F_BITS", "HE_SCHEME", "SCALE_MARGIN_BITS", "STAT_BITS", "VERSION", "Z_CLIP", "SlotPlan", "TrainParams", "TrainingError",
           "plaintext_bits"]


def base_rate_intercepts(labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per tag, the log-odds of the base rate among the labelled ``rows``: where each tag's intercept starts."""
    known = labels[rows]
    positives = np.nansum(known, axis=0)
    counts = (~np.isnan(known)).sum(axis=0)
    rate = np.clip(positives / np.maximum(counts, 1), 1e-6, 1 - 1e-6)
    rate[counts == 0] = 0.5
    return np.log(rate / (1 - rate))
