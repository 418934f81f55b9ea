"""The two trained model halves, as plain dictionaries for the nodes' storage, and the sigmoid that joins them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocols.errors import UserError
from protocols.party_data import Schema
from protocols.vfl_lr.params import VERSION
from protocols.vfl_lr.state import Scaler

# Model dicts read: v2 changed how held-out rows are evaluated during training, not what a model holds.
READABLE_VERSIONS = (VERSION, "vfl-lr-taylor-v1")


class ModelError(UserError):
    """A stored model half is damaged, belongs to the other party, or is of another protocol version."""


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, safe from overflow: scores to probabilities."""
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))


@dataclass
class BankModel:
    """The bank's half: weights on its features, intercepts, scaler, schema, tags, job and keys."""

    job_id: str
    tag_names: list[str]
    weights: np.ndarray  # (d_A, T)
    intercept: np.ndarray  # (T,)
    scaler: Scaler
    schema: Schema
    key_fingerprints: dict[str, str]
    alignment_job_id: str = ""
    kind: str = field(default="bank", init=False)

    def partial_scores(self, features: np.ndarray) -> np.ndarray:
        """``z_A`` (with the intercept) for rows of raw bank features, one column per tag."""
        return self.scaler.transform(np.asarray(features, dtype=np.float64)) @ self.weights + self.intercept

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible values; :meth:`from_dict` restores the model exactly."""
        return {**_common_dict(self), "intercept": self.intercept.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str) -> BankModel:
        """The model of :meth:`to_dict`; :class:`ModelError` names ``where`` (e.g. the file) if ``d`` is not one."""
        common = _common_fields(d, "bank", where)
        try:
            intercept = np.array(d["intercept"], dtype=np.float64)
            if intercept.shape != (len(common["tag_names"]),):
                raise ValueError("the intercepts are not one per tag")
        except (KeyError, TypeError, ValueError) as err:
            raise ModelError(f"{where}: damaged bank model: {_reason(err)}") from err
        return cls(intercept=intercept, **common)


@dataclass
class PlatformModel:
    """The platform's half: weights on its features per tag (no intercept), scaler, schema, job and keys."""

    job_id: str
    tag_names: list[str]
    weights: np.ndarray  # (d_B, T)
    scaler: Scaler
    schema: Schema
    key_fingerprints: dict[str, str]
    alignment_job_id: str = ""
    kind: str = field(default="platform", init=False)

    def partial_scores(self, features: np.ndarray) -> np.ndarray:
        """``z_B`` for rows of raw platform features, one column per tag."""
        return self.scaler.transform(np.asarray(features, dtype=np.float64)) @ self.weights

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible values; :meth:`from_dict` restores the model exactly."""
        return _common_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str) -> PlatformModel:
        """The model of :meth:`to_dict`; :class:`ModelError` names ``where`` (e.g. the file) if ``d`` is not one."""
        return cls(**_common_fields(d, "platform", where))


def _common_dict(model: BankModel | PlatformModel) -> dict[str, Any]:
    """What both halves store."""
    return {"kind": model.kind, "version": VERSION, "job_id": model.job_id, "tags": list(model.tag_names),
            "weights": model.weights.tolist(), "scaler": model.scaler.to_dict(), "schema": model.schema.to_dict(),
            "key_fingerprints": dict(model.key_fingerprints), "alignment_job_id": model.alignment_job_id}


def _common_fields(d: Mapping[str, Any], kind: str, where: str) -> dict[str, Any]:
    if not isinstance(d, Mapping):
        raise ModelError(f"{where}: not a {kind} model (not an object of name: value)")
    if d.get("kind") != kind or d.get("version") not in READABLE_VERSIONS:
        raise ModelError(f"{where}: not a {kind} model of {VERSION} (it says kind {d.get('kind')!r}, "
                         f"version {d.get('version')!r})")
    try:
        tags = [_str(t) for t in d["tags"]]
        weights = np.array(d["weights"], dtype=np.float64).reshape(-1, len(tags))
        scaler = Scaler.from_dict(d["scaler"])
        schema = Schema.from_dict(d["schema"])
        if not tags:
            raise ValueError("no tags")
        if not (len(weights) == len(scaler.mean) == len(scaler.std) == len(schema.feature_columns)):
            raise ValueError("weights, scaler and schema do not have the same features")
        return {"job_id": _str(d["job_id"]), "tag_names": tags, "weights": weights, "scaler": scaler,
                "schema": schema, "key_fingerprints": {_str(k): _str(v) for k, v in d["key_fingerprints"].items()},
                "alignment_job_id": _str(d.get("alignment_job_id", ""))}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ModelError(f"{where}: damaged {kind} model: {_reason(err)}") from err


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


def _reason(err: Exception) -> str:
    return f"missing {err}" if isinstance(err, KeyError) else str(err)


__all__ = ["BankModel", "ModelError", "PlatformModel", "sigmoid"]
