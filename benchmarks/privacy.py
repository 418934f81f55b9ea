"""Label privacy: what a curious platform recovers from its exact gradients, and what the floor and label DP cost.

    python -m benchmarks.privacy [--quick] [--json PATH]

The platform sees, per batch, its quantised features ``Xq``, the batch's rows, the label mask, its own
``z_B 2^F`` and its gradient ``X_Bq^T (M o d' 2^F)`` (exact integers; minus the bank's noise under label
DP), where ``d' - z_B = z_A + 2 - 4 y``. The attacks here take exactly that:

* :func:`exact_solve_attack`: a batch with no more labelled rows of a tag than features gives ``d'`` by
  solving the linear system, and ``y`` by the sign of ``d' - z_B``;
* :func:`least_squares_attack`: otherwise the minimum-norm solution (one batch: the residual projected onto
  the batch's feature columns; several epochs stacked: every equation the platform kept about each row).

:func:`label_recovery_accuracy` scores guesses, or, for scores, the best single cut "the lowest values are
positive" (chosen with the true labels: an upper bound on any threshold the attacker could pick), against
:func:`majority_rate`. The platform's view comes from :func:`platform_view`, the protocol's numbers in
plaintext (same split, scalers, quantisation, fixed point, batches, optimiser and the bank's noise);
``auc_by_epsilon`` runs the real protocol (LocalPeer, 1024-bit keys, insecure_for_tests) on default_credit.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.linalg import lsqr

from benchmarks import privacy_bank_view
from benchmarks.common import console, print_table, write_json
from party_common.data_loading import load_party_data
from protocols.channel import LocalPeer
from protocols.fixedpoint import quantise
from protocols.party_data import PartyData
from protocols.vfl_lr import PlatformModel, TrainParams, make_platform_train_handler, run_bank_training
from protocols.vfl_lr.encoding import encode_z, residual_offset
from protocols.vfl_lr.label_privacy import (
    FLOOR_FACTOR,
    LabelNoise,
    batch_floor,
    gaussian_floats,
    join_short_last,
    residual_sensitivity,
)
from protocols.vfl_lr.params import F_BITS, Z_CLIP
from protocols.vfl_lr.state import Optimizer, Scaler, active_rows, epoch_batches, resolve_optimizer

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SETTINGS = {"epochs": 5, "batch_size": 1024, "l2": 0.1, "validation_share": 0.0}  # benchmarks/vfl_lr.py's


@dataclass
class BatchView:
    """What the platform holds after one batch."""

    epoch: int
    rows: np.ndarray  # aligned row positions
    gradient: np.ndarray  # (d_B, T) X_Bq^T (M o d' 2^F) as it obtained it (int64, or float with noise)
    zb: np.ndarray  # (rows, T) its own z_B 2^F


@dataclass
class PlatformView:
    Xq: np.ndarray  # all rows' quantised platform features
    mask: np.ndarray  # the label mask it was sent (training rows)
    batches: list[BatchView]


def load_default_credit(rows: int | None = None, seed: int = 0) -> tuple[PartyData, PartyData]:
    """default_credit's two halves in one order; ``rows``: a fixed random subset."""
    bank = load_party_data(DATASETS / "default_credit_hetero_guest.csv", id_column="id", tag_columns=["y"])
    platform = load_party_data(DATASETS / "default_credit_hetero_host.csv", id_column="id")
    ids = [i for i in bank.ids if platform.row_of(i) >= 0]
    if rows is not None and rows < len(ids):
        ids = list(np.array(ids, dtype=object)[np.sort(np.random.default_rng(seed).permutation(len(ids))[:rows])])
    return bank.take(ids), platform.take(ids)


