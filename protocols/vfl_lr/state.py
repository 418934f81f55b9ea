"""Each party's local optimisation: scaler, optimiser, batches, and the training state a checkpoint saves.

:class:`BankTrainState` and :class:`PlatformTrainState` hold everything of a party's training that evolves
(weights, optimiser moments and step counts, position, per-epoch snapshots, the choice of best epochs).
Everything else a party uses is derived again from its data and the parameters (split, scaler,
quantisation, batches), so these objects are the unit a checkpoint saves; ``to_dict`` gives plain
JSON-compatible values and ``from_dict`` restores them exactly.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocols.rowblocks import RowView, column_mean_std
from protocols.scoring import standardise
from protocols.vfl_lr.params import VERSION, TrainingError, TrainParams, base_rate_intercepts

_DTYPES = ("float64", "int64")
NEWTON_DAMPING = 0.5  # two parties' blocks: half a block-Newton step cannot overshoot (H <= 2 blockdiag(H))
NEWTON_RIDGE = 0.3  # added to the preconditioner's L2 (not the loss): tames noise in directions of little variance
OPTIMIZERS = ("adam", "sgd", "newton")


def resolve_optimizer(params: TrainParams, full_batch: bool) -> str:
    """The optimizer a job runs: its own, or for ``"auto"`` Newton when the automatic batch is one full batch per
    epoch (no batch of 4 steps meets the floor: batching.py) and Adam otherwise (with noise, mini-batch Newton
    steps measured worse than Adam's on default_credit: docs/protocol.md, "Optimizer")."""
    if params.optimizer != "auto":
        return params.optimizer
    return "newton" if full_batch else "adam"


@dataclass
class Scaler:
    mean: np.ndarray
    std: np.ndarray
    clip: float

    @classmethod
    def fit(cls, X: np.ndarray, clip: float, rows: np.ndarray | None = None) -> Scaler:
        """Fitted on ``X[rows]`` (all rows by default), read a block at a time: ``X`` may be larger than memory."""
        mean, std = column_mean_std(X, rows)
        std[~(std > 1e-12)] = 1.0
        return cls(mean, std, clip)

    def rows(self, X: np.ndarray, *, intercept: bool = False) -> RowView:
        """``X`` standardised (and an intercept column of ones appended), a row block at a time when asked."""
        if not intercept:
            return RowView(X, self.transform, X.shape[1])
        return RowView(X, lambda block: np.hstack([self.transform(block), np.ones((len(block), 1))]), X.shape[1] + 1)

    def transform(self, X: np.ndarray) -> np.ndarray:
        return standardise(X, self.mean, self.std, self.clip)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "clip": self.clip}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scaler:
        return cls(np.array(d["mean"], dtype=np.float64), np.array(d["std"], dtype=np.float64), float(d["clip"]))


