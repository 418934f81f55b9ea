"""What both nodes share: config, data, stores, a fresh compute per session, job contexts, cached models."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np

from party_common.config import NodeConfig
from party_common.jobs import JobContext, JobError, Progress
from party_common.jobs.base import COLUMN_SELECTION
from party_common.progress import ProgressLog
from party_common.runtime import load_node_data
from party_common.state_lock import StateLock
from party_common.storage import NodeStores, open_node_stores
from protocols.compute import Compute, make_compute
from protocols.errors import NotFound
from protocols.party_data import PartyData, Schema
from protocols.psi import describe_kernel
from protocols.rowblocks import on_disk

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.5  # job progress rows are written at most this often


class ModelHalf(Protocol):
    job_id: str
    tag_names: list[str]
    schema: Schema
    alignment_job_id: str


M = TypeVar("M", bound=ModelHalf)
T = TypeVar("T")


class NodeBase:
    """A node of either role. ``data`` and ``stores`` default to the config's file and state directory."""

    role: ClassVar[str]

    def __init__(self, config: NodeConfig, *, data: PartyData | None = None,
                 stores: NodeStores | None = None) -> None:
        self.config = config
        self.name = config.name
        self.data = data if data is not None else load_node_data(config)
        size_mb = self.data.features.size * 8 / 2**20
        log.info("features: %.0f MB %s", size_mb, f"memory-mapped from {config.state_dir / 'tmp'} (above [data] "
                 f"in_memory_mb = {config.data.in_memory_mb:g})" if on_disk(self.data.features) else "in memory")
        # The platform keeps jobs that wait for its operator's approval across a restart (party_common.policy).
        self.stores = stores if stores is not None else open_node_stores(config.state_dir,
                                                                         keep_waiting=self.role == "platform")
        self.spill_dir = config.state_dir / "tmp"
        self.state_lock: StateLock | None = None  # held by a serving process (party_common.state_lock)
        self._cache: dict[tuple[str, str], Any] = {}  # (what, job ID) -> a model or an alignment index
        self._lock = threading.Lock()
        if config.compute.backend == "ray":  # fail at start, not at the first job, if Ray is missing or away
            from protocols.compute_ray import connect

            connect(config.compute.address, num_cpus=config.compute.workers)
        kernel = describe_kernel()  # chosen once, at start-up; align jobs record it too
        log.info("PSI X25519 kernel: %s (%s)", kernel["name"], kernel["note"])

    def new_compute(self) -> Compute:
        """A fresh backend for one session, from ``[compute]`` (the pool of ``[node] workers`` by default)."""
        c = self.config.compute
        if c.backend == "ray":
            return make_compute("ray", c.workers, c.address)
        return make_compute("pool", self.config.workers)

    def progress_reporter(self, job_id: str) -> Progress:
        """Writes the stage in plain words (with time left in training) to the job's row, at most every
        PROGRESS_EVERY_S, and each new stage to its history (``progress`` events: `bank-node logs`)."""
        return ProgressLog(lambda text: self.stores.jobs.set_progress(job_id, text),
                           lambda stage: self.stores.jobs.audit(job_id, "progress", stage), every_s=PROGRESS_EVERY_S)

    def job_context(self, job_id: str) -> JobContext:
        return JobContext(job_id=job_id, data=self.data, stores=self.stores, new_compute=self.new_compute,
                          spill_dir=self.spill_dir, progress=self.progress_reporter(job_id), node_name=self.name,
                          binning=self.config.binning, state_dir=self.config.state_dir)

    def cached(self, what: str, job_id: str, build: Callable[[], T]) -> T:
        """``build()`` once per (what, job ID) for this node's lifetime: models and alignment indexes, which
        never change once stored (alignments and models are never overwritten)."""
        key = (what, job_id)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        value = build()  # outside the lock: loading a model or an alignment may take a while
        with self._lock:
            return self._cache.setdefault(key, value)

    def model(self, model_job_id: str, load: Callable[..., M]) -> M:
        """The model half of train job ``model_job_id``, loaded once, checked against this node's data."""

        def build() -> M:
            try:
                doc = self.stores.models.load(model_job_id)
            except NotFound as err:
                raise NotFound(f"no model for job {model_job_id} on the {self.role} node "
                               "(is it a finished train job?)") from err
            model = load(doc, where=f"model {model_job_id}")
            # The data this node serves must still have the columns the model was trained on (all of them, or
            # the ones a screen's IV selection kept: ``column_selection``, party_common/jobs/train.py).
            # (the file's name only: messages travel to callers, who have no business with server paths).
            model.schema.check_scoring_compatible(self._scoring_schema(doc.get(COLUMN_SELECTION)),
                                                  Path(self.data.source).name)
            return model

        return self.cached("model", model_job_id, build)

    def _scoring_schema(self, selection: Any) -> Schema:
        """This node's schema, or its columns named by a model's ``column_selection`` (in the data's order)."""
        schema = self.data.schema
        if not selection:
            return schema
        kept = [i for i, c in enumerate(schema.feature_columns) if c in set(selection)]
        return Schema(schema.id_column, tuple(schema.feature_columns[i] for i in kept),
                      tuple(schema.feature_dtypes[i] for i in kept), schema.tag_columns)

    def model_features(self, model: Any, rows: np.ndarray) -> np.ndarray:
        """The feature rows a model scores: every column, or the ones it was trained on when a selection left
        some out (its schema names them; :meth:`model` checked they are this node's, in order)."""
        features = self.data.features[rows]
        names = list(model.schema.feature_columns)
        if names == list(self.data.feature_names):
            return features
        index = self.cached("columns", ",".join(names), lambda: [self.data.feature_names.index(c) for c in names])
        return features[:, index]

    @staticmethod
    def tag_columns(model: ModelHalf, wanted: Sequence[str]) -> tuple[list[str], list[int]]:
        """The tags asked for (all of the model's when none) and their columns in the model."""
        names = list(wanted) or list(model.tag_names)
        unknown = [t for t in names if t not in model.tag_names]
        if unknown:
            raise JobError(f"model {model.job_id} has no tag(s) {', '.join(unknown)} "
                           f"(it has {', '.join(model.tag_names)})")
        return names, [model.tag_names.index(t) for t in names]
