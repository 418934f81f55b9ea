"""Honest numbers for a training report: bootstrap intervals for AUC, KS and uplift, calibration, warnings.

Pure numpy. Input is the report's ``test_predictions`` ({tag: {"joint": {"p", "y"}, "bank_only": {"p", "y"}}});
the joint predictions come from a shuffled multiset (no row order), so joint and bank-only are resampled
independently (an unpaired bootstrap). Reports without predictions (older jobs) get point estimates and a
note instead of intervals. Numbers are rounded once here (``DECIMALS``) so every view shows the same ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 1000
SEED = 20240601
DECIMALS = 3
MIN_POSITIVES = 30
ECE_BINS = 10
ECE_METHOD = f"{ECE_BINS} equal-mass bins of the predicted probability (each about a tenth of the test rows)"
MODELS = ("joint", "bank_only")
_CHUNK_CELLS = 4_000_000  # resamples x rows per vectorised chunk (about 32 MB of float64)


def round_metric(x: float | None) -> float | None:
    """The one rounding rule of every reported metric: :data:`DECIMALS` decimals, half to even, of the number as
    written (``repr``), so a value shows the same wherever it is printed (None for a missing or infinite one)."""
    if x is None or not np.isfinite(x):
        return None
    return float(Decimal(repr(float(x))).quantize(Decimal(1).scaleb(-DECIMALS), rounding=ROUND_HALF_EVEN))


def format_metric(x: float | None, *, signed: bool = False, missing: str = "-") -> str:
    """A metric as the console and the HTML report both print it (:func:`round_metric`, then that many decimals;
    ``signed``: with its sign, as an uplift)."""
    r = round_metric(x)
    return missing if r is None else f"{r:{'+' if signed else ''}.{DECIMALS}f}"


_r = round_metric


def _sorted(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows sorted by score, the labels in that order, and the start of each group of tied scores."""
    order = np.argsort(p, kind="stable")
    ps, ys = p[order], y[order]
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    return ps, ys, starts


