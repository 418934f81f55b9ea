"""The platform's side of training: a state machine that answers the bank's steps in protocol order."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, cast

import numpy as np

import protocols.vfl_lr.key_proof as key_proof
import protocols.vfl_lr.label_mask as label_mask
import protocols.vfl_lr.mask_path as mask_path
import protocols.vfl_lr.resume as resume
from protocols.binning import BinningModel, BinningSpec
from protocols.channel import Message
from protocols.compute import ComputeSpec, as_compute
from protocols.errors import DeviationDetected, InvalidKey, ProtocolError
from protocols.fixedpoint import quantise_rows
from protocols.he import get_scheme
from protocols.party_data import PartyData
from protocols.vfl_lr.bin_width import platform_features
from protocols.vfl_lr.disclosure import (
    DisclosureBudget,
    EvaluationLimits,
    Projection,
    check_masked_gradient,
    check_training_budget,
    open_residuals,
)
from protocols.vfl_lr.encoding import encode_z, exact_xt_s, pack_pairs, pack_rows
from protocols.vfl_lr.evaluation import SPLITS, VALIDATION, packed_count, shuffle_and_add
from protocols.vfl_lr.label_privacy import (
    batch_floor,
    below_floor,
    floor_text,
    max_batch_rows,
    platform_enforces_floor,
)
from protocols.vfl_lr.messages import (
    Field,
    Step,
    ints_from_bytes,
    ints_to_bytes,
    read_ciphertexts,
    read_field,
    read_index_array,
)
from protocols.vfl_lr.model import PlatformModel
from protocols.vfl_lr.params import (
    F_BITS,
    MAX_AUTO_EPOCHS,
    VERSION,
    SlotPlan,
    TrainingError,
    TrainParams,
    plaintext_bits,
)
from protocols.vfl_lr.state import OPTIMIZERS, PlatformTrainState, Scaler

STOPPED = "stopped"  # the stage of a session whose check failed: it answers no step any more


def make_platform_train_handler(job_id: str, params: Message, data: PartyData, *,
                                on_result: Callable[[PlatformModel], None], compute: ComputeSpec = None,
                                checkpoints: resume.Checkpoints | None = None, limits: EvaluationLimits | None = None,
                                budget: DisclosureBudget | None = None, binning: BinningSpec | None = None,
                                insecure_for_tests: bool = False) -> PlatformTrainHandler:
    """The platform's handler for a training session over ``data`` (rows in the alignment's order).

    ``params`` are the session's opening fields; ``on_result`` receives the platform's model half, once,
    when the test rows have been evaluated with the epochs ``train.finish`` chose (at ``train.finish`` if
    there are no test rows). The session owns ``compute`` and closes it with the handler. ``checkpoints``
    keeps the job's training state as it goes, for a session that resumes it (protocols/vfl_lr/resume.py).
    ``limits``: the platform's policy on the session (default: the policy's defaults). ``budget``: where each
    evaluation is charged per customer before it is answered (protocols/vfl_lr/disclosure.py); the node
    always passes its ledger, in-process protocol tests may run without one. ``binning``: how this node bins
    its own columns when the job trains on bins (its [binning] table).
    """
    return PlatformTrainHandler(job_id, params, data, on_result=on_result, compute=compute,
                                checkpoints=checkpoints, limits=limits, budget=budget, binning=binning,
                                insecure_for_tests=insecure_for_tests)


class PlatformTrainHandler:
    """The platform's state machine for one training session (steps must come in protocol order)."""

    def __init__(self, job_id: str, params: Message, data: PartyData, *,
                 on_result: Callable[[PlatformModel], None], compute: ComputeSpec = None,
                 checkpoints: resume.Checkpoints | None = None, limits: EvaluationLimits | None = None,
                 budget: DisclosureBudget | None = None, binning: BinningSpec | None = None,
                 insecure_for_tests: bool = False) -> None:
        self.binning_spec, self.binning = binning, cast(BinningModel | None, None)
        self.limits = limits if limits is not None else EvaluationLimits()
        self.budget = budget
        self.checkpoints = checkpoints if checkpoints is not None else resume.MemoryCheckpoints()
        self.resume_at: tuple[int, int] | None = None  # (epoch, batch) a session resumed mid-epoch restarts at
        self.saved: dict[str, Any] | None = None  # the checkpoint document as last saved (or loaded)
        self.closed = False
        held = as_compute(compute)  # the session owns it, whether or not it opens
        try:
            self._open(params, data, insecure_for_tests)
            self.scheme = get_scheme(self.p.he_scheme)  # validated: a registered scheme
            self.pool = self.scheme.kernels(held)
        except BaseException:
            held.close()
            raise
        self.job_id, self.data, self.on_result = job_id, data, on_result
        self.insecure_for_tests = insecure_for_tests
        self.T = len(self.tags)
        self.stage = "setup"
        self.model: PlatformModel | None = None
        self._steps: dict[str, Callable[[Message], Message]] = {
            Step.SETUP: self._setup, Step.EPOCH: self._epoch, Step.EMASK: self._emask,
            Step.EMASK_OPEN: self._emask_open, Step.FORWARD: self._forward, Step.GRADIENT: self._gradient,
            Step.EVALUATE: self._evaluate, Step.FINISH: self._finish}
        self.evaluated: set[tuple[int, str]] = set()  # (epoch, split) already released to the bank

    def _open(self, params: Message, data: PartyData, insecure_for_tests: bool) -> None:
        """Check the session's opening fields: version, parameters, tags; and that there are features."""
        if params.get(Field.VERSION) != VERSION:
            raise ProtocolError(f"training protocol {params.get(Field.VERSION)!r} is not supported "
                                f"(this node: {VERSION})")
        try:
            self.p = TrainParams.from_json(str(params.get(Field.PARAMS, ""))).validate(
                insecure_for_tests=insecure_for_tests)
            tags = json.loads(str(params.get(Field.TAGS, "[]")))
        except (TrainingError, ValueError) as err:
            raise ProtocolError(str(err)) from err
        if self.p.epochs is None:  # automatic: the bank runs at most the bound (it sends the bound itself)
            self.p = dataclasses.replace(self.p, epochs=MAX_AUTO_EPOCHS)
        if not isinstance(tags, list):
            raise ProtocolError("tags must be a list of tag names")
        self.tags = [str(t) for t in tags]
        if not self.tags:
            raise ProtocolError("no tags")
        if len(data.feature_names) == 0:
            raise ProtocolError(f"{data.source}: the platform has no feature columns")

    def close(self) -> None:
        self.closed = True  # a step still running in this (replaced) session saves nothing more
        self.pool.close()
        self.sk = None  # type: ignore[assignment]

    def handle(self, step: str, message: Message) -> Message:
        if step not in self._steps:
            raise ProtocolError(f"unknown training step {step!r}")
        if self.stage == STOPPED:
            raise ProtocolError(f"job {self.job_id} was stopped by a failed check; it answers no more steps")
        try:
            return self._steps[step](message)
        except DeviationDetected:
            self.stage = STOPPED  # whatever the bank sends next, the job is over
            raise

    def _expect(self, *stages: str) -> None:
        if self.stage not in stages:
            raise ProtocolError(f"step out of order: the session is at '{self.stage}'")

    def _setup(self, message: Message) -> Message:
        self._expect("setup")
        n_rows = read_field(message, Field.N_ROWS, int)
        if n_rows != len(self.data.ids):
            raise ProtocolError(f"the bank aligned {n_rows} rows, this node holds {len(self.data.ids)}")
        try:
            # Evaluation has a key of its own: the mask path's decryption, which the bank does for this node,
            # then never opens a ciphertext of evaluation (protocols/vfl_lr/evaluation.py).
            self.bpk, self.bepk = (self.scheme.public_key_from_bytes(
                read_field(message, name, bytes), allow_insecure=self.insecure_for_tests, key_bits=self.p.key_bits)
                for name in (Field.BANK_KEY, Field.BANK_EVALUATION_KEY))
        except InvalidKey as err:
            raise ProtocolError(f"the bank's public key was refused: {err}") from err
        for key, role in ((self.bpk, key_proof.BANK_TRAINING), (self.bepk, key_proof.BANK_EVALUATION)):
            key_proof.check(self.scheme, key, message, self.job_id, role, Step.SETUP)
        if self.bepk.to_bytes() == self.bpk.to_bytes():
            raise ProtocolError("the bank's evaluation key must not be its training key")
        self.bank_columns = read_field(message, Field.BANK_COLUMNS, int)
        limits = self.limits
        if not 1 <= self.bank_columns <= limits.max_bank_columns:
            # Each train.gradient decrypts T slots per bank column for the bank: the columns bound what it reads.
            raise ProtocolError(f"train.setup: the bank declared {self.bank_columns} model columns; the platform "
                                f"allows 1 to {limits.max_bank_columns} ([policy] max_bank_columns)")
        self.train = read_index_array(message, Field.TRAIN_ROWS, n_rows)
        self.validation = read_index_array(message, Field.VALIDATION_ROWS, n_rows)
        self.test = read_index_array(message, Field.TEST_ROWS, n_rows)
        if len(self.train) == 0:
            raise ProtocolError("no training rows")
        # Held-out rows must stay held out: a row in two sets would let evaluation replay training rows.
        if len(np.intersect1d(self.train, np.concatenate([self.validation, self.test]))) or \
                len(np.intersect1d(self.validation, self.test)):
            raise ProtocolError("training, validation and test rows must be disjoint")
        for name, rows in (("validation", self.validation), ("test", self.test)):
            # A split of a few rows turns its multisets into per-row scores (docs/protocol.md, "Evaluation").
            if 0 < len(rows) < limits.min_evaluation_rows:
                raise ProtocolError(f"train.setup: the {name} split holds {len(rows)} rows; the platform evaluates "
                                    f"splits of at least {limits.min_evaluation_rows} ([policy] "
                                    "min_evaluation_rows)")
        p = self.p
        mask = message.get(Field.LABEL_MASK)
        if p.hide_label_mask:
            # Every training row takes part in every tag as far as this node can tell; the bank alone knows M.
            if mask is not None:
                raise ProtocolError("the job hides the label mask: train.setup must not carry one")
            self.mask = np.zeros((n_rows, self.T), dtype=bool)
            self.mask[self.train] = True
        elif not isinstance(mask, np.ndarray) or mask.shape != (n_rows, self.T) or mask.dtype != np.uint8:
            raise ProtocolError("label_mask must be a uint8 array of shape (rows, tags)")
        else:
            self.mask = mask.astype(bool)
        # A job on bins: its own bins from its training rows' values, as many as the floor allows (bin_width.py)
        self.data, self.binning, self.binning_summary = platform_features(self.data, self.train, self.binning_spec,
                                                                          self.mask[self.train], p)
        self.scaler = Scaler.fit(features := self.data.features, p.clip, rows=self.train)
        # Standardised rows when a step asks for them: the raw features are held once (on disk when the node
        # spilled them, party_common.data_loading), never a float64 copy of the whole matrix.
        self.X = self.scaler.rows(features)
        # Kept (and shipped to the workers) as 8-bit integers: an eighth of int64 (10M x 300: 3 GB, not 24 GB),
        # memory-mapped beside the features when those are on disk.
        self.Xq, self.qscale = quantise_rows(features, self.scaler.transform, p.quant_bits, fit_rows=self.train)
        self.state = PlatformTrainState.start(p, self.X.shape[1], self.T)
        self.stage = "epoch"
        if Field.RESUME_STEPS in message:  # the bank resumes the job: our state at its checkpoint's position
            self._resume(read_field(message, Field.RESUME_STEPS, int))
        if self.budget is not None:
            check_training_budget(self.budget, self.job_id, self.tags, self.p.epochs, self.limits,
                                  self._ids(self.validation), self._ids(self.test))
        self.pk, self.sk = self.scheme.generate_keypair(p.key_bits, allow_insecure=self.insecure_for_tests)
        self.plan = SlotPlan.for_params(p, max_batch_rows(p.batch_size), self.T, plaintext_bits(self.pk, self.bpk, scheme=self.scheme.name))
        # Label privacy: with label_dp "off", no batch may hold fewer labelled rows of a tag than the floor (but
        # more than none), or this node could solve its gradients for them (label_privacy.py). With the label
        # mask hidden only the bank can count labelled rows; this node checks the batch's rows, a lower bound.
        self.floor = batch_floor(self.X.shape[1], p.epochs)
        self.enforce_floor = platform_enforces_floor(p, strict=not self.insecure_for_tests)
        return {Field.PLATFORM_KEY: self.pk.to_bytes(), Field.HE_SCHEME: self.scheme.name,
                Field.N_FEATURES: self.X.shape[1], Field.PLATFORM_BINNING: json.dumps(self.binning_summary),
                **key_proof.attach(self.scheme, self.sk, self.job_id, key_proof.PLATFORM_TRAINING),
                Field.MAX_VALIDATION_EVALUATIONS: self.limits.max_validation_evaluations}

    def _ids(self, rows: np.ndarray) -> list[str]:
        return [str(self.data.ids[int(i)]) for i in rows]

    def _resume(self, steps: int) -> None:
        """Take the state saved at position ``steps``; the next step is train.epoch (train.finish if that
        position ends an epoch)."""
        try:
            self.saved = self.checkpoints.load()
            self.state, epoch_done = resume.read_platform_checkpoint(self.saved, self.p, steps, where=f"job {self.job_id}")
        except TrainingError as err:
            raise ProtocolError(str(err)) from err
        if epoch_done:
            self.stage = "epoch_or_finish"
        elif self.state.epoch >= 0:
            self.resume_at = (self.state.epoch, self.state.next_batch)

    def _save(self, *, epoch_done: bool) -> None:
        if not self.closed:
            self.saved = resume.platform_checkpoint(self.saved, self.state, self.p, epoch_done=epoch_done)
            self.checkpoints.save(self.saved)

    def _epoch(self, message: Message) -> Message:
        self._expect("epoch", "end_of_epoch", "epoch_or_finish")
        state = self.state
        epoch = read_field(message, Field.EPOCH, int)
        first = message.get(Field.FIRST_BATCH, 0)
        if not isinstance(first, int) or isinstance(first, bool):
            raise ProtocolError("first_batch must be an integer")
        if self.resume_at is not None:  # a session resumed mid-epoch repeats that epoch from its batch
            if (epoch, first) != self.resume_at:
                raise ProtocolError(f"the session resumes at epoch {self.resume_at[0]} batch {self.resume_at[1]}")
            self.resume_at = None
        elif first != 0 or epoch != state.epoch + 1 or epoch >= self.p.epochs:
            raise ProtocolError(f"epoch {epoch} out of order")
        sizes = message.get(Field.BATCH_SIZES)
        if not isinstance(sizes, np.ndarray) or sizes.dtype != np.int64 or (sizes < 1).any() \
                or (sizes > max_batch_rows(self.p.batch_size)).any():
            raise ProtocolError("batch_sizes must be int64 sizes in 1..2 batch_size - 1")
        rows = read_index_array(message, Field.BATCH_ROWS, len(self.data.ids))
        if len(rows) != int(sizes.sum()) or not np.isin(rows, self.train).all():
            raise ProtocolError("batch rows must be training rows, each once, matching batch_sizes")
        batches = np.split(rows, np.cumsum(sizes)[:-1])
        if not 0 <= first < len(batches):
            raise ProtocolError(f"first_batch must be a batch of the epoch (0..{len(batches) - 1})")
        hit = below_floor(batches, self.mask, self.floor) if self.enforce_floor else None
        if hit is not None:
            b, t, count = hit
            raise ProtocolError(f"batch {b + 1} of epoch {epoch + 1} holds {count} labelled rows of tag "
                                f"'{self.tags[t]}'; with label_dp 'off' the floor is "
                                f"{floor_text(self.X.shape[1], self.p.epochs)} labelled rows per tag and batch: "
                                f"below it this node's gradients give the labels away")
        dp, optimizer = read_field(message, Field.LABEL_DP, bool), read_field(message, Field.OPTIMIZER, str)
        if dp != (self.p.label_dp == "on") and self.p.label_dp != "auto":
            raise ProtocolError(f"train.epoch: label_dp {dp} contradicts the job's label_dp {self.p.label_dp!r}")
        if optimizer not in OPTIMIZERS or self.p.optimizer not in ("auto", optimizer):
            raise ProtocolError(f"train.epoch: optimizer {optimizer!r} is not the job's {self.p.optimizer!r}")
        state.optimizer.kind = optimizer
        state.epoch = epoch
        self.batches = batches
        self.xte: list[np.ndarray | None] = [None] * len(self.batches)
        # Noise for this epoch's encryptions under our key, made ahead (CRT: we hold the private key).
        groups, todo = self.plan.groups, self.batches[first:]
        if self.p.hide_label_mask:
            count = sum(len(r) * self.T for r in todo)
        else:
            count = sum(len(r) * len(groups) + self.plan.pair_cts(int(self.mask[r].sum())) for r in todo)
        self.noise = self.scheme.noise_pool(self.pk, self.sk)
        self.pool.fill(self.noise, count)
        self.bank_noise = self.scheme.noise_pool(self.bpk, mask=True)  # R_B re-randomises: X_B hidden from key holder
        per_batch = sum(-(-self.X.shape[1] // self.plan.features_per_emask_ct(len(g))) for g in groups)
        self.pool.fill(self.bank_noise, per_batch * len(todo))
        state.next_batch = self.first_batch = first
        self.stage = "emask"
        return {}

    def _batch_index(self, message: Message, expected: int) -> int:
        epoch = self.state.epoch
        if read_field(message, Field.EPOCH, int) != epoch or read_field(message, Field.BATCH, int) != expected:
            raise ProtocolError(f"expected epoch {epoch} batch {expected}")
        return expected

    def _emask(self, message: Message) -> Message:
        self._expect("emask")
        b = self._batch_index(message, self.state.next_batch)
        rows, plan, groups = self.batches[b], self.plan, self.plan.groups
        n_masks = len(rows) * len(groups)
        cv = read_ciphertexts(self.bpk, message.get(Field.MASKS), n_masks, Step.EMASK, scheme=self.scheme)
        reply, self.pending = mask_path.masked_products(self.scheme, self.pool, self.bpk, plan, cv, self.Xq[rows],
                                                        self.bank_noise)
        self.stage = "emask_open"
        return {Field.MASKED_PRODUCTS: reply.to_bytes()}

    def _emask_open(self, message: Message) -> Message:
        self._expect("emask_open")
        state = self.state
        b = self._batch_index(message, state.next_batch)
        values = ints_from_bytes(read_field(message, Field.VALUES, bytes), self.bpk.byte_len,
                                 expected=len(self.pending), what=Step.EMASK_OPEN)
        xte = mask_path.open_products(self.plan, values, self.pending, self.X.shape[1], self.T)
        self.xte[b] = xte
        state.next_batch += 1
        if state.next_batch == len(self.batches):
            state.next_batch = self.first_batch
            self.stage = "forward"
        else:
            self.stage = "emask"
        return {}

    def _forward(self, message: Message) -> Message:
        self._expect("forward")
        b = self._batch_index(message, self.state.next_batch)
        rows, plan = self.batches[b], self.plan
        m = self.mask[rows]
        zf = encode_z(self.X[rows] @ self.state.W)
        if self.p.hide_label_mask:  # one ciphertext per (row, tag), row-major: the bank picks the labelled ones
            plain = [int(v) for v in zf.ravel()]
            cts = self.scheme.encrypt(self.pk, plain, self.noise)
            self.stage = "gradient"
            return {Field.ROWS: cts.to_bytes()}
        row_plain = pack_rows(np.where(m, zf, 0), plan.groups, plan.cross_slot)
        ii, tt = np.nonzero(m)
        pair_plain = pack_pairs([int(zf[i, t]) for i, t in zip(ii, tt, strict=True)], plan)
        row_ct = self.scheme.encrypt(self.pk, row_plain, self.noise)
        pair_ct = self.scheme.encrypt(self.pk, pair_plain, self.noise)
        self.stage = "gradient"
        return {Field.ROWS: row_ct.to_bytes(), Field.PAIRS: pair_ct.to_bytes()}

    def _gradient(self, message: Message) -> Message:
        self._expect("gradient")
        state = self.state
        b = self._batch_index(message, state.next_batch)
        rows, plan, groups = self.batches[b], self.plan, self.plan.groups
        m = self.mask[rows]
        hide = self.p.hide_label_mask
        n_pairs = int(m.sum())
        # One ciphertext per (tag group, bank column), as the bank declared at setup: no more, no fewer.
        grad_cv = read_ciphertexts(self.pk, message.get(Field.MASKED_GRADIENT), len(groups) * self.bank_columns,
                                   "train.gradient masked_gradient", scheme=self.scheme)
        n_res = label_mask.residual_cts(len(rows), plan) if hide else plan.pair_cts(n_pairs)
        res_cv = read_ciphertexts(self.pk, message.get(Field.MASKED_RESIDUALS), n_res,
                                  "train.gradient masked_residuals", scheme=self.scheme)
        opened = self.pool.decrypt(self.sk, self.scheme.concat([grad_cv, res_cv]))
        grad_open, res_open = opened[:len(grad_cv)], opened[len(grad_cv):]
        check_masked_gradient(plan, grad_open, self.bank_columns)
        S = open_residuals(plan, res_open, m, hidden=hide)
        xts = np.array(exact_xt_s(self.Xq[rows], S, self.T, plan.pair_slot), dtype=object)
        xtd = xts - self.xte[b]  # X_B^T d' 2^F exactly, over the labelled pairs only (hidden: times k_t)
        self.xte[b] = None
        # |xq| < 2^(q-1) and |k_t (d' 2^F + label-DP noise)| < 2^(residual_bits + G + 1) per pair.
        bound = len(rows) << (plan.quant_bits - 1 + plan.residual_bits + plan.scale_bits + 1)
        if any(abs(v) >= bound for v in xtd.ravel()):
            raise DeviationDetected(Step.GRADIENT, "gradient range",
                                    "X_B^T d' from the masked residuals and the mask path exceeds what the batch's "
                                    "residuals can sum to (the masks of train.emask and train.gradient disagree)")
        grad = np.array(xtd.tolist(), dtype=np.float64) * self.qscale[:, None] / (1 << F_BITS)
        if hide:  # k_t / 2^G stands for 1 / m_t, which only the bank knows; every tag steps
            grad /= 4.0 * (1 << plan.scale_bits)
            state.optimizer.step(state.W, grad, state.epoch, np.ones(self.T, dtype=bool),
                                 self.Xq[rows] * self.qscale, np.ones_like(m))
        else:
            counts = m.sum(axis=0)
            grad /= 4.0 * np.maximum(counts, 1)
            state.optimizer.step(state.W, grad, state.epoch, counts > 0, self.Xq[rows] * self.qscale, m)
        state.next_batch += 1
        state.steps += 1
        if state.next_batch == len(self.batches):
            state.snapshots.append(state.W.copy())
            self.stage = "end_of_epoch"
            self._save(epoch_done=True)  # before the answer: the bank saves only after it
        else:
            self.stage = "forward"
            if state.next_batch % self.p.checkpoint_every == 0:
                self._save(epoch_done=False)
        return {Field.MASKED_GRADIENT: ints_to_bytes(grad_open, self.pk.byte_len)}

    def _evaluate(self, message: Message) -> Message:
        """Joint scores of the validation rows (current weights) or the test rows (each tag's best epoch),
        as a shuffled multiset per tag under the bank's key (protocols/vfl_lr/evaluation.py).

        Each evaluation releases a multiset to the bank, so each split is evaluated at most once per
        epoch (validation: after the epoch's last batch, in at most ``max_validation_evaluations`` epochs of
        the job; test: once, after train.finish), and only on exactly the rows of that split given at setup.
        A deviating bank can read per-row scores out of a multiset (crafted ``[[z_A]]``, one-row label
        classes), so each evaluated row is charged one projection per tag and weight vector before the answer.
        """
        split = read_field(message, Field.SPLIT, str)
        if split not in SPLITS:
            raise ProtocolError(f"split must be one of {', '.join(SPLITS)}")
        epoch = read_field(message, Field.EPOCH, int)
        if (epoch, split) in self.evaluated:
            raise ProtocolError(f"the {split} rows were already evaluated in epoch {epoch}: once per epoch")
        self._expect("end_of_epoch" if split == VALIDATION else "test")
        if epoch != self.state.epoch:
            raise ProtocolError(f"expected epoch {self.state.epoch}")
        expected = self.validation if split == VALIDATION else self.test
        rows = read_index_array(message, Field.EVALUATION_ROWS, len(self.data.ids))
        if len(rows) == 0 or not np.array_equal(rows, expected):
            raise ProtocolError(f"evaluation rows must be exactly the {len(expected)} {split} rows given at setup")
        cv = read_ciphertexts(self.bepk, message.get(Field.ENCRYPTED_SCORES), len(rows) * self.T, Step.EVALUATE,
                              scheme=self.scheme)
        if split == VALIDATION:
            W = self.state.W
            epochs = [epoch] * self.T
            self._check_validation_count(epoch)
        else:
            assert self.model is not None and self.model.best_epoch is not None  # set by train.finish
            W = self.model.weights
            epochs = list(self.model.best_epoch)
        if self.budget is not None:  # before anything is computed for the bank
            self.budget.charge(self._ids(rows), [Projection(self.job_id, tag, e)
                                                 for tag, e in zip(self.tags, epochs, strict=True)],
                               what=f"the {split} evaluation of training job {self.job_id}")
        noise = self.scheme.noise_pool(self.bepk, mask=True)
        self.pool.fill(noise, self.T * packed_count(len(rows), self.bepk))
        shuffled = shuffle_and_add(self.scheme, self.pool, cv, encode_z(self.X[rows] @ W), noise)
        self.evaluated.add((epoch, split))
        reply = {Field.SHUFFLED_SCORES: shuffled.to_bytes()}
        if split == VALIDATION:
            self.stage = "epoch_or_finish"
        else:
            self._report()
        return reply

    def _check_validation_count(self, epoch: int) -> None:
        """At most ``max_validation_evaluations`` distinct epochs of the job evaluated on validation, over all
        its sessions (a replayed epoch is the same weights: it counts once)."""
        done = {e for e, split in self.evaluated if split == VALIDATION}
        if self.budget is not None:
            done |= self.budget.epochs_evaluated(self.job_id)
        allowed = self.limits.max_validation_evaluations
        if epoch not in done and len(done) >= allowed:
            raise ProtocolError(f"{Step.EVALUATE}: the validation rows of job {self.job_id} were evaluated in "
                                f"{len(done)} epochs already; the platform allows {allowed} "
                                "([policy] max_validation_evaluations)")

    def _finish(self, message: Message) -> Message:
        self._expect("end_of_epoch", "epoch_or_finish")
        state = self.state
        best = message.get(Field.BEST_EPOCH)
        if not isinstance(best, np.ndarray) or best.shape != (self.T,) or best.dtype != np.int64 \
                or best.min() < 0 or best.max() >= len(state.snapshots):
            raise ProtocolError("best_epoch must name a finished epoch for every tag")
        state.best_epoch = best.copy()
        W = np.column_stack([state.snapshots[int(best[t])][:, t] for t in range(self.T)])
        self.model = PlatformModel(self.job_id, self.tags, W, self.scaler, self.data.schema,
                                   {"bank": self.bpk.fingerprint(), "platform": self.pk.fingerprint()},
                                   best_epoch=[int(e) for e in best], he_scheme=self.scheme.name,
                                   binning=self.binning)
        if len(self.test):
            self.stage = "test"  # the model is reported after the one evaluation of the test rows
        else:
            self._report()
        return {}

    def _report(self) -> None:
        assert self.model is not None
        self.stage = "finished"  # before on_result: whatever it does, the result is reported once
        self.on_result(self.model)


__all__ = ["PlatformTrainHandler", "make_platform_train_handler"]