def platform_view(bank: PartyData, platform: PartyData, params: TrainParams, *, dp: bool = False,
                  join_floor: int | None = None, max_batches: int | None = None) -> PlatformView:
    """Run the protocol's arithmetic in plaintext and keep the platform's view of every batch.

    ``dp``: the bank's Gaussian noise of ``params.dp_epsilon`` on each labelled label, once per job (so on the platform's
    gradient through its features) and on its own gradient; ``join_floor``: a short last batch joins the one
    before (floor mode); ``max_batches``: stop after that many batches in all.
    """
    p = params
    split = p.split(bank.labels, bank.ids)
    mask = ~np.isnan(bank.labels)
    train_mask = np.zeros_like(mask)
    train_mask[split.train] = mask[split.train]
    y = np.nan_to_num(bank.labels, nan=0.0)
    XA = Scaler.fit(bank.features[split.train], p.clip).transform(bank.features)
    XA = np.hstack([XA, np.ones((len(XA), 1))])
    XB = Scaler.fit(platform.features[split.train], p.clip).transform(platform.features)
    Xq, qscale = quantise(XB, p.quant_bits, fit_rows=split.train)
    T = bank.labels.shape[1]
    p = replace(p, optimizer=resolve_optimizer(p, False))  # explicit batches: the bank resolves "auto" to Adam
    WA, WB = np.zeros((XA.shape[1], T)), np.zeros((XB.shape[1], T))
    opt_a, opt_b = Optimizer(p, WA.shape, unpenalised=[XA.shape[1] - 1]), Optimizer(p, WB.shape)
    active = active_rows(split.train, mask)
    noise = LabelNoise.calibrate(p, residual_sensitivity(T)) if dp else None
    # Label DP: noisy labels drawn once for the job, used by both gradients (as the bank does)
    label_noise = np.rint(gaussian_floats(train_mask.shape, noise.residual_sigma)).astype(np.int64) if noise \
        else np.zeros(train_mask.shape, dtype=np.int64)
    views: list[BatchView] = []
    for epoch in range(p.epochs):
        batches = epoch_batches(active, p.batch_size, p.seed, epoch)
        if join_floor:
            batches = join_short_last(batches, train_mask, join_floor)
        for rows in batches:
            if max_batches is not None and len(views) >= max_batches:
                return PlatformView(Xq, train_mask, views)
            m = train_mask[rows]
            za, zb = XA[rows] @ WA, XB[rows] @ WB
            zfb = encode_z(zb)
            d_fixed = np.where(m, zfb + encode_z(za) + residual_offset(y[rows]) + label_noise[rows], 0)
            bank_sum = XA[rows].T @ ((np.clip(za, -Z_CLIP, Z_CLIP) + np.clip(zb, -Z_CLIP, Z_CLIP) + 2
                                      - 4 * y[rows] + label_noise[rows] / (1 << F_BITS)) * m)
            gradient: np.ndarray = Xq[rows].T @ d_fixed  # int64: |Xq| < 2^7, |d'| < 2^31, rows < 2^16
            views.append(BatchView(epoch, rows, gradient, np.where(m, zfb, 0)))
            counts = m.sum(axis=0)
            scale = 4.0 * np.maximum(counts, 1)
            opt_a.step(WA, bank_sum / scale, epoch, counts > 0, XA[rows], m)
            opt_b.step(WB, gradient.astype(np.float64) * qscale[:, None] / (1 << F_BITS) / scale, epoch, counts > 0,
                       Xq[rows] * qscale, m)
    return PlatformView(Xq, train_mask, views)


# ----------------------------------------------------------------------------- the attacks ----


def exact_solve_attack(Xq: np.ndarray, rows: np.ndarray, gradient: np.ndarray, zb: np.ndarray,
                       mask: np.ndarray) -> np.ndarray:
    """Label guesses (1.0 / 0.0; NaN where unlabelled) for one batch: solve ``Xq_L^T d = G_t`` per tag.

    Exact when the batch's labelled rows of the tag are no more than the features (and ``Xq_L`` has full
    row rank); ``y = 1`` where ``d' - z_B = z_A - 2`` rather than ``z_A + 2``, that is where it is negative.
    """
    guesses = np.full((len(rows), gradient.shape[1]), np.nan)
    for t in range(gradient.shape[1]):
        labelled = np.flatnonzero(mask[rows, t])
        if len(labelled) == 0:
            continue
        A = Xq[rows[labelled]].T.astype(np.float64)
        d, *_ = np.linalg.lstsq(A, gradient[:, t].astype(np.float64), rcond=None)
        guesses[labelled, t] = (d - zb[labelled, t] < 0).astype(np.float64)
    return guesses


