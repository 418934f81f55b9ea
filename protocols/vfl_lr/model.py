"""The two trained model halves, as plain dictionaries for the nodes' storage, and the sigmoid that joins them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocols.binning import BinningModel
from protocols.model_family import FAMILY_FIELD, LEGACY_FAMILY, ModelError
from protocols.party_data import Schema
from protocols.scoring import BinTables, LinearTerms, bin_tables, linear_scores
from protocols.vfl_lr.calibration import entries, identity_entries, log_odds
from protocols.vfl_lr.params import VERSION
from protocols.vfl_lr.state import Scaler

# Model dicts read: v2 changed how held-out rows are evaluated during training, not what a model holds.
READABLE_VERSIONS = (VERSION, "vfl-lr-taylor-v3", "vfl-lr-taylor-v2", "vfl-lr-taylor-v1")
FAMILY = LEGACY_FAMILY  # this family's name (protocols.model_family); halves stored before the field are this one


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, safe from overflow: scores to probabilities."""
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))


@dataclass
class BankOnlyHalf:
    """The bank-only yardstick of every tag (``protocols.vfl_lr.yardstick``: the joint model's optimiser on the
    bank's features alone), kept with the bank's half: what ``--bank-only-fallback`` scores the platform's
    customers with while the platform is unreachable. Same scaler as the bank's half (the yardstick trains on
    the same standardised features); its own weights, intercepts and calibration."""

    weights: np.ndarray  # (d_A, T)
    intercept: np.ndarray  # (T,)
    calibration: list[dict[str, Any]]

    def __post_init__(self) -> None:
        self.calibration = entries(self.calibration)
        T = len(self.calibration)
        if self.weights.ndim != 2 or self.weights.shape[1] != T or self.intercept.shape != (T,):
            raise ValueError("the bank-only weights, intercepts and calibration are not one per tag")

    @classmethod
    def from_fit(cls, weights: np.ndarray, calibration: Sequence[Mapping[str, Any]], *,
                 fit_intercept: bool) -> BankOnlyHalf:
        """From the yardstick's fit: ``weights`` (d_A [+ 1], T) with the intercept last if fitted."""
        W = np.array(weights, dtype=np.float64)
        return cls(W[:-1] if fit_intercept else W, W[-1].copy() if fit_intercept else np.zeros(W.shape[1]),
                   [dict(c) for c in calibration])

    def to_dict(self) -> dict[str, Any]:
        return {"weights": self.weights.tolist(), "intercept": self.intercept.tolist(),
                "calibration": _calibration_dict(self.calibration)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], n_features: int, n_tags: int) -> BankOnlyHalf:
        """ValueError, KeyError or TypeError when ``d`` is not one for ``n_features`` x ``n_tags``."""
        weights = np.array(d["weights"], dtype=np.float64)
        if weights.shape != (n_features, n_tags):
            raise ValueError(f"the bank-only weights are {weights.shape}, not ({n_features}, {n_tags})")
        return cls(weights, np.array(d["intercept"], dtype=np.float64), _calibration_from(d["calibration"], n_tags))


