"""Two-party vertical logistic regression, one model per tag, all tags in one job; no third party.

The bank (labels ``Y``, features ``X_A``) drives; the platform (features ``X_B``) answers. Each party keeps
its own weights in plaintext and learns only its own gradient; the protocol, its encodings and what each
side learns are written down in ``docs/protocol.md``. In short, per mini-batch (Taylor loss around 0,
``d' = 4 d = z_B + z_A + 2 - 4 y``, ``[[.]]_P`` under the platform's key, ``[[.]]_A`` under the bank's):

* ahead of time (needs neither the model nor the labels): the bank draws masks ``e`` and sends
  ``[[e]]_A``; the platform returns ``[[X_B^T e + R_B]]_A``; the bank decrypts and returns it;
* ``train.forward``: the platform sends ``[[z_B]]_P`` twice: per row with the tags in slots (for the
  bank's product) and densely packed per labelled (row, tag) pair (for decryption);
* ``train.gradient``: the bank sends ``[[X_A^T z_B + R_A]]_P`` and ``[[d' + e]]_P``; the platform
  decrypts both, returns the first, and computes ``X_B^T d' = X_B^T (d' + e) - X_B^T e``;
* ``train.validate`` (per epoch) and ``train.finish``: partial scores of held-out rows for the metrics.

All ciphertext-side arithmetic is on integers: ``z`` in fixed point with ``F_BITS`` fractional bits,
features quantised to ``quant_bits``-bit integers for the products under encryption.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from protocols.channel import Message, Peer, PeerChannel, ProtocolError
from protocols.evaluation import Split, bank_only_baseline, split_rows, tag_metrics
from protocols.fixedpoint import quantise
from protocols.packing import SlotLayout, pack_signed, slots_per_plaintext, unpack_signed
from protocols.paillier import (
    CipherVector,
    InvalidCiphertext,
    InvalidKey,
    NoisePool,
    PublicKey,
    generate_keypair,
)
from protocols.paillier_pool import PaillierPool
from protocols.party_data import DataError, PartyData, Schema

VERSION = "vfl-lr-taylor-v1"
F_BITS = 20  # fractional bits of z and d' in fixed point
Z_CLIP = 32.0  # |z_A|, |z_B| are clipped here before encoding (the Taylor loss is meaningless far beyond)
D_BITS = 27  # |d' * 2^F| <= (32 + 34) * 2^20 < 2^27
STAT_BITS = 40  # statistical hiding: every mask is 2^40 times wider than what it hides
Progress = Callable[[str, int, int], None]


class TrainingError(ValueError):
    """Training cannot run on this data or with these parameters; the message says why."""


# ------------------------------------------------------------------------------ parameters ----


@dataclass
class TrainParams:
    epochs: int = 10
    batch_size: int = 1024
    learning_rate: float = 0.05
    decay: float = 1.0  # learning rate of epoch e (0-based) is learning_rate / (1 + decay * e)
    optimizer: str = "adam"  # "adam" or "sgd"; each party runs it on its own gradient, locally
    l2: float = 1e-2  # objective: mean logistic loss + l2/2 |w|^2 (+ l1 |w|); the intercept is not penalised
    l1: float = 0.0
    fit_intercept: bool = True
    test_share: float = 0.2
    validation_share: float = 0.1  # of the rows left after the test share; 0 turns early stopping off
    early_stopping_patience: int = 3  # epochs without a better validation AUC on any tag; 0 = never stop
    clip: float = 5.0  # standardised features are clipped to +-clip standard deviations
    quant_bits: int = 8  # features under encryption are signed quant_bits-bit integers
    key_bits: int = 2048
    seed: int = 0

    def validate(self, *, allow_insecure_keys: bool = False) -> TrainParams:
        checks = [
            (isinstance(self.epochs, int) and 1 <= self.epochs <= 1000, "epochs must be an integer in 1..1000"),
            (isinstance(self.batch_size, int) and 16 <= self.batch_size <= 65536,
             "batch_size must be an integer in 16..65536"),
            (0 < self.learning_rate <= 10, "learning_rate must be in (0, 10]"),
            (self.decay >= 0, "decay must be >= 0"),
            (self.optimizer in ("adam", "sgd"), "optimizer must be 'adam' or 'sgd'"),
            (self.l2 >= 0 and self.l1 >= 0, "l1 and l2 must be >= 0"),
            (0 < self.test_share < 0.9, "test_share must be in (0, 0.9)"),
            (0 <= self.validation_share < 0.9, "validation_share must be in [0, 0.9)"),
            (isinstance(self.early_stopping_patience, int) and self.early_stopping_patience >= 0,
             "early_stopping_patience must be an integer >= 0"),
            (1 <= self.clip <= 30, "clip must be in [1, 30]"),
            (isinstance(self.quant_bits, int) and 4 <= self.quant_bits <= 16, "quant_bits must be in 4..16"),
            (self.key_bits in (1024, 2048, 3072, 4096), "key_bits must be 2048, 3072 or 4096"),
            (self.key_bits >= 2048 or allow_insecure_keys, "key_bits below 2048 are insecure"),
            (isinstance(self.seed, int), "seed must be an integer"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainParams:
        try:
            return cls(**json.loads(text))
        except (TypeError, ValueError) as err:
            raise ValueError(f"training parameters: {err}") from err


@dataclass(frozen=True)
class SlotPlan:
    """Slot widths, derived from the batch size and the quantisation (see docs/protocol.md)."""

    quant_bits: int
    batch_size: int
    n_tags: int
    plaintext_bits: int  # usable signed bits of the smaller of the two keys

    @property
    def batch_bits(self) -> int:
        return max(1, math.ceil(math.log2(self.batch_size + 1)))

    @property
    def cross_bits(self) -> int:  # |sum_i xq * z_B 2^F| over a batch
        return self.quant_bits + self.batch_bits + 26

    @property
    def cross_slot(self) -> int:
        return self.cross_bits + STAT_BITS + 2

    @property
    def e_bits(self) -> int:  # the mask e hiding d' 2^F
        return D_BITS + STAT_BITS

    @property
    def pair_slot(self) -> int:
        return self.e_bits + 2

    @property
    def emask_bits(self) -> int:  # |sum_i xq * e| over a batch
        return self.quant_bits + self.batch_bits + self.e_bits

    @property
    def emask_slot(self) -> int:
        return self.emask_bits + STAT_BITS + 2

    @property
    def group(self) -> int:  # tags per per-row ciphertext
        return max(1, min(self.n_tags, self.plaintext_bits // self.emask_slot))

    @property
    def groups(self) -> list[range]:
        return [range(s, min(s + self.group, self.n_tags)) for s in range(0, self.n_tags, self.group)]

    @property
    def pairs_per_ct(self) -> int:
        return self.plaintext_bits // self.pair_slot

    def features_per_emask_ct(self, group_len: int) -> int:
        return max(1, self.plaintext_bits // (self.emask_slot * group_len))


def plaintext_bits(*keys: PublicKey) -> int:
    return min(slots_per_plaintext(k, 1) for k in keys)


# ---------------------------------------------------------------------------- local pieces ----


@dataclass
class Scaler:
    mean: np.ndarray
    std: np.ndarray
    clip: float

    @classmethod
    def fit(cls, X: np.ndarray, clip: float) -> Scaler:
        std = X.std(axis=0)
        std[~(std > 1e-12)] = 1.0
        return cls(X.mean(axis=0), std, clip)

    def transform(self, X: np.ndarray) -> np.ndarray:
        return np.clip((X - self.mean) / self.std, -self.clip, self.clip)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "clip": self.clip}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scaler:
        return cls(np.array(d["mean"], dtype=np.float64), np.array(d["std"], dtype=np.float64), float(d["clip"]))


class Optimizer:
    """Adam or SGD with L2 (and proximal L1) on a (d, T) weight matrix; rows in ``unpenalised`` skip both."""

    def __init__(self, params: TrainParams, shape: tuple[int, int], unpenalised: Sequence[int] = ()) -> None:
        self.p = params
        self.m = np.zeros(shape)
        self.v = np.zeros(shape)
        self.t = np.zeros(shape[1])
        self.penalty = np.ones((shape[0], 1))
        self.penalty[list(unpenalised)] = 0.0

    def step(self, W: np.ndarray, grad: np.ndarray, epoch: int, active: np.ndarray) -> None:
        """Update the columns (tags) in ``active`` in place."""
        p, cols = self.p, np.flatnonzero(active)
        if len(cols) == 0:
            return
        lr = p.learning_rate / (1.0 + p.decay * epoch)
        g = grad[:, cols] + p.l2 * self.penalty * W[:, cols]
        if p.optimizer == "adam":
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


def epoch_batches(rows: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    order = rows[np.random.default_rng([seed, epoch]).permutation(len(rows))]
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def active_rows(train: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Training rows with at least one known label: the others take part in no tag's gradient."""
    return train[mask[train].any(axis=1)]


