"""Results a bank can act on: enriched score files, campaign segments with a seeded control group, their lift.

Files are written under the bank node's state directory only (``scores/`` and ``segments/``), atomically,
mode 0600, never over an existing file unless asked. A segment's record (sizes, rule, seed, expected
precision) goes to the node's ``segments`` store and never holds a customer ID; the IDs are in its groups
file beside it. Lift confidence intervals use the normal approximation (Wald) for a difference of two
independent proportions (Agresti & Caffo 2000 discuss its coverage) and the log method of Katz et al. (1978)
for the ratio: both are reported with the counts they rest on.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from party_bank.score_files import (
    OutputError,
    read_table,
    safe_output_path,
    write_frame,
    write_frames,
)
from party_bank.scores import NOT_IN_INTERSECTION, Scores
from party_common.config import NodeConfig
from party_common.storage import NodeStores
from party_common.storage.files import ensure_private_dir
from protocols.errors import NotFound, UserError
from protocols.identity import customer_keys
from protocols.models import load_bank_half
from protocols.party_data import PartyData


class ScoringNode(Protocol):
    """What segments need of the bank node: its config, data and stores, its models and online scoring."""

    config: NodeConfig
    data: PartyData
    stores: NodeStores

    def model(self, model_job_id: str, load: Callable[..., Any]) -> Any:
        ...

    def score(self, model_job_id: str, customer_ids: list[str], tags: list[str] | None = None) -> Scores:
        ...

SCORES_DIR, SEGMENTS_DIR = "scores", "segments"
FORMATS = ("parquet", "csv")
Z95 = 1.959963984540054  # two-sided 95% normal quantile
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,56}$")
OK, UNKNOWN, REPEATED = "ok", "unknown_customer", "repeated"  # the status column of a score file
TARGET, CONTROL = "target", "control"
MAX_IDS_PER_MESSAGE_BYTES = 1 << 20  # the client streams IDs in messages under gRPC's 2 MiB cap


WRITE_ROWS = 262_144  # rows of a score file built and written at a time


@dataclass(frozen=True)
class ScoredPopulation:
    """The scored rows of a score file as arrays; ``columns`` per tag p_, rank_, decile_, label_known_ and
    platform_known (rank/decile -1 and flags -1 where a row has no value)."""
    id_column: str
    model: str
    ids: list[str]
    status: np.ndarray
    columns: dict[str, np.ndarray]

    def frame(self, start: int, stop: int) -> pd.DataFrame:
        """Rows ``start:stop`` of the score file, with its column types (nullable where a row has no value)."""
        ids = self.ids[start:stop]
        out = pd.DataFrame({self.id_column: pd.array(ids, dtype="string"),
                            "status": pd.array(self.status[start:stop].tolist(), dtype="string")})
        for name, values in self.columns.items():
            part = values[start:stop]
            if part.dtype == np.float64:
                out[name] = part
                continue
            column = pd.array(part if part.dtype == np.int64 else part == 1, dtype="Int64" if part.dtype == np.int64
                              else "boolean")
            column[part < 0] = pd.NA
            out[name] = column
        out["model"] = pd.array([self.model] * len(ids), dtype="string")
        return out


@dataclass(frozen=True)
class BatchScoreResult:
    path: Path
    rows: int
    unknown: int  # rows whose ID is not a customer of the bank (status column)
    platform_known: int  # rows with the platform's part in their score


def ranks(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based rank by descending score (ties: earlier row first) and decile (1 = top 10%) of each value."""
    n = len(p)
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(-p, kind="stable")] = np.arange(1, n + 1)
    return rank, (rank - 1) * 10 // max(n, 1) + 1


def half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


# ---- file readers for the client (errors name the file, the column and the data row) ----


def id_chunks(ids: Sequence[str], max_bytes: int = MAX_IDS_PER_MESSAGE_BYTES) -> Iterator[tuple[int, int]]:
    """(start, stop) slices of ``ids`` whose encoded size stays under ``max_bytes`` per message."""
    start, size = 0, 0
    for i, cid in enumerate(ids):
        cost = len(cid.encode()) + 8
        if size + cost > max_bytes and i > start:
            yield start, i
            start, size = i, 0
        size += cost
    yield start, len(ids)