@dataclass
class BankModel:
    """The bank's half: weights on its features, intercepts, per-tag calibration, scaler, schema, tags, job, keys."""

    job_id: str
    tag_names: list[str]
    weights: np.ndarray  # (d_A, T)
    intercept: np.ndarray  # (T,)
    scaler: Scaler
    schema: Schema
    key_fingerprints: dict[str, str]
    alignment_job_id: str = ""
    # Per tag, {"a", "b", "knots"}: Platt's p = sigmoid(a z + b), or the monotone map through the knots with Platt's
    # slope beyond them, fitted on validation (protocols/vfl_lr/calibration.py). None means identity (a model
    # stored before calibration, or one trained without validation rows).
    calibration: list[dict[str, Any]] | None = None
    # Per tag, whether scores add the platform's part: False where the joint model did not beat the bank's own on
    # validation, and the weights, intercept and calibration of that tag are the bank-only model's. None: all True.
    platform_part: list[bool] | None = None
    # The bank-only yardstick of every tag (what --bank-only-fallback scores with). None: a model stored before
    # it was kept; such a model's fallback scores with the joint model's bank half (see :meth:`fallback_note`).
    bank_only: BankOnlyHalf | None = None
    he_scheme: str = "paillier"  # the HE scheme the model was trained under (a model stored before: Paillier)
    # A model trained on bins (TrainParams.features "binned"): the bank's binning of its raw columns; the
    # weights and scaler are on its one-hot bins. None: trained on the raw columns.
    binning: BinningModel | None = None
    kind: str = field(default="bank", init=False)
    family: str = field(default=FAMILY, init=False)
    # per weights scored ("joint", "bank_only"): the per-bin terms of a binned half, built on first use
    _bin_tables: dict[str, tuple[tuple[Any, ...], BinTables]] = field(default_factory=dict, init=False, repr=False,
                                                                       compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.calibration, np.ndarray):  # Platt's (a, b) per tag, as a (T, 2) array
            self.calibration = [{"a": a, "b": b, "knots": None} for a, b in self.calibration.reshape(-1, 2)]
        self.calibration = (identity_entries(len(self.tag_names)) if self.calibration is None
                            else entries(self.calibration))
        if len(self.calibration) != len(self.tag_names):
            raise ValueError("the calibration is not one entry per tag")
        self.platform_part = [True] * len(self.tag_names) if self.platform_part is None else \
            [bool(v) for v in self.platform_part]
        if len(self.platform_part) != len(self.tag_names):
            raise ValueError("platform_part is not one flag per tag")
        if self.bank_only is not None and self.bank_only.weights.shape != self.weights.shape:
            raise ValueError("the bank-only weights do not have the bank half's features and tags")

    def partial_scores(self, features: np.ndarray) -> np.ndarray:
        """``z_A`` (with the intercept) for rows of raw bank features, one column per tag."""
        return linear_scores(features, *self.scoring_terms())

    def scoring_terms(self) -> LinearTerms:
        """What a compute worker needs to score (``protocols.scoring``)."""
        s = self.scaler
        return LinearTerms(s.mean, s.std, s.clip, self.weights, self.intercept, self.binning,
                           _tables(self, "joint", self.weights))

    def probabilities(self, z_total: np.ndarray, columns: Sequence[int] | None = None) -> np.ndarray:
        """Calibrated probabilities for joint scores ``z_A + z_B`` (rows x tags), per tag's calibration;
        ``columns``: the model's tag columns that ``z_total`` holds, in its order (default: all of them)."""
        cal = self.calibration
        assert cal is not None  # set by __post_init__
        z = np.asarray(z_total, dtype=np.float64).reshape(-1, len(cal) if columns is None else len(columns))
        cols = range(len(cal)) if columns is None else columns
        out = np.empty_like(z)
        for j, t in enumerate(cols):
            out[:, j] = log_odds(z[:, j], cal[t])
        return sigmoid(out).reshape(np.shape(z_total))

    def bank_only_probabilities(self, features: np.ndarray, columns: Sequence[int] | None = None) -> np.ndarray:
        """Calibrated probabilities of the bank-only yardstick for rows of raw bank features (rows x tags of
        ``columns``, default all); a model stored without the yardstick (:attr:`bank_only` None) scores with
        its joint model's bank half, the platform's part at its training mean (z_B = 0)."""
        cols = list(range(len(self.tag_names)) if columns is None else columns)
        alone = self.bank_only
        if alone is None:
            return self.probabilities(self.partial_scores(features)[:, cols], cols)
        s = self.scaler
        tables = _tables(self, "bank_only", alone.weights)
        z = linear_scores(features, s.mean, s.std, s.clip, alone.weights[:, cols], alone.intercept[cols], self.binning,
                          None if tables is None else tables.tag_columns(cols))
        out = np.empty_like(z)
        for j, t in enumerate(cols):
            out[:, j] = log_odds(z[:, j], alone.calibration[t])
        return sigmoid(out)

    def fallback_note(self) -> str:
        """What the bank-only fallback scored with, for the answer's note: the yardstick, or (an older model)
        the joint model's bank half."""
        if self.bank_only is not None:
            return "scored by the bank-only model (the yardstick trained with this model, on the bank's features)"
        return (f"model {self.job_id} was stored before bank-only weights were kept with it: scored by the joint "
                "model's bank half with the platform's part at its training mean (retrain for the bank-only model)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible values; :meth:`from_dict` restores the model exactly."""
        cal = self.calibration
        assert cal is not None
        return {**_common_dict(self), "intercept": self.intercept.tolist(), "calibration": _calibration_dict(cal),
                "platform_part": list(self.platform_part or []),
                **({"bank_only": self.bank_only.to_dict()} if self.bank_only is not None else {})}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str) -> BankModel:
        """The model of :meth:`to_dict`; :class:`ModelError` names ``where`` (e.g. the file) if ``d`` is not one."""
        common = _common_fields(d, "bank", where)
        try:
            T = len(common["tag_names"])
            intercept = np.array(d["intercept"], dtype=np.float64)
            if intercept.shape != (T,):
                raise ValueError("the intercepts are not one per tag")
            cal = d.get("calibration")  # absent in models stored before calibration: identity
            calibration = None if cal is None else _calibration_from(cal, T)
            part = d.get("platform_part")  # absent in models stored before it: every tag joint
            if part is not None and (not isinstance(part, list) or len(part) != T
                                     or not all(isinstance(v, bool) for v in part)):
                raise ValueError("platform_part is not one true/false per tag")
            alone = d.get("bank_only")  # absent in models stored before it: the fallback says what it does
            bank_only = (None if alone is None else
                         BankOnlyHalf.from_dict(alone, len(common["weights"]), T))
        except (KeyError, TypeError, ValueError) as err:
            raise ModelError(f"{where}: damaged bank model: {_reason(err)}") from err
        return cls(intercept=intercept, calibration=calibration, platform_part=part, bank_only=bank_only, **common)


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
    # Per tag, the epoch whose weights the model holds: names its projections in the disclosure budget
    # (protocols/vfl_lr/disclosure.py); None in a model stored before the platform kept it.
    best_epoch: list[int] | None = None
    he_scheme: str = "paillier"  # the HE scheme the model was trained under (a model stored before: Paillier)
    binning: BinningModel | None = None  # as BankModel.binning: the platform's own binning of its raw columns
    kind: str = field(default="platform", init=False)
    family: str = field(default=FAMILY, init=False)
    # per weights scored ("joint"): the per-bin terms of a binned half, built on first use
    _bin_tables: dict[str, tuple[tuple[Any, ...], BinTables]] = field(default_factory=dict, init=False, repr=False,
                                                                       compare=False)

    def partial_scores(self, features: np.ndarray) -> np.ndarray:
        """``z_B`` for rows of raw platform features, one column per tag."""
        return linear_scores(features, *self.scoring_terms())

    def scoring_terms(self) -> LinearTerms:
        """What a compute worker needs to score (``protocols.scoring``)."""
        s = self.scaler
        return LinearTerms(s.mean, s.std, s.clip, self.weights, None, self.binning, _tables(self, "joint", self.weights))

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible values; :meth:`from_dict` restores the model exactly."""
        out = _common_dict(self)
        if self.best_epoch is not None:
            out["best_epoch"] = list(self.best_epoch)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str) -> PlatformModel:
        """The model of :meth:`to_dict`; :class:`ModelError` names ``where`` (e.g. the file) if ``d`` is not one."""
        fields = _common_fields(d, "platform", where)
        best = d.get("best_epoch")
        if best is not None and (not isinstance(best, list) or len(best) != len(fields["tag_names"]) or not all(
                isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in best)):
            raise ModelError(f"{where}: damaged platform model: best_epoch must be one epoch per tag")
        return cls(**fields, best_epoch=best)


def _tables(half: BankModel | PlatformModel, name: str, weights: np.ndarray) -> BinTables | None:
    """The per-bin terms of a binned half's ``weights`` (None for a half on raw features), built once: online
    scoring then costs a gather per row, not the tables' construction. Rebuilt if the arrays were replaced."""
    if half.binning is None:
        return None
    s = half.scaler
    key = (half.binning, s.mean, s.std, weights, s.clip)  # the objects themselves: an id is never reused
    cached = half._bin_tables.get(name)
    if cached is None or not all(a is b for a, b in zip(cached[0][:4], key[:4], strict=True)) or cached[0][4] != s.clip:
        cached = key, bin_tables(half.binning, s.mean, s.std, s.clip, weights)
        half._bin_tables[name] = cached
    return cached[1]


