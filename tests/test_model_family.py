"""The model-family seam (protocols.model_family, protocols.models): halves name their family, the
registry loads and scores them, and halves stored before the field load as vfl-lr."""

from __future__ import annotations

import json

import numpy as np
import pytest

from protocols.model_family import FAMILY_FIELD, LEGACY_FAMILY, ModelError
from protocols.models import FAMILIES, family_of, get_family, load_bank_half, load_platform_half
from protocols.party_data import Schema
from protocols.vfl_lr import BankModel, PlatformModel
from protocols.vfl_lr.family import VFL_LR
from protocols.vfl_lr.state import Scaler

TAGS = ["t1", "t2"]


def _halves() -> tuple[BankModel, PlatformModel]:
    rng = np.random.default_rng(5)
    bank = BankModel("job", TAGS, rng.normal(size=(3, 2)), np.array([0.5, -0.25]),
                     Scaler(rng.normal(size=3), 1 + rng.random(3), 3.0),
                     Schema("id", ("a", "b", "c"), ("float64",) * 3, tuple(TAGS)), {"bank": "f1"},
                     calibration=np.array([[1.5, 0.1], [0.8, -0.2]]), platform_part=[True, False])
    platform = PlatformModel("job", TAGS, rng.normal(size=(4, 2)), Scaler(rng.normal(size=4), 1 + rng.random(4), 3.0),
                             Schema("id", ("p", "q", "r", "s"), ("float64",) * 4), {"bank": "f1"}, best_epoch=[2, 3])
    return bank, platform


def _stored(half: BankModel | PlatformModel) -> dict:
    return json.loads(json.dumps(half.to_dict()))  # what the model store writes and reads back


def test_the_registry_serves_vfl_lr():
    assert LEGACY_FAMILY == "vfl-lr" and list(FAMILIES) == ["vfl-lr"]
    assert get_family("vfl-lr") is VFL_LR and VFL_LR.name == "vfl-lr"
    with pytest.raises(ModelError, match="unknown model family 'trees'; this node serves vfl-lr"):
        get_family("trees")


def test_halves_store_their_family_and_load_through_the_registry():
    bank, platform = _halves()
    b, p = _stored(bank), _stored(platform)
    assert b[FAMILY_FIELD] == p[FAMILY_FIELD] == "vfl-lr"
    loaded_bank = load_bank_half(b, where="model job")
    loaded_platform = load_platform_half(p, where="model job")
    assert isinstance(loaded_bank, BankModel) and isinstance(loaded_platform, PlatformModel)
    assert loaded_bank.to_dict() == bank.to_dict() and loaded_platform.to_dict() == platform.to_dict()
    assert family_of(loaded_bank) is family_of(loaded_platform) is VFL_LR


def test_halves_stored_without_a_family_load_as_vfl_lr():
    """Models stored before the family field keep working, on both nodes."""
    bank, platform = _halves()
    b, p = _stored(bank), _stored(platform)
    del b[FAMILY_FIELD], p[FAMILY_FIELD]
    old_bank, old_platform = load_bank_half(b, where="m"), load_platform_half(p, where="m")
    assert old_bank.family == old_platform.family == "vfl-lr"
    assert old_bank.to_dict() == bank.to_dict() and old_platform.to_dict() == platform.to_dict()


def test_a_family_this_node_does_not_serve_is_refused_by_name():
    bank, platform = _halves()
    b = {**_stored(bank), FAMILY_FIELD: "trees"}
    with pytest.raises(ModelError, match="model 7: a model of family 'trees', which this node does not serve"):
        load_bank_half(b, where="model 7")
    with pytest.raises(ModelError, match="model 7: a model of family 'trees', not vfl-lr"):
        BankModel.from_dict(b, where="model 7")  # the family's own loader checks it too
    with pytest.raises(ModelError, match="not a model"):
        load_platform_half([1, 2], where="model 7")  # type: ignore[arg-type]


def test_serving_through_the_family_is_the_lr_formula():
    """bank_scores, platform_answer and combine give exactly what the halves' own methods give."""
    bank, platform = _halves()
    rng = np.random.default_rng(9)
    X_a, X_b = rng.normal(size=(6, 3)), rng.normal(size=(6, 4))
    family = family_of(bank)
    z_a, z_b = family.bank_scores(bank, X_a), family.platform_answer(platform, X_b)
    np.testing.assert_array_equal(z_a, bank.partial_scores(X_a))
    np.testing.assert_array_equal(z_b, platform.partial_scores(X_b))
    cols = [1, 0]
    np.testing.assert_array_equal(family.combine(bank, z_a[:, cols], z_b[:, cols], cols),
                                  bank.probabilities(z_a[:, cols] + z_b[:, cols], cols))
