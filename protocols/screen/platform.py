"""The platform's side of a screen session: sum the bank's encrypted rows per bin of each of its features.

The platform learns the row count and nothing else: every row's ciphertext (labelled or not) is an encryption
under the bank's key, and it only multiplies them (additions of plaintexts), re-randomises the bin sums with
mask noise and sends them back. Before summing, it merges its bins below ``[policy] min_screen_bin_rows`` rows
with a neighbour, so no bin it answers for is small. The session charges one release per aligned customer in
the disclosure ledger (what a deviating bank can read through it: docs/security.md, "Screen").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gmpy2 import mpz

from protocols.channel import Message
from protocols.compute import ComputeSpec
from protocols.errors import InvalidCiphertext, InvalidKey, ProtocolError, UserError
from protocols.he import get_scheme
from protocols.screen.params import MAX_BATCH_ROWS, MAX_TAGS, VERSION, Field, ScreenParams, Step
from protocols.screen.woe import merge_small
from protocols.vfl_lr.disclosure import DisclosureBudget, Projection

SCREEN_PROJECTION_TAG = "screen"  # the ledger's name for a screen's release (Projection.tag)


def merge_by_rows(column: np.ndarray, n_bins: int, minimum: int) -> tuple[np.ndarray, list[list[int]]]:
    """One feature's bin column with adjacent bins of fewer than ``minimum`` rows merged: the new column and,
    per new bin, the old bins it holds."""
    counts = np.bincount(column, minlength=n_bins)
    groups = merge_small(counts, minimum)
    mapping = np.empty(n_bins, dtype=np.int32)
    for new, old in enumerate(groups):
        mapping[old] = new
    return mapping[column], groups


MAX_GROUP = 8  # features per joint histogram
CELLS_PER_ROW = 1 / 16  # a joint histogram has at most this many cells per row


def feature_groups(n_bins: Sequence[int], n_rows: int) -> list[range]:
    """Consecutive features whose joint bins (the product of their bin counts) stay below ``n_rows / 16``.

    One pass over the rows fills a group's joint histogram (one multiplication per row), and each feature's
    bins are then products of the joint cells (one multiplication per non-empty cell and feature): about
    ``1/g`` of the cost of summing each of the group's ``g`` features on its own."""
    cap = max(1.0, n_rows * CELLS_PER_ROW)
    groups: list[range] = []
    start, cells = 0, 1
    for j, k in enumerate(n_bins):
        if j > start and (cells * k > cap or j - start >= MAX_GROUP):
            groups.append(range(start, j))
            start, cells = j, 1
        cells *= k
    if len(n_bins):
        groups.append(range(start, len(n_bins)))
    return groups


def joint_index(bins: np.ndarray, n_bins: Sequence[int], group: range) -> tuple[np.ndarray, int]:
    """Each row's cell in ``group``'s joint bins (mixed radix, the group's first feature most significant)."""
    index = np.zeros(len(bins), dtype=np.int64)
    size = 1
    for j in group:
        index = index * n_bins[j] + bins[:, j]
        size *= n_bins[j]
    return index, size