def _calibration_dict(cal: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"method": "platt" if all(c["knots"] is None for c in cal) else "monotone",
            "a": [c["a"] for c in cal], "b": [c["b"] for c in cal], "knots": [c["knots"] for c in cal]}


def _calibration_from(cal: Mapping[str, Any], T: int) -> list[dict[str, Any]]:
    """Per-tag entries of :func:`_calibration_dict`'s output; "knots" is absent in models stored before the
    monotone map (Platt alone). ValueError when it is not one entry per tag."""
    a, b, knots = list(cal["a"]), list(cal["b"]), list(cal.get("knots") or [None] * T)
    if not len(a) == len(b) == len(knots) == T:
        raise ValueError("the calibration is not one entry per tag")
    return entries([{"a": a[t], "b": b[t], "knots": knots[t]} for t in range(T)])


def _common_dict(model: BankModel | PlatformModel) -> dict[str, Any]:
    """What both halves store."""
    return {FAMILY_FIELD: model.family, "kind": model.kind, "version": VERSION, "job_id": model.job_id, "tags": list(model.tag_names),
            "weights": model.weights.tolist(), "scaler": model.scaler.to_dict(), "schema": model.schema.to_dict(),
            "key_fingerprints": dict(model.key_fingerprints), "alignment_job_id": model.alignment_job_id,
            "he_scheme": model.he_scheme,
            **({"binning": model.binning.to_dict()} if model.binning is not None else {})}


