"""Two-party vertical logistic regression, one model per tag, all tags in one job; no third party.

The bank (labels ``Y``, features ``X_A``) drives; the platform (features ``X_B``) answers. Each party keeps
its own weights in plaintext and learns only its own gradient; the protocol, its encodings and what each
side learns are written down in ``docs/protocol.md``. In short, per mini-batch (Taylor loss around 0,
``d' = 4 d = z_B + z_A + 2 - 4 y``, ``[[.]]_P`` under the platform's key, ``[[.]]_A`` under the bank's):

* ahead of time (needs neither the model nor the labels): the bank draws masks ``e`` and sends
  ``[[e]]_A``; the platform returns ``[[X_B^T e + R_B]]_A``; the bank decrypts and returns it;
* ``train.forward``: the platform sends ``[[z_B]]_P`` twice: per row with the tags in slots (for the
  bank's product) and densely packed per labelled (row, tag) pair (for decryption);
* ``train.gradient``: the bank sends ``[[X_A^T z_B + R_A]]_P`` and ``[[d' + e]]_P``; the platform
  decrypts both, returns the first, and computes ``X_B^T d' = X_B^T (d' + e) - X_B^T e``;
* ``train.evaluate`` (validation rows per epoch; test rows after ``train.finish`` names each tag's best
  epoch): the bank sends ``[[z_A]]_A`` and the labels under its own key, the platform adds ``z_B``,
  shuffles and re-randomises, and the bank decrypts a multiset of (joint score, label) pairs per tag.

All ciphertext-side arithmetic is on integers: ``z`` in fixed point with ``F_BITS`` fractional bits,
features quantised to ``quant_bits``-bit integers for the products under encryption.

Modules: ``params`` (parameters, constants, slot plan), ``messages`` (step and field names, wire readers),
``encoding`` (integer encodings), ``state`` (local optimisation and the per-party training state),
``model`` (the two model halves), ``bank`` and ``platform`` (the two sides), ``evaluation`` (the shuffled
evaluation of held-out rows), ``label_mask`` (``TrainParams.hide_label_mask``: per-pair encodings that keep
the label mask and the per-batch counts from the platform), ``reference`` (the plaintext twin and the
plaintext Taylor trainer), ``calibration`` (Platt or a monotone map per tag), ``yardstick`` (the same-optimiser
bank-only yardstick and the report's calibrated metrics and predictions). The split (keyed by customer IDs)
and the metrics are ``protocols.evaluation_metrics``.
"""

__all__ = [
    "MIN_ROWS",
    "VERSION",
    "BankModel",
    "BankTrainState",
    "ModelError",
    "PlatformModel",
    "PlatformTrainHandler",
    "PlatformTrainState",
    "Split",
    "SlotPlan",
    "TrainOutcome",
    "TrainParams",
    "TrainingError",
    "make_platform_train_handler",
    "plaintext_reference",
    "run_bank_training",
    "sigmoid",
    "split_rows",
]

from protocols.evaluation_metrics import Split, split_rows
from protocols.vfl_lr.bank import MIN_ROWS, TrainOutcome, run_bank_training
from protocols.vfl_lr.model import BankModel, ModelError, PlatformModel, sigmoid
from protocols.vfl_lr.params import VERSION, SlotPlan, TrainingError, TrainParams
from protocols.vfl_lr.platform import PlatformTrainHandler, make_platform_train_handler
from protocols.vfl_lr.reference import plaintext_reference
from protocols.vfl_lr.state import BankTrainState, PlatformTrainState
