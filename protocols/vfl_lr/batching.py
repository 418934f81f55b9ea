"""The automatic batch size (``TrainParams.batch_size = None``, the default), chosen by the bank.

Rule (docs/protocol.md, "Label privacy"): after ``train.setup``, when the platform's feature count and so the
batch floor (label_privacy.py) are known, the bank takes the smallest batch of at least
``min(PREFERRED_BATCH, ceil(rows / TARGET_STEPS_PER_EPOCH))`` rows whose batches, in every epoch, hold the
floor of labelled rows of every tag (a short last batch joining the one before) with at least
``MIN_STEPS_PER_EPOCH`` steps per epoch. If none does, with the optimizer ``"auto"`` (or ``"newton"``) it takes
every row in one batch per epoch and the Newton optimiser (state.py), which needs few steps: that batch may
meet the floor itself, and if not ``label_dp="auto"`` turns label DP on (a full batch is the least noisy)
and ``"off"`` is refused. With a first-order optimizer it takes ``ceil(rows / TARGET_STEPS_PER_EPOCH)`` rows
(about that many steps), label DP or refusal alike.

The platform sizes its slots and bounds the batch sizes at setup, before the floor is known, so the session's
parameters carry :func:`session_batch_bound` as ``batch_size``: the largest batch the rule can choose. Both
parties size slots for (and the platform accepts batches of) up to ``2 x bound - 1`` rows.

Automatic epochs (``TrainParams.epochs = None``, the default; :func:`choose_schedule`): the session carries
``MAX_AUTO_EPOCHS`` (the platform checks ``epoch < epochs`` and, under ``label_dp="off"``, the floor for it), and
the bank runs at most that many. With ``label_dp="off"`` it runs ``MAX_AUTO_EPOCHS``; otherwise the largest E in
``MAX_AUTO_EPOCHS..1`` whose floor ``10 x d x E`` the rule above meets with mini-batches (floor mode, E epochs),
else the largest E whose floor one full batch per epoch meets (floor mode, the Newton optimiser: a small set),
else label DP with ``DP_EPOCHS`` epochs of one full batch (each epoch is one more composition of the
accountant, so fewer epochs need less noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from protocols.vfl_lr.label_privacy import batch_floor, below_floor, join_short_last
from protocols.vfl_lr.params import MAX_AUTO_EPOCHS, TrainParams
from protocols.vfl_lr.state import epoch_batches

MIN_STEPS_PER_EPOCH = 4  # fewer optimiser steps than this per epoch and the floor counts as unreachable
TARGET_STEPS_PER_EPOCH = 10  # steps per epoch of a small data set (and under label DP)
PREFERRED_BATCH = 1024  # a large data set keeps the former default batch, unless the floor needs more
MIN_BATCH, MAX_BATCH = 16, 65536  # TrainParams.validate's range
# Automatic epochs under label DP. Measured on breast (455 training rows, 20 platform features, floor unreachable,
# epsilon 3): joint AUC 0.991 with 2 epochs, 0.953 with 4, 0.911 with 10 (bank-only 0.997), BENCHMARKS.md.
DP_EPOCHS = 2


def session_epochs(params: TrainParams) -> int:
    """The epochs a session's parameters carry: the job's, or ``MAX_AUTO_EPOCHS`` when automatic."""
    return params.epochs if params.epochs is not None else MAX_AUTO_EPOCHS


def session_batch_bound(n_rows: int) -> int:
    """The largest batch the automatic rule can choose for ``n_rows`` batched training rows: all of them (one
    batch per epoch under label DP with the Newton optimiser), within ``MAX_BATCH``."""
    return min(MAX_BATCH, max(MIN_BATCH, n_rows))


@dataclass(frozen=True)
class BatchChoice:
    """The batch size training runs with, and whether the rule found one meeting the floor."""

    batch_size: int
    # "explicit", "floor" (meets it with >= MIN_STEPS_PER_EPOCH steps), "full_floor" (one full batch per epoch meets
    # it), "no_floor" (cannot meet it), "dp_on" (label_dp "on")
    kind: str
    floor: int
    full: bool = False  # one batch per epoch, for the Newton optimiser

    def report(self, steps_per_epoch: int, mode: str) -> dict[str, Any]:
        """The training report's ``batching`` entry, given the label-privacy mode the plan settled on."""
        if self.kind == "explicit":
            reason = "set by the job (batch_size)"
        elif self.kind == "full_floor":
            reason = (f"automatic: no batch of at least {MIN_STEPS_PER_EPOCH} steps per epoch holds the floor of "
                      f"{self.floor} labelled rows per tag, every row in one batch does: one Newton step per epoch")
        elif self.full:
            why = "label_dp is 'on'" if self.kind == "dp_on" else f"no batch holds the floor of {self.floor} labelled rows per tag"
            outcome = {"dp": "label DP", "unprotected": "no protection (insecure test settings)"}.get(mode, "label DP")
            reason = (f"automatic: {why}, so {outcome} with the Newton optimiser and every row in one batch per "
                      "epoch (each epoch is one composition whatever its batches; one batch is the least noisy)")
        elif self.kind == "dp_on":
            reason = f"automatic: label_dp is 'on', so no floor; about {TARGET_STEPS_PER_EPOCH} steps per epoch"
        elif self.kind == "floor":
            reason = (f"automatic: the smallest batch of at least min({PREFERRED_BATCH}, rows / "
                      f"{TARGET_STEPS_PER_EPOCH}) rows whose every batch holds the floor of {self.floor} labelled "
                      f"rows per tag, with at least {MIN_STEPS_PER_EPOCH} steps per epoch")
        else:
            outcome = {"dp": "label DP is on", "unprotected": "batches run below it (insecure test settings)"}
            reason = (f"automatic: no batch with at least {MIN_STEPS_PER_EPOCH} steps per epoch holds the floor of "
                      f"{self.floor} labelled rows per tag, so about {TARGET_STEPS_PER_EPOCH} steps per epoch and "
                      f"{outcome.get(mode, 'label DP is on')}")
        return {"batch_size": self.batch_size, "steps_per_epoch": steps_per_epoch, "reason": reason,
                "automatic": self.kind != "explicit", "min_steps_per_epoch": MIN_STEPS_PER_EPOCH,
                "target_steps_per_epoch": TARGET_STEPS_PER_EPOCH}


