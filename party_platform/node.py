"""The platform node: answers the bank's protocol sessions and partial-score calls.

It holds the platform's data (IDs and behaviour features), its alignments (PSI results), and its half
of every trained model. The bank drives every job; this node never dials out.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from party_common.config import NodeConfig
from party_common.jobstore import JobStore
from party_common.runtime import load_node_data
from party_common.storage.files import ensure_private_dir
from party_common.transport import PartialScorer, SessionRegistry
from protocols.channel import Message, ProtocolError, StepHandler

log = logging.getLogger(__name__)

FEATURES = ("psi.x25519", "train.vfl_lr", "score.partial")
# Fields the bank node adds to a session's parameters for this node (not for the protocol itself).
NODE_PARAM_PREFIX = "node."


class ObservedHandler:
    """Wraps a protocol handler; after every step it lets the node collect a finished result."""

    def __init__(self, inner: StepHandler, after_step: Callable[[StepHandler], None]) -> None:
        self.inner = inner
        self._after_step = after_step

    def handle(self, step: str, message: Message) -> Message:
        reply = self.inner.handle(step, message)
        self._after_step(self.inner)
        return reply

    def close(self) -> None:
        self.inner.close()


def split_node_params(params: Message) -> tuple[Message, dict[str, Any]]:
    node = {k[len(NODE_PARAM_PREFIX):]: v for k, v in params.items() if k.startswith(NODE_PARAM_PREFIX)}
    protocol = {k: v for k, v in params.items() if not k.startswith(NODE_PARAM_PREFIX)}
    return protocol, node


class PlatformNode(PartialScorer):
    def __init__(self, config: NodeConfig) -> None:
        from protocols.alignment import AlignmentStore

        self.config = config
        self.data = load_node_data(config)
        self.state_dir = ensure_private_dir(config.state_dir)
        self.alignments = AlignmentStore(self.state_dir / "alignments")
        self.models_dir = ensure_private_dir(self.state_dir / "models")
        self.jobs = JobStore(self.state_dir / "jobs.sqlite")
        self.registry = SessionRegistry(self.open_session, kinds=("psi", "train"))
        self._models: dict[str, Any] = {}
        self._index: dict[str, int] | None = None
        self._lock = threading.Lock()
        log.info("platform data: %d users, %d features (%s)", len(self.data.ids), len(self.data.feature_names),
                 Path(self.data.source).name)

    # ---- sessions ----

    def open_session(self, kind: str, job_id: str, params: Message) -> StepHandler:
        protocol_params, node_params = split_node_params(params)
        self.jobs.create(job_id, kind, str(node_params.get("job_name", "")), {"kind": kind})
        self.jobs.mark_running(job_id)
        try:
            if kind == "psi":
                return self._open_psi(job_id, protocol_params)
            return self._open_train(job_id, protocol_params, node_params)
        except BaseException as err:
            self.jobs.fail(job_id, str(err))
            raise

    def _open_psi(self, job_id: str, params: Message) -> StepHandler:
        from protocols.psi import make_platform_psi_handler

        handler = make_platform_psi_handler(job_id, params, self.data.ids, workers=self.config.workers,
                                            spill_dir=self.state_dir / "tmp")

        def collect(inner: StepHandler) -> None:
            result = getattr(inner, "result", None)
            if result is not None and not getattr(inner, "_stored", False):
                inner._stored = True  # type: ignore[attr-defined]
                alignment = self.alignments.save_result(job_id, result, peer_name="bank")
                self.jobs.finish(job_id, {"intersection_size": alignment.size, "mode": alignment.mode,
                                          "content_hash": alignment.content_hash})
                log.info("PSI job %s: intersection of %d stored", job_id, alignment.size)

        return ObservedHandler(handler, collect)

    def _open_train(self, job_id: str, params: Message, node_params: dict[str, Any]) -> StepHandler:
        from protocols.alignment import AlignmentError
        from protocols.vfl_lr import make_platform_train_handler

        alignment_job = str(node_params.get("alignment_job_id", ""))
        try:
            alignment = self.alignments.load(alignment_job)
        except AlignmentError as err:
            raise ProtocolError(f"no alignment {alignment_job!r} on the platform node: run PSI first") from err
        expected = str(node_params.get("alignment_hash", ""))
        if alignment.ids is None:
            raise ProtocolError(f"alignment {alignment_job} was a size-only PSI; training needs the intersection")
        if expected != alignment.content_hash:
            raise ProtocolError(f"alignment {alignment_job}: the two nodes hold different intersections")
        aligned = self.data.take(list(alignment.ids))

        def save_model(model: Any) -> None:
            path = self.models_dir / f"{job_id}.model"
            model.alignment_job_id = alignment_job
            model.save(path)
            with self._lock:
                self._models[job_id] = (model, alignment_job)
            self.jobs.finish(job_id, {"rows": len(aligned.ids), "model": path.name})
            log.info("training job %s: platform half of the model saved", job_id)

        return make_platform_train_handler(job_id, params, aligned, on_model=save_model, workers=self.config.workers)

    # ---- serving ----

    def _model(self, model_job_id: str) -> tuple[Any, str]:
        from protocols.vfl_lr import PlatformModel

        with self._lock:
            if model_job_id in self._models:
                return self._models[model_job_id]
        path = self.models_dir / f"{model_job_id}.model"
        if not path.exists():
            raise LookupError(f"no model for job {model_job_id} on the platform node")
        model = PlatformModel.load(path)
        entry = (model, model.alignment_job_id)
        with self._lock:
            self._models[model_job_id] = entry
        return entry

    def partial_scores(self, model_job_id: str, customer_ids: list[str],
                       tags: list[str]) -> tuple[list[str], np.ndarray, list[bool]]:
        """z_B for each customer and tag. Only customers in the model's alignment are answered: the bank
        already knows they are platform users, so answering reveals no membership beyond PSI."""
        model, alignment_job = self._model(model_job_id)
        members = self._alignment_members(alignment_job)
        tag_names = list(model.tag_names)
        wanted = tags or tag_names
        unknown = [t for t in wanted if t not in tag_names]
        if unknown:
            raise ProtocolError(f"model {model_job_id} has no tag(s) {', '.join(unknown)}")
        cols = [tag_names.index(t) for t in wanted]
        if self._index is None:
            self._index = {cid: i for i, cid in enumerate(self.data.ids)}
        rows = [self._index.get(c, -1) if c in members else -1 for c in customer_ids]
        known = [r >= 0 for r in rows]
        scores = np.full((len(customer_ids), len(cols)), np.nan)
        present = np.array([r for r in rows if r >= 0], dtype=np.int64)
        if len(present):
            z = model.partial_scores(self.data.features[present])
            scores[np.array(known)] = z[:, cols]
        return wanted, scores, known

    def _alignment_members(self, alignment_job: str) -> frozenset[str]:
        key = f"members:{alignment_job}"
        with self._lock:
            cached = self._models.get(key)
        if cached is None:
            alignment = self.alignments.load(alignment_job)
            cached = frozenset(alignment.ids or ())
            with self._lock:
                self._models[key] = cached
        return cached
