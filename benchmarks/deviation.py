"""Partners that deviate from the protocol (issue 23), against the real nodes: what each attack obtains, and
whether the honest party refuses, detects or bounds it.

    python -m benchmarks.deviation [--quick] [--json PATH]

Both nodes run in this process as the real ``PlatformNode`` and ``BankNode``, talking gRPC over mutual TLS on
loopback (certificates from ``party_common.certs``, configs as ``simulations.cluster`` writes them), with
2048-bit keys and the nodes' strict checks. The deviating party is the real node with one thin part swapped:

* a deviating platform: :class:`DeviatingPlatformNode`, whose training sessions' step handler (the real
  ``PlatformTrainHandler``) is wrapped by a :class:`PlatformDeviation` that rewrites replies and reads what the
  platform decrypts;
* a deviating bank: the real ``BankNode`` whose link to the platform is a :class:`DeviatingLink`, which rewrites
  the bank's step messages (a :class:`BankDeviation`) and reads the replies; a curious bank also keeps its own
  private keys (:func:`bank_keys_kept`).

Attacks (numbered as in the issue) and the figure each reports:

1. :class:`MaskOraclePlatform`: the platform declares a feature count equal to the batch bound and answers
   ``train.emask`` with the bank's own ``[[e_i]]`` raised to 2^48, one row per slot; after ``train.emask_open``
   it reads every mask ``e_i``, then every label from its residuals ``d' 2^F + e``: ``label_recovery_accuracy``
   with ``majority_rate`` (label DP automatic, and on at epsilon 3).
2. :class:`GradientOracleBank`: the bank declares more model columns and appends the platform's own ``[[z_B]]``
   (from ``train.forward``) to its masked gradient; the platform decrypts them: per-row ``z_B`` of every epoch,
   ``feature_recovery_r2`` (30 known rows) and ``projections_released`` (rank per row) with ``budget``.
3. Crafted tags (:func:`crafted_tags`): a bank following the protocol whose extra tags hold, on the validation
   rows, label classes of one row each; it decrypts the evaluation multisets and attributes each class of one:
   ``projections_released`` (most distinct projections of one customer) with ``budget``, ``feature_recovery_r2``.
4. :class:`FloorLoweringPlatform`: the platform declares one feature (the batch floor drops to 10 x epochs) or,
   under label DP, a row-norm bound of 1 (noise 100x smaller), keeps its rows unclipped and runs the stacked
   least-squares attack of ``benchmarks.privacy``: ``label_recovery_accuracy``, ``majority_rate`` and
   ``feature_baseline`` (what its features alone tell).
5. Replay (:func:`attack_replay`): a bank re-opens a finished train job's ID with ``resumed`` and a fresh
   checkpoint (different seed), then aligns the same customers again and trains on the new alignment; every
   partial-score answer is kept: ``projections_released`` (rank of the answers on the shared customers) with
   ``budget``.
6. Keys (:class:`KeySwapBank`): an 8192-bit key for a 2048-bit job, a modulus with a factor just above the
   trial-division bound, a modulus of 32 small primes: accepted by the platform at ``train.setup`` or not. The
   swapped key goes with the proof of the bank's own key (``bank_key_proof``), the only valid one it holds; a
   forger who knows the factors does no better (``tests/test_modulus_proof.py``), so the 32-prime modulus is
   refused by the modulus proof, the others by their size and by trial division before it.
7. ``party_bank.segments.safe_output_path`` with a symlinked parent: a folder created outside or not.

Outcomes: ``refused`` (the honest party refused before it released anything the attack needs), ``detected``
(the job stopped with an error after the deviation, and the figure meets the goal), ``bounded`` (the attack
completed and its figure meets the goal: label recovery within 0.02 of the majority rate, or, without label DP,
of what the platform's features alone tell; projections per customer no more than the budget), else ``open``.
A deviation detected only after the attacker already obtained its figure is ``open``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gmpy2
import numpy as np

import protocols.vfl_lr.bank as bank_protocol
from benchmarks.common import console, print_table, write_json
from benchmarks.privacy import (
    BatchView,
    feature_baseline,
    held_out_recovery_accuracy,
    label_recovery_accuracy,
    least_squares_attack,
    load_default_credit,
    majority_rate,
)
from benchmarks.privacy_bank_view import recovery_r2
from party_bank.grpc_link import GrpcPlatformLink, platform_certificate_check
from party_bank.node import BankNode
from party_bank.score_files import OutputError, safe_output_path
from party_common.certs import init_local_pki
from party_common.config import load_config
from party_common.data_loading import load_party_data
from party_common.jobs import SESSION_KINDS
from party_common.link import ContextPeer, LocalPlatformLink, PlatformLink, SessionContext
from party_common.runtime import read_tls_files, start_node_server
from party_common.storage import memory_node_stores
from party_common.transport import dial
from party_platform.node import PlatformNode, PlatformSession
from party_platform.service import NodeServicer
from party_platform.sessions import SessionRegistry
from proto import fedprofile_v1_pb2_grpc as pb_grpc
from protocols.channel import Message, PeerChannel, StepHandler
from protocols.errors import ProtocolError
from protocols.packing import SlotLayout, unpack_signed
from protocols.paillier import CipherVector, PrivateKey, PublicKey
from protocols.party_data import PartyData, Schema
from protocols.vfl_lr import PlatformTrainHandler, TrainParams, run_bank_training
from protocols.vfl_lr.encoding import encode_z, exact_xt_s, unpack_pairs
from protocols.vfl_lr.evaluation import EVAL_SLOT, VALIDATION, eval_slots
from protocols.vfl_lr.label_privacy import max_batch_rows
from protocols.vfl_lr.messages import (
    SESSION_KIND,
    Field,
    Step,
    ints_from_bytes,
    ints_to_bytes,
    read_ciphertexts,
)
from protocols.vfl_lr.params import F_BITS, SlotPlan, plaintext_bits
from protocols.vfl_lr.resume import MemoryCheckpoints
from simulations.cluster import write_configs

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
LABEL_GOAL = 0.02  # label recovery within this of the majority rate (or the features' own) meets the goal
DP_SLACK = 0.05  # two standard errors of an accuracy over 400 labels, when comparing with the DP bound
SHIFT_BITS = 48  # attack 1: each mask is raised 2^48 up in its slot, far beyond the label-DP noise
KNOWN_ROWS = 30  # platform rows whose features the curious bank knows (benchmarks/privacy_bank_view.py)
OPERATOR = "data-scientist"
ROW_NORM_BOUND = "row_norm_bound"  # attack 4: the setup reply's field that set the label-DP noise (protocol v2)


# ------------------------------------------------------------------------------ the nodes ----


class DeviatingPlatformNode(PlatformNode):
    """The real platform node, its training sessions' step handler wrapped by ``deviation`` (None: honest)."""

    def __init__(self, *args: Any, deviation: Callable[[PlatformTrainHandler], PlatformDeviation] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deviation = deviation
        self.deviations: list[PlatformDeviation] = []

    def open_session(self, kind: str, job_id: str, params: Message, context: SessionContext) -> StepHandler:
        session = super().open_session(kind, job_id, params, context)
        if self.deviation is not None and kind == SESSION_KIND and isinstance(session, PlatformSession):
            assert isinstance(session.inner, PlatformTrainHandler)
            session.inner = self.deviation(session.inner)
            self.deviations.append(session.inner)  # type: ignore[arg-type]
        return session


class PlatformDeviation:
    """A training session's real handler, its steps passed through :meth:`step`, which a subclass overrides
    for the steps it deviates in (reading the messages by their field names)."""

    def __init__(self, inner: PlatformTrainHandler) -> None:
        self.inner = inner
        self.deviated = False  # a deviating reply has left this node

    def handle(self, step: str, message: Message) -> Message:
        return self.step(step, message)

    def step(self, step: str, message: Message) -> Message:
        return self.inner.handle(step, message)

    def close(self) -> None:
        self.inner.close()

    # What the platform decrypts in train.gradient: the residuals d' 2^F + e of the batch's labelled pairs.
    def residuals(self, message: Message) -> np.ndarray:
        h = self.inner
        rows = h.batches[h.state.next_batch]
        m = h.mask[rows]
        cv = read_ciphertexts(h.pk, message.get(Field.MASKED_RESIDUALS), None, Step.GRADIENT)
        opened = h.pk.decode(h.pool.decrypt_raw(h.sk, cv))
        S = np.zeros((len(rows), h.T), dtype=object)
        ii, tt = np.nonzero(m)
        for i, t, s in zip(ii, tt, unpack_pairs(opened, len(ii), h.plan), strict=True):
            S[i, t] = s
        return S


class MaskOraclePlatform(PlatformDeviation):
    """Attack 1: crafted ``train.emask`` replies read the bank's masks; the residuals then give every label."""

    def __init__(self, inner: PlatformTrainHandler) -> None:
        super().__init__(inner)
        self.guesses: dict[tuple[int, int], float] = {}  # (aligned row, tag) -> d' - z_B = z_A + 2 - 4 y (2^F)
        self.masks: dict[int, np.ndarray] = {}  # batch -> e (rows x tags) read after train.emask_open
        self.zb: np.ndarray | None = None

    def step(self, step: str, message: Message) -> Message:
        h = self.inner
        if step == Step.SETUP:
            reply = h.handle(step, message)
            self.declared = max_batch_rows(h.p.batch_size)  # one "feature" per row of the largest batch
            return {**reply, Field.N_FEATURES: self.declared}
        if step == Step.EMASK:
            b = h.state.next_batch
            h.handle(step, message)  # the honest state machine moves on; its reply is not sent
            self.deviated = True
            return {Field.MASKED_PRODUCTS: self._crafted(message, len(h.batches[b])).to_bytes()}
        if step == Step.EMASK_OPEN:
            b = h.state.next_batch
            rows = h.batches[b]
            e = self._read_masks(message, len(rows))
            self.masks[b] = e
            # its own state machine takes the masks R_B back (zero products), then the products it computes itself
            masks_only = ints_to_bytes([int(pending[3]) for pending in h.pending], h.bpk.byte_len)
            reply = h.handle(step, {**message, Field.VALUES: masks_only})
            h.xte[b] = np.asarray(h.Xq[rows], dtype=object).T @ e  # what an honest mask path would have given
            return reply
        if step == Step.FORWARD:
            rows = h.batches[h.state.next_batch]
            self.zb = encode_z(h.X[rows] @ h.state.W)
        elif step == Step.GRADIENT:
            b = h.state.next_batch
            rows, S = h.batches[b], self.residuals(message)
            d = S - self.masks.pop(b)  # d' 2^F; d' - z_B = z_A + 2 - 4 y
            for i, t in zip(*np.nonzero(h.mask[rows]), strict=True):
                self.guesses[(int(rows[i]), int(t))] = float(int(d[i, t]) - int(self.zb[i, t]))  # < 0: y = 1
        return h.handle(step, message)

    def _crafted(self, message: Message, n: int) -> CipherVector:
        """Per tag group, feature slot f holds row f's [[e]] times 2^48 (padding: [[0]])."""
        h = self.inner
        plan, groups = h.plan, h.plan.groups
        cv = read_ciphertexts(h.bpk, message.get(Field.MASKS), n * len(groups), Step.EMASK)
        parts = []
        for gi, g in enumerate(groups):
            own = cv[gi * n:(gi + 1) * n].values
            padded = CipherVector(h.bpk, own + [own[0]] * (self.declared - n))
            shifted = padded.mul_plain([1 << SHIFT_BITS] * n + [0] * (self.declared - n))
            per_ct = plan.features_per_emask_ct(len(g))
            parts.append(SlotLayout(plan.emask_slot * len(g), per_ct).pack_ciphertexts(shifted))
        return CipherVector.concat(parts)

    def _read_masks(self, message: Message, n: int) -> np.ndarray:
        h = self.inner
        plan = h.plan
        values = ints_from_bytes(message[Field.VALUES], h.bpk.byte_len)  # type: ignore[arg-type]
        e = np.zeros((n, h.T), dtype=object)
        at = 0
        for g in plan.groups:
            per_ct = plan.features_per_emask_ct(len(g))
            for start in range(0, self.declared, per_ct):
                count = min(per_ct, self.declared - start)
                slots = unpack_signed(values[at], count * len(g), plan.emask_slot)
                at += 1
                for f in range(min(count, n - start)):
                    for j, t in enumerate(g):
                        e[start + f, t] = (slots[f * len(g) + j] + (1 << (SHIFT_BITS - 1))) >> SHIFT_BITS
        return e


class FloorLoweringPlatform(PlatformDeviation):
    """Attack 4: declares ``n_features`` (the floor) and/or ``row_norm_bound`` (the label-DP noise) of its
    choosing, keeps its rows unclipped, and keeps every batch's gradient for the least-squares attack."""

    def __init__(self, inner: PlatformTrainHandler, *, n_features: int | None = None,
                 row_bound: int | None = None, unclipped: bool = False) -> None:
        super().__init__(inner)
        self.n_features, self.row_bound, self.unclipped = n_features, row_bound, unclipped
        self.views: list[BatchView] = []
        self.zb: np.ndarray | None = None

    def step(self, step: str, message: Message) -> Message:
        h = self.inner
        if step == Step.SETUP:
            reply = dict(h.handle(step, message))
            if self.n_features is not None:
                reply[Field.N_FEATURES] = self.n_features
            if self.row_bound is not None:  # (protocol v3 has no such field: the bank sets its noise alone)
                reply[ROW_NORM_BOUND] = self.row_bound
            elif ROW_NORM_BOUND in reply and self.n_features is not None:  # within 1 feature's worst case
                reply[ROW_NORM_BOUND] = min(int(reply[ROW_NORM_BOUND]),  # type: ignore[call-overload]
                                            (1 << (h.p.quant_bits - 1)) - 1)
            if self.unclipped and hasattr(h, "Xq_clipped"):  # it never clips (v2): every row at full norm
                h.Xq_clipped = h.Xq
            self.deviated = (self.n_features, self.row_bound, self.unclipped) != (None, None, False)
            return reply
        if step == Step.FORWARD:
            rows = h.batches[h.state.next_batch]
            self.zb = np.where(h.mask[rows], encode_z(h.X[rows] @ h.state.W), 0)
        elif step == Step.GRADIENT:
            b = h.state.next_batch
            rows, S, xte = h.batches[b], self.residuals(message), h.xte[b]
            gradient = np.array(exact_xt_s(h.Xq[rows], S, h.T, h.plan.pair_slot), dtype=object) - xte
            self.views.append(BatchView(h.state.epoch, rows, np.array(gradient.tolist(), dtype=np.float64),
                                        np.asarray(self.zb)))
        return h.handle(step, message)


class DeviatingLink:
    """The bank's link to the platform with every training session's steps passed through a deviation."""

    def __init__(self, inner: PlatformLink, deviation: Callable[[Message], BankDeviation]) -> None:
        self.inner, self.deviation = inner, deviation
        self.deviations: list[BankDeviation] = []

    def open(self, kind: str, job_id: str, params: Message, *, context: SessionContext) -> PeerChannel:
        channel = self.inner.open(kind, job_id, params, context=context)
        if kind != SESSION_KIND:
            return channel
        deviation = self.deviation(params)
        self.deviations.append(deviation)
        return DeviatingChannel(channel, deviation)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class DeviatingChannel:
    def __init__(self, inner: PeerChannel, deviation: BankDeviation) -> None:
        self.inner, self.deviation = inner, deviation

    def call(self, step: str, message: Message) -> Message:
        return self.deviation.step(self.inner.call, step, message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


Call = Callable[[str, Message], Message]


class BankDeviation:
    """A training session seen from the bank's link: :meth:`step` may rewrite a step and read its reply.
    Keeps the transcript (as a curious bank keeps everything it sends and receives)."""

    def __init__(self, params: Message) -> None:
        self.params = TrainParams.from_json(str(params[Field.PARAMS]))
        self.tags = json.loads(str(params[Field.TAGS]))
        self.transcript: list[tuple[str, Message, Message]] = []
        self.deviated = False
        self.batches: list[np.ndarray] = []

    def step(self, call: Call, step: str, message: Message) -> Message:
        reply = call(step, message)
        self.record(step, message, reply)
        return reply

    def record(self, step: str, message: Message, reply: Message) -> None:
        self.transcript.append((step, message, reply))
        if step == Step.SETUP:
            self.bank_key = PublicKey.from_bytes(message[Field.BANK_KEY])  # type: ignore[arg-type]
            self.platform_key = PublicKey.from_bytes(reply[Field.PLATFORM_KEY])  # type: ignore[arg-type]
            self.plan = SlotPlan.for_params(self.params, max_batch_rows(self.params.batch_size), len(self.tags),
                                            plaintext_bits(self.bank_key, self.platform_key))
        elif step == Step.EPOCH:
            sizes = np.cumsum(message[Field.BATCH_SIZES])[:-1]  # type: ignore[index]
            self.batches = np.split(message[Field.BATCH_ROWS], sizes)  # type: ignore[arg-type]
            self.epoch = int(message[Field.EPOCH])  # type: ignore[call-overload]


class GradientOracleBank(BankDeviation):
    """Attack 2: the platform's own [[z_B]] rows ride in the masked gradient; the platform decrypts them."""

    def __init__(self, params: Message) -> None:
        super().__init__(params)
        self.zb: dict[tuple[int, int], float] = {}  # (aligned row, epoch) -> z_B of tag 0
        self.rows_ct: CipherVector | None = None

    def step(self, call: Call, step: str, message: Message) -> Message:
        if step == Step.SETUP:
            self.honest_columns = int(message[Field.BANK_COLUMNS])  # type: ignore[call-overload]
            self.extra = max_batch_rows(self.params.batch_size)
            message = {**message, Field.BANK_COLUMNS: self.honest_columns + self.extra}
        elif step == Step.GRADIENT and self.rows_ct is not None:
            groups = self.plan.groups
            honest = message[Field.MASKED_GRADIENT]
            n = len(self.rows_ct) // len(groups)
            pad = self.extra - n
            extra = [CipherVector.concat([self.rows_ct[gi * n:(gi + 1) * n],
                                          CipherVector(self.platform_key, [self.rows_ct.values[0]] * pad)])
                     for gi in range(len(groups))]
            ours = CipherVector.from_bytes(self.platform_key, honest)  # type: ignore[arg-type]
            message = {**message, Field.MASKED_GRADIENT: CipherVector.concat([ours, *extra]).to_bytes()}
            self.deviated = True
            reply = call(step, message)
            self.record(step, message, reply)
            width = self.platform_key.byte_len
            opened = ints_from_bytes(reply[Field.MASKED_GRADIENT], width)  # type: ignore[arg-type]
            k = len(ours)
            rows = self.batches[int(message[Field.BATCH])]  # type: ignore[call-overload]
            for i, row in enumerate(rows):
                value = unpack_signed(opened[k + i], len(groups[0]), self.plan.cross_slot)[0]
                self.zb[(int(row), self.epoch)] = value / (1 << F_BITS)
            return {**reply, Field.MASKED_GRADIENT: reply[Field.MASKED_GRADIENT][:k * width]}  # type: ignore[index]
        reply = call(step, message)
        self.record(step, message, reply)
        if step == Step.FORWARD:
            self.rows_ct = CipherVector.from_bytes(self.platform_key, reply[Field.ROWS])  # type: ignore[arg-type]
        return reply

    def view(self, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows seen in every epoch, and their z_B per epoch (rows x epochs)."""
        epochs = sorted({e for _, e in self.zb})
        rows = sorted({r for r, _ in self.zb})
        full = [r for r in rows if all((r, e) in self.zb for e in epochs)]
        return np.array(full, dtype=np.int64), np.array([[self.zb[(r, e)] for e in epochs] for r in full])


class KeySwapBank(BankDeviation):
    """Attack 6: ``train.setup`` carries ``key`` instead of the bank's own; stops once the platform answers."""

    key: PublicKey

    def __init__(self, params: Message) -> None:
        super().__init__(params)
        self.accepted = False

    def step(self, call: Call, step: str, message: Message) -> Message:
        if step == Step.SETUP:
            self.deviated = True
            call(step, {**message, Field.BANK_KEY: self.key.to_bytes()})
            self.accepted = True
            raise AttackDone("the platform accepted the key")
        return call(step, message)


class AttackDone(ProtocolError):
    """The deviating party has what it wanted and stops the job."""


@contextlib.contextmanager
def bank_keys_kept() -> Iterator[list[tuple[PublicKey, PrivateKey]]]:
    """The bank's training key pairs, kept for a curious bank that decrypts all it can (it made them)."""
    kept: list[tuple[PublicKey, PrivateKey]] = []
    original = bank_protocol.get_scheme

    def keeping(name: str) -> Any:
        """The bank's HE scheme (a copy: the platform, maybe in this process, keeps its own keys to itself)."""
        scheme = original(name)
        mine = copy.copy(scheme)

        def keep(*args: Any, **kwargs: Any) -> tuple[PublicKey, PrivateKey]:
            kept.append(scheme.generate_keypair(*args, **kwargs))
            return kept[-1]

        mine.generate_keypair = keep  # type: ignore[method-assign]
        return mine

    bank_protocol.get_scheme = keeping  # type: ignore[assignment]
    try:
        yield kept
    finally:
        bank_protocol.get_scheme = original  # type: ignore[assignment]


# ------------------------------------------------------------------------------ deployment ----


@dataclass
class Deployment:
    """Both real nodes in this process; gRPC over mutual TLS on loopback unless ``wire`` is False (the
    in-memory link, the same messages through the codec: for the tests)."""

    workdir: Path
    bank_data: PartyData
    platform_data: PartyData
    platform_deviation: Callable[[PlatformTrainHandler], PlatformDeviation] | None = None
    bank_deviation: Callable[[Message], BankDeviation] | None = None
    budget: int | None = None  # the platform's max_released_projections (None: its default)
    wire: bool = True
    closers: list[Callable[[], Any]] = field(default_factory=list)

    def __enter__(self) -> Deployment:
        work = self.workdir
        work.mkdir(parents=True, exist_ok=True)
        init_local_pki(work / "certs", operators=[OPERATOR])
        placeholder = work / "data.csv"  # the nodes are handed their data; the configs must name a file
        placeholder.write_text("id\n")
        ports = _free_ports(2)
        bank_toml, platform_toml = write_configs(work, bank_data=placeholder, bank_id_column="id",
                                                 bank_tag_columns=list(self.bank_data.tag_names),
                                                 platform_data=placeholder, platform_id_column="id",
                                                 bank_port=ports[0], platform_port=ports[1], workers=1)
        pconf = load_config(platform_toml, expected_role="platform")
        pconf = replace(pconf, state_dir=work / "state" / "platform", max_released_projections=self.budget)
        self.platform = DeviatingPlatformNode(pconf, data=self.platform_data, stores=memory_node_stores(),
                                              deviation=self.platform_deviation)
        bconf = load_config(bank_toml, expected_role="bank")
        bconf = replace(bconf, state_dir=work / "state" / "bank")
        if self.wire:
            registry = SessionRegistry(self.platform.open_session, kinds=SESSION_KINDS, max_sessions=4)
            servicer = NodeServicer(self.platform, registry, max_payload_bytes=pconf.max_payload_mb * 2**20)
            tls = read_tls_files(pconf)
            server, _, port = start_node_server(
                pconf, lambda s: pb_grpc.add_NodeServicer_to_server(servicer, s), ["fedprofile.v1.Node"],
                tls=tls, client_ca=tls.peer_ca, audit=self.platform.stores.jobs)
            self.closers.append(lambda: server.stop(None))
            self.closers.append(registry.close_all)
            btls = read_tls_files(bconf)
            channel = dial(f"127.0.0.1:{port}", cert=btls.cert, key=btls.key, server_ca=btls.peer_ca,
                           tls_name=bconf.peer_tls_name)
            self.closers.append(channel.close)
            link: PlatformLink = GrpcPlatformLink(channel, node_name=bconf.name, address=f"127.0.0.1:{port}",
                                                  step_timeout_s=600, own_cert=btls.cert,
                                                  server_check=platform_certificate_check(bconf))
        else:
            link = LocalPlatformLink(self.platform)
        self.link: Any = DeviatingLink(link, self.bank_deviation) if self.bank_deviation else link
        self.bank = BankNode(bconf, self.link, data=self.bank_data, stores=memory_node_stores(), resume_jobs=False)
        self.closers.insert(0, self.bank.shutdown)
        return self

    def __exit__(self, *exc: object) -> None:
        for close in self.closers:
            with contextlib.suppress(Exception):
                close()

    def align(self) -> str:
        record = self.bank.wait(self.bank.submit("align", "", {}), timeout_s=600)
        if record.status != "succeeded":
            raise RuntimeError(f"align failed: {record.error}")
        return record.job_id

    def train(self, settings: dict[str, Any], alignment: str | None = None) -> Any:
        raw: dict[str, Any] = {"train": settings}
        if alignment:
            raw["alignment_job_id"] = alignment
        return self.bank.wait(self.bank.submit("train", "", raw), timeout_s=3600)

    def aligned(self, alignment: str) -> tuple[list[str], PartyData, PartyData]:
        ids = self.bank.stores.alignments.load(alignment).ids or []
        return ids, self.bank_data.take(ids), self.platform_data.take(ids)


def _free_ports(n: int) -> list[int]:
    import socket
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


# ------------------------------------------------------------------------------ outcomes ----


def outcome(*, failed: bool, deviated: bool, within_goal: bool) -> str:
    """The issue's four outcomes (module docstring)."""
    if failed and not deviated:
        return "refused"
    if within_goal:
        return "detected" if failed else "bounded"
    return "open"


def label_goal(accuracy: float | None, yardstick: float) -> bool:
    """Label recovery no better than ``yardstick`` (the majority rate) by more than ``LABEL_GOAL``."""
    return accuracy is None or bool(np.isnan(accuracy)) or accuracy <= yardstick + LABEL_GOAL


def projection_rank(values: np.ndarray) -> int:
    """Distinct projections of platform features the values (customers x values) hold: their rank."""
    if values.size == 0:
        return 0
    return int(np.linalg.matrix_rank(values - values.mean(axis=0), tol=1e-6 * max(1.0, np.abs(values).max())))


# ------------------------------------------------------------------------------ data ----


def load_breast() -> tuple[PartyData, PartyData]:
    bank = load_party_data(DATASETS / "breast_hetero_guest.csv", id_column="id", tag_columns=["y"])
    platform = load_party_data(DATASETS / "breast_hetero_host.csv", id_column="id")
    return bank, platform


def with_tags(bank: PartyData, labels: np.ndarray, tags: list[str]) -> PartyData:
    schema = Schema(bank.schema.id_column, bank.schema.feature_columns, bank.schema.feature_dtypes, tuple(tags))
    return PartyData(bank.source, bank.ids, bank.features, list(bank.feature_names), labels, tags, schema)


def crafted_tags(bank: PartyData, validation_ids: list[str], extra: int) -> PartyData:
    """Attack 3's tags: the first is the bank's own; each of ``extra`` more copies it on every row but the
    validation rows, where it holds one positive and one negative row (the rest unlabelled): two label
    classes of one row each, so the evaluation multiset attributes a joint score to each of those rows."""
    y = bank.labels[:, :1]
    labels = np.repeat(y, extra + 1, axis=1)
    where = {cid: i for i, cid in enumerate(bank.ids)}
    val = [where[c] for c in validation_ids]
    for k in range(1, extra + 1):
        labels[val, k] = np.nan
        a, b = val[(2 * (k - 1)) % len(val)], val[(2 * (k - 1) + 1) % len(val)]
        labels[a, k], labels[b, k] = 1.0, 0.0
    return with_tags(bank, labels, [bank.tag_names[0]] + [f"crafted{k}" for k in range(1, extra + 1)])


# ------------------------------------------------------------------------------ the attacks ----


def _job_failed(record: Any) -> tuple[bool, str]:
    return record.status != "succeeded", (record.error or "")[:300]


def attack_mask_oracle(workdir: Path, bank: PartyData, platform: PartyData, settings: dict[str, Any], *,
                       wire: bool = True) -> dict[str, Any]:
    """Attack 1 (see the module docstring)."""
    with Deployment(workdir, bank, platform, platform_deviation=MaskOraclePlatform, wire=wire) as dep:
        alignment = dep.align()
        record = dep.train(settings)
        _, aligned_bank, _ = dep.aligned(alignment)
        guesses = {k: v for d in dep.platform.deviations for k, v in d.guesses.items()}  # type: ignore[attr-defined]
        deviated = any(d.deviated for d in dep.platform.deviations)
    failed, error = _job_failed(record)
    truth = np.array([aligned_bank.labels[r, t] for r, t in guesses])
    guessed = np.array(list(guesses.values()))
    labelled = aligned_bank.labels[:, 0][~np.isnan(aligned_bank.labels[:, 0])]
    majority = majority_rate(truth if len(truth) else labelled)  # over the rows it read (training rows)
    # The cut of d' - z_B chosen with the true labels of half the rows, measured on the other half (held out: the
    # best cut over the measured rows themselves overstates it by about a standard error); that best cut is kept
    # too, as an upper bound on any cut the platform picks.
    accuracy = held_out_recovery_accuracy(guessed, truth) if len(guessed) else None
    upper = label_recovery_accuracy(guessed, truth, scores=True) if len(guessed) else None
    privacy = (record.result or {}).get("label_privacy", {}) if not failed else {}
    # What label DP promises against any attacker: the Bayes-optimal guess of one label from its noisy residual.
    bound = dp_label_bound(privacy["gdp_mu"], majority) if privacy.get("mode") == "dp" else None
    return {"outcome": outcome(failed=failed, deviated=deviated, within_goal=label_goal(accuracy, majority)),
            "label_recovery_accuracy": accuracy, "label_recovery_best_cut": upper, "majority_rate": majority,
            "labels_read": len(guessed), "labelled_rows": int(len(labelled)), "label_dp": settings.get("label_dp", "auto"),
            "dp_epsilon": privacy.get("epsilon"), "dp_bound": bound,
            "within_dp_bound": None if bound is None or accuracy is None else bool(accuracy <= bound + DP_SLACK),
            "label_privacy_mode": privacy.get("mode"), "job_error": error if failed else None}


def dp_label_bound(mu: float, majority: float) -> float:
    """The best accuracy any guess of one label can reach from a ``mu``-GDP release of it (a Gaussian shift of
    ``mu`` between the classes), for a class prior of ``majority``: the Bayes rule's accuracy."""
    from scipy.stats import norm

    if mu <= 0:
        return majority
    cut = mu / 2 + math.log(majority / (1 - majority)) / mu
    return float(majority * norm.cdf(cut) + (1 - majority) * norm.sf(cut - mu))


def attack_gradient_oracle(workdir: Path, bank: PartyData, platform: PartyData, settings: dict[str, Any], *,
                           budget: int | None = None, wire: bool = True) -> dict[str, Any]:
    """Attack 2 (see the module docstring); ``budget``: the platform's max_released_projections."""
    with Deployment(workdir, bank, platform, bank_deviation=GradientOracleBank, budget=budget, wire=wire) as dep:
        alignment = dep.align()
        record = dep.train(settings)
        _, _, aligned_platform = dep.aligned(alignment)
        deviation = dep.link.deviations[-1]
        budget = dep.platform.projections_limit
    failed, error = _job_failed(record)
    rows, view = deviation.view(len(aligned_platform))
    rank = projection_rank(view) if len(rows) > KNOWN_ROWS else 0
    r2 = recovery_r2(view, aligned_platform.features[rows]) if len(rows) > KNOWN_ROWS + 1 else 0.0
    return {"outcome": outcome(failed=failed, deviated=deviation.deviated, within_goal=rank <= budget),
            "feature_recovery_r2": r2, "projections_released": rank, "budget": budget,
            "rows_read": int(len(rows)), "values_read": len(deviation.zb), "job_error": error if failed else None}


def decode_scores(sk: PrivateKey, data: bytes, n: int, n_tags: int, *, packed: bool) -> np.ndarray:
    """(tags, n) slot values ``4 z 2^F + code`` of a train.evaluate request (one ciphertext per tag and row)
    or of its reply (``packed``: shuffled, many to a ciphertext)."""
    values = sk.decrypt(CipherVector.from_bytes(sk.public_key, data))
    if not packed:
        return np.array(values, dtype=object).reshape(n_tags, n)
    k, slots = eval_slots(sk.public_key), []
    per_tag = -(-n // k)
    for t in range(n_tags):
        for j in range(per_tag):
            slots.extend(unpack_signed(values[t * per_tag + j], min(k, n - j * k), EVAL_SLOT))
    return np.array(slots, dtype=object).reshape(n_tags, n)


def classes_of_one(transcript: list[tuple[str, Message, Message]], sk: PrivateKey,
                   n_tags: int) -> dict[int, list[float]]:
    """Per aligned row: every z_B the bank attributes to it from validation multisets, one per (epoch, tag)
    where the row is alone in its label class (what it sent is ``4 z_A 2^F + code``, in row order)."""
    out: dict[int, list[float]] = {}
    for step, request, reply in transcript:
        if step != Step.EVALUATE or request[Field.SPLIT] != VALIDATION:
            continue
        rows = request[Field.EVALUATION_ROWS]
        n = len(rows)  # type: ignore[arg-type]
        sent = decode_scores(sk, request[Field.ENCRYPTED_SCORES], n, n_tags, packed=False)  # type: ignore[arg-type]
        got = decode_scores(sk, reply[Field.SHUFFLED_SCORES], n, n_tags, packed=True)  # type: ignore[arg-type]
        for t in range(n_tags):
            codes = np.array([int(v) & 3 for v in sent[t]])
            for code in np.unique(codes):
                alone = np.flatnonzero(codes == code)
                if len(alone) != 1:
                    continue
                joint = [int(v) for v in got[t] if int(v) & 3 == code]
                i = int(alone[0])
                z_b = (joint[0] - int(sent[t][i])) / 4 / (1 << F_BITS)
                out.setdefault(int(rows[i]), []).append(z_b)  # type: ignore[index]
    return out


def attack_crafted_tags(workdir: Path, bank: PartyData, platform: PartyData, settings: dict[str, Any],
                        extra_tags: int, *, budget: int | None = None, wire: bool = True) -> dict[str, Any]:
    """Attack 3 (see the module docstring); ``budget``: the platform's max_released_projections."""
    shared = [c for c in bank.ids if platform.row_of(c) >= 0]
    p = TrainParams.from_dict(settings)
    split = p.split(bank.take(shared).labels, shared)
    validation = [shared[i] for i in split.validation]
    crafted = crafted_tags(bank, validation, extra_tags)
    with bank_keys_kept() as keys, Deployment(workdir, crafted, platform, bank_deviation=BankDeviation,
                                              budget=budget, wire=wire) as dep:
        alignment = dep.align()
        record = dep.train(settings)
        _, _, aligned_platform = dep.aligned(alignment)
        budget = dep.platform.projections_limit
        transcript = dep.link.deviations[-1].transcript
    failed, error = _job_failed(record)
    per_row = classes_of_one(transcript, keys[-1][1], extra_tags + 1) if keys else {}
    most = max((len(set(v)) for v in per_row.values()), default=0)
    width = min((len(v) for v in per_row.values()), default=0)
    rows = np.array(sorted(per_row), dtype=np.int64)
    view = np.array([per_row[r][:width] for r in rows]) if width else np.zeros((0, 0))
    # Each crafted tag exposes two rows: the bank knows the features of half of the rows it attributes values to.
    known = len(rows) // 2
    r2 = recovery_r2(view, aligned_platform.features[rows], known=known) if known >= 2 and width else 0.0
    return {"outcome": outcome(failed=failed, deviated=True, within_goal=most <= budget),
            "projections_released": most, "budget": budget, "feature_recovery_r2": r2,
            "rows_attributed": int(len(rows)), "known_rows": known, "tags": extra_tags + 1, "job_error": error if failed else None}


def _least_squares(workdir: Path, bank: PartyData, platform: PartyData, settings: dict[str, Any],
                   deviation: Callable[[PlatformTrainHandler], FloorLoweringPlatform], wire: bool) -> dict[str, Any]:
    """One job against a :class:`FloorLoweringPlatform`; the stacked least-squares attack on what it kept."""
    with Deployment(workdir, bank, platform, platform_deviation=deviation, wire=wire) as dep:
        alignment = dep.align()
        record = dep.train(settings)
        _, aligned_bank, _ = dep.aligned(alignment)
        dev = dep.platform.deviations[-1]
    failed, error = _job_failed(record)
    h, views, y = dev.inner, dev.views, aligned_bank.labels  # type: ignore[attr-defined]
    accuracy, majority, baseline = None, majority_rate(y[~np.isnan(y[:, 0]), 0]), None
    if views:
        Xq = np.asarray(h.Xq)  # its rows as quantised, unclipped
        scores = least_squares_attack(Xq, views, h.mask, len(y))[:, 0]
        seen = ~np.isnan(scores) & h.mask[:, 0]
        truth = y[seen, 0]
        accuracy = held_out_recovery_accuracy(scores[seen], truth)
        majority, baseline = majority_rate(truth), feature_baseline(Xq[seen], truth)
    privacy = (record.result or {}).get("label_privacy", {}) if not failed else {}
    bound = dp_label_bound(privacy["gdp_mu"], majority) if privacy.get("mode") == "dp" else None
    return {"failed": failed, "deviated": dev.deviated, "label_recovery_accuracy": accuracy,
            "majority_rate": majority, "feature_baseline": baseline, "dp_bound": bound,
            "within_dp_bound": None if bound is None or accuracy is None else bool(accuracy <= bound + DP_SLACK),
            "label_privacy_mode": privacy.get("mode"),
            "floor": privacy.get("floor"), "epsilon_reported": privacy.get("epsilon"),
            "job_error": error if failed else None}


def attack_floor(workdir: Path, bank: PartyData, platform: PartyData, settings: dict[str, Any], *,
                 n_features: int | None = None, row_bound: int | None = None, wire: bool = True) -> dict[str, Any]:
    """Attack 4 (see the module docstring); the same attack by a platform that declares the truth and clips
    as told (``honest_label_recovery_accuracy``) is the yardstick: the bank's protection as it meant it."""
    honest = _least_squares(workdir / "honest", bank, platform, settings, FloorLoweringPlatform, wire)

    def deviation(inner: PlatformTrainHandler) -> FloorLoweringPlatform:
        return FloorLoweringPlatform(inner, n_features=n_features, row_bound=row_bound, unclipped=True)

    attack = _least_squares(workdir / "deviating", bank, platform, settings, deviation, wire)
    failed, deviated = attack.pop("failed"), attack.pop("deviated")
    accuracy, majority = attack["label_recovery_accuracy"], attack["majority_rate"]
    # Under label DP the goal is the majority rate; without it (the floor), what the honest run gives.
    yardstick = majority if attack["label_privacy_mode"] == "dp" else max(majority, honest["label_recovery_accuracy"]
                                                                          or 0.0)
    return {"outcome": outcome(failed=failed, deviated=deviated, within_goal=label_goal(accuracy, yardstick)),
            **attack, "honest_label_recovery_accuracy": honest["label_recovery_accuracy"],
            "honest_label_privacy_mode": honest["label_privacy_mode"], "declared_features": n_features,
            "declared_row_bound": row_bound}


def attack_replay(workdir: Path, bank: PartyData, platform: PartyData, settings: dict[str, Any], *,
                  wire: bool = True) -> dict[str, Any]:
    """Attack 5 (see the module docstring)."""
    steps: dict[str, str] = {}
    answers: list[np.ndarray] = []
    with Deployment(workdir, bank, platform, budget=1, wire=wire) as dep:
        budget = dep.platform.projections_limit
        alignment = dep.align()
        ids, aligned_bank, _ = dep.aligned(alignment)
        first = dep.train(settings)
        if first.status != "succeeded":
            raise RuntimeError(f"the honest job failed: {first.error}")
        rows = np.arange(len(ids), dtype=np.int64)
        tags = list(aligned_bank.tag_names)

        def score(model: str, positions: np.ndarray, what: str) -> None:
            try:
                answers.append(np.asarray(dep.link.partial_scores(model, positions, tags).scores))
                steps[what] = "answered"
            except Exception as err:
                steps[what] = f"refused: {str(err)[:200]}"

        score(first.job_id, rows, "score")
        record = dep.bank.stores.alignments.load(alignment)
        context = SessionContext(alignment_job_id=alignment, alignment_hash=record.content_hash,
                                 job_name="replay", resumed=True)
        params = TrainParams.from_dict({**settings, "seed": 7, "learning_rate": 0.2})
        try:
            run_bank_training(ContextPeer(dep.link, context), first.job_id, aligned_bank, params, compute=1,
                              checkpoints=MemoryCheckpoints())
            steps["replay"] = "trained again under the finished job's ID"
        except Exception as err:
            steps["replay"] = f"refused: {str(err)[:200]}"
        score(first.job_id, rows, "score after replay")
        again = dep.align()  # the same customers, a new alignment
        again_ids = dep.bank.stores.alignments.load(again).ids or []
        second = dep.train(settings, again)
        if second.status == "succeeded":
            position = {c: i for i, c in enumerate(again_ids)}
            score(second.job_id, np.array([position[c] for c in ids], dtype=np.int64), "score on a new alignment")
        else:
            steps["score on a new alignment"] = f"refused: {second.error[:200]}"
    rank = projection_rank(np.hstack(answers)) if answers else 0
    refused = all(v.startswith("refused") for k, v in steps.items() if k != "score")
    return {"outcome": outcome(failed=refused, deviated=False, within_goal=rank <= budget) if refused
            else outcome(failed=False, deviated=True, within_goal=rank <= budget),
            "projections_released": rank, "budget": budget, "steps": steps}


def crafted_keys(quick: bool) -> dict[str, PublicKey]:
    """Attack 6's keys: 8192 bits (``quick``: 4096), and two 2048-bit moduli a job of 2048 bits would take by
    size: one with a factor just above 20,000 (past trial division), one the product of 32 primes of 64 bits."""
    rng = gmpy2.random_state(int.from_bytes(os.urandom(8), "big"))

    def prime(bits: int, top: int = 1) -> Any:
        """A random prime of ``bits`` bits whose ``top`` highest bits are set."""
        high = ((gmpy2.mpz(1) << top) - 1) << (bits - top)
        return gmpy2.next_prime(gmpy2.mpz_urandomb(rng, bits - top) | high)

    def modulus(make: Callable[[], Any], bits: int) -> PublicKey:
        while True:
            n = make()
            if n.bit_length() == bits:
                return PublicKey(n)

    small = gmpy2.next_prime(20_000)
    big = 2048 if quick else 4096

    def many() -> Any:
        product = gmpy2.mpz(1)
        for _ in range(32):
            product *= prime(64, top=7)
        return product

    return {f"key_{2 * big}_bits": modulus(lambda: prime(big, 2) * prime(big, 2), 2 * big),
            "factor_above_20000": modulus(lambda: small * prime(2048 - small.bit_length() + 1), 2048),
            "32_small_primes": modulus(many, 2048)}


def attack_keys(workdir: Path, bank: PartyData, platform: PartyData, settings: dict[str, Any], *,
                quick: bool = False, wire: bool = True) -> dict[str, Any]:
    """Attack 6 (see the module docstring). The job asks for 2048-bit keys."""
    results: dict[str, Any] = {}
    for name, key in crafted_keys(quick).items():
        swap = type("Swap", (KeySwapBank,), {"key": key})
        with Deployment(workdir / name, bank, platform, bank_deviation=swap, wire=wire) as dep:
            dep.align()
            started = time.monotonic()
            record = dep.train({**settings, "key_bits": 2048})
            accepted = dep.link.deviations[-1].accepted
        results[name] = {"outcome": "open" if accepted else "refused", "seconds": round(time.monotonic() - started, 2),
                         "bits": int(key.n_bits), "error": (record.error or "")[:200]}
    worst = "open" if any(r["outcome"] == "open" for r in results.values()) else "refused"
    return {"outcome": worst, "keys": results}


def attack_symlink(workdir: Path) -> dict[str, Any]:
    """Attack 7: an output path whose parent is a symlink out of the scores directory."""
    base, outside = workdir / "scores", workdir / "outside"
    base.mkdir(parents=True, exist_ok=True)
    outside.mkdir(exist_ok=True)
    (base / "link").symlink_to(outside, target_is_directory=True)
    try:
        safe_output_path(base, "link/new/out.csv")
        refused = False
    except OutputError:
        refused = True
    created = (outside / "new").exists()
    return {"outcome": "refused" if refused and not created else "open", "created_outside": created}


# ------------------------------------------------------------------------------ the run ----


def run(workdir: Path, quick: bool = False) -> dict[str, Any]:
    bank, platform = load_breast()
    credit_bank, credit_platform = load_default_credit(1000 if quick else 2000)
    breast_settings = {"epochs": 2 if quick else 3, "batch_size": 128, "validation_share": 0.1,
                       "early_stopping_patience": 0, "serve": "joint"}
    out: dict[str, Any] = {}

    def timed(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        started = time.monotonic()
        try:
            out[name] = fn()
        except Exception as err:  # an attack that cannot run is reported, not hidden
            out[name] = {"outcome": "error", "error": f"{type(err).__name__}: {err}"[:500]}
        out[name]["seconds"] = round(time.monotonic() - started, 1)
        console.print(f"{name}: {json.dumps(out[name], default=str)[:400]}")

    timed("1_mask_oracle_label_dp_auto", lambda: attack_mask_oracle(
        workdir / "a1", bank, platform, {**breast_settings, "label_dp": "auto"}))
    timed("1_mask_oracle_label_dp_on", lambda: attack_mask_oracle(
        workdir / "a1on", bank, platform, {**breast_settings, "label_dp": "on", "dp_epsilon": 3.0}))
    timed("2_gradient_oracle", lambda: attack_gradient_oracle(
        workdir / "a2", bank, platform, {**breast_settings, "epochs": 4 if quick else 22, "label_dp": "on",
                                         "batch_size": 256}, budget=2 if quick else None))
    timed("3_crafted_tags", lambda: attack_crafted_tags(
        workdir / "a3", credit_bank, credit_platform,
        {"epochs": 4 if quick else 12, "batch_size": 512, "validation_share": 0.04, "early_stopping_patience": 0,
         "label_dp": "on", "serve": "joint"}, 15, budget=2 if quick else None))
    timed("4_declared_features_1", lambda: attack_floor(  # breast's batches are small either way: default_credit
        workdir / "a4", *((bank, platform) if quick else (credit_bank, credit_platform)),
        {"label_dp": "auto", "serve": "joint"}, n_features=1))
    timed("4_declared_row_bound_1", lambda: attack_floor(
        workdir / "a4b", bank, platform, {**breast_settings, "label_dp": "on", "epochs": 4}, row_bound=1))
    timed("5_replay", lambda: attack_replay(workdir / "a5", bank, platform, {**breast_settings, "epochs": 1}))
    timed("6_keys", lambda: attack_keys(workdir / "a6", bank, platform, breast_settings, quick=quick))
    timed("7_symlink_output", lambda: attack_symlink(workdir / "a7"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer epochs and rows (attacks 2 and 3 against a budget of "
                    "2 projections), a 4096-bit key for attack 6")
    ap.add_argument("--json")
    ap.add_argument("--workdir", help="keep the nodes' files here (default: a temporary folder)")
    args = ap.parse_args(argv)
    if args.workdir:
        result = run(Path(args.workdir), args.quick)
    else:
        with tempfile.TemporaryDirectory(prefix="deviation-") as tmp:
            result = run(Path(tmp), args.quick)
    figures = ("label_recovery_accuracy", "majority_rate", "feature_recovery_r2", "projections_released", "budget")
    print_table("Deviating partners against the real nodes",
                [(name, r["outcome"], ", ".join(f"{k} {r[k]:.4g}" if isinstance(r[k], float) else f"{k} {r[k]}"
                                                for k in figures if r.get(k) is not None)) for name, r in result.items()],
                ("attack", "outcome", "figure"))
    write_json(args.json, {"attacks": result, "goal": "no attack open"})
    return 0 if all(r["outcome"] in ("refused", "detected", "bounded") for r in result.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