def encode_z(z: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(z, -Z_CLIP, Z_CLIP) * (1 << F_BITS)).astype(np.int64)


def exact_xt_s(Xq: np.ndarray, S: list[list[int]] | np.ndarray, n_cols: int) -> list[list[int]]:
    """``Xq^T S`` exactly for int8-range Xq and big signed ints S (m x T): 23-bit limbs through int64."""
    S_obj = np.asarray(S, dtype=object).reshape(len(Xq), n_cols)
    offset = 1 << 70  # makes every entry non-negative (entries are below 2^69 in magnitude)
    shifted = S_obj + offset
    out = np.zeros((Xq.shape[1], n_cols), dtype=object)
    X64 = Xq.astype(np.int64)
    limb_bits, mask = 23, (1 << 23) - 1
    for k in range(4):  # 4 limbs of 23 bits cover 2^92 > 2^71
        limb = ((shifted >> (limb_bits * k)) & mask).astype(np.int64)
        part = X64.T @ limb
        out += part.astype(object) * (1 << (limb_bits * k))
    col_sums = X64.sum(axis=0).astype(object)
    out -= np.outer(col_sums, np.full(n_cols, offset, dtype=object))
    return out.tolist()


def ints_to_bytes(values: Sequence[int], width: int) -> bytes:
    return b"".join(int(v).to_bytes(width, "big", signed=True) for v in values)


def ints_from_bytes(data: bytes, width: int, *, expected: int | None = None, what: str = "values") -> list[int]:
    if len(data) % width or (expected is not None and len(data) != expected * width):
        raise ProtocolError(f"{what}: {len(data)} bytes is not {expected if expected is not None else 'a whole'} "
                            f"number of {width}-byte integers")
    return [int.from_bytes(data[i:i + width], "big", signed=True) for i in range(0, len(data), width)]


