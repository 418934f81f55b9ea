"""The bank's stability answers: per tag's score and per feature of both parties, how far a scored population
has drifted from the model's training population (``protocols.stability``).

Two populations can be compared with the training one: a batch-score file written by `bank-node batch-score`
(under the node's ``scores/``), or the node's recent online scores (a bounded window per model, kept in
memory since the node started: scores per tag and the bank's feature bin counts, never an ID). The bank
computes its own features' and its scores' indices; the platform computes its features' indices over the
same customers (their alignment positions) or over its own recent answers, and tells the bank one rounded
index per feature (docs/protocol.md, "Stability"). Every answer sets the Prometheus gauges.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from party_bank.score_files import OutputError, read_table
from party_bank.segments import SCORES_DIR
from party_common.config import NodeConfig
from party_common.link import PlatformLink
from party_common.prometheus_metrics import set_stability
from party_common.stability import (
    WINDOW_ROWS,
    FeatureWindows,
    feature_reference,
    keep_latest,
    score_reference,
)
from party_common.storage import NodeStores
from party_common.storage.jobs import now
from protocols.errors import PeerError, UserError
from protocols.identity import customer_keys
from protocols.model_family import BankHalf
from protocols.models import load_bank_half
from protocols.party_data import PartyData
from protocols.stability import ALERT, WARN, Windows, band, feature_rows

log = logging.getLogger(__name__)

BATCH, ONLINE = "batch", "online"


class StabilityNode(Protocol):
    config: NodeConfig
    data: PartyData
    stores: NodeStores
    link: PlatformLink

    def model(self, model_job_id: str, load: Any) -> Any: ...

    def resolve_model(self, ref: str) -> str: ...

    def _alignment_index(self, alignment_job: str) -> dict[str, int]: ...


def batch_file_path(root: Path, relative: str) -> Path:
    """A batch-score file named relative to ``root`` (the node's ``scores/``), refused if it could lead out of it:
    absolute, '~', '..', or a symbolic link on the way. Reading creates nothing."""
    text = (relative or "").strip()
    rel = Path(text)
    if not text or rel.is_absolute() or text.startswith("~") or ".." in rel.parts:
        raise OutputError(f"{text or '(empty)'}: give a batch-score file relative to the bank node's {SCORES_DIR}/ "
                          "directory (absolute paths, '~' and '..' are refused)")
    for depth in range(1, len(rel.parts) + 1):
        if root.joinpath(*rel.parts[:depth]).is_symlink():
            raise OutputError(f"{text}: a symbolic link on the way; files are read inside the node's {SCORES_DIR}/")
    return root / rel


class BankStability:
    """The bank node's recent online window and its stability answers."""

    def __init__(self, node: StabilityNode, max_rows: int = WINDOW_ROWS) -> None:
        self.node = node
        self.scores = Windows(max_rows)  # per model: recent online probabilities per tag
        self.features = FeatureWindows(node.stores, max_rows)  # per model: the bank's features' bin counts
        self._lock = threading.Lock()

    def record(self, model_job_id: str, tags: Sequence[str], probabilities: np.ndarray, features: np.ndarray) -> None:
        """One online answer: its finite probabilities per tag and the bin counts of the scored customers'
        features (never their IDs). Never fails the answer."""
        try:
            p = np.asarray(probabilities, dtype=np.float64).reshape(-1, len(tags))
            self.scores(model_job_id).add_scores({t: p[np.isfinite(p[:, j]), j] for j, t in enumerate(tags)})
            self.features.record(model_job_id, features)
        except Exception as err:
            log.warning("model %s: online stability window not updated (%s)", model_job_id, err)

    def answer(self, model_ref: str, *, batch: str | None = None, online: bool = False) -> dict[str, Any]:
        """Scores' and features' indices for a batch-score file (``batch``, relative to ``scores/``) or the
        recent online window, with their bands; sets the gauges."""
        if bool(batch) == bool(online):
            raise UserError("stability: give a batch-score file (--batch FILE) or --online, one of them")
        node = self.node
        model_job_id = node.resolve_model(model_ref)
        model: BankHalf = node.model(model_job_id, load_bank_half)
        report = node.stores.reports.load(model_job_id)
        scores_ref = score_reference(node.stores, model_job_id, report)
        alignment = node.stores.alignments.load(model.alignment_job_id)
        bank_ref, origin = feature_reference(node.stores, model_job_id, node.data, alignment.ids or [])
        notes: list[str] = []
        joint = any(model.platform_part or [True])
        if batch:
            source = BATCH
            scores, rows, members = self._batch(batch, model, notes)
            bank = bank_ref.indices(bank_ref.count(node.data.features[rows])) if len(rows) else {}
            bank_rows = len(rows)
            platform = self._platform(model_job_id, "rows", members, notes) if joint else None
        else:
            source = ONLINE
            scores = {} if (w := self.scores.get(model_job_id)) is None else w.scores()
            try:
                bank, bank_rows = self.features.indices(model_job_id)
            except UserError as err:
                bank, bank_rows = {}, 0
                notes.append(f"bank features: {err}")
            platform = self._platform(model_job_id, "recent", None, notes) if joint else None
            if not scores:
                notes.append(f"no online scores for model {model_job_id} since the bank node started")
        score_psi = scores_ref.indices(scores)
        by_party = {"bank": bank}
        if platform is not None:
            by_party["platform"] = dict(zip(platform.features, platform.psi, strict=True))
        set_stability(model_job_id, source, by_party, {tag: v["psi"] for tag, v in score_psi.items()})
        answer = {"model": model_job_id, "source": source, "batch": batch or None,
                  "thresholds": {"warn": WARN, "alert": ALERT},
                  "reference": {"bank": origin, **({"platform": platform.reference} if platform is not None else {})},
                  "rows": {"bank": int(bank_rows), **({"platform": platform.rows} if platform is not None else {})},
                  "scores": [{"tag": tag, "psi": v["psi"], "band": band(v["psi"]), "rows": v["rows"]}
                             for tag, v in score_psi.items()],
                  "features": [row for party, values in by_party.items() for row in feature_rows(values, party)],
                  "notes": notes, "at": now()}
        keep_latest(node.stores, model_job_id, answer)  # for the training report's stability section
        return answer

    def _batch(self, relative: str, model: BankHalf, notes: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray,
                                                                                 np.ndarray]:
        """The batch file's scores per tag, the bank's rows of its scored customers, and the alignment positions
        of those of them that are members (what the platform computes its indices over)."""
        node = self.node
        path = batch_file_path(node.config.state_dir / SCORES_DIR, relative)
        if not path.is_file():
            raise UserError(f"stability: no batch-score file {relative} under the bank node's {SCORES_DIR}/ "
                            "(write one with `bank-node batch-score`)")
        frame = read_table(Path(path))
        id_column = node.config.data.id_column
        if id_column not in frame.columns or "status" not in frame.columns:
            raise UserError(f"{relative}: not a batch-score file (no '{id_column}' or 'status' column)")
        model_column = frame.get("model")
        if model_column is not None and len(frame) and str(model_column.iloc[0]) != model.job_id:
            raise UserError(f"{relative}: scored by model {model_column.iloc[0]}, not {model.job_id}")
        scores = {}
        for tag in model.tag_names:
            column = f"p_{tag}"
            if column in frame.columns:
                scores[tag] = np.asarray(frame[column].replace("", np.nan), dtype=np.float64)
        if not scores:
            raise UserError(f"{relative}: no score column p_<tag> for any tag of model {model.job_id}")
        keys = customer_keys([str(v) for v in frame[id_column].tolist()])
        rows = node.data.positions(keys)
        keys, rows = keys[rows >= 0], rows[rows >= 0]
        index = node._alignment_index(model.alignment_job_id)
        positions = np.fromiter((index.get(str(k), -1) for k in keys), dtype=np.int64, count=len(keys))
        members = np.unique(positions[positions >= 0])
        if len(rows) < len(frame):
            notes.append(f"{len(frame) - len(rows)} row(s) of {relative} are not bank customers: left out")
        return scores, np.unique(rows), members

    def _platform(self, model_job_id: str, source: str, rows: np.ndarray | None, notes: list[str]) -> Any:
        """The platform's indices, or None with a note saying why not (a batch without members, a refusal)."""
        if source == "rows" and (rows is None or len(rows) == 0):
            notes.append("platform features: no customer of the batch is in the model's alignment")
            return None
        try:
            return self.node.link.stability(model_job_id, source, rows)
        except PeerError as err:
            notes.append(f"platform features: {err}")
            return None


__all__ = ["BATCH", "ONLINE", "BankStability", "batch_file_path"]
