"""The bank's side of a screen: WOE and IV per (feature, tag) for both parties' features, in one pass.

The bank randomises each (row, tag)'s label category (:mod:`protocols.screen.rr`), packs every intersected row
into one plaintext per group of tags (:mod:`protocols.screen.encoding`; a row without a label is zeros, so
the platform cannot tell who is labelled), encrypts all rows under a fresh key with noise made ahead, and
sends them in batches; the platform returns per feature and bin the encrypted sums. The bank checks the count,
decrypts, checks every slot and the bins' layout, debiases the counts and computes WOE and IV; its own
features' table comes from its exact labels, in the clear, on its side.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import protocols.screen.encoding as encoding
import protocols.screen.rr as rr
from protocols.channel import Message, Peer
from protocols.compute import ComputeSpec
from protocols.errors import DeviationDetected, InvalidCiphertext, UserError
from protocols.he import get_scheme
from protocols.screen.params import SESSION_KIND, VERSION, Field, ScreenParams, Step
from protocols.screen.platform import ScreenFeatures
from protocols.screen.woe import FeatureIV, NoEvents, feature_iv, local_counts

MAX_BINS = 1000  # per platform feature: more is no binning the bank can use (nor an honest answer)

Progress = Callable[[str, int, int], None]


@dataclass
class ScreenOutcome:
    """The IV table (one entry per feature and tag, both parties), what was left out and why, the labels'
    protection, and counts and timings."""

    table: list[FeatureIV]
    skipped_tags: dict[str, str] = field(default_factory=dict)
    label_privacy: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"table": [f.to_dict() for f in self.table], "skipped_tags": self.skipped_tags,
                "label_privacy": self.label_privacy, **self.summary}


def screened_tags(cats: np.ndarray, tag_names: list[str]) -> tuple[list[int], dict[str, str]]:
    """The tags with events and non-events among the rows; the others with the reason, naming the tag."""
    keep, skipped = [], {}
    for t, tag in enumerate(tag_names):
        col = cats[:, t]
        if not (col == encoding.EVENT).any():
            skipped[tag] = f"tag {tag!r} has no positive (event) among the intersected rows: not screened"
        elif not (col == encoding.NON_EVENT).any():
            skipped[tag] = f"tag {tag!r} has no negative (non-event) among the intersected rows: not screened"
        else:
            keep.append(t)
    return keep, skipped


def _read_describe(reply: Message) -> tuple[list[str], list[int], list[list[str]], int, int]:
    step = Step.DESCRIBE
    try:
        names = json.loads(str(reply[Field.FEATURES]))
        labels = json.loads(str(reply.get(Field.BIN_LABELS, "[]")))
        n_bins = [int(k) for k in np.asarray(reply[Field.N_BINS]).tolist()]
        min_rows, min_labelled = int(reply[Field.MIN_BIN_ROWS]), int(reply[Field.MIN_LABELLED_ROWS])
    except (KeyError, ValueError, TypeError) as err:
        raise DeviationDetected(step, "reply layout", f"{type(err).__name__}") from None
    if (not isinstance(names, list) or len(names) != len(n_bins) or not names
            or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names)):
        raise DeviationDetected(step, "features", "the feature names and bin counts disagree")
    if not all(1 <= k <= MAX_BINS for k in n_bins):
        raise DeviationDetected(step, "bins per feature", f"each feature needs 1..{MAX_BINS} bins")
    if not isinstance(labels, list) or len(labels) != len(names) or any(
            not isinstance(b, list) or len(b) != k for b, k in zip(labels, n_bins, strict=True)):
        labels = [[f"b{b}" for b in range(k)] for k in n_bins]
    return names, n_bins, [[str(x) for x in b] for b in labels], max(1, min_rows), max(1, min_labelled)


def run_bank_screen(peer: Peer, job_id: str, labels: np.ndarray, tag_names: list[str],
                    bank_features: ScreenFeatures | None, params: ScreenParams, *, compute: ComputeSpec = None,
                    progress: Progress | None = None, insecure_for_tests: bool = False) -> ScreenOutcome:
    """Screen both parties' features for ``tag_names`` (``labels``: rows x tags, 1/0/NaN, alignment order)."""
    params.validate(insecure_for_tests=insecure_for_tests)
    started = time.perf_counter()
    say = progress or (lambda stage, done, total: None)
    cats_all = encoding.categories(labels)
    keep, skipped = screened_tags(cats_all, tag_names)
    if not keep:
        raise UserError("screen: no tag can be screened: " + "; ".join(skipped.values()))
    tags = [tag_names[t] for t in keep]
    cats = cats_all[:, keep]
    n, T = cats.shape
    eps_tag = params.label_epsilon
    noisy = rr.randomise(cats, eps_tag)
    scheme = get_scheme(params.he_scheme)
    kernels = scheme.kernels(compute)
    try:
        say("keys", 0, 1)
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        pk, sk = scheme.generate_keypair(params.key_bits, allow_insecure=insecure_for_tests)
        timings["keys"] = time.perf_counter() - clock
        slot_bits = encoding.slot_bits_for(n)
        per_ct = encoding.tags_per_ciphertext(scheme.slots_per_plaintext(pk, slot_bits), T)
        groups = encoding.tag_groups(T, per_ct)
        channel = peer.open(SESSION_KIND, job_id, {Field.VERSION: VERSION, Field.HE_SCHEME: params.he_scheme,
                                                   Field.KEY_BITS: params.key_bits, Field.TAGS: json.dumps(tags)})
        try:
            names, n_bins, bin_labels, min_rows, min_labelled = _read_describe(channel.call(Step.DESCRIBE, {
                Field.BANK_KEY: pk.to_bytes(), Field.N_ROWS: n, Field.TAGS_PER_CIPHERTEXT: per_ct}))
            noise = scheme.noise_pool(pk, sk)
            timings["noise"] = timings["encrypt"] = timings["wait"] = 0.0
            # Each batch's noise is made ahead of its encryption while the platform sums the batch before
            # (the call runs on a sender thread): on two machines the bank's and the platform's work overlap.
            with ThreadPoolExecutor(1, thread_name_prefix="screen-send") as sender:
                pending: Future[Message] | None = None
                for a in range(0, n, params.batch_rows):
                    b = min(n, a + params.batch_rows)
                    clock = time.perf_counter()
                    kernels.fill(noise, (b - a) * len(groups))
                    timings["noise"] += time.perf_counter() - clock
                    clock = time.perf_counter()
                    ints = [v for g in groups for v in encoding.pack_rows(noisy[a:b], g, slot_bits)]
                    data = scheme.encrypt(pk, ints, noise).to_bytes()
                    timings["encrypt"] += time.perf_counter() - clock
                    clock = time.perf_counter()
                    if pending is not None:
                        pending.result()
                    timings["wait"] += time.perf_counter() - clock
                    pending = sender.submit(channel.call, Step.ROWS, {Field.OFFSET: a, Field.CIPHERTEXTS: data})
                    say("rows", b, n)
                clock = time.perf_counter()
                if pending is not None:
                    pending.result()
                timings["wait"] += time.perf_counter() - clock
            clock = time.perf_counter()
            reply = channel.call(Step.BINS, {})
            timings["bins"] = time.perf_counter() - clock
        finally:
            channel.close()
        data = reply.get(Field.BIN_CIPHERTEXTS)
        total = sum(n_bins)
        if not isinstance(data, bytes) or len(data) != len(groups) * total * pk.byte_len:
            raise DeviationDetected(Step.BINS, "ciphertext count", f"expected {len(groups) * total} ciphertexts")
        try:
            cv = scheme.ciphertexts_from_bytes(pk, data)
        except InvalidCiphertext as err:
            raise DeviationDetected(Step.BINS, "ciphertext group", str(err)) from None
        say("decrypt", 0, 1)
        clock = time.perf_counter()
        values = kernels.decrypt(sk, cv)
        timings["decrypt"] = time.perf_counter() - clock
    finally:
        kernels.close()
    floor = max(min_rows, params.min_bin_rows)
    per_group = [encoding.open_bins(values[i * total:(i + 1) * total], n_bins, n, len(g), slot_bits,
                                    min_bin_rows=floor, step=Step.BINS) for i, g in enumerate(groups)]
    min_lab = max(min_labelled, params.min_labelled_rows)
    table: list[FeatureIV | None] = []
    for gi, g in enumerate(groups):
        counts = per_group[gi]
        rows = counts[:, 0]
        for k, t in enumerate(g):
            ev, lab = counts[:, 1 + 2 * k], counts[:, 2 + 2 * k]
            observed = np.stack([rows - lab, lab - ev, ev], axis=1)  # no label, non-event, event
            est = rr.debias(observed, rows, eps_tag)
            start = 0
            for j, name in enumerate(names):
                s = slice(start, start + n_bins[j])
                start += n_bins[j]
                table.append(_iv(name, "platform", tags[t], rows[s], est[s, 2], est[s, 1], bin_labels[j],
                                 min_lab, params.smoothing, skipped))
    if bank_features is not None:
        for j, name in enumerate(bank_features.names):
            col = np.asarray(bank_features.bins[:, j], dtype=np.int64)
            labels_j = (bank_features.bin_labels[j] if bank_features.bin_labels
                        else [f"b{b}" for b in range(bank_features.n_bins[j])])
            for t, tag in enumerate(tags):
                c = local_counts(col, bank_features.n_bins[j], cats[:, t])
                table.append(_iv(name, "bank", tag, c[:, 0], c[:, 1], c[:, 2] - c[:, 1], labels_j,
                                 min_lab, params.smoothing, skipped))
    kept = [f for f in table if f is not None]
    summary = {"rows": n, "tags": tags, "platform_features": len(names), "bank_features":
               0 if bank_features is None else len(bank_features.names), "he_scheme": params.he_scheme,
               "key_bits": params.key_bits, "ciphertexts_per_row": len(groups), "slot_bits": slot_bits,
               "min_labelled_rows": min_lab, "min_bin_rows": floor,
               "timings": {k: round(v, 3) for k, v in timings.items()},
               "seconds": round(time.perf_counter() - started, 3)}
    return ScreenOutcome(kept, skipped, rr.label_privacy_statement(params.label_epsilon, T), summary)


def _iv(name: str, party: str, tag: str, rows: np.ndarray, events: np.ndarray, non_events: np.ndarray,
        labels: list[str], min_labelled: int, smoothing: float, skipped: dict[str, str]) -> FeatureIV | None:
    try:
        return feature_iv(name, party, tag, rows, events, non_events, labels, min_labelled=min_labelled,
                          smoothing=smoothing)
    except NoEvents as err:  # after randomised response's debiasing a rare tag can estimate to nothing
        skipped.setdefault(tag, str(err))
        return None


__all__ = ["MAX_BINS", "ScreenOutcome", "run_bank_screen", "screened_tags"]