def weighted_auc_ks(y: np.ndarray, starts: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUC and KS for each row of weights ``w`` (resamples, rows) over rows sorted by score (ties grouped
    at ``starts``); NaN where a resample has one class only. Weights of 1 give the plain AUC and KS."""
    pos = w * y
    neg = w - pos
    if len(starts) < w.shape[1]:  # tied scores: one group each
        pos, neg = np.add.reduceat(pos, starts, axis=1), np.add.reduceat(neg, starts, axis=1)
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    below = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
        gap = np.cumsum(neg, axis=1) / n_neg[:, None] - np.cumsum(pos, axis=1) / n_pos[:, None]
        ks = np.maximum(gap.max(axis=1), 0.0)
    bad = (n_pos == 0) | (n_neg == 0)
    auc[bad], ks[bad] = np.nan, np.nan
    return auc, ks


def bootstrap_auc_ks(p: Any, y: Any, *, resamples: int = RESAMPLES,
                     seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """``resamples`` bootstrap draws (rows with replacement) of AUC and KS, vectorised in chunks."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(p)
    if n == 0:
        return np.full(resamples, np.nan), np.full(resamples, np.nan)
    _, ys, starts = _sorted(p, y)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // n)
    aucs, kss = [], []
    for first in range(0, resamples, chunk):
        c = min(chunk, resamples - first)
        idx = rng.integers(0, n, size=(c, n), dtype=np.int64 if c * n >= 2**31 else np.int32)
        idx += (np.arange(c, dtype=idx.dtype) * n)[:, None]
        w = np.bincount(idx.ravel(), minlength=c * n).reshape(c, n).astype(np.float64)
        auc, ks = weighted_auc_ks(ys, starts, w)
        aucs.append(auc)
        kss.append(ks)
    return np.concatenate(aucs), np.concatenate(kss)


def point_auc_ks(p: Any, y: Any) -> tuple[float | None, float | None]:
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(p) == 0:
        return None, None
    _, ys, starts = _sorted(p, y)
    auc, ks = weighted_auc_ks(ys, starts, np.ones((1, len(p))))
    return (None if np.isnan(auc[0]) else float(auc[0])), (None if np.isnan(ks[0]) else float(ks[0]))


def percentile_interval(draws: np.ndarray, confidence: float = CONFIDENCE) -> list[float] | None:
    """The percentile bootstrap interval of ``draws`` (NaN draws dropped), rounded; None if too few."""
    draws = draws[np.isfinite(draws)]
    if len(draws) < 20:
        return None
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(draws, [tail, 100 - tail])
    return [_r(lo), _r(hi)]  # type: ignore[list-item]


def calibration_bins(p: Any, y: Any, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Equal-mass bins by predicted probability: rows, mean prediction and observed rate per bin."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    out = []
    for part in np.array_split(order, min(bins, len(p))):
        if len(part):
            out.append({"rows": int(len(part)), "predicted": float(p[part].mean()), "observed": float(y[part].mean())})
    return out


def expected_calibration_error(p: Any, y: Any, bins: int = ECE_BINS) -> float | None:
    """ECE over equal-mass bins: the row-weighted mean of |mean prediction - observed rate|."""
    cells = calibration_bins(p, y, bins)
    total = sum(c["rows"] for c in cells)
    if not total:
        return None
    return sum(c["rows"] * abs(c["predicted"] - c["observed"]) for c in cells) / total


def gains_by_decile(p: Any, y: Any, groups: int = 10) -> list[dict[str, float]]:
    """Rows ranked by score, best first, in ``groups`` equal parts: response rate, lift over the overall
    rate, and the cumulative share of all positives captured down to that part."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    order = np.argsort(-p, kind="stable")
    total_pos, rate = y.sum(), (y.mean() if len(y) else 0.0)
    out, captured = [], 0.0
    for d, part in enumerate(np.array_split(order, min(groups, len(p)))):
        pos = float(y[part].sum())
        captured += pos
        resp = pos / len(part) if len(part) else 0.0
        out.append({"decile": d + 1, "rows": int(len(part)), "response_rate": resp,
                    "lift": resp / rate if rate else 0.0,
                    "cumulative_gain": captured / total_pos if total_pos else 0.0})
    return out


def _predictions(report: Mapping[str, Any], tag: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    found = (report.get("test_predictions") or {}).get(tag) or {}
    out = {}
    for model in MODELS:
        part = found.get(model)
        if part and len(part.get("p", ())) == len(part.get("y", ())) and len(part.get("p", ())):
            out[model] = (np.asarray(part["p"], dtype=np.float64), np.asarray(part["y"], dtype=np.float64))
    return out


def tag_summary(report: Mapping[str, Any], tag: str, *, resamples: int = RESAMPLES,
                seed: int = SEED) -> dict[str, Any]:
    """Point estimates, intervals, ECE and warnings of one tag (see :func:`summarise`)."""
    metrics = (report.get("metrics") or {}).get(tag) or {}
    preds = _predictions(report, tag)
    out: dict[str, Any] = {"auc": {}, "ks": {}, "intervals": {}, "ece": {}, "warnings": []}
    draws: dict[str, np.ndarray] = {}
    for i, model in enumerate(MODELS):
        m = metrics.get(model) or {}
        auc, ks = m.get("auc"), m.get("ks")
        if model in preds:
            p, y = preds[model]
            if auc is None or ks is None:
                auc, ks = point_auc_ks(p, y)
            a, k = bootstrap_auc_ks(p, y, resamples=resamples, seed=seed + 7919 * i)
            draws[model] = a
            out["intervals"][model] = {"auc": percentile_interval(a), "ks": percentile_interval(k)}
            out["ece"][model] = _r(expected_calibration_error(p, y))
        out["auc"][model], out["ks"][model] = _r(auc), _r(ks)
    joint_m = metrics.get("joint") or {}
    positives = joint_m.get("positives")
    if positives is None and "joint" in preds:
        positives = int(preds["joint"][1].sum())
    out["n"] = joint_m.get("n", len(preds["joint"][1]) if "joint" in preds else None)
    out["positives"] = positives
    a_j, a_b = out["auc"]["joint"], out["auc"]["bank_only"]
    out["uplift"] = _r(a_j - a_b) if a_j is not None and a_b is not None else None
    uplift_ci = None
    if "joint" in draws and "bank_only" in draws:
        uplift_ci = percentile_interval(draws["joint"] - draws["bank_only"])
    out["intervals"]["uplift"] = uplift_ci
    out["warnings"] = tag_warnings(out, has_predictions=bool(preds))
    return out


def tag_warnings(s: Mapping[str, Any], *, has_predictions: bool) -> list[dict[str, str]]:
    """The documented conditions, each as {"code", "message"} for people."""
    w: list[dict[str, str]] = []
    pos = s.get("positives")
    if pos is not None and pos < MIN_POSITIVES:
        w.append({"code": "few_positives", "message": f"only {pos} positive customers in the test rows (fewer "
                  f"than {MIN_POSITIVES}): the numbers for this tag are too noisy to act on"})
    if s["auc"].get("joint") is None:
        w.append({"code": "no_auc", "message": "the test rows hold one class only: no AUC for the joint model"})
    ci = s["intervals"].get("uplift")
    if ci is not None:
        if ci[1] < 0:
            w.append({"code": "joint_worse", "message": f"the joint model ranks customers worse than the bank's "
                      f"own model: uplift {format_metric(s['uplift'], signed=True)}, 95% interval "
                      f"{format_metric(ci[0], signed=True)} to {format_metric(ci[1], signed=True)}"})
        elif ci[0] <= 0 <= ci[1]:
            w.append({"code": "no_difference", "message": f"no measurable difference between the joint and the "
                      f"bank-only model: the uplift's 95% interval ({format_metric(ci[0], signed=True)} to "
                      f"{format_metric(ci[1], signed=True)}) covers 0"})
    elif not has_predictions:
        w.append({"code": "no_intervals", "message": "this report holds no test predictions (an older job): "
                  "point estimates only, no intervals or calibration"})
    return w


def summarise(report: Mapping[str, Any], *, resamples: int = RESAMPLES, seed: int = SEED) -> dict[str, Any]:
    """Per tag: AUC and KS (joint, bank_only), their 95% percentile-bootstrap ``intervals``, the uplift (joint
    minus bank-only AUC) with an unpaired interval, ``ece`` and ``warnings``; plus how they were computed.

    ``report`` is a training report (``node.stores.reports.load(job_id)``); nothing in it is changed.
    """
    tags = list(report.get("tags") or (report.get("metrics") or {}).keys())
    return {
        "confidence": CONFIDENCE, "resamples": resamples, "seed": seed, "decimals": DECIMALS,
        "method": "percentile bootstrap over the test rows; joint and bank-only resampled independently",
        "ece_method": ECE_METHOD, "min_positives": MIN_POSITIVES,
        "has_predictions": bool(report.get("test_predictions")),
        "tags": {tag: tag_summary(report, tag, resamples=resamples, seed=seed) for tag in tags},
    }


def format_interval(ci: list[float] | None, *, signed: bool = False) -> str:
    if ci is None:
        return "-"
    return f"[{format_metric(ci[0], signed=signed)}, {format_metric(ci[1], signed=signed)}]"


__all__ = ["CONFIDENCE", "ECE_METHOD", "MIN_POSITIVES", "bootstrap_auc_ks", "calibration_bins",
           "expected_calibration_error", "format_interval", "format_metric", "gains_by_decile", "percentile_interval",
           "point_auc_ks", "round_metric", "summarise", "tag_summary", "tag_warnings"]
