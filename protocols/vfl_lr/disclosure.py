"""What the platform lets the bank read of its rows, and the checks it makes on what it decrypts for the bank.

Two ideas, both the platform's (docs/security.md, "Outside the model: a party that deviates"):

* **Projections.** Every joint score the bank obtains from the platform is ``x_B . w`` for some row ``x_B``
  and some weight vector ``w``: a linear projection of that customer's platform features. Enough distinct
  ``w`` span the feature space. The platform counts, per customer, the distinct weight vectors whose
  projection the bank may have read (a :class:`DisclosureBudget`; the node keeps it per customer across
  alignments, ``party_platform/disclosure.py``). A shuffled evaluation multiset counts as one projection per
  evaluated row and tag: a bank that crafts its ``[[z_A]]`` (which the platform cannot check, it is under
  the bank's key) or tags whose label classes hold one row each reads per-row values out of it.
  :class:`Projection` names a weight vector: the model job, the tag and the epoch whose weights it is.
* **Checks.** What the platform decrypts for the bank in ``train.gradient`` must have the count and layout
  the honest protocol produces and every slot the range the honest protocol gives it
  (``protocols.vfl_lr.encoding.check_slots``); a violation raises ``DeviationDetected``, which stops the job on both sides. Without
  zero-knowledge proofs this cannot tell a crafted ciphertext from an honest one *inside* those ranges:
  what a bank still reads that way is bounded in docs/security.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from protocols.errors import ProtocolError
from protocols.vfl_lr.encoding import check_slots
from protocols.vfl_lr.messages import Step
from protocols.vfl_lr.params import STAT_BITS, SlotPlan

# The policy's defaults (party_common/policy.py names them as [policy] keys; the node passes its own).
MAX_BANK_COLUMNS = 1000
MAX_VALIDATION_EVALUATIONS = 1
MIN_EVALUATION_ROWS = 20


class DisclosureRefused(ProtocolError):
    """Answering would give some customer more distinct projections of the platform's features than its policy
    allows ([policy] max_released_projections)."""


@dataclass(frozen=True)
class EvaluationLimits:
    """The platform's limits on a training session ([policy] keys of the same names)."""

    max_bank_columns: int = MAX_BANK_COLUMNS  # train.setup: the bank's model columns, the width of train.gradient
    max_validation_evaluations: int = MAX_VALIDATION_EVALUATIONS  # distinct epochs whose validation rows it scores
    min_evaluation_rows: int = MIN_EVALUATION_ROWS  # the smallest validation or test split it evaluates


class Projection(NamedTuple):
    """One weight vector of the platform's: ``tag``'s weights in ``job_id`` after ``epoch`` (0-based; None in
    a model stored before the platform kept its best epochs, counted as one vector per tag)."""

    job_id: str
    tag: str
    epoch: int | None

    @property
    def name(self) -> str:
        return f"{self.job_id}:{self.tag}" if self.epoch is None else f"{self.job_id}:{self.tag}@{self.epoch}"


class DisclosureBudget(Protocol):
    """The platform's count of projections released per customer (the node's: ``party_platform.disclosure``)."""

    @property
    def limit(self) -> int:
        """The most distinct projections per customer ([policy] max_released_projections)."""

    def charge(self, ids: Sequence[str], projections: Sequence[Projection], *, what: str,
               check_only: bool = False) -> int:
        """Record ``projections`` as released for every customer of ``ids``, all or nothing; raise
        :class:`DisclosureRefused` (naming ``what`` and the knob) if a customer would pass the limit. Returns the
        most distinct projections any of them holds afterwards. ``check_only``: refuse or not, record nothing."""

    def epochs_evaluated(self, job_id: str) -> set[int]:
        """The epochs of ``job_id`` whose validation rows were already evaluated (charged), over all sessions."""


