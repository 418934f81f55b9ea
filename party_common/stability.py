"""A node's side of population stability (``protocols.stability``): the training population's reference kept
with each model, and the recent window of what the node served.

A train job keeps, on each node, its own features' bins and counts over the training population (the
alignment's rows as they were when the model was trained) in ``stores.stability``; the bank adds its score
deciles per tag. A model trained before references were kept is compared against the node's current data
for the same customers, and every answer says which (``reference``: "training" or "current data").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from party_common.storage import NodeStores
from protocols.binning import BinningModel
from protocols.party_data import PartyData
from protocols.stability import FeatureReference, RecentWindow, ScoreReference, StabilityError, Windows

log = logging.getLogger(__name__)

WINDOW_ROWS = 100_000  # rows a node keeps per model of its recent answers (counts or scores, never IDs)
QUEUED_CALLS = 1_024  # served calls waiting to be counted into the windows
COUNT_EVERY_S = 0.2  # the counting thread, once woken, gathers calls this long before it counts them
TRAINING, CURRENT = "training", "current data"  # where an answer's reference came from


SAMPLE_ROWS = 200_000  # training rows the quantile bins are cut on (evenly spaced); every row is counted
BLOCK_ROWS = 65_536  # training rows read at a time (features may be memory-mapped)


def training_reference(data: PartyData, alignment_ids: Sequence[str]) -> FeatureReference:
    """Quantile bins and counts of the node's features over the training population (the alignment's members),
    read a block of rows at a time."""
    rows = np.sort(data.rows_of(list(alignment_ids)))  # sorted: a memory-mapped file is read forwards
    if len(rows) == 0:
        raise StabilityError("the training population has no rows")
    sample = rows[np.unique(np.linspace(0, len(rows) - 1, min(len(rows), SAMPLE_ROWS)).astype(np.int64))]
    blocks = (np.asarray(data.features[rows[a:a + BLOCK_ROWS]], dtype=np.float64)
              for a in range(0, len(rows), BLOCK_ROWS))
    return FeatureReference.from_blocks(data.feature_names, np.asarray(data.features[sample], dtype=np.float64),
                                        blocks)


def keep_reference(stores: NodeStores, job_id: str, data: PartyData, alignment_ids: Sequence[str], *,
                   scores: Mapping[str, Sequence[float]] | None = None, binning: BinningModel | None = None) -> None:
    """Store the training population's reference of model ``job_id`` (its features; the bank: its scores).

    A model trained on bins (``binning``) is compared on its own bins, with the training counts its binning
    kept. Never fails the train job that calls it: a reference that cannot be built is logged, and stability
    for the model then compares against the current data (said so in every answer)."""
    try:
        reference = (FeatureReference.from_binning(binning) if binning is not None
                     else training_reference(data, alignment_ids))
        doc: dict[str, Any] = {"features": reference.to_dict()}
        if scores:
            doc["scores"] = ScoreReference.from_scores(scores).to_dict()
        stores.stability.save(job_id, doc, overwrite=True)
    except Exception as err:  # a model without a reference still serves
        log.warning("model %s: no stability reference kept (%s); stability compares against current data",
                    job_id, err)


def served_test_scores(report: Mapping[str, Any]) -> dict[str, list[float]]:
    """Per tag, the training report's test-set probabilities of the model each tag serves (joint or bank-only)."""
    out: dict[str, list[float]] = {}
    metrics = report.get("metrics") or {}
    for tag, predictions in (report.get("test_predictions") or {}).items():
        served = (metrics.get(tag) or {}).get("served") or {}
        which = served.get("model", "joint") if isinstance(served, Mapping) else str(served)
        chosen = predictions.get("bank_only" if which == "bank_only" else "joint") or {}
        if chosen.get("p"):
            out[tag] = [float(p) for p in chosen["p"]]
    return out


def feature_reference(stores: NodeStores, job_id: str, data: PartyData,
                      alignment_ids: Sequence[str]) -> tuple[FeatureReference, str]:
    """The model's feature reference and where it came from (:data:`TRAINING` or :data:`CURRENT`)."""
    doc = stores.stability.load(job_id) if stores.stability.exists(job_id) else {}
    if "features" in doc:
        return FeatureReference.from_dict(doc["features"], where=f"stability reference of {job_id}"), TRAINING
    return training_reference(data, alignment_ids), CURRENT


def score_reference(stores: NodeStores, job_id: str, report: Mapping[str, Any]) -> ScoreReference:
    """The model's score deciles per tag: kept with the model, or from its training report's test scores."""
    if stores.stability.exists(job_id):
        doc = stores.stability.load(job_id)
        if "scores" in doc:
            return ScoreReference.from_dict(doc["scores"], where=f"stability reference of {job_id}")
    scores = served_test_scores(report)
    if not scores:
        raise StabilityError(f"model {job_id}: its training report holds no test scores to compare with")
    return ScoreReference.from_scores(scores)


