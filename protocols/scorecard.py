"""Scorecards: one party's half of a model trained on bins, as points per bin per feature, per tag.

The convention of credit scorecards (Siddiqi, *Credit Risk Scorecards*, 2006): a score is linear in the log
of the odds, ``score = offset + factor * ln(odds)``, with ``factor = PDO / ln 2`` (every ``PDO`` points the
odds double) and ``offset = base_score - factor * ln(base_odds)`` (at ``base_score`` the odds are
``base_odds``). Defaults: 600 points at odds of 50:1, 20 points to double them. The odds are the tag's own
(``p / (1 - p)`` of the event the tag names): more points, more likely.

A binned model's half scores a row as a sum over its features of one term per feature's bin (its one-hot
columns, standardised and clipped, times their weights: each bin's term is exact, not an approximation), so
``ln(odds) = intercept + sum over both parties' features of the term of the row's bin``. Each party's table
turns its own terms into points (``factor * term``); the bank's table adds the base points (``offset + factor
* intercept``). The sum of the bank's base points and both parties' points for a row's bins is ``offset +
factor * z``, ``z`` the model's joint log-odds before calibration; the served probability is the tag's
calibration of ``z`` (kept in the bank's table). Each party exports only its own half: the bank's table
never holds the platform's weights, nor the platform's the bank's.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocols.binning import BinningModel
from protocols.errors import UserError
from protocols.scoring import bin_tables

DEFAULT_BASE_SCORE, DEFAULT_PDO, DEFAULT_BASE_ODDS = 600.0, 20.0, 50.0
VERSION = "scorecard-v1"
CSV_COLUMNS = ("tag", "party", "feature", "bin", "points")
BASE_FEATURE = "(base points)"  # the bank's row holding offset + factor * intercept


class ScorecardError(UserError):
    """A scorecard cannot be made (a model not trained on bins, a scaling out of range, an unknown tag)."""


@dataclass(frozen=True)
class Scaling:
    base_score: float = DEFAULT_BASE_SCORE
    pdo: float = DEFAULT_PDO
    base_odds: float = DEFAULT_BASE_ODDS

    def __post_init__(self) -> None:
        for name in ("base_score", "pdo", "base_odds"):
            if not math.isfinite(getattr(self, name)):
                raise ScorecardError(f"scorecard: {name} must be a finite number")
        if self.pdo <= 0:
            raise ScorecardError(f"scorecard: points to double the odds (pdo) must be positive, not {self.pdo:g}")
        if self.base_odds <= 0:
            raise ScorecardError(f"scorecard: base odds must be positive, not {self.base_odds:g}")

    @classmethod
    def of(cls, base_score: float | None = None, pdo: float | None = None,
           base_odds: float | None = None) -> Scaling:
        """Defaults for the values not given (None)."""
        return cls(DEFAULT_BASE_SCORE if base_score is None else base_score, DEFAULT_PDO if pdo is None else pdo,
                   DEFAULT_BASE_ODDS if base_odds is None else base_odds)

    @property
    def factor(self) -> float:
        return self.pdo / math.log(2.0)

    @property
    def offset(self) -> float:
        return self.base_score - self.factor * math.log(self.base_odds)

    def to_dict(self) -> dict[str, float]:
        return {"base_score": self.base_score, "pdo": self.pdo, "base_odds": self.base_odds,
                "factor": self.factor, "offset": self.offset}


def bin_terms(binning: BinningModel, mean: np.ndarray, std: np.ndarray, clip: float,
              weights: np.ndarray) -> list[np.ndarray]:
    """Per feature, its log-odds term for each of its bins (one tag's ``weights`` over the one-hot columns).

    A row in bin ``b`` of a feature has 1 in that bin's one-hot column and 0 in the feature's others, so the
    feature adds ``t1[b] + sum of t0 over its other columns``, with ``t1``, ``t0`` a column's standardised,
    clipped value times its weight when it is 1 or 0.
    """
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    width = int(binning.offsets()[-1])
    if not len(np.asarray(mean).reshape(-1)) == len(np.asarray(std).reshape(-1)) == len(w) == width:
        raise ScorecardError(f"the model's weights cover {len(w)} columns, its binning {width} bins")
    terms = bin_tables(binning, mean, std, clip, w).terms[0]  # the very terms online scoring adds up
    offsets = binning.offsets()
    return [terms[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def party_table(party: str, job_id: str, binning: BinningModel | None, mean: np.ndarray, std: np.ndarray,
                clip: float, weights: np.ndarray, tag_names: Sequence[str], tags: Sequence[str], scaling: Scaling, *,
                intercept: np.ndarray | None = None,
                extra: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """One party's scorecard of a model half: per tag in ``tags``, points per bin of each of its features
    (and, given the ``intercept``, the bank's base points). ``extra``: per tag, fields added as they are."""
    if binning is None:
        raise ScorecardError(f"model {job_id} was trained on raw features: a points table needs a model "
                             "trained on bins (train with the parameter features = \"binned\")")
    unknown = [t for t in tags if t not in tag_names]
    if unknown:
        raise ScorecardError(f"model {job_id} has no tag(s) {', '.join(unknown)} (it has {', '.join(tag_names)})")
    W = np.asarray(weights, dtype=np.float64)
    out: dict[str, Any] = {}
    for tag in tags or list(tag_names):
        t = list(tag_names).index(tag)
        terms = bin_terms(binning, mean, std, clip, W[:, t])
        entry: dict[str, Any] = {"features": [
            {"feature": column.name, "bins": [{"bin": label, "points": scaling.factor * float(term)}
                                              for label, term in zip(column.labels(), feature_terms, strict=True)]}
            for column, feature_terms in zip(binning.columns, terms, strict=True)]}
        if intercept is not None:
            entry = {"base_points": scaling.offset + scaling.factor * float(intercept[t]), **entry}
        out[tag] = {**entry, **dict((extra or {}).get(tag, {}))}
    return {"version": VERSION, "party": party, "model": job_id, "scaling": scaling.to_dict(), "tags": out,
            "left_out": dict(binning.dropped)}


def bank_table(model: Any, tags: Sequence[str], scaling: Scaling) -> dict[str, Any]:
    """The bank's scorecard of its half of a vertical LR model (``protocols.vfl_lr.model.BankModel``): its
    features' points, the base points, and per tag the calibration that maps ``z`` to the served probability."""
    cal = model.calibration or [None] * len(model.tag_names)
    part = model.platform_part or [True] * len(model.tag_names)
    extra = {tag: {"calibration": cal[t], "served": "joint" if part[t] else "bank_only",
                   **({} if part[t] else {"note": "served by the bank-only model: the platform's points do not "
                                                  "apply to this tag"})}
             for t, tag in enumerate(model.tag_names)}
    s = model.scaler
    return party_table("bank", model.job_id, getattr(model, "binning", None), s.mean, s.std, s.clip, model.weights,
                       model.tag_names, tags, scaling, intercept=model.intercept, extra=extra)


def platform_table(model: Any, tags: Sequence[str], scaling: Scaling) -> dict[str, Any]:
    """The platform's scorecard of its half (``protocols.vfl_lr.model.PlatformModel``): its features' points
    only (the base points are the bank's). Only ``scaling.pdo`` matters to it: the same PDO as the bank's."""
    s = model.scaler
    return party_table("platform", model.job_id, getattr(model, "binning", None), s.mean, s.std, s.clip,
                       model.weights, model.tag_names, tags, scaling)


def row_points(table: Mapping[str, Any], tag: str, binning: BinningModel, X: np.ndarray) -> np.ndarray:
    """The points of raw feature rows ``X`` under one party's ``table`` for ``tag`` (its base points included,
    if it has them): what a scorecard user adds up by hand."""
    entry = table["tags"][tag]
    bins = binning.transform(np.asarray(X))
    points = np.full(len(bins), float(entry.get("base_points", 0.0)))
    for j, feature in enumerate(entry["features"]):
        values = np.array([b["points"] for b in feature["bins"]], dtype=np.float64)
        points += values[bins[:, j]]
    return points


def log_odds(scaling: Mapping[str, float], points: np.ndarray) -> np.ndarray:
    """The joint log-odds ``z`` a total of both parties' points stands for."""
    return (np.asarray(points, dtype=np.float64) - scaling["offset"]) / scaling["factor"]


def to_csv(table: Mapping[str, Any]) -> str:
    """The table as CSV, one row per (tag, feature, bin): tag, party, feature, bin, points."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for tag, entry in table["tags"].items():
        if "base_points" in entry:
            writer.writerow([tag, table["party"], BASE_FEATURE, "", f"{entry['base_points']:.6f}"])
        for feature in entry["features"]:
            for b in feature["bins"]:
                writer.writerow([tag, table["party"], feature["feature"], b["bin"], f"{b['points']:.6f}"])
    return out.getvalue()


__all__ = ["BASE_FEATURE", "CSV_COLUMNS", "DEFAULT_BASE_ODDS", "DEFAULT_BASE_SCORE", "DEFAULT_PDO", "VERSION",
           "Scaling", "ScorecardError", "bank_table", "bin_terms", "platform_table", "log_odds", "party_table", "row_points", "to_csv"]
