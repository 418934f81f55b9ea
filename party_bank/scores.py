"""What online scoring answers: probabilities per customer and tag, and where the platform's budget stands."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# One status per scored customer (ScoreResponse.status): what the probabilities are made of.
OK = "ok"  # the joint model: bank and platform parts
NOT_IN_INTERSECTION = "not_in_intersection"  # no platform part: not a shared customer, scored bank-only
UNKNOWN_CUSTOMER = "unknown_customer"  # not a bank customer: no probabilities (NaN)
PLATFORM_UNAVAILABLE = "platform_unavailable"  # a shared customer scored bank-only: the platform was down
STATUSES = (OK, NOT_IN_INTERSECTION, UNKNOWN_CUSTOMER, PLATFORM_UNAVAILABLE)

# Which model scores a tag (a train job's ``metrics[tag]["served"]["model"]``), in words for people.
SERVED_NAMES = {"joint": "joint", "bank_only": "bank-only"}


def served_model(metrics: Mapping[str, Any] | None, tag: str) -> str:
    """``joint`` or ``bank-only``: the model that scores ``tag`` (``?`` for a job that did not record it)."""
    served = (((metrics or {}).get(tag) or {}).get("served") or {}).get("model")
    return SERVED_NAMES.get(served, "?") if served else "?"


@dataclass(frozen=True)
class Scores:
    tags: list[str]
    probabilities: np.ndarray  # (customers, tags)
    platform_known: np.ndarray  # bool per customer: False = scored on the bank's features alone
    projections_released: int  # the platform's disclosure budget per customer: the most any scored one used ...
    projections_limit: int  # ... of this many (0, 0 when no customer reached the platform)
    status: list[str] = field(default_factory=list)  # one of STATUSES per customer
    note: str = ""  # why the platform's part is missing (bank-only fallback), in one line
    served: list[str] = field(default_factory=list)  # per tag: "joint" or "bank_only" (the model scoring it)
    model_job_id: str = ""  # the train job the model reference resolved to