def least_squares_attack(Xq: np.ndarray, batches: Sequence[BatchView], mask: np.ndarray,
                         n_rows: int, iterations: int = 500) -> np.ndarray:
    """Scores per row and tag (lower: more likely positive; NaN where never seen) for ``z_A + 2 - 4 y``.

    Every batch gives ``Xq_L^T v_L = (G_t - Xq_L^T z_B) / 2^F`` in the unknown ``v = z_A + 2 - 4 y`` of its
    labelled rows; the curious platform keeps them all and takes the minimum-norm least-squares solution
    of the stacked system (for one batch: ``v`` projected onto the batch's feature columns, exactly; for
    several: ``iterations`` of LSQR from zero, which tends to the minimum-norm solution). Stacking epochs
    treats ``z_A`` as fixed, which it nearly is once the weights settle.
    """
    T = mask.shape[1]
    scores = np.full((n_rows, T), np.nan)
    scale = float(1 << F_BITS)
    for t in range(T):
        data, cols, ptr, rhs = [], [], [0], []
        for view in batches:
            labelled = view.rows[mask[view.rows, t]]
            if len(labelled) == 0:
                continue
            known = Xq[labelled].T.astype(np.float64) @ view.zb[mask[view.rows, t], t].astype(np.float64)
            rhs.extend((view.gradient[:, t].astype(np.float64) - known) / scale)
            for j in range(Xq.shape[1]):
                data.extend(Xq[labelled, j].astype(np.float64))
                cols.extend(labelled)
                ptr.append(len(data))
        if not rhs:
            continue
        seen = np.unique(np.asarray(cols, dtype=np.int64))
        local = np.searchsorted(seen, np.asarray(cols, dtype=np.int64))
        A = csr_matrix((np.asarray(data), local, np.asarray(ptr)), shape=(len(rhs), len(seen)))
        if len(batches) == 1:
            v, *_ = np.linalg.lstsq(A.toarray(), np.asarray(rhs), rcond=None)
        else:
            v = lsqr(A, np.asarray(rhs), atol=1e-8, btol=1e-8, iter_lim=iterations)[0]
        scores[seen, t] = v
    return scores


def majority_rate(y: np.ndarray) -> float:
    """Accuracy of guessing the commoner class for every labelled row (``y``: 0/1, NaN = unknown)."""
    known = y[~np.isnan(y)]
    return float(max(known.mean(), 1 - known.mean())) if len(known) else float("nan")


def label_recovery_accuracy(guesses_or_scores: np.ndarray, y: np.ndarray, *, scores: bool = False) -> float:
    """Share of labelled rows guessed right. ``scores``: the best cut "lowest are positive" over all cuts."""
    known = ~np.isnan(guesses_or_scores) & ~np.isnan(y)
    g, truth = guesses_or_scores[known], y[known].astype(np.int64)
    if len(truth) == 0:
        return float("nan")
    if not scores:
        return float((g.astype(np.int64) == truth).mean())
    order = np.argsort(g, kind="stable")
    positives_before = np.concatenate([[0], np.cumsum(truth[order])])  # cut k: the k lowest called positive
    k = np.arange(len(truth) + 1)
    correct = positives_before + ((len(truth) - k) - (truth.sum() - positives_before))
    return float(correct.max() / len(truth))


