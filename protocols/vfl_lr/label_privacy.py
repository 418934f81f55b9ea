"""Label privacy in training: the batch floor, or Gaussian noise on the training labels, and its accountant.

The platform computes its own gradient ``X_Bq^T (M o d' 2^F)`` exactly, and ``d' - z_B = z_A + 2 - 4 y`` holds
the labels (docs/security.md, "Labels"). Two protections, chosen per job by ``TrainParams.label_dp``:

* **floor** (``label_dp="off"``, or ``"auto"`` when the batches meet it): every batch holds, per tag, either no labelled row or at least
  ``FLOOR_FACTOR`` x the platform's features x the epochs (``benchmarks/privacy.py`` measured the factor).
  Both parties check it; a short last batch joins the one before. A platform that keeps every epoch's
  gradient has ``features x epochs`` equations per batch's worth of rows, so the floor scales with the
  epochs: at it, least squares over all epochs recovers labels no better (within 0.02) than the
  platform's features alone predict them. It is a measured margin against these attacks, not a guarantee.
* **label DP** (``label_dp="on"``; the default ``"auto"`` turns it on when the batches would miss the floor,
  for a small data set or a small batch size): before training, the bank draws Gaussian noise once for every
  labelled (row, tag) of the alignment and trains on the noisy labels throughout: each residual ``d' 2^F`` it
  sends the platform carries its row's noise (before the platform's features multiply it), and so does the
  bank's own gradient. Everything the platform sees, and the bank's trained model, is then post-processing
  of the noisy labels, so one customer's labels (all tags) are (epsilon, delta)-DP against a platform that
  deviates as much as against one that does not: whatever it multiplies the residuals by (its features, a
  matrix of its choice, values scaled by 2^48), and no number it declares sets the noise (issue 23: the noise
  used to sit on the mask path, scaled to a row-norm bound the platform declared).

Accounting: one Gaussian mechanism per job, of sensitivity ``4 * 2^F sqrt(T)`` (a customer's labels move its
own residuals only) and noise ``sigma = z`` times that, which is ``1/z``-GDP (Dong, Roth, Su, "Gaussian
differential privacy", JRSS-B 2022); every epoch reuses the same noisy labels, so epochs do not compose, and
``(epsilon, delta)`` follows from the analytic Gaussian mechanism (Balle, Wang, ICML 2018, Thm. 8).
:func:`rdp_epsilon` is the looser RDP figure, for comparison.
"""

from __future__ import annotations

import math
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocols.errors import ProtocolError
from protocols.vfl_lr.params import (
    D_BITS,
    DP_NOISE_BITS,
    F_BITS,
    MAX_AUTO_EPOCHS,
    TrainingError,
    TrainParams,
)
from protocols.vfl_lr.state import epoch_batches

# A job whose residual noise could exceed its slot room within this many standard deviations is refused up front.
NOISE_TAIL_SIGMAS = 8
FLOOR_FACTOR = 10  # labelled rows per tag and batch, per platform feature (benchmarks/privacy.py)
LABEL_DP_MODES = ("auto", "on", "off")
RDP_ORDERS = tuple([1 + x / 10 for x in range(1, 100)] + list(range(12, 64)) + [128, 256, 512, 1024])
_RANDOM = secrets.SystemRandom()


# ------------------------------------------------------------------------------ the floor ----


def batch_floor(n_features: int, epochs: int | None) -> int:
    """Labelled rows per tag that a batch must hold (or none): ``FLOOR_FACTOR`` x features x epochs (automatic
    epochs, None: their bound ``MAX_AUTO_EPOCHS``, the most the bank runs)."""
    return FLOOR_FACTOR * max(1, n_features) * max(1, MAX_AUTO_EPOCHS if epochs is None else epochs)


def floor_text(n_features: int, epochs: int) -> str:
    """How the floor is made, for messages."""
    return (f"{batch_floor(n_features, epochs)} ({FLOOR_FACTOR} x {n_features} platform features x {epochs} "
            f"epoch{'s' if epochs != 1 else ''})")


def max_batch_rows(batch_size: int | None) -> int:
    """The largest batch either party accepts: a short last batch may join a full one.

    A session's parameters always carry an integer: with an automatic batch size the bank sends its upper
    bound (batching.py), so a session whose ``batch_size`` is null is refused.
    """
    if batch_size is None:
        raise ProtocolError("the session's batch_size is null: the bank sends the automatic batch size's bound")
    return 2 * batch_size - 1


def below_floor(batches: Sequence[np.ndarray], mask: np.ndarray, floor: int) -> tuple[int, int, int] | None:
    """The first (batch, tag, labelled rows) with some but fewer than ``floor`` labelled rows, or None."""
    for b, rows in enumerate(batches):
        counts = mask[rows].sum(axis=0)
        bad = np.flatnonzero((counts > 0) & (counts < floor))
        if len(bad):
            return b, int(bad[0]), int(counts[bad[0]])
    return None


