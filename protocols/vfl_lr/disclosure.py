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

from protocols.errors import ProtocolError

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


__all__ = ["MAX_BANK_COLUMNS", "MAX_VALIDATION_EVALUATIONS", "MIN_EVALUATION_ROWS",
           "DisclosureBudget", "DisclosureRefused", "EvaluationLimits", "Projection",
           "validation_epochs"]