def validation_epochs(epochs: int, limit: int | None) -> set[int]:
    """Which of ``epochs`` epochs the bank evaluates on validation when the platform allows ``limit``
    (None: every one): evenly spaced, the last epoch always among them."""
    if limit is None or limit >= epochs:
        return set(range(epochs))
    return {epochs - 1 - (k * epochs) // limit for k in range(limit)}


def check_training_budget(budget: DisclosureBudget, job_id: str, tags: Sequence[str], epochs: int,
                          limits: EvaluationLimits, validation_ids: list[str], test_ids: list[str]) -> None:
    """Refuse at setup a job whose evaluations would take some customer past the disclosure budget (the
    evaluations charge it for real when they come): validation rows at most ``max_validation_evaluations`` weight
    vectors per tag (those already evaluated by an earlier session of the job count as they are), test rows one
    per tag."""
    done = sorted(budget.epochs_evaluated(job_id))
    later = max(0, min(limits.max_validation_evaluations, epochs) - len(done))
    # Epochs not evaluated yet stand as -1, -2, ...: weight vectors no customer holds (nothing is recorded).
    for ids, evaluated in ((validation_ids, [*done, *range(-1, -1 - later, -1)]), (test_ids, [-1])):
        if ids:
            wanted = [Projection(job_id, tag, e) for tag in tags for e in evaluated]
            budget.charge(ids, wanted, what=f"training job {job_id}", check_only=True)


# ------------------------------------------------------------------ what the platform decrypts for the bank ----


def check_masked_gradient(plan: SlotPlan, opened: list[int], bank_columns: int) -> None:
    """What the platform decrypted for the bank in ``train.gradient``: per (tag group, bank column) one packed
    value of the group's tags in ``cross_slot``-bit slots, each ``X_Aq^T (M o z_B 2^F) + R_A`` with
    ``|X_Aq^T ...| < 2^cross_bits`` and ``R_A`` in ``[0, 2^(cross_bits + STAT_BITS))``; else ``DeviationDetected``."""
    low, high = -(1 << plan.cross_bits), (1 << (plan.cross_bits + STAT_BITS)) + (1 << plan.cross_bits)
    for index, value in enumerate(opened):
        g = plan.groups[index // bank_columns]
        check_slots(value, len(g), plan.cross_slot, low, high, step=Step.GRADIENT, check="masked gradient range")


def open_residuals(plan: SlotPlan, opened: list[int], mask: np.ndarray, *, hidden: bool) -> np.ndarray:
    """``S`` (rows x T) from the decrypted residuals, checked: each packed value holds exactly its pairs and each
    slot is ``k_t d' 2^F + e`` (``|k_t d' 2^F| < 2^(residual_bits + G + 1)``, label-DP noise included, ``e`` in
    ``[0, 2^e_bits)``) or, ``hidden`` (every pair, tag-major, ``pairs_per_ct`` to a ciphertext per tag) and
    unlabelled, ``e`` alone. ``mask``: the batch's label mask (rows x T; with ``hidden`` only its shape counts)."""
    n_rows, n_tags = mask.shape
    spread = 1 << (plan.residual_bits + plan.scale_bits + 1)
    low, high, k = -spread, (1 << plan.e_bits) + spread, plan.pairs_per_ct
    step, check = Step.GRADIENT, "masked residuals range"
    S = np.zeros((n_rows, n_tags), dtype=object)
    if hidden:
        j = 0
        for t in range(n_tags):
            for start in range(0, n_rows, k):
                count = min(k, n_rows - start)
                slots = check_slots(opened[j], count, plan.pair_slot, low, high, step=step, check=check)
                for i, v in enumerate(slots, start=start):
                    S[i, t] = v
                j += 1
        return S
    ii, tt = np.nonzero(mask)
    values: list[int] = []
    for j, value in enumerate(opened):
        values.extend(check_slots(value, min(k, len(ii) - j * k), plan.pair_slot, low, high, step=step, check=check))
    for i, t, v in zip(ii, tt, values, strict=True):
        S[i, t] = v
    return S


__all__ = ["check_masked_gradient", "check_training_budget", "open_residuals", "MAX_BANK_COLUMNS", "MAX_VALIDATION_EVALUATIONS", "MIN_EVALUATION_ROWS",
           "DisclosureBudget", "DisclosureRefused", "EvaluationLimits", "Projection",
           "validation_epochs"]