# ---- statistics ----


def lift(x_t: int, n_t: int, x_c: int, n_c: int) -> dict[str, Any]:
    """Response rates of target and control, absolute and relative lift of target over control, 95% CIs."""
    if n_t == 0 or n_c == 0:
        return {"target_rate": x_t / n_t if n_t else None, "control_rate": x_c / n_c if n_c else None,
                "absolute_lift": None, "absolute_lift_ci95": None, "relative_lift": None,
                "relative_lift_ci95": None, "note": "a group has no customer with an outcome"}
    p_t, p_c = x_t / n_t, x_c / n_c
    diff = p_t - p_c
    se = math.sqrt(p_t * (1 - p_t) / n_t + p_c * (1 - p_c) / n_c)
    out: dict[str, Any] = {"target_rate": p_t, "control_rate": p_c, "absolute_lift": diff,
                           "absolute_lift_ci95": [diff - Z95 * se, diff + Z95 * se],
                           "absolute_lift_method": "normal approximation (Wald), unpooled standard error",
                           "relative_lift": None, "relative_lift_ci95": None,
                           "relative_lift_method": "log risk ratio (Katz), exp(log(p_t/p_c) +- 1.96 se) - 1"}
    if p_c > 0:
        out["relative_lift"] = p_t / p_c - 1
    if x_t > 0 and x_c > 0:
        se_log = math.sqrt(1 / x_t - 1 / n_t + 1 / x_c - 1 / n_c)
        log_rr = math.log(p_t / p_c)
        out["relative_lift_ci95"] = [math.exp(log_rr - Z95 * se_log) - 1, math.exp(log_rr + Z95 * se_log) - 1]
    if min(x_t, n_t - x_t, x_c, n_c - x_c) < 10:
        out["note"] = "fewer than 10 responders or non-responders in a group: the normal approximation is rough"
    return out


def expected_precision(report: dict[str, Any] | None, tag: str, share: float) -> dict[str, Any]:
    """What the train report's test split says about the selection: precision at that share when the report
    has it (``precision_at`` {share: value} or ``gains`` [{share, precision}]), else the base rate and AUC."""
    joint = ((report or {}).get("metrics") or {}).get(tag, {}).get("joint") or {}
    n, positives = joint.get("n"), joint.get("positives")
    out: dict[str, Any] = {"source": f"train report, test split, tag {tag}" if joint else None,
                           "test_auc": joint.get("auc"), "test_n": n,
                           "test_positive_rate": positives / n if n else None, "precision": None}
    table: list[tuple[float, float]] = []
    if isinstance(joint.get("precision_at"), dict):
        table = [(float(k), float(v)) for k, v in joint["precision_at"].items() if v is not None]
    elif isinstance(joint.get("gains"), list):
        table = [(float(g.get("share", g.get("top_share"))), float(g["precision"])) for g in joint["gains"]
                 if isinstance(g, dict) and g.get("precision") is not None]
    at_least = sorted(t for t in table if t[0] >= share - 1e-9)
    if at_least:
        out["precision"], out["precision_at_share"] = at_least[0][1], at_least[0][0]
    else:
        out["note"] = ("the train report has no precision at this share; test_positive_rate is the precision "
                       "of a random selection")
    return out


# ---- the service ----


