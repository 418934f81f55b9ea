"""What online scoring answers: probabilities per customer and tag, and where the platform's budget stands."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scores:
    tags: list[str]
    probabilities: np.ndarray  # (customers, tags)
    platform_known: np.ndarray  # bool per customer: False = scored on the bank's features alone
    projections_released: int  # the platform's disclosure budget on the model's alignment: used ...
    projections_limit: int  # ... of this many (0, 0 when no customer reached the platform)
