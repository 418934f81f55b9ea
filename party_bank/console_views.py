"""What the bank console shows of a job, a training's parameters and a segment's readout, from the control API's
answers (party_bank/console.py renders them)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from party_common.progress import EPOCH
from protocols.uncertainty import summarise

VALIDATION = re.compile(r"^epoch (\d+)/(\d+) validation AUC (.*)$")
BATCH = re.compile(r"batch (\d+) of (\d+)")
LEFT = re.compile(r"about (.+?) left")


# ---- what pages read from jobs ----

def validation_curve(job: Mapping[str, Any], events: list[dict[str, str]]) -> dict[str, list[tuple[float, float]]]:
    """Validation AUC per epoch per tag: from a finished job's history, or from its events while it runs."""
    curve: dict[str, list[tuple[float, float]]] = {}
    history = (job.get("result") or {}).get("history")
    if history:
        for h in history:
            for tag, auc in (h.get("validation_auc") or {}).items():
                if auc is not None:
                    curve.setdefault(tag, []).append((float(h["epoch"]), float(auc)))
        return curve
    by_epoch: dict[int, dict[str, float]] = {}
    for event in events:
        m = VALIDATION.match(event.get("detail") or "")
        if not m:
            continue
        epoch = int(m.group(1))
        for part in m.group(3).split(";")[0].split(", "):
            tag, _, value = part.rpartition(" ")
            if tag and value not in ("n/a", ""):
                try:
                    by_epoch.setdefault(epoch, {})[tag] = float(value)
                except ValueError:
                    continue
    for epoch in sorted(by_epoch):  # a resumed job repeats an epoch: the last line of each counts
        for tag, auc in by_epoch[epoch].items():
            curve.setdefault(tag, []).append((float(epoch), auc))
    return curve


def progress_of(job: Mapping[str, Any]) -> dict[str, Any]:
    """The share done (0-1, None when unknown), the time left as the node estimates it, the stage."""
    text = job.get("progress") or ""
    if job.get("status") == "succeeded":
        return {"fraction": 1.0, "left": "", "stage": text}
    fraction = None
    m = EPOCH.match(text)
    if m:
        epoch, epochs = int(m.group(1)), int(m.group(2))
        batch = BATCH.search(text)
        within = int(batch.group(1)) / max(1, int(batch.group(2))) if batch else 0.0
        fraction = min(1.0, (epoch - 1 + within) / max(1, epochs))
    left = LEFT.search(text)
    return {"fraction": fraction, "left": left.group(1) if left else "", "stage": text}


def flat_params(job: Mapping[str, Any]) -> dict[str, Any]:
    """A job's parameters as one level (train parameters by their own names), for showing and comparing."""
    params = dict(job.get("params") or {})
    train = params.pop("train", None) or {}
    out = {k: v for k, v in params.items()}
    out.update(train)
    if "tags" in out and isinstance(out["tags"], list):
        out["tags"] = ", ".join(out["tags"])
    return dict(sorted(out.items()))


def summary_of(job: Mapping[str, Any]) -> dict[str, Any]:
    result = job.get("result") or {}
    return result.get("summary") or (summarise(result) if result.get("metrics") else {"tags": {}})


def served_of(job: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    metrics = (job.get("result") or {}).get("metrics") or {}
    return {t: (m.get("served") or {}) for t, m in metrics.items()}


# ---- the application ----

def params_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def readout_rows(result: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """The A/B readout's numbers in reading order (for the segment page)."""
    for group in ("target", "control"):
        g = (result.get("groups") or {}).get(group) or {}
        yield (f"{group}: members / with outcome / responders",
               f"{g.get('members', '-')} / {g.get('with_outcome', '-')} / {g.get('responders', '-')}")
    yield "outcome rows for customers in neither group", result.get("not_in_segment", "-")
