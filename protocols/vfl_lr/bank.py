"""The bank's side of training: it drives every step, trains its half, picks each tag's best epoch, reports."""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import protocols.vfl_lr.key_proof as key_proof
import protocols.vfl_lr.label_mask as label_mask
import protocols.vfl_lr.mask_path as mask_path
from protocols.binning import BinningModel, BinningSpec, binned_party_data
from protocols.channel import Peer, PeerChannel
from protocols.compute import ComputeSpec, as_compute
from protocols.errors import InvalidKey, ProtocolError
from protocols.evaluation_metrics import Split, tag_metrics
from protocols.fixedpoint import quantise_rows
from protocols.he import HEScheme, Kernels, get_scheme
from protocols.packing import pack_signed
from protocols.party_data import PartyData
from protocols.rowblocks import map_rows
from protocols.vfl_lr.batching import choose_schedule, session_batch_bound, session_epochs
from protocols.vfl_lr.bin_width import read_platform_binning
from protocols.vfl_lr.calibration import calibrate_tag
from protocols.vfl_lr.disclosure import validation_epochs
from protocols.vfl_lr.encoding import check_slots, encode_z, pack_pairs, pack_rows, residual_offset
from protocols.vfl_lr.evaluation import (
    TEST,
    UNKNOWN,
    VALIDATION,
    encrypt_rows,
    eval_slots,
    label_codes,
    open_scores,
)
from protocols.vfl_lr.label_privacy import LabelPrivacy, max_batch_rows
from protocols.vfl_lr.messages import (
    SESSION_KIND,
    Field,
    Message,
    Step,
    ints_from_bytes,
    ints_to_bytes,
    read_ciphertexts,
    read_field,
)
from protocols.vfl_lr.model import BankModel, BankOnlyHalf, sigmoid
from protocols.vfl_lr.params import (
    F_BITS,
    STAT_BITS,
    VERSION,
    Z_CLIP,
    SlotPlan,
    TrainingError,
    TrainParams,
    plaintext_bits,
)
from protocols.vfl_lr.report import training_report
from protocols.vfl_lr.resume import (
    Checkpoints,
    KeyedRandom,
    MemoryCheckpoints,
    bank_checkpoint,
    new_noise_key,
    read_bank_checkpoint,
    resume_point,
)
from protocols.vfl_lr.state import BankTrainState, Scaler, active_rows, resolve_optimizer
from protocols.vfl_lr.yardstick import Pairs, sorted_pairs

Progress = Callable[[str, int, int], None]  # (stage, done, total)
# The most features the bank takes the platform to have: the mask path it opens is this wide per tag at most.
MAX_PLATFORM_FEATURES = 100_000
log = logging.getLogger(__name__)
MIN_ROWS = 10  # the smallest intersection training runs on (its test, validation and training splits need rows)


@dataclass
class TrainOutcome:
    """The bank's model half and the job's report (metrics, history, split sizes, timings, encoding)."""

    model: BankModel
    report: dict[str, Any]


def run_bank_training(peer: Peer, job_id: str, bank: PartyData, params: TrainParams, *,
                      progress: Progress | None = None, compute: ComputeSpec = None,
                      checkpoints: Checkpoints | None = None, noise_key: bytes | None = None,
                      binning: BinningSpec | None = None, insecure_for_tests: bool = False) -> TrainOutcome:
    """Train one model per tag of ``bank`` (rows in the alignment's order) with the platform behind ``peer``.

    The session owns ``compute`` (a backend, a worker count, or None for every core) and closes it when
    training ends, however it ends. ``insecure_for_tests`` (tests and benchmarks only; the nodes never set
    it) accepts keys under 2048 bits and batches below the label-privacy floor without turning on label DP.

    ``checkpoints`` (protocols/vfl_lr/resume.py): where the bank saves its state as it goes; if it holds a
    checkpoint of this job, training resumes from it (a new session, resumed on the platform at the same
    position) and ends with the model an uninterrupted run would have made. ``noise_key`` fixes the
    label-DP noise stream of a fresh job (tests comparing runs; by default 32 bytes from ``secrets``).
    ``binning``: how the bank bins its columns when ``params.features`` is "binned" (its node's [binning]).
    """
    held = as_compute(compute)  # the session owns it, however it ends (closing the kernels closes it)
    try:
        params.validate(insecure_for_tests=insecure_for_tests)
        scheme = get_scheme(params.he_scheme)
        pool = scheme.kernels(held)
        trainer = _BankTrainer(peer, job_id, bank, params, progress, scheme, pool, insecure_for_tests, binning)
        return trainer.run(checkpoints if checkpoints is not None else MemoryCheckpoints(), noise_key)
    finally:
        held.close()