def _ciphertexts(key: PublicKey, data: object, expected: int, what: str) -> CipherVector:
    if not isinstance(data, bytes):
        raise ProtocolError(f"{what}: expected ciphertext bytes")
    try:
        cv = CipherVector.from_bytes(key, data)
    except InvalidCiphertext as err:
        raise ProtocolError(f"{what}: {err}") from err
    if len(cv) != expected:
        raise ProtocolError(f"{what}: {len(cv)} ciphertexts, expected {expected}")
    return cv


def _field(message: Message, name: str, kind: type) -> Any:
    value = message.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"field {name!r} is missing or not a {kind.__name__}")
    return value


def _index_array(message: Message, name: str, n_rows: int) -> np.ndarray:
    value = message.get(name)
    if not isinstance(value, np.ndarray) or value.dtype != np.int64 or value.ndim != 1:
        raise ProtocolError(f"field {name!r} must be a 1-d int64 array")
    if len(value) and (value.min() < 0 or value.max() >= n_rows):
        raise ProtocolError(f"field {name!r} holds rows outside 0..{n_rows - 1}")
    if len(np.unique(value)) != len(value):
        raise ProtocolError(f"field {name!r} repeats a row")
    return value


def _json_dump(path: Path, payload: dict[str, Any]) -> None:
    from party_common.storage.files import atomic_write

    atomic_write(Path(path), json.dumps(payload, indent=1, sort_keys=True).encode(), mode=0o600)


# ---------------------------------------------------------------------------------- models ----


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
        return self.scaler.transform(np.asarray(features, dtype=np.float64)) @ self.weights + self.intercept

    def save(self, path: Path) -> None:
        _save_model(path, self, intercept=self.intercept.tolist())

    @classmethod
    def load(cls, path: Path) -> BankModel:
        d = _load_model_file(path, "bank")
        return cls(intercept=np.array(d["intercept"], dtype=np.float64), **_model_fields(d))


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
        return self.scaler.transform(np.asarray(features, dtype=np.float64)) @ self.weights

    def save(self, path: Path) -> None:
        _save_model(path, self)

    @classmethod
    def load(cls, path: Path) -> PlatformModel:
        return cls(**_model_fields(_load_model_file(path, "platform")))


def _save_model(path: Path, model: BankModel | PlatformModel, **extra: Any) -> None:
    """What both halves store; ``extra`` holds what only one of them has (the bank's intercepts)."""
    _json_dump(path, {"kind": model.kind, "version": VERSION, "job_id": model.job_id, "tags": model.tag_names,
                      "weights": model.weights.tolist(), "scaler": model.scaler.to_dict(),
                      "schema": model.schema.to_dict(), "key_fingerprints": model.key_fingerprints,
                      "alignment_job_id": model.alignment_job_id, **extra})


def _model_fields(d: dict[str, Any]) -> dict[str, Any]:
    tags = list(d["tags"])
    return {"job_id": d["job_id"], "tag_names": tags,
            "weights": np.array(d["weights"], dtype=np.float64).reshape(-1, len(tags)),
            "scaler": Scaler.from_dict(d["scaler"]), "schema": Schema.from_dict(d["schema"]),
            "key_fingerprints": dict(d["key_fingerprints"]), "alignment_job_id": str(d.get("alignment_job_id", ""))}


def _load_model_file(path: Path, kind: str) -> dict[str, Any]:
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read model file: {err}") from err
    if d.get("kind") != kind or d.get("version") != VERSION:
        raise ValueError(f"{path}: not a {kind} model of {VERSION}")
    return d


# --------------------------------------------------------------------------- the bank side ----


@dataclass
class TrainOutcome:
    model: BankModel
    report: dict[str, Any]