class Optimizer:
    """Adam, SGD or damped block Newton with L2 (and proximal L1) on a (d, T) weight matrix; rows in
    ``unpenalised`` skip both.

    ``kind`` is the job's optimizer, or with ``optimizer="auto"`` the one the bank resolves when it knows the
    label protection (:func:`resolve_optimizer`; the platform is told in ``train.epoch``). Newton: the Taylor
    loss is quadratic, with Hessian ``X^T diag(M_t) X / (4 m_t)`` per tag; each party preconditions its own
    gradient with its own block of it (its own features only, nothing of the other party's), plus L2 and
    ``NEWTON_RIDGE``, and steps ``NEWTON_DAMPING`` of the way. Under label DP this is post-processing of the
    noisy gradient: one full batch per epoch then reaches the optimum's neighbourhood in a step or two, where
    noisy Adam steps wander (BENCHMARKS.md, "Quality with default settings").
    """

    def __init__(self, params: TrainParams, shape: tuple[int, int], unpenalised: Sequence[int] = ()) -> None:
        self.p = params
        self.kind = "adam" if params.optimizer == "auto" else params.optimizer
        self.m = np.zeros(shape)
        self.v = np.zeros(shape)
        self.t = np.zeros(shape[1])
        self.penalty = np.ones((shape[0], 1))
        self.penalty[list(unpenalised)] = 0.0

    def step(self, W: np.ndarray, grad: np.ndarray, epoch: int, active: np.ndarray,
             features: np.ndarray | None = None, mask: np.ndarray | None = None) -> None:
        """Update the columns (tags) in ``active`` in place. Newton needs the batch's ``features`` (rows x d, as
        the gradient used them) and label ``mask`` (rows x T)."""
        p, cols = self.p, np.flatnonzero(active)
        if len(cols) == 0:
            return
        lr = p.learning_rate / (1.0 + p.decay * epoch)
        g = grad[:, cols] + p.l2 * self.penalty * W[:, cols]
        if self.kind == "newton":
            if features is None or mask is None:
                raise TrainingError("the Newton step needs the batch's features and label mask")
            ridge = np.diag((p.l2 + NEWTON_RIDGE) * self.penalty[:, 0])
            for j, t in enumerate(cols):
                Xt = features * mask[:, t:t + 1]
                H = Xt.T @ Xt / (4.0 * max(1, int(mask[:, t].sum()))) + ridge
                W[:, t] -= NEWTON_DAMPING * np.linalg.solve(H + 1e-9 * np.eye(len(H)), g[:, j])
        elif self.kind == "adam":
            self.t[cols] += 1
            self.m[:, cols] = 0.9 * self.m[:, cols] + 0.1 * g
            self.v[:, cols] = 0.999 * self.v[:, cols] + 0.001 * g * g
            m_hat = self.m[:, cols] / (1 - 0.9 ** self.t[cols])
            v_hat = self.v[:, cols] / (1 - 0.999 ** self.t[cols])
            W[:, cols] -= lr * m_hat / (np.sqrt(v_hat) + 1e-8)
        else:
            W[:, cols] -= lr * g
        if p.l1 > 0:
            shrink = lr * p.l1 * self.penalty
            W[:, cols] = np.sign(W[:, cols]) * np.maximum(np.abs(W[:, cols]) - shrink, 0.0)

    def state_dict(self) -> dict[str, Any]:
        """The moments and per-tag step counts (the settings come from the parameters)."""
        return {"m": array_to_json(self.m), "v": array_to_json(self.v), "t": array_to_json(self.t)}

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Take the moments and step counts of :meth:`state_dict`; they must have this optimiser's shapes."""
        m, v, t = (array_from_json(d[name]) for name in ("m", "v", "t"))
        if m.shape != self.m.shape or v.shape != self.v.shape or t.shape != self.t.shape:
            raise TrainingError(f"optimiser moments of shape {m.shape}, {v.shape}, {t.shape} do not fit weights "
                                f"of shape {self.m.shape}")
        self.m, self.v, self.t = m, v, t