def join_short_last(batches: list[np.ndarray], mask: np.ndarray, floor: int) -> list[np.ndarray]:
    """``batches`` with the last one joined to the one before if it is below the floor for some tag."""
    if len(batches) > 1 and below_floor(batches[-1:], mask, floor) is not None:
        return [*batches[:-2], np.concatenate(batches[-2:])]
    return batches


def platform_enforces_floor(params: TrainParams, *, strict: bool) -> bool:
    """Whether the platform refuses batches below the floor: when the job says ``label_dp="off"``.

    With ``"auto"`` the bank adds label DP exactly when its batches would miss the floor, and with ``"on"``
    always, so a batch below the floor is then a noisy one. Not ``strict`` (``insecure_for_tests``: tests
    and benchmarks) it never refuses.
    """
    return strict and params.label_dp == "off"


# ------------------------------------------------------------- Gaussian DP and its conversion ----


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def gaussian_delta(epsilon: float, mu: float) -> float:
    """The smallest delta for which ``mu``-GDP (e.g. Gaussian noise ``sigma = sensitivity / mu``) is
    (epsilon, delta)-DP: ``Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)`` (Balle and Wang 2018)."""
    if mu <= 0:
        return 0.0
    a, b = -epsilon / mu + mu / 2, -epsilon / mu - mu / 2
    tail = _phi(b)
    second = math.exp(epsilon + math.log(tail)) if tail > 0 else 0.0
    return max(0.0, _phi(a) - second)


def gaussian_epsilon(mu: float, delta: float) -> float:
    """The smallest epsilon with ``gaussian_delta(epsilon, mu) <= delta`` (bisection, 1e-10 relative)."""
    if gaussian_delta(0.0, mu) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while gaussian_delta(hi, mu) > delta:
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gaussian_delta(mid, mu) > delta else (lo, mid)
        if hi - lo <= 1e-10 * hi:
            break
    return hi


def gaussian_mu(epsilon: float, delta: float) -> float:
    """The largest ``mu`` whose ``mu``-GDP is (epsilon, delta)-DP."""
    lo, hi = 0.0, 1.0
    while gaussian_delta(epsilon, hi) < delta:
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gaussian_delta(epsilon, mid) <= delta else (lo, mid)
        if hi - lo <= 1e-12 * hi:
            break
    return lo


def rdp_epsilon(mu: float, delta: float, orders: Sequence[float] = RDP_ORDERS) -> float:
    """Epsilon of ``mu``-GDP through Renyi DP (``alpha mu^2 / 2`` at order alpha) and the conversion of
    Canonne, Kamath, Steinke (2020), minimised over ``orders``: what an RDP accountant reports."""
    best = math.inf
    for a in orders:
        eps = a * mu * mu / 2 + math.log1p(-1 / a) - (math.log(delta) + math.log(a)) / (a - 1)
        best = min(best, eps)
    return max(0.0, best)


# ----------------------------------------------------------------------------- the noise ----


def residual_noise_room() -> int:
    """How far label-DP noise may take a residual ``d' 2^F`` beyond its own range and still fit its slot."""
    return (1 << (D_BITS + DP_NOISE_BITS)) - (1 << D_BITS)


def residual_sensitivity(n_tags: int) -> float:
    """L2 change of the labelled residuals ``d' 2^F`` (fixed point) the platform receives in one batch when one
    customer's labels change: ``d' = z_A + z_B + 2 - 4 y`` (the scores are clipped before encoding, not the
    residual), so flipping ``y_it`` moves that customer's residual of tag t by exactly ``4 * 2^F``, and no other
    row's; over its tags (at most T residuals) the change is at most ``4 * 2^F sqrt(T)``. The platform's gradient,
    and anything else it computes from the residuals, is post-processing: no bound on its features is needed.
    """
    return 4.0 * (1 << F_BITS) * math.sqrt(n_tags)


def gaussian_ints(n: int, sigma: float, rng: random.Random = _RANDOM) -> list[int]:
    """``n`` draws of ``N(0, sigma^2)`` rounded to integers, from ``rng`` (default: the operating system's
    generator; in training, the job's keyed stream, ``protocols.vfl_lr.resume.KeyedRandom``).

    Rounding after adding to an integer is post-processing, so the rounded mechanism keeps the guarantee.
    """
    return [round(rng.gauss(0.0, sigma)) for _ in range(n)]