class _BankTrainer:
    def __init__(self, peer: Peer, job_id: str, bank: PartyData, params: TrainParams, progress: Progress | None,
                 workers: int | None, allow_insecure_keys: bool) -> None:
        self.job_id, self.bank, self.p = job_id, bank, params
        self.progress = progress or (lambda stage, done, total: None)
        self.allow_insecure = allow_insecure_keys
        self.peer = peer
        self.pool = PaillierPool(workers)
        self.T = len(bank.tag_names)
        self.mask = ~np.isnan(bank.labels)
        self.y = np.nan_to_num(bank.labels, nan=0.0)

    def run(self) -> TrainOutcome:
        p, bank, T = self.p, self.bank, self.T
        self._check_tags()
        split = split_rows(bank.labels, test_share=p.test_share, validation_share=p.validation_share, seed=p.seed)
        self.scaler = Scaler.fit(bank.features[split.train], p.clip)
        X = self.scaler.transform(bank.features)
        ones = np.ones((len(X), 1))
        self.X_aug = np.hstack([X, ones]) if p.fit_intercept else X
        self.Xq_aug, qscale = quantise(X, p.quant_bits, fit_rows=split.train)
        self.qscale_aug = qscale
        if p.fit_intercept:
            self.Xq_aug = np.hstack([self.Xq_aug, np.ones((len(X), 1), dtype=np.int64)])
            self.qscale_aug = np.concatenate([qscale, [1.0]])
        d_aug = self.X_aug.shape[1]
        self.W = np.zeros((d_aug, T))
        self.opt = Optimizer(p, self.W.shape, unpenalised=[d_aug - 1] if p.fit_intercept else [])

        self.progress("keys", 0, 1)
        self.pk, self.sk = generate_keypair(p.key_bits, allow_insecure=self.allow_insecure)
        channel = self.peer.open("train", self.job_id, {"version": VERSION, "params": p.to_json(),
                                                        "tags": json.dumps(bank.tag_names)})
        try:
            return self._train(channel, split)
        finally:
            channel.close()
            self.pool.close()

    def _check_tags(self) -> None:
        if self.T == 0:
            raise TrainingError("no tags to train")
        for t, tag in enumerate(self.bank.tag_names):
            known = self.bank.labels[:, t][self.mask[:, t]]
            if len(known) == 0 or known.min() == known.max():
                raise TrainingError(f"{self.bank.source}: tag column '{tag}' has "
                                    f"{'no known labels' if len(known) == 0 else 'one class only'} among the "
                                    f"{len(self.bank.ids)} aligned customers; it cannot be trained")

    def _train(self, channel: PeerChannel, split: Split) -> TrainOutcome:
        p = self.p
        started = time.monotonic()
        train_mask = np.zeros_like(self.mask)
        train_mask[split.train] = self.mask[split.train]
        reply = channel.call("train.setup", {
            "bank_key": self.pk.to_bytes(), "n_rows": len(self.bank.ids),
            "train_rows": split.train, "validation_rows": split.validation, "test_rows": split.test,
            "label_mask": train_mask.astype(np.uint8),
        })
        try:
            self.ppk = PublicKey.from_bytes(_field(reply, "platform_key", bytes), allow_insecure=self.allow_insecure)
        except InvalidKey as err:
            raise ProtocolError(f"the platform's public key was refused: {err}") from err
        self.plan = SlotPlan(p.quant_bits, p.batch_size, self.T, plaintext_bits(self.pk, self.ppk))
        self.mask_train = train_mask
        active = active_rows(split.train, self.mask)
        if len(active) == 0:
            raise TrainingError("no training row has a known label")
        history: list[dict[str, Any]] = []
        snapshots: list[np.ndarray] = []
        best_metric = np.full(self.T, -np.inf)
        best_epoch = np.full(self.T, -1, dtype=np.int64)
        stale = 0
        seconds_online = seconds_ahead = 0.0
        for epoch in range(p.epochs):
            batches = epoch_batches(active, p.batch_size, p.seed, epoch)
            t0 = time.monotonic()
            emask = self._prepare_epoch(channel, epoch, batches)
            t1 = time.monotonic()
            for b, rows in enumerate(batches):
                self._batch(channel, epoch, b, rows, emask[b])
                self.progress(f"epoch {epoch + 1}/{p.epochs}", b + 1, len(batches))
            snapshots.append(self.W.copy())
            entry: dict[str, Any] = {"epoch": epoch + 1}
            improved = np.ones(self.T, dtype=bool)
            if len(split.validation):
                z_b = self._partial(channel, "train.validate", {"epoch": epoch}, len(split.validation))
                scores = self._z_bank(split.validation) + z_b
                metrics = [tag_metrics(self.bank.labels[split.validation, t], _sigmoid(scores[:, t]))
                           for t in range(self.T)]
                value = np.array([m["auc"] if m["auc"] is not None else -(m["logloss"] or 0.0) for m in metrics])
                improved = value > best_metric + 1e-6
                best_metric = np.where(improved, value, best_metric)
                entry["validation_auc"] = {tag: m["auc"] for tag, m in zip(self.bank.tag_names, metrics, strict=True)}
            best_epoch[improved] = epoch
            t2 = time.monotonic()
            seconds_ahead += t1 - t0
            seconds_online += t2 - t1
            entry.update(seconds_ahead=round(t1 - t0, 3), seconds_online=round(t2 - t1, 3), batches=len(batches))
            history.append(entry)
            stale = 0 if improved.any() else stale + 1
            if p.early_stopping_patience and len(split.validation) and stale >= p.early_stopping_patience:
                break
        # Each tag keeps the weights of its best validation epoch (the platform does the same for its half).
        for t in range(self.T):
            self.W[:, t] = snapshots[best_epoch[t]][:, t]
        z_b_test = self._partial(channel, "train.finish", {"best_epoch": best_epoch}, len(split.test))
        report = self._report(split, z_b_test, history, best_epoch, seconds_online, seconds_ahead,
                              time.monotonic() - started)
        weights = self.W[:-1] if p.fit_intercept else self.W
        model = BankModel(self.job_id, list(self.bank.tag_names), weights.copy(),
                          self.W[-1].copy() if p.fit_intercept else np.zeros(self.T), self.scaler, self.bank.schema,
                          {"bank": self.pk.fingerprint(), "platform": self.ppk.fingerprint()})
        return TrainOutcome(model, report)

    def _z_bank(self, rows: np.ndarray) -> np.ndarray:
        return self.X_aug[rows] @ self.W

    def _partial(self, channel: PeerChannel, step: str, message: Message, n: int) -> np.ndarray:
        reply = channel.call(step, message)
        z = reply.get("partial_scores")
        if not isinstance(z, np.ndarray) or z.shape != (n, self.T) or not np.isfinite(z).all():
            raise ProtocolError(f"{step}: the platform's partial scores have the wrong shape or are not finite")
        return z.astype(np.float64)

    # ---- ahead of time: the mask path [[e]]_A -> X_B^T e ----

    def _prepare_epoch(self, channel: PeerChannel, epoch: int, batches: list[np.ndarray]) -> list[np.ndarray]:
        plan, groups = self.plan, self.plan.groups
        n_noise = sum(len(r) for r in batches) * len(groups)
        noise = NoisePool(self.pk, self.sk)
        self.pool.fill(noise, n_noise)
        # Noise under the platform's key for the masks R_A of every batch, made now (public-key path).
        self.r_noise = NoisePool(self.ppk)
        self.pool.fill(self.r_noise, len(batches) * len(groups) * self.X_aug.shape[1])
        channel.call("train.epoch", {"epoch": epoch, "batch_rows": np.concatenate(batches),
                                     "batch_sizes": np.array([len(r) for r in batches], dtype=np.int64)})
        masks = []
        for b, rows in enumerate(batches):
            e = np.zeros((len(rows), self.T), dtype=object)
            m = self.mask_train[rows]
            for i, t in zip(*np.nonzero(m), strict=True):
                e[i, t] = secrets.randbits(plan.e_bits)
            packed = [pack_signed(e[i, list(g)], plan.emask_slot) for g in groups for i in range(len(rows))]
            enc = self.pk.raw_encrypt(self.pk.encode(packed), noise.take(len(packed)))
            reply = channel.call("train.emask", {"epoch": epoch, "batch": b,
                                                 "masks": CipherVector(self.pk, enc).to_bytes()})
            data = _field(reply, "masked_products", bytes)
            try:
                cv = CipherVector.from_bytes(self.pk, data)
            except InvalidCiphertext as err:
                raise ProtocolError(f"train.emask: {err}") from err
            opened = self.pk.decode(self.pool.decrypt_raw(self.sk, cv))
            channel.call("train.emask_open", {"epoch": epoch, "batch": b,
                                              "values": ints_to_bytes(opened, self.pk.byte_len)})
            masks.append(e)
            self.progress(f"epoch {epoch + 1}/{self.p.epochs} (masks ahead of time)", b + 1, len(batches))
        return masks

    # ---- one mini-batch ----

    def _batch(self, channel: PeerChannel, epoch: int, b: int, rows: np.ndarray, e: np.ndarray) -> None:
        plan, groups, T = self.plan, self.plan.groups, self.T
        m = self.mask_train[rows]
        n_pairs = int(m.sum())
        reply = channel.call("train.forward", {"epoch": epoch, "batch": b})
        row_cts = _ciphertexts(self.ppk, reply.get("rows"), len(rows) * len(groups), "train.forward rows")
        pair_cts = _ciphertexts(self.ppk, reply.get("pairs"), -(-n_pairs // plan.pairs_per_ct), "train.forward pairs")

        # [[X_A^T z_B + R_A]]_P per tag group: Pippenger over the rows, masked and re-randomised by Enc(R_A).
        Xq = self.Xq_aug[rows]
        d_aug = Xq.shape[1]
        cross_parts, r_masks = [], []
        for gi, g in enumerate(groups):
            cv = row_cts[gi * len(rows):(gi + 1) * len(rows)]
            prod = self.pool.matvec_t(cv, Xq)
            r = [[secrets.randbits(plan.cross_bits + STAT_BITS) for _ in g] for _ in range(d_aug)]
            r_packed = [pack_signed(rj, plan.cross_slot) for rj in r]
            enc_r = CipherVector(self.ppk, self.ppk.raw_encrypt(self.ppk.encode(r_packed),
                                                                self.r_noise.take(d_aug)))
            cross_parts.append(prod.add(enc_r))
            r_masks.append(r_packed)

        # [[d' 2^F + e]]_P for the labelled pairs: add the bank's plaintext part and the masks, slot-wise.
        z_a = self._z_bank(rows)
        c = encode_z(z_a) + (2 - 4 * self.y[rows].astype(np.int64)) * (1 << F_BITS)
        ii, tt = np.nonzero(m)
        plain = [int(c[i, t]) + int(e[i, t]) for i, t in zip(ii, tt, strict=True)]
        k = plan.pairs_per_ct
        packed_plain = [pack_signed(plain[s:s + k], plan.pair_slot) for s in range(0, n_pairs, k)]
        residuals = pair_cts.add_plain(packed_plain)

        reply = channel.call("train.gradient", {"epoch": epoch, "batch": b,
                                                "masked_gradient": CipherVector.concat(cross_parts).to_bytes(),
                                                "masked_residuals": residuals.to_bytes()})
        opened = ints_from_bytes(_field(reply, "masked_gradient", bytes), self.ppk.byte_len,
                                 expected=d_aug * len(groups), what="train.gradient")
        cross = np.zeros((d_aug, T))
        for gi, g in enumerate(groups):
            for j in range(d_aug):
                slots = unpack_signed(opened[gi * d_aug + j] - r_masks[gi][j], len(g), plan.cross_slot)
                cross[j, list(g)] = slots
        cross = cross * self.qscale_aug[:, None] / (1 << F_BITS)
        # Plaintext part X_A^T (M o (z_A + 2 - 4y)) plus the cross part X_A^T (M o z_B), over 4 m_t.
        c_float = (np.clip(z_a, -Z_CLIP, Z_CLIP) + 2 - 4 * self.y[rows]) * m
        grad = self.X_aug[rows].T @ c_float + cross
        counts = m.sum(axis=0)
        grad = grad / (4.0 * np.maximum(counts, 1))
        self.opt.step(self.W, grad, epoch, counts > 0)

    def _report(self, split: Split, z_b_test: np.ndarray, history: list[dict[str, Any]], best_epoch: np.ndarray,
                online: float, ahead: float, total: float) -> dict[str, Any]:
        p = self.p
        joint = _sigmoid(self._z_bank(split.test) + z_b_test)
        bank_only = bank_only_baseline(self.bank, split, p)
        metrics = {}
        for t, tag in enumerate(self.bank.tag_names):
            metrics[tag] = {"joint": tag_metrics(self.bank.labels[split.test, t], joint[:, t]),
                            "bank_only": bank_only[tag], "best_epoch": int(best_epoch[t]) + 1}
        return {
            "protocol": VERSION, "metrics": metrics, "history": history, "epochs_run": len(history),
            "split": split.sizes(), "seconds_online": round(online, 3), "seconds_ahead_of_time": round(ahead, 3),
            "seconds_total": round(total, 3), "params": asdict(p),
            "encoding": {"fixed_point_bits": F_BITS, "z_clip": Z_CLIP, "quant_bits": p.quant_bits,
                         "statistical_mask_bits": STAT_BITS, "tags_per_ciphertext": self.plan.group,
                         "pairs_per_ciphertext": self.plan.pairs_per_ct},
            "key_fingerprints": {"bank": self.pk.fingerprint(), "platform": self.ppk.fingerprint()},
        }


def run_bank_training(peer: Peer, job_id: str, bank: PartyData, params: TrainParams, *,
                      progress: Progress | None = None, workers: int | None = None,
                      allow_insecure_keys: bool = False) -> TrainOutcome:
    """Train one model per tag of ``bank`` (rows in the alignment's order) with the platform behind ``peer``."""
    params.validate(allow_insecure_keys=allow_insecure_keys)
    return _BankTrainer(peer, job_id, bank, params, progress, workers, allow_insecure_keys).run()


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))