def epoch_batches(rows: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The mini-batches of ``epoch``: ``rows`` shuffled by (seed, epoch), cut into ``batch_size`` pieces."""
    order = rows[np.random.default_rng([seed, epoch]).permutation(len(rows))]
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def active_rows(train: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Training rows with at least one known label: the others take part in no tag's gradient."""
    return train[mask[train].any(axis=1)]


# ------------------------------------------------------------------------- training state ----


@dataclass(kw_only=True, eq=False)
class _TrainState:
    """What both parties' training states hold."""

    W: np.ndarray  # (features [+ intercept], T)
    optimizer: Optimizer
    epoch: int = -1  # the epoch last started (-1: none yet)
    next_batch: int = 0  # the next batch of that epoch
    steps: int = 0  # optimiser steps (batches) taken in the job, all epochs: a checkpoint's position
    snapshots: list[np.ndarray] = field(default_factory=list)  # W after each finished epoch

    KIND = ""

    def _base_dict(self) -> dict[str, Any]:
        return {"kind": self.KIND, "version": VERSION, "W": array_to_json(self.W),
                "optimizer": self.optimizer.state_dict(), "epoch": self.epoch, "next_batch": self.next_batch,
                "steps": self.steps, "snapshots": [array_to_json(s) for s in self.snapshots]}

    @classmethod
    def _base_fields(cls, d: Mapping[str, Any], params: TrainParams, unpenalised: Sequence[int]) -> dict[str, Any]:
        if d.get("kind") != cls.KIND or d.get("version") != VERSION:
            raise ValueError(f"not a {cls.KIND} of {VERSION}")
        W = array_from_json(d["W"])
        if W.ndim != 2:
            raise ValueError("weights are not a matrix")
        optimizer = Optimizer(params, W.shape, unpenalised)
        optimizer.load_state_dict(d["optimizer"])
        snapshots = [array_from_json(s) for s in d["snapshots"]]
        if any(s.shape != W.shape for s in snapshots):
            raise ValueError("a snapshot does not have the weights' shape")
        return {"W": W, "optimizer": optimizer, "epoch": _int(d["epoch"]), "next_batch": _int(d["next_batch"]),
                "steps": _int(d.get("steps", 0)), "snapshots": snapshots}


@dataclass(kw_only=True, eq=False)
class BankTrainState(_TrainState):
    """The bank's training: its weights (intercept last if fitted), optimiser, position, best epochs so far."""

    best_epoch: np.ndarray  # (T,) int64: per tag, the finished epoch with the best validation metric (-1: none)
    best_metric: np.ndarray  # (T,) that metric: validation AUC, or -logloss without one (-inf: none yet)
    stale: int = 0  # finished epochs in a row that improved no tag
    stale_steps: int = 0  # optimiser steps (batches) of those epochs
    # Per tag, the validation multiset of its best epoch so far: (joint scores, labels), sorted, labelled only.
    best_validation: list[tuple[np.ndarray, np.ndarray] | None] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)  # the report's entry per finished epoch
    seconds_online: float = 0.0
    seconds_ahead: float = 0.0

    KIND = "bank-train-state"

    @classmethod
    def start(cls, params: TrainParams, n_weights: int, n_tags: int,
              intercepts: np.ndarray | None = None) -> BankTrainState:
        """Zero weights for ``n_weights`` rows (the intercept is the last one if ``params.fit_intercept``); the
        intercepts start at ``intercepts`` if given (:func:`base_rate_intercepts`)."""
        W = np.zeros((n_weights, n_tags))
        if params.fit_intercept and intercepts is not None:
            W[-1] = intercepts
        return cls(W=W, optimizer=Optimizer(params, W.shape, _bank_unpenalised(params, n_weights)),
                   best_epoch=np.full(n_tags, -1, dtype=np.int64), best_metric=np.full(n_tags, -np.inf),
                   best_validation=[None] * n_tags)

    def to_dict(self) -> dict[str, Any]:
        return {**self._base_dict(), "best_epoch": array_to_json(self.best_epoch),
                "best_metric": array_to_json(self.best_metric), "stale": self.stale, "stale_steps": self.stale_steps,
                "best_validation": [None if v is None else [array_to_json(v[0]), array_to_json(v[1])]
                                    for v in self.best_validation],
                "history": copy.deepcopy(self.history), "seconds_online": self.seconds_online, "seconds_ahead": self.seconds_ahead}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], params: TrainParams, *,
                  where: str = "training state") -> BankTrainState:
        """The state of :meth:`to_dict`, with its optimiser set up by ``params``."""
        try:
            n_weights = len(array_from_json(d["W"]))
            state = cls(**cls._base_fields(d, params, _bank_unpenalised(params, n_weights)),
                        best_epoch=array_from_json(d["best_epoch"]), best_metric=array_from_json(d["best_metric"]),
                        stale=_int(d["stale"]), stale_steps=_int(d.get("stale_steps", 0)),
                        best_validation=[None if v is None else (array_from_json(v[0]), array_from_json(v[1]))
                                         for v in d.get("best_validation", [])],
                        history=copy.deepcopy(list(d["history"])),
                        seconds_online=float(d["seconds_online"]), seconds_ahead=float(d["seconds_ahead"]))
            T = state.W.shape[1]
            if state.best_epoch.shape != (T,) or state.best_metric.shape != (T,):
                raise ValueError("best epochs or metrics do not have one entry per tag")
            if not state.best_validation:  # a state saved before validation multisets were kept
                state.best_validation = [None] * T
            if len(state.best_validation) != T:
                raise ValueError("best validation multisets do not have one entry per tag")
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise TrainingError(f"{where}: damaged bank training state: {err}") from err
        return state


