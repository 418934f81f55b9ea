"""Typed parameters from untrusted mappings (JSON from a person or from the peer): one checker for all of them.

An unknown key is named beside the known ones, a value of the wrong type is named with the type it must
have (an integer passes for a number, a bool is not an integer, a number must be finite); ranges are each
parameter object's own business.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, TypeVar

from protocols.errors import UserError

T = TypeVar("T")

# The Python type each parameter must have, by the annotation's name (annotations are strings here).
_KINDS: dict[str, tuple[type, str]] = {"int": (int, "an integer"), "float": (float, "a number"),
                                       "bool": (bool, "true or false"), "str": (str, "a string")}


def dataclass_from_mapping(cls: type[T], raw: object, *, what: str, error: type[UserError]) -> T:
    """``cls(**raw)`` for a dataclass whose fields are annotated int, float, str or bool (others pass as they are).

    ``what`` names one parameter in messages ("training parameter"); ``error`` is the exception raised.
    """
    if not isinstance(raw, Mapping):
        raise error(f"{what}s must be an object of name: value, got {type(raw).__name__}")
    kinds = {f.name: str(f.type) for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in kinds:
            raise error(f"unknown {what} {name!r}; known: {', '.join(sorted(kinds))}")
        if kinds[name] in _KINDS:
            _check_kind(name, kinds[name], value, what, error)
        values[name] = float(value) if kinds[name] == "float" else value
    return cls(**values)


def check_field_types(obj: object, *, what: str, error: type[UserError]) -> None:
    """Refuse a dataclass instance whose int, float, str or bool fields hold another type."""
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        if str(f.type) in _KINDS:
            _check_kind(f.name, str(f.type), getattr(obj, f.name), what, error)


def _check_kind(name: str, kind: str, value: object, what: str, error: type[UserError]) -> None:
    expected, words = _KINDS[kind]
    if kind == "float":  # an integer is a number too (but a bool is not), and a number is finite
        ok = isinstance(value, int | float) and not isinstance(value, bool) and _finite(value)
    else:
        ok = isinstance(value, expected) and (expected is bool or not isinstance(value, bool))
    if not ok:
        finite = not isinstance(value, int | float) or isinstance(value, bool) or _finite(value)
        got = type(value).__name__ if finite else "a number that is not finite"
        raise error(f"{what} {name!r} must be {words}, got {got}")


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False