def _common_fields(d: Mapping[str, Any], kind: str, where: str) -> dict[str, Any]:
    if not isinstance(d, Mapping):
        raise ModelError(f"{where}: not a {kind} model (not an object of name: value)")
    if d.get(FAMILY_FIELD, FAMILY) != FAMILY:
        raise ModelError(f"{where}: a model of family {d.get(FAMILY_FIELD)!r}, not {FAMILY}")
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
        binning = None if d.get("binning") is None else BinningModel.from_dict(d["binning"], where=where)
        width = len(schema.feature_columns) if binning is None else int(binning.offsets()[-1])
        if not (len(weights) == len(scaler.mean) == len(scaler.std) == width):
            raise ValueError("weights, scaler and schema do not have the same features")
        if binning is not None and binning.input_columns != schema.feature_columns:
            raise ValueError("the binning is not of the schema's feature columns")
        return {"job_id": _str(d["job_id"]), "tag_names": tags, "weights": weights, "scaler": scaler, "binning": binning,
                "schema": schema, "key_fingerprints": {_str(k): _str(v) for k, v in d["key_fingerprints"].items()},
                "alignment_job_id": _str(d.get("alignment_job_id", "")), "he_scheme": _str(d.get("he_scheme", "paillier"))}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ModelError(f"{where}: damaged {kind} model: {_reason(err)}") from err


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


def _reason(err: Exception) -> str:
    return f"missing {err}" if isinstance(err, KeyError) else str(err)


__all__ = ["BankModel", "BankOnlyHalf", "ModelError", "PlatformModel", "sigmoid"]