def held_out_recovery_accuracy(scores: np.ndarray, y: np.ndarray) -> float:
    """The accuracy of a cut "lowest are positive" chosen on half of the labelled rows (by position parity, with
    their true labels) and measured on the other half, both ways, averaged: what an attacker who knows half the
    labels reads of the rest, without the upward bias of choosing the cut on the rows it is measured on (with a
    few hundred rows that bias alone is about one standard error of an accuracy)."""
    known = ~np.isnan(scores) & ~np.isnan(y)
    g, truth = scores[known], y[known].astype(np.int64)
    if len(truth) < 2:
        return float("nan")
    right = 0
    for fit in (0, 1):
        a, b = np.arange(len(g)) % 2 == fit, np.arange(len(g)) % 2 != fit
        order = np.argsort(g[a], kind="stable")
        positives_before = np.concatenate([[0], np.cumsum(truth[a][order])])
        k = np.arange(a.sum() + 1)
        correct = positives_before + ((a.sum() - k) - (truth[a].sum() - positives_before))
        best = int(np.argmax(correct))  # the k lowest are called positive: the cut below the k-th lowest score
        cut = np.inf if best == a.sum() else (g[a][order][best] if best == 0 else
                                              (g[a][order][best - 1] + g[a][order][best]) / 2)
        called = g[b] < cut if best < a.sum() else np.ones(b.sum(), dtype=bool)
        right += int((called.astype(np.int64) == truth[b]).sum())
    return right / len(truth)


def attack_batches(view: PlatformView, y: np.ndarray, epochs: Sequence[int] | None = None,
                   tag: int = 0) -> dict[str, float]:
    """Stacked least squares over ``epochs`` (default all), on the rows it saw: accuracy, the majority rate,
    what the platform's features alone tell (:func:`feature_baseline`), and the advantages over both."""
    chosen = [b for b in view.batches if epochs is None or b.epoch in epochs]
    scores = least_squares_attack(view.Xq, chosen, view.mask, len(view.mask))[:, tag]
    seen = ~np.isnan(scores) & view.mask[:, tag]
    truth = y[seen, tag]
    acc = label_recovery_accuracy(scores[seen], truth, scores=True)
    maj, base = majority_rate(truth), feature_baseline(view.Xq[seen], truth)
    return {"label_recovery_accuracy": acc, "majority_rate": maj, "feature_baseline": base,
            "advantage": acc - maj, "advantage_over_features": acc - base}


def single_batch_advantage(view: PlatformView, y: np.ndarray, tag: int = 0) -> dict[str, float]:
    """Each batch attacked alone (least squares), scores of ``tag`` pooled over the batches: accuracy against
    the majority rate and against what the platform's features alone tell (:func:`feature_baseline`)."""
    truth = np.where(view.mask, y, np.nan)[:, tag]
    pooled, labels = [], []
    for b in view.batches:
        pooled.append(least_squares_attack(view.Xq, [b], view.mask, len(view.mask))[b.rows, tag])
        labels.append(truth[b.rows])
    s, t = np.concatenate(pooled), np.concatenate(labels)
    acc, maj = label_recovery_accuracy(s, t, scores=True), majority_rate(t)
    base = feature_baseline(view.Xq[np.concatenate([b.rows for b in view.batches])], t)
    return {"label_recovery_accuracy": acc, "majority_rate": maj, "feature_baseline": base,
            "advantage": acc - maj, "advantage_over_features": acc - base}


def feature_baseline(Xq: np.ndarray, y: np.ndarray) -> float:
    """What the platform's features alone tell about ``y`` on these rows: the best cut of the least-squares
    fit of the labels on them (fitted with the labels: an upper bound; no gradient involved)."""
    known = ~np.isnan(y)
    X = np.hstack([Xq[known].astype(np.float64), np.ones((int(known.sum()), 1))])
    beta, *_ = np.linalg.lstsq(X, 2 - 4 * y[known], rcond=None)
    return label_recovery_accuracy(X @ beta, y[known], scores=True)


# --------------------------------------------------------------------------- measurements ----