# ----------------------------------------------------------------------- the platform side ----


class PlatformTrainHandler:
    """The platform's state machine for one training session (steps must come in protocol order)."""

    def __init__(self, job_id: str, params: Message, data: PartyData, *, on_model: Callable[[PlatformModel], None],
                 workers: int | None = None, allow_insecure_keys: bool = False) -> None:
        if params.get("version") != VERSION:
            raise ProtocolError(f"training protocol {params.get('version')!r} is not supported (this node: {VERSION})")
        try:
            self.p = TrainParams.from_json(str(params.get("params", ""))).validate(
                allow_insecure_keys=allow_insecure_keys)
            self.tags = [str(t) for t in json.loads(str(params.get("tags", "[]")))]
        except ValueError as err:
            raise ProtocolError(str(err)) from err
        if not self.tags:
            raise ProtocolError("no tags")
        if len(data.feature_names) == 0:
            raise ProtocolError(f"{data.source}: the platform has no feature columns")
        self.job_id, self.data, self.on_model = job_id, data, on_model
        self.allow_insecure = allow_insecure_keys
        self.T = len(self.tags)
        self.pool = PaillierPool(workers)
        self.stage = "setup"
        self.epoch = -1
        self.model: PlatformModel | None = None

    def close(self) -> None:
        self.pool.close()
        self.sk = None  # type: ignore[assignment]

    def handle(self, step: str, message: Message) -> Message:
        handlers = {"train.setup": self._setup, "train.epoch": self._epoch, "train.emask": self._emask,
                    "train.emask_open": self._emask_open, "train.forward": self._forward,
                    "train.gradient": self._gradient, "train.validate": self._validate,
                    "train.finish": self._finish}
        if step not in handlers:
            raise ProtocolError(f"unknown training step {step!r}")
        return handlers[step](message)

    def _expect(self, *stages: str) -> None:
        if self.stage not in stages:
            raise ProtocolError(f"step out of order: the session is at '{self.stage}'")

    def _setup(self, message: Message) -> Message:
        self._expect("setup")
        n_rows = _field(message, "n_rows", int)
        if n_rows != len(self.data.ids):
            raise ProtocolError(f"the bank aligned {n_rows} rows, this node holds {len(self.data.ids)}")
        try:
            self.bpk = PublicKey.from_bytes(_field(message, "bank_key", bytes), allow_insecure=self.allow_insecure)
        except InvalidKey as err:
            raise ProtocolError(f"the bank's public key was refused: {err}") from err
        self.train = _index_array(message, "train_rows", n_rows)
        self.validation = _index_array(message, "validation_rows", n_rows)
        self.test = _index_array(message, "test_rows", n_rows)
        mask = message.get("label_mask")
        if not isinstance(mask, np.ndarray) or mask.shape != (n_rows, self.T) or mask.dtype != np.uint8:
            raise ProtocolError("label_mask must be a uint8 array of shape (rows, tags)")
        self.mask = mask.astype(bool)
        p = self.p
        self.scaler = Scaler.fit(self.data.features[self.train], p.clip)
        self.X = self.scaler.transform(self.data.features)
        self.Xq, self.qscale = quantise(self.X, p.quant_bits, fit_rows=self.train)
        self.W = np.zeros((self.X.shape[1], self.T))
        self.opt = Optimizer(p, self.W.shape)
        self.snapshots: list[np.ndarray] = []
        self.pk, self.sk = generate_keypair(p.key_bits, allow_insecure=self.allow_insecure)
        self.plan = SlotPlan(p.quant_bits, p.batch_size, self.T, plaintext_bits(self.pk, self.bpk))
        self.stage = "epoch"
        return {"platform_key": self.pk.to_bytes(), "n_features": int(self.X.shape[1])}

    def _epoch(self, message: Message) -> Message:
        self._expect("epoch", "end_of_epoch", "epoch_or_finish")
        epoch = _field(message, "epoch", int)
        if epoch != self.epoch + 1 or epoch >= self.p.epochs:
            raise ProtocolError(f"epoch {epoch} out of order")
        rows = message.get("batch_rows")
        sizes = message.get("batch_sizes")
        if not isinstance(sizes, np.ndarray) or sizes.dtype != np.int64 or (sizes < 1).any() \
                or (sizes > self.p.batch_size).any():
            raise ProtocolError("batch_sizes must be int64 sizes in 1..batch_size")
        rows = _index_array(message, "batch_rows", len(self.data.ids))
        if len(rows) != int(sizes.sum()) or not np.isin(rows, self.train).all():
            raise ProtocolError("batch rows must be training rows, each once, matching batch_sizes")
        self.epoch = epoch
        self.batches = np.split(rows, np.cumsum(sizes)[:-1])
        self.xte: list[np.ndarray | None] = [None] * len(self.batches)
        # Noise for this epoch's encryptions under our key, made ahead (CRT: we hold the private key).
        groups = self.plan.groups
        count = sum(len(r) * len(groups) + -(-int(self.mask[r].sum()) // self.plan.pairs_per_ct)
                    for r in self.batches)
        self.noise = NoisePool(self.pk, self.sk)
        self.pool.fill(self.noise, count)
        self.bank_noise = NoisePool(self.bpk)
        per_batch = sum(-(-self.X.shape[1] // self.plan.features_per_emask_ct(len(g))) for g in groups)
        self.pool.fill(self.bank_noise, per_batch * len(self.batches))
        self.next_batch = 0
        self.stage = "emask"
        return {}

    def _batch_index(self, message: Message, expected: int) -> int:
        if _field(message, "epoch", int) != self.epoch or _field(message, "batch", int) != expected:
            raise ProtocolError(f"expected epoch {self.epoch} batch {expected}")
        return expected

    def _emask(self, message: Message) -> Message:
        self._expect("emask")
        b = self._batch_index(message, self.next_batch)
        rows, plan, groups = self.batches[b], self.plan, self.plan.groups
        cv = _ciphertexts(self.bpk, message.get("masks"), len(rows) * len(groups), "train.emask")
        Xq = self.Xq[rows]
        packed_parts, r_all = [], []
        for gi, g in enumerate(groups):
            prod = self.pool.matvec_t(cv[gi * len(rows):(gi + 1) * len(rows)], Xq)
            # Each feature's product (its tags in slots) becomes one wide slot of the packed ciphertext.
            per_ct = plan.features_per_emask_ct(len(g))
            packed = SlotLayout(plan.emask_slot * len(g), per_ct).pack_ciphertexts(prod)
            n2 = self.bpk.nsquare
            for index, c in enumerate(packed.values):
                start = index * per_ct
                count = min(per_ct, len(prod) - start)
                r = [secrets.randbits(plan.emask_bits + STAT_BITS) for _ in range(count * len(g))]
                r_packed = pack_signed(r, plan.emask_slot)
                enc_r = self.bpk.raw_encrypt(self.bpk.encode([r_packed]), self.bank_noise.take(1))[0]
                packed_parts.append(c * enc_r % n2)
                r_all.append((gi, start, count, r_packed))
        self.pending = r_all
        self.stage = "emask_open"
        return {"masked_products": CipherVector(self.bpk, packed_parts).to_bytes()}

    def _emask_open(self, message: Message) -> Message:
        self._expect("emask_open")
        b = self._batch_index(message, self.next_batch)
        values = ints_from_bytes(_field(message, "values", bytes), self.bpk.byte_len, expected=len(self.pending),
                                 what="train.emask_open")
        groups = self.plan.groups
        xte = np.zeros((self.X.shape[1], self.T), dtype=object)
        for value, (gi, start, count, r_packed) in zip(values, self.pending, strict=True):
            g = groups[gi]
            slots = unpack_signed(value - r_packed, count * len(g), self.plan.emask_slot)
            for f in range(count):
                xte[start + f, list(g)] = slots[f * len(g):(f + 1) * len(g)]
        self.xte[b] = xte
        self.next_batch += 1
        if self.next_batch == len(self.batches):
            self.next_batch = 0
            self.stage = "forward"
        else:
            self.stage = "emask"
        return {}

    def _forward(self, message: Message) -> Message:
        self._expect("forward")
        b = self._batch_index(message, self.next_batch)
        rows, plan = self.batches[b], self.plan
        m = self.mask[rows]
        zf = encode_z(self.X[rows] @ self.W)
        row_plain = [pack_signed(np.where(m[i, list(g)], zf[i, list(g)], 0), plan.cross_slot)
                     for g in plan.groups for i in range(len(rows))]
        ii, tt = np.nonzero(m)
        pairs = [int(zf[i, t]) for i, t in zip(ii, tt, strict=True)]
        k = plan.pairs_per_ct
        pair_plain = [pack_signed(pairs[s:s + k], plan.pair_slot) for s in range(0, len(pairs), k)]
        row_ct = self.pk.raw_encrypt(self.pk.encode(row_plain), self.noise.take(len(row_plain)))
        pair_ct = self.pk.raw_encrypt(self.pk.encode(pair_plain), self.noise.take(len(pair_plain)))
        self.stage = "gradient"
        return {"rows": CipherVector(self.pk, row_ct).to_bytes(), "pairs": CipherVector(self.pk, pair_ct).to_bytes()}

    def _gradient(self, message: Message) -> Message:
        self._expect("gradient")
        b = self._batch_index(message, self.next_batch)
        rows, plan, groups = self.batches[b], self.plan, self.plan.groups
        m = self.mask[rows]
        n_pairs = int(m.sum())
        masked = message.get("masked_gradient")
        if not isinstance(masked, bytes) or len(masked) % self.pk.byte_len or \
                (len(masked) // self.pk.byte_len) % len(groups):
            raise ProtocolError("train.gradient: masked_gradient has the wrong size")
        grad_cv = _ciphertexts(self.pk, masked, len(masked) // self.pk.byte_len, "train.gradient masked_gradient")
        res_cv = _ciphertexts(self.pk, message.get("masked_residuals"), -(-n_pairs // plan.pairs_per_ct),
                              "train.gradient masked_residuals")
        opened = self.pk.decode(self.pool.decrypt_raw(self.sk, CipherVector.concat([grad_cv, res_cv])))
        grad_open, res_open = opened[:len(grad_cv)], opened[len(grad_cv):]
        s_values: list[int] = []
        k = plan.pairs_per_ct
        for j, value in enumerate(res_open):
            s_values.extend(unpack_signed(value, min(k, n_pairs - j * k), plan.pair_slot))
        S = np.zeros((len(rows), self.T), dtype=object)
        ii, tt = np.nonzero(m)
        for (i, t), s in zip(zip(ii, tt, strict=True), s_values, strict=True):
            S[i, t] = s
        xts = np.array(exact_xt_s(self.Xq[rows], S, self.T), dtype=object)
        xtd = xts - self.xte[b]  # X_B^T d' 2^F, exactly, over the labelled pairs only
        self.xte[b] = None
        counts = m.sum(axis=0)
        grad = np.array(xtd.tolist(), dtype=np.float64) * self.qscale[:, None] / (1 << F_BITS)
        grad /= 4.0 * np.maximum(counts, 1)
        self.opt.step(self.W, grad, self.epoch, counts > 0)
        self.next_batch += 1
        if self.next_batch == len(self.batches):
            self.snapshots.append(self.W.copy())
            self.stage = "end_of_epoch"
        else:
            self.stage = "forward"
        return {"masked_gradient": ints_to_bytes(grad_open, self.pk.byte_len)}

    def _validate(self, message: Message) -> Message:
        self._expect("end_of_epoch")
        if _field(message, "epoch", int) != self.epoch:
            raise ProtocolError(f"expected epoch {self.epoch}")
        self.stage = "epoch_or_finish"
        return {"partial_scores": self.X[self.validation] @ self.W}

    def _finish(self, message: Message) -> Message:
        self._expect("end_of_epoch", "epoch_or_finish")
        best = message.get("best_epoch")
        if not isinstance(best, np.ndarray) or best.shape != (self.T,) or best.dtype != np.int64 \
                or best.min() < 0 or best.max() >= len(self.snapshots):
            raise ProtocolError("best_epoch must name a finished epoch for every tag")
        W = np.column_stack([self.snapshots[int(best[t])][:, t] for t in range(self.T)])
        model = PlatformModel(self.job_id, self.tags, W, self.scaler, self.data.schema,
                              {"bank": self.bpk.fingerprint(), "platform": self.pk.fingerprint()})
        self.on_model(model)
        self.model = model
        self.stage = "finished"
        return {"partial_scores": model.partial_scores(self.data.features[self.test])}


def make_platform_train_handler(job_id: str, params: Message, data: PartyData, *,
                                on_model: Callable[[PlatformModel], None], workers: int | None = None,
                                allow_insecure_keys: bool = False) -> PlatformTrainHandler:
    """The platform's handler for a training session over ``data`` (rows in the alignment's order)."""
    return PlatformTrainHandler(job_id, params, data, on_model=on_model, workers=workers,
                                allow_insecure_keys=allow_insecure_keys)


__all__ = ["BankModel", "DataError", "PlatformModel", "TrainOutcome", "TrainParams", "TrainingError",
           "make_platform_train_handler", "run_bank_training"]


# ------------------------------------------------------------------- plaintext reference ----


def plaintext_reference(bank: PartyData, platform: PartyData, params: TrainParams) -> dict[str, np.ndarray]:
    """The same Taylor-approximated training on pooled plaintext (same split, scalers, batches, optimiser).

    Only a harness that holds both halves can run it; tests and benchmarks compare the joint model with
    it to measure what fixed point and quantisation cost (docs/protocol.md). Returns both weight halves.
    """
    p = params
    split = split_rows(bank.labels, test_share=p.test_share, validation_share=p.validation_share, seed=p.seed)
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