def gaussian_floats(shape: tuple[int, ...], sigma: float, rng: random.Random = _RANDOM) -> np.ndarray:
    """An array of ``N(0, sigma^2)`` draws from ``rng`` (as :func:`gaussian_ints`)."""
    n = int(np.prod(shape))
    return np.array([rng.gauss(0.0, sigma) for _ in range(n)], dtype=np.float64).reshape(shape)


@dataclass(frozen=True)
class LabelNoise:
    """Gaussian noise on the training labels, drawn once per job: noise multiplier ``z = 1/mu``, so that the noisy
    labels are a ``mu``-GDP release of each customer's labels, whatever is computed from them afterwards."""

    epsilon: float
    delta: float
    epochs: int  # the epochs the job runs: they reuse the same noisy labels, so they do not enter the noise
    noise_multiplier: float
    residual_sensitivity: float

    @classmethod
    def calibrate(cls, params: TrainParams, residual_sens: float) -> LabelNoise:
        """The noise that makes the job (epsilon, delta)-DP for one customer's labels."""
        mu = gaussian_mu(params.dp_epsilon, params.dp_delta)
        return cls(params.dp_epsilon, params.dp_delta, params.epochs, 1.0 / mu, residual_sens)

    @property
    def residual_sigma(self) -> float:
        return self.noise_multiplier * self.residual_sensitivity


# ------------------------------------------------------------------------ the bank's plan ----


