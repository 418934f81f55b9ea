"""Vertical federated logistic regression as a model family (``protocols.model_family``): each half scores
its standardised features times its weights, and the bank adds the two parts and calibrates per tag."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from protocols.model_family import ModelFamily
from protocols.vfl_lr.model import FAMILY, BankModel, PlatformModel


class VflLrFamily(ModelFamily):
    name = FAMILY

    def load_bank(self, doc: Mapping[str, Any], *, where: str) -> BankModel:
        return BankModel.from_dict(doc, where=where)

    def load_platform(self, doc: Mapping[str, Any], *, where: str) -> PlatformModel:
        return PlatformModel.from_dict(doc, where=where)

    def bank_scores(self, half: BankModel, features: np.ndarray) -> np.ndarray:  # type: ignore[override]
        """``z_A`` with the intercepts."""
        return half.partial_scores(features)

    def platform_answer(self, half: PlatformModel, features: np.ndarray) -> np.ndarray:  # type: ignore[override]
        """``z_B``."""
        return half.partial_scores(features)

    def combine(self, half: BankModel, bank_scores: np.ndarray, platform_answer: np.ndarray,  # type: ignore[override]
                columns: Sequence[int]) -> np.ndarray:
        """``calibrate(z_A + z_B)`` per tag (Platt or the monotone map fitted on validation)."""
        return half.probabilities(bank_scores + platform_answer, columns)


VFL_LR = VflLrFamily()

__all__ = ["VFL_LR", "VflLrFamily"]