def keep_latest(stores: NodeStores, job_id: str, answer: Mapping[str, Any]) -> None:
    """Keep a stability answer (indices and bands, no rows) as the model's latest of its source, for the
    training report's stability section; the reference beside it stays as it is."""
    doc = stores.stability.load(job_id) if stores.stability.exists(job_id) else {}
    doc["latest"] = {**doc.get("latest", {}), str(answer["source"]): dict(answer)}
    stores.stability.save(job_id, doc, overwrite=True)


def latest_answers(stores: NodeStores, job_id: str) -> dict[str, Any]:
    """The model's latest stability answer per source ("batch", "online"); empty when none was asked for."""
    if not stores.stability.exists(job_id):
        return {}
    return dict(stores.stability.load(job_id).get("latest") or {})


def record_features(window: RecentWindow, reference: FeatureReference, X: np.ndarray) -> None:
    """Add rows' bin counts (never the rows) to ``window``."""
    if len(X):
        window.add_counts(reference.count(X), len(X))


class FeatureWindows:
    """Per model, the bin counts of the rows a node served recently, in the model's reference bins.

    Counting happens off the scoring path, and without a thread hand-off per call: :meth:`record` appends the
    rows to a pending list (at most :data:`QUEUED_CALLS` calls; beyond that, as under a burst, a call's rows are
    left out of the window, which is a recent sample anyway), and a daemon thread, woken by the first call after
    it last counted, waits :data:`COUNT_EVERY_S` and counts everything pending in one go. (Waking it at every
    call cost each Score a thread switch on both nodes, and its counting raced the answer for the interpreter.)
    Every read (:meth:`counts`) counts what is pending first, so an answer counts every call made before it was
    asked."""

    def __init__(self, stores: NodeStores, max_rows: int = WINDOW_ROWS) -> None:
        self._stores = stores
        self.windows = Windows(max_rows)
        self._references: dict[str, FeatureReference | None] = {}
        self._pending: list[tuple[str, np.ndarray]] = []
        self._lock = threading.Lock()  # the pending list
        self._counting = threading.Lock()  # one count at a time, in the order the calls were recorded
        self._wake = threading.Event()  # set: the counting thread has calls to count (or soon will)
        self.dropped = 0  # calls left out because too many were pending
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def reference(self, job_id: str) -> FeatureReference | None:
        if job_id not in self._references:  # a model's reference never changes once kept
            try:
                doc = self._stores.stability.load(job_id) if self._stores.stability.exists(job_id) else {}
                self._references[job_id] = (None if "features" not in doc else FeatureReference.from_dict(
                    doc["features"], where=f"stability reference of {job_id}"))
            except Exception as err:
                log.warning("model %s: stability reference unreadable (%s)", job_id, err)
                self._references[job_id] = None
        return self._references[job_id]

    def record(self, job_id: str, X: np.ndarray) -> None:
        """Keep ``X`` (copied) to be counted into the model's window. Never fails, nor slows, the call that
        served the rows: no lock but the pending list's, and no thread woken except the first time after a count."""
        if len(X) == 0:
            return
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._count_loop, name="stability-window", daemon=True)
                    self._thread.start()
        rows = np.array(X, dtype=np.float64)
        with self._lock:
            if len(self._pending) >= QUEUED_CALLS:
                self.dropped += 1
                return
            self._pending.append((job_id, rows))
        if not self._wake.is_set():  # a plain read: the thread is woken once per count, not once per call
            self._wake.set()

    def _count_loop(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(COUNT_EVERY_S)  # the calls of the next moments are counted in the same go
            self._wake.clear()  # before taking the list: a call recorded from now on wakes the thread again
            self.flush()

    def flush(self) -> None:
        """Count every call recorded so far (in the caller's thread; after a count under way)."""
        with self._counting:
            with self._lock:
                calls, self._pending = self._pending, []
            by_model: dict[str, list[np.ndarray]] = {}
            for job_id, X in calls:  # counted in one go per model (binning has a cost per call)
                by_model.setdefault(job_id, []).append(X)
            for job_id, blocks in by_model.items():
                try:
                    # Models without a kept reference are not counted (their index compares batches only).
                    reference = self.reference(job_id)
                    if reference is not None:
                        record_features(self.windows(job_id), reference, np.vstack(blocks))
                except Exception as err:
                    log.warning("model %s: stability window not updated (%s)", job_id, err)

    def counts(self, job_id: str) -> tuple[FeatureReference, np.ndarray, int]:
        """The model's reference, its window's summed bin counts and the window's rows."""
        self.flush()
        reference = self.reference(job_id)
        window = self.windows.get(job_id)
        counts, rows = (None, 0) if window is None else window.counts()
        if reference is None or counts is None:
            raise StabilityError(f"model {job_id}: no recent answers counted on this node since it started"
                                 + ("" if reference is not None else " (the model has no stability reference)"))
        return reference, counts, rows

    def indices(self, job_id: str) -> tuple[dict[str, float], int]:
        """Feature -> PSI of the model's window against its reference, and the window's rows."""
        reference, counts, rows = self.counts(job_id)
        return reference.indices(counts), rows


__all__ = ["CURRENT", "TRAINING", "WINDOW_ROWS", "FeatureWindows", "feature_reference", "keep_latest", "keep_reference", "latest_answers",
           "record_features", "score_reference", "served_test_scores", "training_reference"]