class SegmentService:
    """Batch score files and segments of one bank node."""

    def __init__(self, node: ScoringNode) -> None:
        self.node = node
        self.scores_dir = node.config.state_dir / SCORES_DIR
        self.segments_dir = node.config.state_dir / SEGMENTS_DIR

    def population(self, model_job_id: str, all_customers: bool) -> list[str]:
        """The model's intersection (alignment order), or every customer of the bank (file order)."""
        if all_customers:
            return [str(c) for c in self.node.data.ids]
        model = self.node.model(model_job_id, load_bank_half)
        return list(self.node.stores.alignments.load(model.alignment_job_id).ids or ())

    def enriched(self, model_job_id: str, ids: Sequence[str], tags: Sequence[str] | None) -> pd.DataFrame:
        """One row per ID in order: status, per tag p_/rank_/decile_/label_known_, platform_known, model."""
        return self.scored(model_job_id, ids, tags).frame(0, len(ids))

    def scored(self, model_job_id: str, ids: Sequence[str], tags: Sequence[str] | None) -> ScoredPopulation:
        """Scores, ranks and statuses of ``ids`` as arrays (a few numbers per customer, whatever the features);
        :meth:`ScoredPopulation.frame` makes the score file's rows from them a block at a time."""
        node = self.node
        rows = node.data.positions(ids)
        # A customer named twice (in any two spellings PSI would match) is scored once: the first time.
        first = ~pd.Series(rows).duplicated().to_numpy() if len(ids) else np.zeros(0, dtype=bool)
        scored = np.flatnonzero((rows >= 0) & first)
        status = np.where(rows < 0, UNKNOWN, np.where(first, OK, REPEATED)).astype(object)
        scores = node.score(model_job_id, [ids[i] for i in scored], list(tags or []))
        status[scored] = scores.status  # ok or not_in_intersection, as `score` answers them
        n = len(ids)
        columns: dict[str, np.ndarray] = {}
        for t, tag in enumerate(scores.tags):
            p = np.full(n, np.nan)
            p[scored] = scores.probabilities[:, t]
            rank, decile = np.full(n, -1, dtype=np.int64), np.full(n, -1, dtype=np.int64)
            rank[scored], decile[scored] = ranks(scores.probabilities[:, t])
            known = np.full(n, -1, dtype=np.int8)  # -1: no value (not scored)
            if tag in node.data.tag_names:
                known[scored] = ~np.isnan(node.data.labels[rows[scored], node.data.tag_names.index(tag)])
            columns[f"p_{tag}"], columns[f"rank_{tag}"], columns[f"decile_{tag}"] = p, rank, decile
            columns[f"label_known_{tag}"] = known
        platform = np.full(n, -1, dtype=np.int8)
        platform[scored] = scores.platform_known
        columns["platform_known"] = platform
        return ScoredPopulation(node.config.data.id_column, model_job_id, list(ids), status, columns)

    def batch_score(self, model_job_id: str, output_path: str, tags: Sequence[str] | None = None, *,
                    all_customers: bool = False, ids: Sequence[str] | None = None,
                    overwrite: bool = False) -> BatchScoreResult:
        """Score the intersection, every customer, or ``ids`` (unknown ones get a status) into a file."""
        if all_customers and ids:
            raise UserError("give either IDs or all_customers, not both")
        out = safe_output_path(self.scores_dir, output_path)
        if out.exists() and not overwrite:  # checked again atomically when written
            raise OutputError(f"{out.name} already exists ({out}); pass --overwrite to replace it")
        population = "ids" if ids else "all_customers" if all_customers else "intersection"
        wanted = list(ids) if ids else self.population(model_job_id, all_customers)
        scored = self.scored(model_job_id, wanted, tags)
        # Written a block of rows at a time: the file's table is never whole in memory.
        write_frames((scored.frame(a, a + WRITE_ROWS) for a in range(0, max(len(wanted), 1), WRITE_ROWS)), out,
                     overwrite=overwrite)
        unknown = int((scored.status == UNKNOWN).sum())
        self.node.stores.jobs.audit(model_job_id, "batch scores", f"{len(wanted)} rows ({population}, "
                                    f"{unknown} unknown) to {out.relative_to(self.scores_dir)}")
        return BatchScoreResult(out, len(wanted), unknown, int((scored.columns["platform_known"] == 1).sum()))

    # ---- segments ----

    def _paths(self, name: str, fmt: str = "parquet") -> tuple[str, Path]:
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise OutputError(f"segment name {name!r}: use 1 to 56 letters, digits, '_' or '-'")
        if fmt not in FORMATS:
            raise OutputError(f"segment format {fmt!r}: use parquet or csv")
        return f"segment-{name}", ensure_private_dir(self.segments_dir) / f"{name}.groups.{fmt}"

    def get(self, name: str) -> dict[str, Any]:
        key, _ = self._paths(name)
        try:
            return self.node.stores.segments.load(key)
        except NotFound:
            raise NotFound(f"no segment {name!r} on the bank node (see `bank-node segments`)") from None

    def list(self) -> list[dict[str, Any]]:
        return [self.node.stores.segments.load(key) for key in self.node.stores.segments.list()]

    def create(self, model_job_id: str, tag: str, *, name: str, control_share: float,
               top_share: float | None = None, min_score: float | None = None, seed: int | None = None,
               all_customers: bool = False, fmt: str = "parquet", overwrite: bool = False) -> dict[str, Any]:
        """Score, select the target (top share or minimum score), hold out a control group stratified by
        score decile within the selection, write the groups file and the record; return the record."""
        key, path = self._paths(name, fmt)
        if (top_share is None) == (min_score is None):
            raise UserError("give one selection rule: a top share or a minimum score")
        if top_share is not None and not 0 < top_share <= 1:
            raise UserError(f"top share {top_share}: give a share in (0, 1], e.g. 0.1 for the top 10%")
        if min_score is not None and not 0 <= min_score <= 1:
            raise UserError(f"minimum score {min_score}: scores are probabilities in [0, 1]")
        if not 0 < control_share < 1:
            raise UserError(f"control share {control_share}: give a share in (0, 1), e.g. 0.1 for 10%")
        if seed is not None and not 0 <= seed < 2**64:
            raise UserError(f"seed {seed}: give an integer in [0, 2^64)")
        if not overwrite and (self.node.stores.segments.exists(key)
                              or any((self.segments_dir / f"{name}.groups.{f}").exists() for f in FORMATS)):
            raise OutputError(f"segment {name!r} already exists; pass --overwrite to replace it")
        seed = secrets.randbits(32) if seed is None else int(seed)
        frame = self.enriched(model_job_id, self.population(model_job_id, all_customers), [tag])
        # Scored rows only (an alignment's ID gone from the file has none)
        frame = frame[frame["status"].isin([OK, NOT_IN_INTERSECTION])].reset_index(drop=True)
        p = frame[f"p_{tag}"].to_numpy(dtype=np.float64)
        order = np.argsort(-p, kind="stable")
        if top_share is not None:
            selected = order[:half_up(top_share * len(p))]
            rule: dict[str, float] = {"top_share": top_share}
        else:
            selected = order[p[order] >= min_score]
            rule = {"min_score": float(min_score or 0.0)}
        n_sel = len(selected)
        n_control = half_up(control_share * n_sel)
        if n_control < 1 or n_control >= n_sel:
            raise UserError(f"the rule selects {n_sel} of {len(p)} customers: too few for a control share of "
                            f"{control_share:g} (control and target both need customers)")
        strata = np.arange(n_sel) * 10 // n_sel + 1  # score decile within the selection (1 = top)
        sizes = np.bincount(strata, minlength=11)[1:]
        quota = n_control * sizes / n_sel
        alloc = np.floor(quota).astype(np.int64)
        for j in np.argsort(-(quota - alloc), kind="stable")[:n_control - int(alloc.sum())]:
            alloc[j] += 1  # largest remainders first, ties to the higher decile
        rng = np.random.default_rng(seed)
        control = np.zeros(n_sel, dtype=bool)
        for j in range(10):
            members = np.flatnonzero(strata == j + 1)
            control[members[rng.permutation(len(members))[:alloc[j]]]] = True
        groups = frame.iloc[selected].reset_index(drop=True).drop(columns=["status"])
        groups.insert(1, "group", pd.array(np.where(control, CONTROL, TARGET).tolist(), dtype="string"))
        groups.insert(2, "stratum", strata)
        for f in FORMATS:
            if f != fmt:
                (self.segments_dir / f"{name}.groups.{f}").unlink(missing_ok=True)
        write_frame(groups, path, overwrite=overwrite)
        report = (self.node.stores.reports.load(model_job_id) if self.node.stores.reports.exists(model_job_id)
                  else None)
        label_known = groups[f"label_known_{tag}"].fillna(False).to_numpy(dtype=bool)
        record = {
            "name": name, "model": model_job_id, "tag": tag, "rule": rule,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "population": "all_customers" if all_customers else "intersection", "n": len(p),
            "selected": n_sel, "target_size": n_sel - n_control, "control_size": n_control,
            "control_share": control_share, "seed": seed,
            "generator": f"numpy.random.default_rng (PCG64), permutation per stratum, numpy {np.__version__}",
            "stratification": "score decile within the selection (1 = highest scores)",
            "strata": [{"decile": j + 1, "size": int(sizes[j]), "control": int(alloc[j])} for j in range(10)],
            "min_selected_score": float(p[selected].min()), "max_selected_score": float(p[selected].max()),
            "platform_known": int(groups["platform_known"].fillna(False).sum()),
            "label_known": int(label_known.sum()),
            "expected": expected_precision(report, tag, n_sel / len(p)),
            "file": path.name, "columns": list(groups.columns),
        }
        self.node.stores.segments.save(key, record, overwrite=overwrite)
        self.node.stores.jobs.audit(model_job_id, "segment", f"{name}: {n_sel} selected, {n_control} control, "
                                    f"seed {seed}")
        return record

    def result(self, name: str, customer_ids: Sequence[str], outcomes: Sequence[int], *,
               source: str = "the request") -> dict[str, Any]:
        """Response rates of target and control among the customers with an outcome, and the lift."""
        record = self.get(name)
        groups = read_table(self.segments_dir / record["file"])
        if len(customer_ids) != len(outcomes):
            raise UserError(f"{source}: {len(customer_ids)} IDs but {len(outcomes)} outcomes")
        values = np.asarray(outcomes, dtype=np.int64)
        bad = np.flatnonzero((values != 0) & (values != 1))
        if len(bad):
            raise UserError(f"{source}: row {bad[0] + 1}: outcome {values[bad[0]]} is not 0 or 1")
        ids = pd.Series(customer_keys(customer_ids).tolist(), dtype="string")  # joined on the normal form
        repeated = np.flatnonzero(ids.duplicated().to_numpy())
        if len(repeated):
            first = int(np.flatnonzero((ids == ids.iloc[repeated[0]]).to_numpy())[0])
            raise UserError(f"{source}: rows {first + 1} and {repeated[0] + 1} have the same customer ID")
        outcome_of = pd.Series(values, index=ids.to_numpy())
        id_col = groups.columns[0]
        joined = pd.Series(customer_keys(groups[id_col].astype(str).tolist()).tolist()).map(outcome_of)
        counts: dict[str, dict[str, int]] = {}
        for g in (TARGET, CONTROL):
            member = (groups["group"] == g).to_numpy()
            has = member & joined.notna().to_numpy()
            counts[g] = {"members": int(member.sum()), "with_outcome": int(has.sum()),
                         "responders": int(joined[has].sum())}
        in_segment = ids.isin(set(groups[id_col].astype(str))).to_numpy()
        t, c = counts[TARGET], counts[CONTROL]
        result = {"segment": name, "model": record["model"], "tag": record["tag"], "source": source,
                  "groups": counts, "outcomes": len(ids), "not_in_segment": int((~in_segment).sum()),
                  **lift(t["responders"], t["with_outcome"], c["responders"], c["with_outcome"])}
        # The readout is kept with the segment (counts and rates only, no ID), so anyone reading the segment later
        # sees its A/B result: the last readout replaces the one before, in one atomic write.
        key, _ = self._paths(name)
        readout = {k: v for k, v in result.items() if k not in ("segment", "model", "tag")}
        self.node.stores.segments.save(key, {**record, "readout": {
            **readout, "read_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}, overwrite=True)
        self.node.stores.jobs.audit(record["model"], "segment result", f"{name}: {len(ids)} outcomes")
        return result
