"""`bank-node models`: the model registry (party_bank/registry.py) as the command line shows and changes it."""

from __future__ import annotations

import json
from typing import Any

from party_bank.client import BankClient
from party_bank.scores import SERVED_NAMES
from protocols.errors import UserError
from protocols.uncertainty import format_metric

ACTIONS = {"list": 0, "alias": 2, "unalias": 1, "retire": 1}  # `bank-node models ACTION`: its operand count


def models_table(models: list[dict[str, Any]]) -> str:
    """The ``bank-node models`` table: one row per model, the joint test AUC beside each tag."""
    header = ("MODEL", "NAME", "ALIASES", "TAGS (served model, its test AUC)", "ALIGNMENT", "CREATED", "STATUS")

    def tag_cell(m: dict[str, Any], t: str) -> str:
        served = SERVED_NAMES.get((m.get("served") or {}).get(t) or "", "?")
        auc = (m.get("served_test_auc") or m["test_auc"]).get(t)
        return f"{t}={served} {format_metric(auc, missing='n/a')}"

    rows = [header] + [
        (m["model"], m["name"] or "-", ",".join(m["aliases"]) or "-",
         ", ".join(tag_cell(m, t) for t in m["tags"]), m["alignment"] or "-",
         (m["created_at"] or "")[:10], m["status"])
        for m in models
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def models_command(client: BankClient, action: str, operands: list[str], *, as_json: bool = False) -> str:
    """What ``bank-node models [ACTION OPERAND...]`` prints: the table (or JSON), or the change made."""
    if len(operands) != ACTIONS[action]:
        usage = {"list": "models", "alias": "models alias NAME@LABEL MODEL", "unalias": "models unalias ALIAS",
                 "retire": "models retire MODEL"}[action]
        raise UserError(f"usage: bank-node {usage}")
    if action == "list":
        models = client.models()
        return json.dumps(models, indent=2, sort_keys=True) if as_json else models_table(models)
    if action == "alias":
        result = client.set_alias(operands[0], operands[1])
        moved = f" (moved from {result['previous']})" if result["previous"] not in (None, result["model"]) else ""
        text = f"alias {result['alias']} -> {result['model']}{moved}"
    elif action == "unalias":
        result = client.remove_alias(operands[0])
        text = f"alias {result['alias']} removed (it pointed at {result['model']})"
    else:
        result = client.retire_model(operands[0])
        text = (f"model {result['model']} was already retired at {result['retired_at']}" if result["already_retired"]
                else f"model {result['model']} retired on both nodes; aliases removed: "
                     f"{', '.join(result['aliases_removed']) or '-'}")
    return json.dumps(result, indent=2, sort_keys=True) if as_json else text


__all__ = ["ACTIONS", "models_command", "models_table"]