def floor_curve(bank: PartyData, platform: PartyData, factors: Sequence[float], n_batches: int) -> list[dict]:
    """First-epoch least-squares advantage at batch = factor x the platform's features."""
    d, y, out = platform.features.shape[1], bank.labels, []
    for k in factors:
        batch = max(2, int(round(k * d)))
        params = TrainParams(**{**SETTINGS, "batch_size": batch, "epochs": 1})
        view = platform_view(bank, platform, params, max_batches=n_batches)
        entry = {"factor": k, "batch": batch, **single_batch_advantage(view, y)}
        if batch <= d:
            exact = [exact_solve_attack(view.Xq, b.rows, b.gradient, b.zb, view.mask) for b in view.batches]
            truth = np.concatenate([np.where(view.mask, y, np.nan)[b.rows] for b in view.batches])
            entry["exact_solve_accuracy"] = label_recovery_accuracy(np.concatenate(exact), truth)
        out.append(entry)
        console.print(f"batch {batch} ({k} x {d}): accuracy {entry['label_recovery_accuracy']:.4f}, "
                      f"majority {entry['majority_rate']:.4f}, features alone {entry['feature_baseline']:.4f}, "
                      f"advantage over them {entry['advantage_over_features']:+.4f}")
    return out


def over_epochs(bank: PartyData, platform: PartyData, checkpoints: Sequence[int],
                epsilons: Sequence[float]) -> dict[str, Any]:
    """Least squares over every epoch the platform kept, after each of ``checkpoints`` epochs.

    ``floor``: batch at the floor for that many epochs (a run per checkpoint); ``one_epoch_floor``: batch
    at the floor for one epoch, epochs stacked (why the floor scales with the epochs); ``dp_epsilon_X``:
    the same small batch with label DP calibrated for the last checkpoint's epochs.
    """
    d, last, out = platform.features.shape[1], max(checkpoints), {}
    small = batch_floor(d, 1)

    def run(name: str, batch: int, epochs: int, upto: Sequence[int], eps: float | None = None) -> None:
        params = TrainParams(**{**SETTINGS, "batch_size": batch, "epochs": epochs, "dp_epsilon": eps or 3.0})
        view = platform_view(bank, platform, params, dp=eps is not None,
                             join_floor=None if eps is not None else batch_floor(d, epochs))
        for e in upto:
            r = {"batch": batch, **attack_batches(view, bank.labels, range(e))}
            out.setdefault(name, {})[f"epochs_{e}"] = r
            console.print(f"{name}, batch {batch}, {e} epochs stacked: accuracy {r['label_recovery_accuracy']:.4f}"
                          f", majority {r['majority_rate']:.4f}, features alone {r['feature_baseline']:.4f}")

    for e in checkpoints:
        run("floor", batch_floor(d, e), e, [e])
    run("one_epoch_floor", small, last, checkpoints)
    for eps in epsilons:
        run(f"dp_epsilon_{eps:g}", small, last, checkpoints, eps)
    return out


def joint_auc(bank: PartyData, platform: PartyData, params: TrainParams) -> tuple[float, dict[str, Any]]:
    """The real protocol over LocalPeer (1024-bit keys allowed): the joint test AUC and label_privacy."""
    results: list[PlatformModel] = []

    def factory(kind: str, job_id: str, message: dict) -> Any:
        return make_platform_train_handler(job_id, message, platform, on_result=results.append, compute=1,
                                           insecure_for_tests=True)

    outcome = run_bank_training(LocalPeer(factory), "bench-privacy", bank, params, compute=1,
                                insecure_for_tests=True)
    return float(outcome.report["metrics"]["y"]["joint"]["auc"]), outcome.report.get("label_privacy", {})


