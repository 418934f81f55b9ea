"""The published JSON Schemas of the v2 API's job documents (``proto/schemas/*.schema.json``) and their checks.

A job's ``params_json`` and ``result_json`` stay JSON in ``fedprofile.v2`` (the training parameters belong to the
model family being trained; results grow new metrics). The parameter schemas are generated here from the
dataclasses the node parses them with (``AlignParams``, ``TrainParams``): one place for each parameter; the
published files must equal what :func:`schemas` generates (``python -m party_bank.api_schemas --write``;
tests/test_api_v2.py fails on a difference). Result schemas name what an application may rely on and allow
more (new metrics do not break a client).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

import jsonschema

from party_common.jobs.align import AlignParams
from protocols.errors import UserError
from protocols.vfl_lr import TrainParams

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "proto" / "schemas"
DRAFT = "https://json-schema.org/draft/2020-12/schema"
_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}


class SchemaViolation(UserError):
    """A job document that does not match its published schema; the message names the field."""


def _field_schema(hint: Any) -> dict[str, Any]:
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        named = [a for a in args if a is not type(None)]
        inner = _field_schema(named[0]) if len(named) == 1 else {}
        kinds = inner.get("type")
        return {**inner, "type": [kinds, "null"]} if isinstance(kinds, str) else {}
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    if typing.get_origin(hint) in (tuple, list) and args:
        return {"type": "array", "items": _field_schema(args[0])}
    return {}


def _params_schema(cls: type, title: str, description: str) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    props = {}
    for field in dataclasses.fields(cls):
        prop = _field_schema(hints[field.name])
        if field.default is not dataclasses.MISSING:
            prop["default"] = field.default
        props[field.name] = prop
    return {"$schema": DRAFT, "title": title, "description": description, "type": "object",
            "properties": props, "additionalProperties": False}


def _generated() -> dict[str, dict[str, Any]]:
    train = _params_schema(TrainParams, "train parameters (the VFL logistic regression's)",
                           "The 'train' object of a train job's params_json; every key optional (defaults shown). "
                           "Ranges are checked by the node, whose INVALID_ARGUMENT message names the parameter.")
    return {
        "align_params": _params_schema(AlignParams, "align job parameters",
                                       "params_json of an align job (SubmitJob kind ALIGN)."),
        "train_params": {
            "$schema": DRAFT, "title": "train job parameters", "type": "object", "additionalProperties": False,
            "description": "params_json of a train job (SubmitJob kind TRAIN).",
            "properties": {
                "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True,
                         "description": "tag columns to learn; default: every tag column of the bank's data"},
                "alignment_job_id": {"type": "string",
                                     "description": "the align job to train on; default: the newest in mode 'both'"},
                "train": {k: v for k, v in train.items() if k != "$schema"},
            }},
        "align_result": {
            "$schema": DRAFT, "title": "align job result", "type": "object",
            "required": ["mode", "intersection_size"],
            "properties": {"mode": {"enum": ["both", "bank_only", "cardinality"]},
                           "intersection_size": {"type": "integer", "minimum": 0},
                           "bank_customers": {"type": "integer", "minimum": 0},
                           "content_hash": {"type": "string"}}},
        "train_result": {
            "$schema": DRAFT, "title": "train job result",
            "description": "result_json of a succeeded train job: per tag, the model that serves it and its test "
                           "AUCs. More keys may appear; none listed here goes away within v2.",
            "type": "object", "required": ["alignment_job_id", "tags", "metrics"],
            "properties": {
                "alignment_job_id": {"type": "string"}, "rows": {"type": "integer"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "metrics": {"type": "object", "additionalProperties": {
                    "type": "object", "required": ["served"],
                    "properties": {
                        "served": {"type": "object", "required": ["model"],
                                   "properties": {"model": {"enum": ["joint", "bank_only"]}}},
                        "joint": {"type": "object", "properties": {"auc": {"type": ["number", "null"]}}},
                        "bank_only": {"type": "object", "properties": {"auc": {"type": ["number", "null"]}}}}}}}},
        "segment": {
            "$schema": DRAFT, "title": "segment record", "type": "object",
            "description": "segment_json of SegmentResponse: sizes, rule and seed of a segment; never an ID.",
            "required": ["name", "model", "tag", "rule", "selected", "target_size", "control_size", "seed", "file"],
            "properties": {
                "name": {"type": "string"}, "model": {"type": "string"}, "tag": {"type": "string"},
                "rule": {"type": "object"}, "selected": {"type": "integer"}, "target_size": {"type": "integer"},
                "control_size": {"type": "integer"}, "seed": {"type": "integer"}, "file": {"type": "string"},
                "population": {"enum": ["intersection", "all_customers"]}}},
    }


@functools.cache
def schemas() -> dict[str, dict[str, Any]]:
    """Every published schema by name (``align_params``, ``train_params``, ``align_result``, ...)."""
    return _generated()


def published(name: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))


def check(name: str, document: Any, *, what: str) -> None:
    """Raise :class:`SchemaViolation` naming the first field of ``document`` that ``name``'s schema refuses."""
    validator = jsonschema.Draft202012Validator(schemas()[name])
    error = next(iter(sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(the document)"
        raise SchemaViolation(f"{what}: {where}: {error.message} (schema proto/schemas/{name}.schema.json)")


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, schema in schemas().items():
        path = directory / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    if "--write" in sys.argv:
        for p in write():
            print(p)