def marginals(cells: Sequence[mpz], n_bins: Sequence[int], group: range, modulus: mpz) -> list[mpz]:
    """Per feature of ``group`` (in order) and bin, the product of the joint cells in that bin."""
    out: list[mpz] = []
    stride = len(cells)
    for j in group:
        stride //= n_bins[j]
        acc = [mpz(1)] * n_bins[j]
        for c, value in enumerate(cells):
            if value != 1:  # an empty cell (no row) holds 1
                b = (c // stride) % n_bins[j]
                acc[b] = acc[b] * value % modulus
        out.extend(acc)
    return out


@dataclass
class ScreenFeatures:
    """The platform's side of the data: per aligned row (alignment order) and feature, a bin index."""

    names: list[str]
    bins: np.ndarray  # int (rows, features)
    n_bins: list[int]
    bin_labels: list[list[str]] = field(default_factory=list)  # per feature, per bin (empty: "b0", "b1", ...)


class PlatformScreenHandler:
    """The platform's state machine for one screen session (describe, rows..., bins)."""

    def __init__(self, job_id: str, params: Message, features: ScreenFeatures, *,
                 on_result: Callable[[dict[str, Any]], None], min_bin_rows: int = 20, min_labelled_rows: int = 20,
                 compute: ComputeSpec = None, budget: DisclosureBudget | None = None,
                 customer_ids: Sequence[str] | None = None, insecure_for_tests: bool = False) -> None:
        if params.get(Field.VERSION) != VERSION:
            raise ProtocolError(f"screen protocol {params.get(Field.VERSION)!r} is not supported (this node: {VERSION})")
        try:
            self.p = ScreenParams(he_scheme=str(params.get(Field.HE_SCHEME, "")),
                                  key_bits=int(params.get(Field.KEY_BITS, 0))).validate(
                insecure_for_tests=insecure_for_tests)
            tags = json.loads(str(params.get(Field.TAGS, "[]")))
        except (UserError, ValueError, TypeError) as err:
            raise ProtocolError(f"screen: {err}") from err
        if not isinstance(tags, list) or not 1 <= len(tags) <= MAX_TAGS:
            raise ProtocolError(f"screen: between 1 and {MAX_TAGS} tags, as a JSON list")
        if not features.names:
            raise ProtocolError("screen: the platform's policy leaves no feature to screen")
        self.job_id, self.on_result, self.budget = job_id, on_result, budget
        self.n_tags = len(tags)
        self.customer_ids = customer_ids
        self.min_bin_rows, self.min_labelled_rows = min_bin_rows, min_labelled_rows
        self.insecure_for_tests = insecure_for_tests
        self.scheme = get_scheme(self.p.he_scheme)
        columns, self.groups = [], []
        for j, k in enumerate(features.n_bins):
            col, groups = merge_by_rows(np.asarray(features.bins[:, j], dtype=np.int64), k, min_bin_rows)
            columns.append(col)
            self.groups.append(groups)
        self.bins = np.stack(columns, axis=1) if columns else np.zeros((len(features.bins), 0), np.int32)
        self.n_bins = [len(g) for g in self.groups]
        self.features = features
        self.n_rows = len(self.bins)
        self.feature_groups = feature_groups(self.n_bins, self.n_rows)
        joint = [joint_index(self.bins, self.n_bins, g) for g in self.feature_groups]
        self.joint_bins = np.stack([j for j, _ in joint], axis=1) if joint else np.zeros((self.n_rows, 0), np.int64)
        self.joint_sizes = [size for _, size in joint]
        self.kernels = self.scheme.kernels(compute)
        self.stage = Step.DESCRIBE
        self.received = 0
        self.acc: list[list[mpz]] = []
        self.public_key: Any = None

    def handle(self, step: str, message: Message) -> Message:
        if step != self.stage:
            raise ProtocolError(f"screen: step {step!r} out of order (expected {self.stage!r})")
        if step == Step.DESCRIBE:
            return self._describe(message)
        if step == Step.ROWS:
            return self._rows(message)
        return self._bins(message)

    def _describe(self, message: Message) -> Message:
        n_rows = message.get(Field.N_ROWS)
        if n_rows != self.n_rows:
            raise ProtocolError(f"screen: the bank sends {n_rows} rows; the alignment holds {self.n_rows}")
        try:
            self.public_key = self.scheme.public_key_from_bytes(
                bytes(message.get(Field.BANK_KEY, b"")), key_bits=self.p.key_bits,
                allow_insecure=self.insecure_for_tests)
        except InvalidKey as err:
            raise ProtocolError(f"screen: the bank's key: {err}") from err
        per_ct = message.get(Field.TAGS_PER_CIPHERTEXT)
        if not isinstance(per_ct, int) or not 1 <= per_ct <= MAX_TAGS:
            raise ProtocolError("screen: tags_per_ciphertext must be a whole number in 1..64")
        self.per_row = -(-self.n_tags // per_ct)
        self.acc = [[mpz(1)] * sum(self.joint_sizes) for _ in range(self.per_row)]
        self.stage = Step.ROWS
        labels = [self.features.bin_labels[j] if self.features.bin_labels else [] for j in range(len(self.n_bins))]
        names = [[_label(labels[j], g) for g in groups] for j, groups in enumerate(self.groups)]
        return {Field.FEATURES: json.dumps(self.features.names), Field.N_BINS: np.array(self.n_bins, dtype=np.int64),
                Field.BIN_LABELS: json.dumps(names), Field.MIN_BIN_ROWS: self.min_bin_rows,
                Field.MIN_LABELLED_ROWS: self.min_labelled_rows}

    def _rows(self, message: Message) -> Message:
        offset = message.get(Field.OFFSET)
        if offset != self.received:
            raise ProtocolError(f"screen: rows from {offset}, expected from {self.received}")
        data = message.get(Field.CIPHERTEXTS)
        if not isinstance(data, bytes):
            raise ProtocolError("screen: ciphertexts must be bytes")
        try:
            cv = self.scheme.ciphertexts_from_bytes(self.public_key, data)
        except InvalidCiphertext as err:
            raise ProtocolError(f"screen: {err}") from err
        if len(cv) % self.per_row or not 0 < len(cv) // self.per_row <= min(MAX_BATCH_ROWS, self.n_rows - offset):
            raise ProtocolError(f"screen: {len(cv)} ciphertexts do not make whole rows ({self.per_row} each) within "
                                f"the {self.n_rows - offset} rows left")
        count = len(cv) // self.per_row
        bins = self.joint_bins[offset:offset + count]
        modulus = self.scheme.ciphertext_modulus(self.public_key)
        for g in range(self.per_row):  # group-major: rows' ciphertexts of tag group g, then of g + 1
            part = self.scheme.encrypted_histogram(cv[g * count:(g + 1) * count], bins, self.joint_sizes,
                                                   kernels=self.kernels).values
            self.acc[g] = [a * b % modulus for a, b in zip(self.acc[g], part, strict=True)]
        self.received += count
        if self.received == self.n_rows:
            self.stage = Step.BINS
        return {Field.RECEIVED: self.received}

    def _bins(self, message: Message) -> Message:
        if self.budget is not None and self.customer_ids is not None:
            self.budget.charge(self.customer_ids, [Projection(self.job_id, SCREEN_PROJECTION_TAG, None)],
                               what=f"screen job {self.job_id}")
        modulus = self.scheme.ciphertext_modulus(self.public_key)
        sums = []
        for acc in self.acc:  # per tag group: the joint cells -> each feature's bins, in feature order
            values, start = [], 0
            for group, size in zip(self.feature_groups, self.joint_sizes, strict=True):
                values.extend(marginals(acc[start:start + size], self.n_bins, group, modulus))
                start += size
            sums.append(values)
        noise = self.scheme.noise_pool(self.public_key, mask=True)
        self.kernels.fill(noise, sum(len(v) for v in sums))
        out = [self.scheme.rerandomize(self.scheme.ciphertexts(self.public_key, v), noise) for v in sums]
        self.stage = "done"
        self.on_result({"rows": self.n_rows, "features": len(self.n_bins), "bins": int(sum(self.n_bins)),
                        "merged_bins": int(sum(self.features.n_bins) - sum(self.n_bins)), "tags": self.n_tags})
        return {Field.BIN_CIPHERTEXTS: self.scheme.concat(out).to_bytes()}

    def close(self) -> None:
        self.kernels.close()
        self.acc = []


def _label(labels: list[str], group: list[int]) -> str:
    names = [labels[b] if b < len(labels) else f"b{b}" for b in group]
    return names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]}"


__all__ = ["SCREEN_PROJECTION_TAG", "PlatformScreenHandler", "ScreenFeatures", "merge_by_rows"]