def _steps_meeting_floor(params: TrainParams, active: np.ndarray, mask: np.ndarray, floor: int,
                         batch_size: int) -> int | None:
    """The fewest steps of an epoch if every epoch's batches (short last one joined) meet the floor, else None."""
    steps = None
    for epoch in range(params.epochs):
        batches = join_short_last(epoch_batches(active, batch_size, params.seed, epoch), mask, floor)
        if below_floor(batches, mask, floor) is not None:
            return None
        steps = len(batches) if steps is None else min(steps, len(batches))
    return steps


def choose_batch_size(params: TrainParams, active: np.ndarray, mask: np.ndarray, n_features: int,
                      bound: int, *, strict: bool = True) -> BatchChoice:
    """The batch size for ``params`` (its own if set) over the batched rows ``active`` whose labels known for
    training are ``mask`` (rows x tags), against a platform of ``n_features``; never above ``bound``.

    Where no batch of at least ``MIN_STEPS_PER_EPOCH`` steps meets the floor, with the Newton optimiser
    (``"auto"`` or ``"newton"``): every batched row in one batch per epoch (up to ``bound``). Newton needs few
    steps; that one batch may meet the floor itself ("full_floor": no noise), and if not, under label DP
    each epoch costs one composition whatever its batches and a full batch's noisy gradient is the least
    noisy. With a first-order optimiser: about ``TARGET_STEPS_PER_EPOCH`` steps. ``strict`` is unused (kept
    for callers that pass it).
    """
    floor = batch_floor(n_features, params.epochs)
    if params.batch_size is not None:
        return BatchChoice(params.batch_size, "explicit", floor)
    n = len(active)
    preferred = max(MIN_BATCH, min(PREFERRED_BATCH, math.ceil(n / TARGET_STEPS_PER_EPOCH), bound))
    counts = mask[active].sum(axis=0)
    shares = counts[counts > 0] / max(n, 1)
    largest = min(bound, n // MIN_STEPS_PER_EPOCH)  # at least MIN_STEPS_PER_EPOCH batches before any join
    if params.label_dp != "on" and len(shares):
        size = max(preferred, math.ceil(floor / shares.min()))  # the expected labelled count is the floor
        while size <= largest:
            steps = _steps_meeting_floor(params, active, mask, floor, size)
            if steps is not None and steps >= MIN_STEPS_PER_EPOCH:
                return BatchChoice(size, "floor", floor)
            size = max(size + 1, math.ceil(size * 1.05))
    kind = "dp_on" if params.label_dp == "on" else "no_floor"
    if params.optimizer in ("auto", "newton"):
        full = max(MIN_BATCH, min(n, bound))
        if params.label_dp != "on" and _steps_meeting_floor(params, active, mask, floor, full) is not None:
            kind = "full_floor"
        return BatchChoice(full, kind, floor, full=True)
    return BatchChoice(max(MIN_BATCH, min(math.ceil(n / TARGET_STEPS_PER_EPOCH), bound)), kind, floor)


def choose_schedule(params: TrainParams, active: np.ndarray, mask: np.ndarray, n_features: int,
                    bound: int, *, strict: bool = True) -> tuple[TrainParams, BatchChoice, dict[str, Any]]:
    """``params`` with its epochs and batch size resolved, the batch choice, and the report's ``epochs`` entry."""
    if params.epochs is not None:
        choice = choose_batch_size(params, active, mask, n_features, bound, strict=strict)
        entry = {"epochs": params.epochs, "automatic": False, "reason": "set by the job (epochs)"}
    elif params.label_dp == "off":
        epochs = MAX_AUTO_EPOCHS
        choice = choose_batch_size(replace(params, epochs=epochs), active, mask, n_features, bound, strict=strict)
        entry = {"epochs": epochs, "automatic": True,
                 "reason": f"automatic: label_dp is 'off', so the session's bound of {MAX_AUTO_EPOCHS} epochs"}
    else:
        choice, epochs = None, DP_EPOCHS
        if params.label_dp == "auto":  # mini-batches meeting the floor first, else one full batch meeting it
            found: dict[int, BatchChoice] = {}
            for e in range(MAX_AUTO_EPOCHS, 0, -1):
                found[e] = choose_batch_size(replace(params, epochs=e), active, mask, n_features, bound, strict=strict)
                if found[e].kind == "floor":
                    choice, epochs = found[e], e
                    break
            else:
                e = next((e for e, c in found.items() if c.kind == "full_floor"), None)
                if e is not None:
                    choice, epochs = found[e], e
        if choice is not None:
            how = (f"with at least {MIN_STEPS_PER_EPOCH} steps per epoch" if choice.kind == "floor" else
                   "as one full batch per epoch (the Newton optimiser)")
            reason = (f"automatic: the most epochs (at most {MAX_AUTO_EPOCHS}) whose floor of {choice.floor} "
                      f"labelled rows per tag (10 x {n_features} features x {epochs}) a batch meets {how}")
        else:
            choice = choose_batch_size(replace(params, epochs=epochs), active, mask, n_features, bound, strict=strict)
            why = "label_dp is 'on'" if params.label_dp == "on" else "no batch meets the floor for any epochs"
            reason = (f"automatic: {why}, so {DP_EPOCHS} epochs (each epoch is one more composition of the label-DP "
                      "accountant: fewer epochs need less noise)")
        entry = {"epochs": epochs, "automatic": True, "reason": reason}
    entry["max_epochs"] = session_epochs(params)
    return replace(params, epochs=entry["epochs"], batch_size=choice.batch_size), choice, entry


__all__ = ["DP_EPOCHS", "MAX_AUTO_EPOCHS", "MIN_STEPS_PER_EPOCH", "PREFERRED_BATCH", "TARGET_STEPS_PER_EPOCH", "BatchChoice", "choose_batch_size",
           "choose_schedule", "session_batch_bound", "session_epochs"]
