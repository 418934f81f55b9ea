"""What a curious bank learns about platform rows in one job (training with validation and test, then
scoring), and what the platform learns about customers outside the intersection.

    python -m benchmarks.privacy_bank_view [--json PATH]

Both nodes run in one process over the in-memory link (the same messages and checks as the wire) on the
shared breast data (the platform holds 20 features). Every step's reply to the bank is recorded, and so is
every scoring request the platform receives. From them:

* ``bank_feature_span_rank``: the rank of the matrix of every per-row value about platform rows that the
  bank can attribute to a row (each value it decrypts or reads, put on the row it belongs to);
  ``tags_released``: the distinct (model, tag) projections the platform answered for when scoring. The rank
  must not exceed it (the platform's budget bounds both).
* ``feature_recovery_r2``: the attack of the privacy review. The bank knows the platform features of 30
  customers and regresses them on the per-row values it holds; the R^2 on the other customers (1.0 means
  recovered, 0 means no better than the mean). Before private evaluation this was 1.0 with error 7e-14.
* ``nonmember_ids_sent``: bank customers outside the intersection whose ID (or any ID) the platform received.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import console, print_table, write_json
from party_bank.node import BankNode
from party_common.config import DataConfig, NodeConfig
from party_common.data_loading import load_party_data
from party_common.link import LocalPlatformLink, PartialScores, SessionContext
from party_common.storage import memory_node_stores
from party_platform.node import PlatformNode
from protocols.channel import LocalChannel, Message, StepHandler
from protocols.vfl_lr import PlatformModel

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
KNOWN_ROWS = 30  # platform rows whose features the curious bank is assumed to know


class RecordingPlatform:
    """The platform as the bank reaches it, keeping every scoring request (what crosses the wire to it)."""

    def __init__(self, platform: PlatformNode) -> None:
        self.platform, self.name = platform, platform.name
        self.score_requests: list[tuple[str, np.ndarray, list[str]]] = []

    def open_session(self, kind: str, job_id: str, params: Message, context: SessionContext) -> StepHandler:
        return self.platform.open_session(kind, job_id, params, context)

    def partial_scores(self, model_job_id: str, rows: np.ndarray, tags: list[str]) -> PartialScores:
        self.score_requests.append((model_job_id, np.asarray(rows).copy(), list(tags)))
        return self.platform.partial_scores(model_job_id, rows, tags)


class TranscriptLink(LocalPlatformLink):
    """Keeps the transcript of every session (as a curious bank keeps everything it receives)."""

    def open(self, kind: str, job_id: str, params: Message, *, context: SessionContext) -> LocalChannel:
        channel = super().open(kind, job_id, params, context=context)
        channel.keep_transcript = True
        return channel


def _config(state: Path, role: str, path: Path, tags: tuple[str, ...]) -> NodeConfig:
    return NodeConfig(source=state / f"{role}.toml", name=role, role=role,  # type: ignore[arg-type]
                      listen="127.0.0.1:0", state_dir=state / role, peer_address="", peer_tls_name=None, tls=None,
                      data=DataConfig(path=path, id_column="id", tag_columns=tags), workers=1)


def per_row_values(transcript: list[tuple[str, Message, Message]], n_rows: int) -> np.ndarray:
    """Every float array in a reply whose first axis is the alignment's rows: values the bank can put on
    rows (the training protocol v2 sends none: evaluation comes back shuffled and everything else is masked
    or under the bank's own key, which this view does not decrypt, since what it decrypts is masked)."""
    columns = []
    for _, _, reply in transcript:
        for value in reply.values():
            if isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.ndim >= 1 \
                    and value.shape[0] == n_rows:
                columns.append(value.reshape(n_rows, -1))
    return np.hstack(columns) if columns else np.zeros((n_rows, 0))


def run(epochs: int = 10) -> dict[str, Any]:
    bank_data = load_party_data(DATASETS / "breast_hetero_guest.csv", id_column="id", tag_columns=["y"])
    platform_data = load_party_data(DATASETS / "breast_hetero_host.csv", id_column="id")
    # The platform knows 85% of the bank's customers, so scoring meets outsiders too.
    keep = np.random.default_rng(7).permutation(len(platform_data))[: int(0.85 * len(platform_data))]
    platform_data = platform_data.take(list(platform_data.ids[np.sort(keep)]))
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        platform = PlatformNode(_config(state, "platform", DATASETS / "breast_hetero_host.csv", ()),
                                data=platform_data, stores=memory_node_stores())
        recorder = RecordingPlatform(platform)
        link = TranscriptLink(recorder)
        bank = BankNode(_config(state, "bank", DATASETS / "breast_hetero_guest.csv", ("y",)), link,
                        data=bank_data, stores=memory_node_stores())
        align = bank.wait(bank.submit("align", "", {}), timeout_s=300)
        train = bank.wait(bank.submit("train", "", {"train": {"epochs": epochs, "batch_size": 128,
                                                              "validation_share": 0.3,
                                                              "early_stopping_patience": 0,
                                                              # the platform's scores are what is measured
                                                              "serve": "joint"}}), timeout_s=1800)
        if train.status != "succeeded":
            raise RuntimeError(f"training failed: {train.error}")
        alignment = bank.stores.alignments.load(align.job_id).ids or []
        n = len(alignment)
        training_view = per_row_values(link.channels[-1].transcript, n)
        # Scoring: every bank customer, members and outsiders alike, as a bank serving its customers would.
        scores = bank.score(train.job_id, list(bank_data.ids))
        bank.shutdown()
    members = set(alignment)
    outsiders = [cid for cid in bank_data.ids if cid not in members]
    sent_rows = np.concatenate([rows for _, rows, _ in recorder.score_requests])
    sent_ids = {alignment[r] for r in sent_rows}  # what the positions stand for, on the platform's side
    # The bank's per-row view of platform rows: training transcript values plus z_B of every scored member.
    order = np.array([platform_data.row_of(cid) for cid in alignment])
    z_b = np.zeros((n, 0))
    if scores.platform_known.any():
        model = platform.model(train.job_id, PlatformModel.from_dict)
        z_b = model.partial_scores(platform_data.features[order])
    view = np.hstack([training_view, z_b])
    rank = int(np.linalg.matrix_rank(view)) if view.size else 0
    r2 = recovery_r2(view, platform_data.features[order])
    return {"bank_feature_span_rank": rank, "tags_released": scores.projections_released,
            "platform_features": platform_data.features.shape[1], "per_row_values_from_training":
            int(training_view.shape[1]), "feature_recovery_r2": r2,
            "nonmember_ids_sent": len(sent_ids & set(outsiders)) + sum(1 for _, rows, _ in recorder.score_requests
                                                                       if rows.dtype.kind not in "iu"),
            "bank_customers": len(bank_data), "intersection": n, "outsiders_scored": len(outsiders),
            "epochs": epochs}


def recovery_r2(view: np.ndarray, features: np.ndarray, known: int = KNOWN_ROWS, seed: int = 0) -> float:
    """Mean R^2 over features of a least-squares map from the bank's per-row values to the platform's
    features, fitted on ``known`` rows and tested on the rest (0 when the bank holds no per-row value)."""
    if view.shape[1] == 0:
        return 0.0
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(view))
    fit, test = order[:known], order[known:]
    design = np.hstack([view, np.ones((len(view), 1))])
    coef, *_ = np.linalg.lstsq(design[fit], features[fit], rcond=None)
    predicted = design[test] @ coef
    residual = ((features[test] - predicted) ** 2).sum(axis=0)
    total = ((features[test] - features[test].mean(axis=0)) ** 2).sum(axis=0)
    return float(np.mean(1 - residual / np.maximum(total, 1e-12)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    result = run(args.epochs)
    print_table("What a curious bank holds about platform rows after one job",
                [(k, str(v)) for k, v in result.items()], ("measure", "value"))
    if args.json:
        write_json(args.json, result)
    ok = result["bank_feature_span_rank"] <= result["tags_released"] and result["nonmember_ids_sent"] == 0
    console.print(f"goals (rank <= tags_released, nonmember_ids_sent == 0): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
