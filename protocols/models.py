"""Model families by name (``protocols.model_family``): the nodes load and score every model through here.

A new family implements :class:`~protocols.model_family.ModelFamily` beside its protocol and is listed in
:data:`FAMILIES`; its halves store their family's name (:data:`~protocols.model_family.FAMILY_FIELD`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from protocols.model_family import (
    FAMILY_FIELD,
    LEGACY_FAMILY,
    BankHalf,
    ModelError,
    ModelFamily,
    ModelHalf,
    PlatformHalf,
)
from protocols.vfl_lr.family import VFL_LR

FAMILIES: dict[str, ModelFamily] = {VFL_LR.name: VFL_LR}


def get_family(name: str) -> ModelFamily:
    """The family registered as ``name``; :class:`ModelError` naming the known ones otherwise."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise ModelError(f"unknown model family {name!r}; this node serves {', '.join(sorted(FAMILIES))}") from None


def family_name(doc: Mapping[str, Any], *, where: str) -> str:
    """The family a stored half names (:data:`LEGACY_FAMILY` when it names none: stored before the field)."""
    if not isinstance(doc, Mapping):
        raise ModelError(f"{where}: not a model (not an object of name: value)")
    name = doc.get(FAMILY_FIELD, LEGACY_FAMILY)
    if name not in FAMILIES:
        raise ModelError(f"{where}: a model of family {name!r}, which this node does not serve "
                         f"(it serves {', '.join(sorted(FAMILIES))})")
    return str(name)


def load_bank_half(doc: Mapping[str, Any], *, where: str) -> BankHalf:
    """The bank's half of a stored model, by the family it names."""
    return FAMILIES[family_name(doc, where=where)].load_bank(doc, where=where)


def load_platform_half(doc: Mapping[str, Any], *, where: str) -> PlatformHalf:
    """The platform's half of a stored model, by the family it names."""
    return FAMILIES[family_name(doc, where=where)].load_platform(doc, where=where)


def family_of(half: ModelHalf) -> ModelFamily:
    """The family that serves a loaded half."""
    return get_family(half.family)


__all__ = ["FAMILIES", "family_name", "family_of", "get_family", "load_bank_half", "load_platform_half"]