def auc_by_epsilon(bank: PartyData, platform: PartyData, epsilons: Sequence[float], repeats: int = 1,
                   **settings: Any) -> dict[str, Any]:
    """Joint test AUC without label DP (the floor) and at each epsilon (``repeats`` runs: fresh noise each)."""
    out: dict[str, Any] = {}
    base = TrainParams(**{**SETTINGS, "key_bits": 1024, **settings})
    for eps in [None, *epsilons]:
        params = replace(base, label_dp="off") if eps is None else replace(base, label_dp="on", dp_epsilon=eps)
        name, aucs, started = ("no_dp" if eps is None else f"{eps:g}"), [], time.monotonic()
        privacy: dict[str, Any] = {}
        for _ in range(1 if eps is None else repeats):
            auc, privacy = joint_auc(bank, platform, params)
            aucs.append(auc)
        out[name] = {"auc": float(np.mean(aucs)), "auc_runs": aucs, "epsilon_spent": privacy.get("epsilon"),
                     "noise_multiplier": privacy.get("noise_multiplier"),
                     "seconds_per_run": (time.monotonic() - started) / len(aucs)}
        console.print(f"epsilon {name}: joint AUC {out[name]['auc']:.4f} (runs {', '.join(f'{a:.4f}' for a in aucs)})")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 4000-row subset, fewer batches and epochs")
    ap.add_argument("--repeats", type=int, default=3, help="protocol runs per epsilon (fresh noise each)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    bank, platform = load_default_credit(4000 if args.quick else None)
    d = platform.features.shape[1]
    factors = [1, 2, 4, 8, 25] if args.quick else [1, 2, 4, 6, 8, 10, 12, 16, 25]
    curve = floor_curve(bank, platform, factors, 10 if args.quick else None)  # full: the whole first epoch
    floor = batch_floor(d, 1)
    checkpoints = [1, 3] if args.quick else [1, 2, 5, 10]
    stacked = over_epochs(bank, platform, checkpoints, [1.0, 3.0, 8.0])
    auc = auc_by_epsilon(bank, platform, [1.0, 3.0, 8.0], 1 if args.quick else args.repeats,
                         **({"epochs": 2} if args.quick else {}))
    print_table("first epoch, each batch alone (least squares)",
                [(str(c["batch"]), f"{c['label_recovery_accuracy']:.4f}", f"{c['majority_rate']:.4f}",
                  f"{c['feature_baseline']:.4f}", f"{c['advantage_over_features']:+.4f}") for c in curve],
                ("batch", "accuracy", "majority", "features alone", "advantage over features"))
    print_table("epochs stacked: accuracy (majority, features alone)",
                [(f"{name} ({e.replace('epochs_', '')} epochs, batch {r['batch']})",
                  f"{r['label_recovery_accuracy']:.4f}", f"{r['majority_rate']:.4f}", f"{r['feature_baseline']:.4f}")
                 for name, runs in stacked.items() for e, r in runs.items()],
                ("setting", "accuracy", "majority", "features alone"))
    payload = {"dataset": "default_credit", "rows": len(bank), "platform_features": d,
               "floor_factor": FLOOR_FACTOR, "one_epoch_floor": floor, "settings": SETTINGS, "auc_by_epsilon": auc,
               "first_epoch": curve, "over_epochs": stacked,
               "label_recovery_accuracy": {name: {e: r["label_recovery_accuracy"] for e, r in runs.items()}
                                           for name, runs in stacked.items()},
               "majority_rate": {name: {e: r["majority_rate"] for e, r in runs.items()}
                                 for name, runs in stacked.items()}}
    # The other two leaks of the review, against both nodes: what the bank holds about platform rows after a
    # job with validation, test and scoring, and whether any non-member's ID reached the platform.
    bank_view = privacy_bank_view.run(epochs=3 if args.quick else 10)
    payload.update({key: bank_view[key] for key in ("bank_feature_span_rank", "tags_released",
                                                    "feature_recovery_r2", "nonmember_ids_sent")})
    payload["bank_view"] = bank_view
    print_table("the curious bank (breast, one job with validation, test and scoring)",
                [(k, str(v)) for k, v in bank_view.items()], ("measure", "value"))
    write_json(args.json, payload)
    ok = bank_view["bank_feature_span_rank"] <= bank_view["tags_released"] and bank_view["nonmember_ids_sent"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