@dataclass
class LabelPrivacy:
    """The bank's label protection for one job: batches, floor or noise, and the accountant."""

    params: TrainParams
    active: np.ndarray
    mask: np.ndarray  # labels known in the training rows (rows x T)
    n_features: int  # the platform's
    floor: int
    mode: str  # "dp", "floor", or "unprotected" (below the floor, only with insecure_for_tests)
    noise: LabelNoise | None = None
    epochs_spent: int = 0
    smallest: int | None = None  # fewest labelled rows of a tag in a batch that has some (floor mode)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def plan(cls, params: TrainParams, active: np.ndarray, mask: np.ndarray, n_features: int,
             *, strict: bool) -> LabelPrivacy:
        """Decide the protection: label DP if ``"on"``, or if ``"auto"`` and some batch of some epoch would
        miss the floor; otherwise the floor, and :class:`TrainingError` if ``"off"`` and a batch misses it.

        Not ``strict`` (``insecure_for_tests``: tests and benchmarks), ``"auto"`` never turns label DP on and
        a batch below the floor runs as it is, the report's ``mode`` saying "unprotected".
        ``n_features``: the platform's feature count, which is the width of the mask path the bank opens for it
        per tag (the bank refuses a reply of any other width), so the floor counts what the platform can use.
        """
        floor, T = batch_floor(n_features, params.epochs), mask.shape[1]
        plan = cls(params, active, mask, n_features, floor, "floor")
        hit = None
        if params.label_dp != "on":
            for epoch in range(params.epochs):
                batches = plan.batches(epoch, join=strict)
                hit = below_floor(batches, mask, floor)
                if hit is not None:
                    hit = (epoch, *hit)
                    break
                counts = np.array([mask[r].sum(axis=0) for r in batches])
                some = counts[counts > 0]
                if len(some):
                    plan.smallest = min(int(some.min()), plan.smallest or int(some.min()))
            if hit is None:
                return plan
        if params.label_dp == "on" or (params.label_dp == "auto" and strict):
            noise = LabelNoise.calibrate(params, residual_sensitivity(T))
            if NOISE_TAIL_SIGMAS * noise.residual_sigma >= residual_noise_room():
                raise TrainingError(
                    f"label DP at dp_epsilon {params.dp_epsilon} with {T} tags needs noise wider than the residuals' "
                    "slots hold; raise dp_epsilon, or train fewer tags per job")
            plan.mode, plan.noise, plan.smallest = "dp", noise, None
            if hit is not None:
                plan.notes.append("label DP is on because the batches miss the floor of "
                                  f"{floor_text(n_features, params.epochs)} labelled rows per tag")
            return plan
        assert hit is not None
        epoch, b, t, count = hit
        if strict:
            labelled = int(mask[active, t].sum())
            advice = (f"tag {t + 1} has only {labelled} labelled training rows, so no batch can meet it" if
                      labelled < floor else f"raise batch_size (to about "
                      f"{math.ceil(1.3 * floor * len(active) / labelled)} at this tag's label share)")
            raise TrainingError(
                f"batch {b + 1} of epoch {epoch + 1} holds {count} labelled rows of tag {t + 1}; the floor is "
                f"{floor_text(n_features, params.epochs)} labelled rows per tag and batch, below which the "
                f"platform's gradients give the labels away: {advice}, or set label_dp to 'on' or 'auto'")
        plan.mode, plan.smallest = "unprotected", None
        plan.notes.append(f"batch {b + 1} of epoch {epoch + 1}: {count} labelled rows of tag {t + 1}, below the "
                          f"floor of {floor} (allowed only with insecure settings)")
        return plan

    def batches(self, epoch: int, *, join: bool | None = None) -> list[np.ndarray]:
        """This epoch's batches; in floor mode a short last batch joins the one before."""
        p = self.params
        batches = epoch_batches(self.active, p.batch_size, p.seed, epoch)
        if join if join is not None else self.mode == "floor":
            batches = join_short_last(batches, self.mask, self.floor)
        return batches

    def record_epoch(self, epoch: int) -> None:
        """Epoch ``epoch`` (0-based) ran (also in a run this one resumes): with label DP the noisy labels are out
        from the first, and later epochs spend nothing more."""
        self.epochs_spent = max(self.epochs_spent, epoch + 1)

    def label_noise(self, n_rows: int, n_tags: int, *, rng: random.Random = _RANDOM) -> np.ndarray:
        """The job's noise on every (row, tag) label (rows of the alignment x T, fixed point, int64), drawn once from
        ``rng`` (training: the job's keyed stream, so a resumed or replayed batch carries the same noise);
        zeros without label DP. The bank adds it to the residuals ``d' 2^F`` it sends and to its own gradient's.

        A draw that would not fit the residual's slot (:func:`residual_noise_room`) stops the job rather than wrap.
        """
        if self.noise is None:  # a read-only view of one row of zeros: no memory for a large alignment
            return np.broadcast_to(np.zeros((1, n_tags), dtype=np.int64), (n_rows, n_tags))
        sigma, count = self.noise.residual_sigma, n_rows * n_tags
        if hasattr(rng, "normals"):  # the job's keyed stream, vectorised (protocols/vfl_lr/resume.py)
            noise = np.rint(sigma * rng.normals(count)).astype(np.int64).reshape(n_rows, n_tags)
        else:
            noise = np.array(gaussian_ints(count, sigma, rng), dtype=np.int64).reshape(n_rows, n_tags)
        if noise.size and int(np.abs(noise).max()) >= residual_noise_room():
            raise TrainingError("label DP noise does not fit the residuals' slots; raise dp_epsilon or train fewer "
                                "tags in one job")
        return noise

    def spent(self) -> tuple[float, float] | None:
        """(epsilon, delta) spent so far under label DP, or None without it."""
        if self.noise is None:
            return None
        if self.epochs_spent == 0:
            return 0.0, self.noise.delta
        return gaussian_epsilon(1.0 / self.noise.noise_multiplier, self.noise.delta), self.noise.delta

    def summary(self) -> dict[str, Any]:
        """The training report's ``label_privacy`` entry."""
        out: dict[str, Any] = {"mode": self.mode, "label_dp": self.params.label_dp, "floor": self.floor,
                               "floor_factor": FLOOR_FACTOR, "platform_features": self.n_features,
                               "epochs": self.params.epochs,
                               "unit": "one customer's labels (all tags)"}
        if self.noise is None:
            out["smallest_labelled_batch"] = self.smallest
            out["guarantee"] = None  # the floor is a measured margin against known attacks (docs/security.md)
        else:
            n = self.noise
            eps, delta = self.spent() or (0.0, n.delta)
            mu = 1.0 / n.noise_multiplier if self.epochs_spent else 0.0
            out.update(epsilon=eps, delta=delta, epsilon_target=n.epsilon, epochs_accounted=self.epochs_spent,
                       noise_multiplier=n.noise_multiplier, gdp_mu=mu,
                       epsilon_rdp=rdp_epsilon(mu, delta) if mu > 0 else 0.0,
                       residual_sensitivity_fixed_point=n.residual_sensitivity,
                       residual_sigma_fixed_point=n.residual_sigma, fixed_point_bits=F_BITS,
                       noise_on="each labelled training label, drawn once per job: every residual d' 2^F the "
                                "platform receives and the bank's own gradient use the noisy labels, so no bound on "
                                "the platform's features is assumed",
                       accountant="one Gaussian mechanism per job (epochs reuse it), analytic Gaussian conversion",
                       guarantee=f"({eps:.3g}, {delta:.3g})-DP for each customer's labels")
        if self.notes:
            out["notes"] = list(self.notes)
        return out


__all__ = ["FLOOR_FACTOR", "LABEL_DP_MODES", "LabelNoise", "LabelPrivacy", "batch_floor",
           "below_floor", "floor_text", "gaussian_delta", "gaussian_epsilon", "gaussian_floats", "gaussian_ints", "gaussian_mu",
           "join_short_last", "max_batch_rows", "platform_enforces_floor", "rdp_epsilon", "residual_sensitivity"]
