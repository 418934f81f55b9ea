"""The model-family seam for serving: what the nodes ask of a trained model, whatever its family.

A family (``"vfl-lr"``: vertical federated logistic regression; boosted trees next) says how its two halves
are stored and how they score. Each stored half names its family (:data:`FAMILY_FIELD`; a half stored
before the field existed is :data:`LEGACY_FAMILY`), and the nodes go through the registry
(``protocols.models``) for every step of serving, so a new family plugs in there without touching them:

* the bank loads its half (:meth:`ModelFamily.load_bank`) and scores its own features for rows
  (:meth:`ModelFamily.bank_scores`, rows x tags);
* the platform loads its half (:meth:`ModelFamily.load_platform`) and answers for rows and tags
  (:meth:`ModelFamily.platform_answer`, rows x tags of floats: what ``PartialScores`` carries);
* the bank combines its scores and the platform's answer into calibrated probabilities
  (:meth:`ModelFamily.combine`).

A half also carries what serving needs around the scores (tags, schema, alignment; the bank's fallback
when the platform is unreachable, the platform's epochs for its disclosure budget): :class:`BankHalf`,
:class:`PlatformHalf`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from protocols.errors import UserError
from protocols.party_data import Schema

FAMILY_FIELD = "family"
LEGACY_FAMILY = "vfl-lr"  # the family of a model half stored without FAMILY_FIELD


class ModelError(UserError):
    """A stored model half is damaged, belongs to the other party, or is of another family or version."""


class ModelHalf(Protocol):
    family: str
    kind: str  # "bank" or "platform"
    job_id: str
    tag_names: list[str]
    schema: Schema
    alignment_job_id: str

    def to_dict(self) -> dict[str, Any]: ...


class BankHalf(ModelHalf, Protocol):
    # Per tag, whether its scores ask the platform for its part (False: the bank's own model serves the tag).
    platform_part: list[bool] | None

    def bank_only_probabilities(self, features: np.ndarray, columns: Sequence[int] | None = None) -> np.ndarray:
        """Probabilities from the bank's features alone: the fallback while the platform is unreachable."""
        ...

    def fallback_note(self) -> str:
        """What the fallback scored with, in one line."""
        ...


class PlatformHalf(ModelHalf, Protocol):
    best_epoch: list[int] | None  # per tag, names its projections in the disclosure budget


class ModelFamily(ABC):
    """One model family's serving: loading its halves, each party's scores, and their combination."""

    name: str  # stored in each half as FAMILY_FIELD

    @abstractmethod
    def load_bank(self, doc: Mapping[str, Any], *, where: str) -> BankHalf:
        """The bank's half from its stored dict; :class:`ModelError` naming ``where`` if it is not one."""

    @abstractmethod
    def load_platform(self, doc: Mapping[str, Any], *, where: str) -> PlatformHalf:
        """The platform's half from its stored dict; :class:`ModelError` naming ``where`` if it is not one."""

    @abstractmethod
    def bank_scores(self, half: BankHalf, features: np.ndarray) -> np.ndarray:
        """The bank's part for rows of its raw features: (rows, every tag of the model)."""

    @abstractmethod
    def platform_answer(self, half: PlatformHalf, features: np.ndarray) -> np.ndarray:
        """The platform's answer for rows of its raw features: (rows, every tag of the model), floats."""

    @abstractmethod
    def combine(self, half: BankHalf, bank_scores: np.ndarray, platform_answer: np.ndarray,
                columns: Sequence[int]) -> np.ndarray:
        """Calibrated probabilities (rows, len(columns)) from the bank's scores and the platform's answer,
        both already cut to the model's tag ``columns`` (the platform's zero where it has no part)."""


__all__ = ["FAMILY_FIELD", "LEGACY_FAMILY", "BankHalf", "ModelError", "ModelFamily", "ModelHalf", "PlatformHalf"]
