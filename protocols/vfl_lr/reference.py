"""The joint training's plaintext twin (tests, benchmarks) and the plaintext Taylor trainer it shares with the
bank-only yardstick (protocols/vfl_lr/yardstick.py): one optimiser loop for both."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from protocols.party_data import PartyData
from protocols.vfl_lr.params import Z_CLIP, TrainingError, TrainParams
from protocols.vfl_lr.state import Optimizer, Scaler, active_rows, epoch_batches

Batches = Callable[[int], Sequence[np.ndarray]]  # epoch -> its mini-batches (row positions)
OnEpoch = Callable[[int, list[np.ndarray]], None]  # (epoch, the blocks' weights after it)


def taylor_fit(blocks: Sequence[np.ndarray], labels: np.ndarray, train_mask: np.ndarray, params: TrainParams,
               batches: Batches, epochs: int, *, intercepts: np.ndarray | None = None,
               on_epoch: OnEpoch | None = None) -> list[np.ndarray]:
    """Mini-batch Taylor-loss LR on plaintext feature blocks, as the joint protocol computes it.

    ``blocks[0]`` is the bank's (standardised, its intercept column last if ``params.fit_intercept``); the
    others (the platform's, for the twin) carry no intercept. Each block has its own :class:`Optimizer`, as
    each party has; ``d = (sum of clipped block scores + 2 - 4 y)`` over a batch's labelled (row, tag) pairs.
    The bank's intercepts start at ``intercepts`` (base-rate log-odds in training). Returns the weights.
    """
    p = params
    y = np.nan_to_num(labels, nan=0.0)
    T = labels.shape[1]
    Ws = [np.zeros((X.shape[1], T)) for X in blocks]
    if p.fit_intercept and intercepts is not None:
        Ws[0][-1] = intercepts
    opts = [Optimizer(p, Ws[0].shape, unpenalised=[Ws[0].shape[0] - 1] if p.fit_intercept else []),
            *[Optimizer(p, W.shape) for W in Ws[1:]]]
    for epoch in range(epochs):
        for rows in batches(epoch):
            m = train_mask[rows]
            z = sum(np.clip(X[rows] @ W, -Z_CLIP, Z_CLIP) for X, W in zip(blocks, Ws, strict=True))
            d = (z + 2 - 4 * y[rows]) * m
            counts = m.sum(axis=0)
            scale = 4.0 * np.maximum(counts, 1)
            for X, W, opt in zip(blocks, Ws, opts, strict=True):
                opt.step(W, X[rows].T @ d / scale, epoch, counts > 0, X[rows], m)
        if on_epoch is not None:
            on_epoch(epoch, Ws)
    return Ws


def plaintext_reference(bank: PartyData, platform: PartyData, params: TrainParams) -> dict[str, np.ndarray]:
    """The same Taylor-approximated training on pooled plaintext (same split, scalers, batches, optimiser).

    Only a harness that holds both halves can run it; tests and benchmarks compare the joint model with
    it to measure what fixed point and quantisation cost (docs/protocol.md). Returns both weight halves
    (the bank's with the intercept as its last row if fitted), after the last epoch.
    """
    p = params
    if p.batch_size is None:  # the automatic size needs the platform's feature count: a run decides it
        raise TrainingError("a plaintext reference needs an explicit batch_size (the job's report has the one used)")
    split = p.split(bank.labels, bank.ids)
    mask = ~np.isnan(bank.labels)
    train_mask = np.zeros_like(mask)
    train_mask[split.train] = mask[split.train]
    XA = Scaler.fit(bank.features[split.train], p.clip).transform(bank.features)
    if p.fit_intercept:
        XA = np.hstack([XA, np.ones((len(XA), 1))])
    XB = Scaler.fit(platform.features[split.train], p.clip).transform(platform.features)
    active = active_rows(split.train, mask)
    WA, WB = taylor_fit([XA, XB], bank.labels, train_mask, p,
                        lambda epoch: epoch_batches(active, p.batch_size, p.seed, epoch), p.epochs,
                        intercepts=p.start_intercepts(bank.labels, split.train))
    return {"bank": WA, "platform": WB}


__all__ = ["Batches", "OnEpoch", "plaintext_reference", "taylor_fit"]
