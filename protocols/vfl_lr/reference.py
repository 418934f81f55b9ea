"""The joint training's plaintext twin, for a harness that holds both halves (tests, benchmarks)."""

from __future__ import annotations

import numpy as np

from protocols.party_data import PartyData
from protocols.vfl_lr.params import Z_CLIP, TrainParams
from protocols.vfl_lr.state import Optimizer, Scaler, active_rows, epoch_batches


def plaintext_reference(bank: PartyData, platform: PartyData, params: TrainParams) -> dict[str, np.ndarray]:
    """The same Taylor-approximated training on pooled plaintext (same split, scalers, batches, optimiser).

    Only a harness that holds both halves can run it; tests and benchmarks compare the joint model with
    it to measure what fixed point and quantisation cost (docs/protocol.md). Returns both weight halves
    (the bank's with the intercept as its last row if fitted), after the last epoch.
    """
    p = params
    split = p.split(bank.labels)
    mask = ~np.isnan(bank.labels)
    train_mask = np.zeros_like(mask)
    train_mask[split.train] = mask[split.train]
    y = np.nan_to_num(bank.labels, nan=0.0)
    XA = Scaler.fit(bank.features[split.train], p.clip).transform(bank.features)
    if p.fit_intercept:
        XA = np.hstack([XA, np.ones((len(XA), 1))])
    XB = Scaler.fit(platform.features[split.train], p.clip).transform(platform.features)
    T = bank.labels.shape[1]
    WA, WB = np.zeros((XA.shape[1], T)), np.zeros((XB.shape[1], T))
    opt_a = Optimizer(p, WA.shape, unpenalised=[XA.shape[1] - 1] if p.fit_intercept else [])
    opt_b = Optimizer(p, WB.shape)
    active = active_rows(split.train, mask)
    for epoch in range(p.epochs):
        for rows in epoch_batches(active, p.batch_size, p.seed, epoch):
            m = train_mask[rows]
            z_a = np.clip(XA[rows] @ WA, -Z_CLIP, Z_CLIP)
            z_b = np.clip(XB[rows] @ WB, -Z_CLIP, Z_CLIP)
            d = (z_a + z_b + 2 - 4 * y[rows]) * m
            counts = m.sum(axis=0)
            scale = 4.0 * np.maximum(counts, 1)
            ga, gb = XA[rows].T @ d / scale, XB[rows].T @ d / scale
            opt_a.step(WA, ga, epoch, counts > 0)
            opt_b.step(WB, gb, epoch, counts > 0)
    return {"bank": WA, "platform": WB}


__all__ = ["plaintext_reference"]