@dataclass(kw_only=True, eq=False)
class PlatformTrainState(_TrainState):
    """The platform's training: its weights (no intercept), optimiser, position, and the best epochs once told."""

    best_epoch: np.ndarray | None = None  # (T,) int64, set by train.finish

    KIND = "platform-train-state"

    @classmethod
    def start(cls, params: TrainParams, n_weights: int, n_tags: int) -> PlatformTrainState:
        W = np.zeros((n_weights, n_tags))
        return cls(W=W, optimizer=Optimizer(params, W.shape))

    def to_dict(self) -> dict[str, Any]:
        best = None if self.best_epoch is None else array_to_json(self.best_epoch)
        return {**self._base_dict(), "best_epoch": best}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], params: TrainParams, *,
                  where: str = "training state") -> PlatformTrainState:
        """The state of :meth:`to_dict`, with its optimiser set up by ``params``."""
        try:
            best = d["best_epoch"]
            state = cls(**cls._base_fields(d, params, ()),
                        best_epoch=None if best is None else array_from_json(best))
            if state.best_epoch is not None and state.best_epoch.shape != (state.W.shape[1],):
                raise ValueError("best epochs do not have one entry per tag")
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise TrainingError(f"{where}: damaged platform training state: {err}") from err
        return state


def _bank_unpenalised(params: TrainParams, n_weights: int) -> list[int]:
    return [n_weights - 1] if params.fit_intercept else []


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{value!r} is not an integer")
    return value


def array_to_json(a: np.ndarray) -> dict[str, Any]:
    """A float64 or int64 array as JSON-compatible values: dtype, shape, flat data (non-finite as strings)."""
    a = np.asarray(a)
    if a.dtype.name not in _DTYPES:
        raise ValueError(f"cannot store an array of {a.dtype}")
    data = a.ravel().tolist()
    if a.dtype.kind == "f":
        data = [x if math.isfinite(x) else repr(x) for x in data]
    return {"dtype": a.dtype.name, "shape": list(a.shape), "data": data}


def array_from_json(d: Mapping[str, Any]) -> np.ndarray:
    """The inverse of :func:`array_to_json`, exactly."""
    dtype, shape, data = d["dtype"], d["shape"], d["data"]
    if dtype not in _DTYPES or not isinstance(shape, list) or not isinstance(data, list):
        raise ValueError("not a stored array")
    if dtype == "float64":
        values = [float(x) if isinstance(x, str) else x for x in data]
        ok = all(isinstance(x, int | float) and not isinstance(x, bool) for x in values)
    else:
        values = data
        ok = all(isinstance(x, int) and not isinstance(x, bool) for x in values)
    if not ok:
        raise ValueError(f"a stored {dtype} array holds a value of another kind")
    return np.array(values, dtype=np.dtype(dtype)).reshape([_int(n) for n in shape])


__all__ = ["NEWTON_DAMPING", "NEWTON_RIDGE", "OPTIMIZERS", "BankTrainState", "Optimizer", "resolve_optimizer", "PlatformTrainState", "Scaler", "active_rows", "base_rate_intercepts", "array_from_json",
           "array_to_json", "epoch_batches"]