def _check_split(split: Split, p: TrainParams, n: int) -> None:
    """Refuse, before any key is made, an intersection too small for its splits (a tiny PSI result)."""
    empty = [name for name, rows, share in (("training", split.train, 1.0), ("test", split.test, p.test_share),
                                            ("validation", split.validation, p.validation_share_for(n)))
             if share > 0 and len(rows) == 0]
    if n < MIN_ROWS or empty:
        raise TrainingError(f"the intersection has {n} customers: too few to train on (at least {MIN_ROWS}, and "
                            f"every split needs rows{'; empty: ' + ', '.join(empty) if empty else ''}); "
                            "align on more customers")


class _BankTrainer:
    def __init__(self, peer: Peer, job_id: str, bank: PartyData, params: TrainParams, progress: Progress | None,
                 scheme: HEScheme, pool: Kernels, insecure_for_tests: bool,
                 binning_spec: BinningSpec | None = None) -> None:
        self.job_id, self.bank, self.p = job_id, bank, params
        self.binning_spec = binning_spec
        self.scheme = scheme
        self.progress = progress or (lambda stage, done, total: None)
        self.insecure_for_tests = insecure_for_tests
        self.peer = peer
        self.pool = pool
        self.T = len(bank.tag_names)
        self.mask = ~np.isnan(bank.labels)
        self.y = np.nan_to_num(bank.labels, nan=0.0)

    def run(self, checkpoints: Checkpoints, noise_key: bytes | None) -> TrainOutcome:
        p, bank = self.p, self.bank
        self.checkpoints, self.job_p = checkpoints, p
        split = p.split(bank.labels, bank.ids)  # by keyed hashes of the customer IDs: independent of PSI's order
        _check_split(split, p, len(bank.ids))
        self._check_tags()
        self.binning: BinningModel | None = None
        if p.features == "binned":  # its own binning, from its training rows' values: the same on resume
            bank, self.binning = binned_party_data(bank, split.train, self.binning_spec)
            self.bank = bank
        self.scaler = Scaler.fit(bank.features, p.clip, rows=split.train)
        # Standardised rows (with the intercept's column of ones) when a step asks for them: the raw features
        # are held once (on disk when the node spilled them), never a float64 copy of the whole matrix.
        self.X_aug = self.scaler.rows(bank.features, intercept=p.fit_intercept)
        Xq, self.qscale_aug = quantise_rows(bank.features, self.scaler.transform, p.quant_bits, fit_rows=split.train)
        self.Xq_aug = Xq
        if p.fit_intercept:  # the intercept's column quantises to 1 on a scale of 1
            self.Xq_aug = map_rows(Xq, lambda block: np.hstack([block, np.ones((len(block), 1), block.dtype)]),
                                   Xq.shape[1] + 1, Xq.dtype)
            self.qscale_aug = np.concatenate([self.qscale_aug, [1.0]])
        saved = checkpoints.load()
        if saved is not None:  # a resumed job: the state, the noise key, maybe the finished outcome
            where = f"checkpoint of job {self.job_id}"
            self.state, self.noise_key, done = read_bank_checkpoint(saved, p, where=where)
            if done is not None:
                return TrainOutcome(BankModel.from_dict(done["model"], where=where), done["report"])
        else:  # the noise key is saved before any noise is drawn
            self.state = BankTrainState.start(p, self.X_aug.shape[1], self.T,
                                              intercepts=p.start_intercepts(bank.labels, split.train))
            self.noise_key = noise_key or new_noise_key()
            self._save()

        # Automatic batch size and epochs are chosen after train.setup (they need the platform's feature count); the
        # session carries their upper bounds, which size the slots and bound batches and epochs (batching.py).
        self.session_p = dataclasses.replace(p, epochs=session_epochs(p), batch_size=p.batch_size or
                                             session_batch_bound(len(self._active(split))))

        self.progress("keys", 0, 1)
        self.pk, self.sk = self.scheme.generate_keypair(p.key_bits, allow_insecure=self.insecure_for_tests)
        # A second key pair for evaluation: the mask path is a decryption this node does for the platform, and a
        # platform that put evaluation ciphertexts (held-out label codes, z_A) there would read them; under
        # another key they do not decrypt to anything of evaluation.
        self.epk, self.esk = self.scheme.generate_keypair(p.key_bits, allow_insecure=self.insecure_for_tests)
        channel = self.peer.open(SESSION_KIND, self.job_id, {Field.VERSION: VERSION,
                                                              Field.PARAMS: self.session_p.to_json(),
                                                              Field.TAGS: json.dumps(bank.tag_names)})
        try:
            return self._train(channel, split)
        finally:
            channel.close()

    def _active(self, split: Split) -> np.ndarray:
        """The rows batches are cut from: labelled training rows, or every training row with the mask hidden
        (batches of labelled rows only would tell the platform which rows have a label)."""
        return split.train if self.p.hide_label_mask else active_rows(split.train, self.mask)

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
        p, state = self.p, self.state
        started = time.monotonic()
        train_mask = np.zeros_like(self.mask)
        train_mask[split.train] = self.mask[split.train]
        setup = {Field.BANK_KEY: self.pk.to_bytes(), Field.BANK_EVALUATION_KEY: self.epk.to_bytes(),
                 Field.N_ROWS: len(self.bank.ids),
                 Field.BANK_COLUMNS: int(self.Xq_aug.shape[1]),
                 Field.TRAIN_ROWS: split.train, Field.VALIDATION_ROWS: split.validation, Field.TEST_ROWS: split.test,
                 **key_proof.attach(self.scheme, self.sk, self.job_id, key_proof.BANK_TRAINING),
                 **key_proof.attach(self.scheme, self.esk, self.job_id, key_proof.BANK_EVALUATION)}
        if not p.hide_label_mask:  # hidden: the platform takes every training row as labelled for every tag
            setup[Field.LABEL_MASK] = train_mask.astype(np.uint8)
        if state.steps:  # resumed: the platform restores its state at the same position
            setup[Field.RESUME_STEPS] = state.steps
        self.resumed = resume_point(state)
        reply = channel.call(Step.SETUP, setup)
        scheme_named = reply.get(Field.HE_SCHEME)
        if scheme_named != self.scheme.name:
            raise ProtocolError(f"the platform runs HE scheme {scheme_named!r}; this job uses {self.scheme.name!r} "
                                "(he_scheme)")
        if self.resumed:  # in the job's history (`bank-node logs`, `wait`), the node's log and the report
            self.progress(self.resumed["text"], 1, 1)
            log.info("train job %s: %s", self.job_id, self.resumed["text"])
        try:
            self.ppk = self.scheme.public_key_from_bytes(read_field(reply, Field.PLATFORM_KEY, bytes),
                                                         allow_insecure=self.insecure_for_tests, key_bits=p.key_bits)
        except InvalidKey as err:
            raise ProtocolError(f"the platform's public key was refused: {err}") from err
        key_proof.check(self.scheme, self.ppk, reply, self.job_id, key_proof.PLATFORM_TRAINING, Step.SETUP)
        # The platform's feature count is the width of the mask path this node opens for it (a reply of any other
        # width is refused, _open_mask_path), so the floor below counts what its gradient can hold.
        n_features = read_field(reply, Field.N_FEATURES, int)
        if not 1 <= n_features <= MAX_PLATFORM_FEATURES:
            raise ProtocolError(f"the platform declared {n_features} features (1..{MAX_PLATFORM_FEATURES})")
        self.n_features, self.platform_binning = n_features, read_platform_binning(reply.get(Field.PLATFORM_BINNING))
        self.plan = SlotPlan.for_params(p, max_batch_rows(self.session_p.batch_size), self.T,
                                        plaintext_bits(self.pk, self.ppk, scheme=self.scheme.name))
        self.mask_train = train_mask
        if len(active_rows(split.train, self.mask)) == 0:
            raise TrainingError("no training row has a known label")
        active = self._active(split)
        # The epochs and batch size (batching.py), then the batch floor or label DP (label_privacy.py): decided
        # before any label-dependent value leaves.
        p, choice, self.epochs_entry = choose_schedule(p, active, train_mask, n_features, self.session_p.batch_size,
                                                       strict=not self.insecure_for_tests)
        self.privacy = LabelPrivacy.plan(p, active, train_mask, n_features, strict=not self.insecure_for_tests)
        # Label DP: the job's noisy labels, drawn once from the keyed stream (the same on resume); zeros without.
        self.label_noise = self.privacy.label_noise(len(self.bank.ids), self.T,
                                                    rng=KeyedRandom(self.noise_key, "labels"))
        self.p = p = dataclasses.replace(p, optimizer=resolve_optimizer(p, choice.full))
        state.optimizer.kind = p.optimizer
        if state.epoch >= 0:  # a resumed job: the epochs before it were released too
            self.privacy.record_epoch(state.epoch)
        self.batching = choice.report(len(self.privacy.batches(0)), self.privacy.mode)
        # The platform evaluates the validation rows in at most this many epochs (each costs every validation
        # customer a projection per tag of its disclosure budget): those epochs, the last among them, are the
        # ones early stopping and the best epoch look at (protocols/vfl_lr/disclosure.py).
        limit = reply.get(Field.MAX_VALIDATION_EVALUATIONS)
        self.validated_epochs = validation_epochs(p.epochs, limit if isinstance(limit, int) and limit > 0 else None)
        mid_epoch = state.epoch >= 0 and len(state.history) == state.epoch  # saved inside that epoch
        stopped = not mid_epoch and state.epoch >= 0 and len(split.validation) > 0 and \
            p.should_stop(state.stale, state.stale_steps)
        for epoch in range(state.epoch if mid_epoch else state.epoch + 1, p.epochs if not stopped else 0):
            self._epoch(channel, epoch, active, split, state.next_batch if mid_epoch else 0)
            mid_epoch = False
            if len(split.validation) and p.should_stop(state.stale, state.stale_steps):
                break
        # Each tag keeps the weights of its best validation epoch (the platform does the same for its half).
        for t in range(self.T):
            state.W[:, t] = state.snapshots[state.best_epoch[t]][:, t]
        channel.call(Step.FINISH, {Field.BEST_EPOCH: state.best_epoch})
        test_pairs = self._evaluate(channel, TEST, split.test)
        calibration = [calibrate_tag(*(v if v is not None else (np.zeros(0), np.zeros(0))))
                       for v in state.best_validation]
        report = self._report(split, test_pairs, calibration, time.monotonic() - started)
        report["label_privacy"] = self.privacy.summary()
        if self.resumed:
            report["resumed"] = self.resumed
        report["batching"], report["epochs"] = self.batching, self.epochs_entry
        if self.binning is not None:  # the platform's side: only its width (what it declared), never its bins
            report["binning"] = {"bank": self.binning.summary(), "platform": {**self.platform_binning,
                                                                              "bins": self.n_features}}
        # A tag whose joint model does not beat the bank's own on validation is served by the bank's own.
        W, served = state.W.copy(), [report["metrics"][tag]["served"]["model"] == "joint" for tag in self.bank.tag_names]
        for t in np.flatnonzero(~np.array(served)):
            W[:, t], calibration[t] = self.alone.weights[:, t], self.alone.calibration[t]
        weights = W[:-1] if p.fit_intercept else W
        model = BankModel(self.job_id, list(self.bank.tag_names), weights.copy(),
                          W[-1].copy() if p.fit_intercept else np.zeros(self.T), self.scaler, self.bank.schema,
                          {"bank": self.pk.fingerprint(), "platform": self.ppk.fingerprint()},
                          calibration=calibration, platform_part=served, he_scheme=self.scheme.name,
                          bank_only=BankOnlyHalf.from_fit(self.alone.weights, self.alone.calibration,
                                                          fit_intercept=p.fit_intercept), binning=self.binning)
        # Saved before the session closes: a bank killed from here on finishes without the platform.
        self._save(done={"model": model.to_dict(), "report": report})
        return TrainOutcome(model, report)

    def _save(self, done: dict[str, Any] | None = None) -> None:
        self.checkpoints.save(bank_checkpoint(self.state, self.noise_key, self.job_p, done=done))

    def _epoch(self, channel: PeerChannel, epoch: int, active: np.ndarray, split: Split, first: int = 0) -> None:
        """One epoch from batch ``first`` (a resumed job): masks ahead of time, every batch online, then
        validation and the best-epoch bookkeeping; checkpoints every ``checkpoint_every`` batches and at the end."""
        p, state = self.p, self.state
        batches = self.privacy.batches(epoch)
        state.epoch, state.next_batch = epoch, first
        t0 = time.monotonic()
        emask = self._prepare_epoch(channel, epoch, batches, first)
        t1 = time.monotonic()
        for b in range(first, len(batches)):
            self._batch(channel, epoch, b, batches[b], emask[b - first])
            state.next_batch, state.steps = b + 1, state.steps + 1
            if (b + 1) % p.checkpoint_every == 0 and b + 1 < len(batches):
                self._save()
            self.progress(f"epoch {epoch + 1}/{p.epochs}", b + 1, len(batches))
        state.snapshots.append(state.W.copy())
        entry: dict[str, Any] = {"epoch": epoch + 1}
        improved = np.ones(self.T, dtype=bool)
        validated = len(split.validation) > 0 and epoch in self.validated_epochs
        if validated:
            improved = self._validate(channel, epoch, split.validation, entry)
        elif len(split.validation):  # not evaluated: an epoch without validation neither improves nor goes stale
            improved = np.zeros(self.T, dtype=bool)
        state.best_epoch[improved] = epoch
        t2 = time.monotonic()
        state.seconds_ahead += t1 - t0
        state.seconds_online += t2 - t1
        entry.update(seconds_ahead=round(t1 - t0, 3), seconds_online=round(t2 - t1, 3), batches=len(batches))
        state.history.append(entry)
        if validated or not len(split.validation):
            state.stale = 0 if improved.any() else state.stale + 1
            state.stale_steps = 0 if improved.any() else state.stale_steps + len(batches)
        self._save()

    def _validate(self, channel: PeerChannel, epoch: int, rows: np.ndarray, entry: dict[str, Any]) -> np.ndarray:
        """Joint validation metrics of this epoch; which tags improved on their best so far."""
        state = self.state
        pairs = self._evaluate(channel, VALIDATION, rows)
        metrics = [tag_metrics(y, sigmoid(z)) for z, y in pairs]
        value = np.array([m["auc"] if m["auc"] is not None else -(m["logloss"] or 0.0) for m in metrics])
        improved = value > state.best_metric + 1e-6
        state.best_metric = np.where(improved, value, state.best_metric)
        for t in np.flatnonzero(improved):  # the multiset the tag's final (best-epoch) model gives validation
            state.best_validation[t] = pairs[t]
        entry["validation_auc"] = {tag: m["auc"] for tag, m in zip(self.bank.tag_names, metrics, strict=True)}
        self.progress(f"epoch {epoch + 1}/{self.p.epochs} validation AUC " + ", ".join(
            f"{tag} {'n/a' if auc is None else f'{auc:.3f}'}" for tag, auc in entry["validation_auc"].items()), 1, 1)
        return improved

    def _z_bank(self, rows: np.ndarray) -> np.ndarray:
        return self.X_aug[rows] @ self.state.W

    def _evaluate(self, channel: PeerChannel, split: str, rows: np.ndarray) -> list[Pairs]:
        """Per tag, the labelled (joint score, label) pairs of ``rows`` with the current weights, from the
        shuffled multiset the platform returns (protocols/vfl_lr/evaluation.py), put in canonical order."""
        if len(rows) == 0:
            return [(np.zeros(0), np.zeros(0)) for _ in range(self.T)]
        codes = label_codes(self.bank.labels[rows])
        sent = encrypt_rows(self.scheme, self.pool, self.epk, self.esk, self._z_bank(rows), codes)
        reply = channel.call(Step.EVALUATE, {Field.EPOCH: self.state.epoch, Field.SPLIT: split,
                                             Field.EVALUATION_ROWS: rows, Field.ENCRYPTED_SCORES: sent.to_bytes()})
        what = f"{Step.EVALUATE} ({split})"
        cv = read_ciphertexts(self.epk, reply.get(Field.SHUFFLED_SCORES), None, what, scheme=self.scheme)
        out = []
        for z, got in open_scores(self.pool, self.esk, cv, codes, what):
            y = np.where(got == UNKNOWN, np.nan, got.astype(np.float64))
            out.append(sorted_pairs(z / (1 << F_BITS), y))
        return out

    # ---- ahead of time: the mask path [[e]]_A -> X_B^T e ----

    def _prepare_epoch(self, channel: PeerChannel, epoch: int, batches: list[np.ndarray],
                       first: int = 0) -> list[np.ndarray]:
        """The mask path of batches ``first``.. of ``epoch``; their masks."""
        p, plan, groups = self.p, self.plan, self.plan.groups
        self.privacy.record_epoch(epoch)  # every labelled row is in one of this epoch's batches
        all_batches, batches = batches, batches[first:]
        n_noise = sum(len(r) for r in batches) * len(groups)
        noise = self.scheme.noise_pool(self.pk, self.sk)
        self.pool.fill(noise, n_noise)
        # Noise under the platform's key for the masks R_A of every batch, made now (public-key path).
        self.r_noise = self.scheme.noise_pool(self.ppk, mask=True)  # R_A re-randomises: hide our features from the key holder
        n_r = len(batches) * len(groups) * self.X_aug.shape[1]
        if p.hide_label_mask:  # and one per packed residual ciphertext, which we re-randomise
            n_r += sum(label_mask.residual_cts(len(r), plan) for r in batches)
        self.pool.fill(self.r_noise, n_r)
        message = {Field.EPOCH: epoch, Field.BATCH_ROWS: np.concatenate(all_batches),
                   Field.BATCH_SIZES: np.array([len(r) for r in all_batches], dtype=np.int64),
                   Field.LABEL_DP: self.privacy.mode == "dp", Field.OPTIMIZER: p.optimizer}
        if first:
            message[Field.FIRST_BATCH] = first
        channel.call(Step.EPOCH, message)
        masks = []
        for b, rows in enumerate(batches, start=first):
            e = np.zeros((len(rows), self.T), dtype=object)
            # Hidden mask: every pair has a mask (the residuals of unlabelled pairs are their masks alone).
            m = np.ones((len(rows), self.T), bool) if p.hide_label_mask else self.mask_train[rows]
            for i, t in zip(*np.nonzero(m), strict=True):
                e[i, t] = secrets.randbits(plan.e_bits)
            packed = pack_rows(e, groups, plan.emask_slot)
            enc = self.scheme.encrypt(self.pk, packed, noise)
            reply = channel.call(Step.EMASK, {Field.EPOCH: epoch, Field.BATCH: b, Field.MASKS: enc.to_bytes()})
            opened = self._open_mask_path(reply)
            channel.call(Step.EMASK_OPEN, {Field.EPOCH: epoch, Field.BATCH: b,
                                           Field.VALUES: ints_to_bytes(opened, self.pk.byte_len)})
            masks.append(e)
            self.progress(f"epoch {epoch + 1}/{self.p.epochs} (masks ahead of time)", b + 1, len(all_batches))
        return masks

    def _open_mask_path(self, reply: Message) -> list[int]:
        """Decrypt the platform's ``[[X_Bq^T E + R_B]]_A`` for it, checked (count before, layout and ranges after:
        protocols/vfl_lr/mask_path.py): a decryption this node performs for the other party."""
        n_slots = mask_path.layout(self.plan, self.n_features)
        cv = read_ciphertexts(self.pk, reply.get(Field.MASKED_PRODUCTS), len(n_slots), Step.EMASK, scheme=self.scheme)
        return mask_path.open_for_platform(self.pool, self.sk, self.plan, cv, n_slots)

    # ---- one mini-batch ----

    def _batch(self, channel: PeerChannel, epoch: int, b: int, rows: np.ndarray, e: np.ndarray) -> None:
        plan, groups, T, state = self.plan, self.plan.groups, self.T, self.state
        m = self.mask_train[rows]
        n_pairs = int(m.sum())
        hide = self.p.hide_label_mask
        reply = channel.call(Step.FORWARD, {Field.EPOCH: epoch, Field.BATCH: b})
        row_cts = read_ciphertexts(self.ppk, reply.get(Field.ROWS), len(rows) * (T if hide else len(groups)),
                                   "train.forward rows", scheme=self.scheme)
        Xq = self.Xq_aug[rows]
        d_aug = Xq.shape[1]
        if hide:  # one ciphertext per (row, tag): the products run over each tag's labelled rows only
            products = label_mask.cross_products(self.scheme, self.pool, row_cts, Xq, m, plan)
        else:
            pair_cts = read_ciphertexts(self.ppk, reply.get(Field.PAIRS), plan.pair_cts(n_pairs),
                                        "train.forward pairs", scheme=self.scheme)
            products = [self.pool.matvec_t(row_cts[gi * len(rows):(gi + 1) * len(rows)], Xq)
                        for gi in range(len(groups))]

        # [[X_A^T z_B + R_A]]_P per tag group: Pippenger over the rows, masked and re-randomised by Enc(R_A).
        cross_parts, r_masks = [], []
        for g, prod in zip(groups, products, strict=True):
            r = [[secrets.randbits(plan.cross_bits + STAT_BITS) for _ in g] for _ in range(d_aug)]
            r_packed = [pack_signed(rj, plan.cross_slot) for rj in r]
            enc_r = self.scheme.encrypt(self.ppk, r_packed, self.r_noise)
            cross_parts.append(self.scheme.add(prod, enc_r))
            r_masks.append(r_packed)

        # [[d' 2^F + e]]_P for the labelled pairs: add the bank's plaintext part and the masks, slot-wise.
        z_a = self._z_bank(rows)
        # Label DP: the residuals carry the job's noisy labels, before the platform's features touch them.
        c = encode_z(z_a) + residual_offset(self.y[rows]) + self.label_noise[rows]
        counts = m.sum(axis=0)
        if hide:  # every pair, scaled by k_t = round(2^G / m_t) per tag: the platform divides by 4 2^G
            scales = label_mask.tag_scales(counts, plan)
            residuals = label_mask.residuals(self.scheme, row_cts, m, c, e, scales, plan, self.r_noise)
        else:
            ii, tt = np.nonzero(m)
            plain = [int(c[i, t]) + int(e[i, t]) for i, t in zip(ii, tt, strict=True)]
            residuals = self.scheme.add_plain(pair_cts, pack_pairs(plain, plan))

        reply = channel.call(Step.GRADIENT, {Field.EPOCH: epoch, Field.BATCH: b,
                                             Field.MASKED_GRADIENT: self.scheme.concat(cross_parts).to_bytes(),
                                             Field.MASKED_RESIDUALS: residuals.to_bytes()})
        opened = ints_from_bytes(read_field(reply, Field.MASKED_GRADIENT, bytes), self.ppk.byte_len,
                                 expected=d_aug * len(groups), what=Step.GRADIENT)
        cross = np.zeros((d_aug, T))
        bound = 1 << plan.cross_bits  # |sum_i xq z_B 2^F| of an honest batch
        for gi, g in enumerate(groups):
            for j in range(d_aug):
                slots = check_slots(opened[gi * d_aug + j] - r_masks[gi][j], len(g), plan.cross_slot, -bound,
                                    bound, step=Step.GRADIENT, check="opened cross products")
                cross[j, list(g)] = slots
        cross = cross * self.qscale_aug[:, None] / (1 << F_BITS)
        # Plaintext part X_A^T (M o (z_A + 2 - 4y)) plus the cross part X_A^T (M o z_B), over 4 m_t.
        # (with label DP, the same noisy labels as the residuals: the bank's model is post-processing of them too)
        c_float = (np.clip(z_a, -Z_CLIP, Z_CLIP) + 2 - 4 * self.y[rows] + self.label_noise[rows] / (1 << F_BITS)) * m
        grad = (self.X_aug[rows].T @ c_float + cross) / (4.0 * np.maximum(counts, 1))
        # Hidden mask: the platform steps every tag (it cannot tell a tag without labels here); so do we.
        state.optimizer.step(state.W, grad, epoch, np.ones(T, bool) if hide else counts > 0, self.X_aug[rows], m)

    def _report(self, split: Split, test_pairs: list[Pairs], calibration: list[dict[str, Any]],
                total: float) -> dict[str, Any]:
        report, self.alone = training_report(
            self.p, self.state, self.bank, self.X_aug, split, self.privacy.batches, test_pairs, calibration, total,
            self.plan, eval_slots(self.epk), {"bank": self.pk.fingerprint(), "platform": self.ppk.fingerprint()},
            platform_features=self.n_features)
        return report


__all__ = ["Progress", "TrainOutcome", "run_bank_training"]
