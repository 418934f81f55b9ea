"""The mask path, both sides: ``[[E]]_A -> [[X_Bq^T E + R_B]]_A -> X_Bq^T E + R_B -> X_Bq^T E`` (docs/protocol.md).

The platform needs ``X_Bq^T E`` to take the bank's masks ``E`` out of its gradient ``X_Bq^T S``; the bank decrypts
it for the platform, masked by the platform's ``R_B``. That decryption is the one the bank performs for the other
party, so each side checks what it decrypts or receives: the count and layout of the reply before the bank
decrypts it, every slot's range after (bank); every opened product's range (platform).
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np

from protocols.errors import CryptoError, DeviationDetected
from protocols.packing import SlotLayout, pack_signed
from protocols.vfl_lr.encoding import check_slots
from protocols.vfl_lr.messages import Step
from protocols.vfl_lr.params import STAT_BITS, SlotPlan

Pending = tuple[int, int, int, int]  # (tag group, first feature, features, the packed R_B of the ciphertext)


def layout(plan: SlotPlan, n_features: int) -> list[int]:
    """Slots in each ciphertext of the reply: per tag group, the platform's ``n_features`` products (their tags in
    slots) packed ``features_per_emask_ct`` to a ciphertext."""
    out = []
    for g in plan.groups:
        per_ct = plan.features_per_emask_ct(len(g))
        out.extend(min(per_ct, n_features - start) * len(g) for start in range(0, n_features, per_ct))
    return out


def masked_products(scheme: Any, kernels: Any, bank_key: Any, plan: SlotPlan, masks: Any, Xq: np.ndarray,
                    noise: Any) -> tuple[Any, list[Pending]]:
    """The platform's reply ``[[X_Bq^T E + R_B]]_A``: per tag group a Pippenger product over the batch's rows,
    Horner-packed by feature, each packed ciphertext times ``Enc_A(R_B)`` with mask noise (``noise``) so the key
    holder learns nothing from its randomness; and what the platform keeps to open the answer (:data:`Pending`)."""
    n_rows, n2 = len(Xq), scheme.ciphertext_modulus(bank_key)
    parts, pending = [], []
    for gi, g in enumerate(plan.groups):
        prod = kernels.matvec_t(masks[gi * n_rows:(gi + 1) * n_rows], Xq)
        per_ct = plan.features_per_emask_ct(len(g))  # each feature's product becomes one wide slot
        packed = scheme.pack_ciphertexts(prod, SlotLayout(plan.emask_slot * len(g), per_ct))
        for index, c in enumerate(packed.values):
            start = index * per_ct
            count = min(per_ct, len(prod) - start)
            r_packed = pack_signed([secrets.randbits(plan.emask_bits + STAT_BITS) for _ in range(count * len(g))],
                                   plan.emask_slot)
            parts.append(c * scheme.encrypt(bank_key, [r_packed], noise).values[0] % n2)
            pending.append((gi, start, count, r_packed))
    return scheme.ciphertexts(bank_key, parts), pending


def open_for_platform(kernels: Any, private_key: Any, plan: SlotPlan, cv: Any, n_slots: list[int]) -> list[int]:
    """The bank decrypts the reply for the platform, checked: it decrypts inside the key's signed range, every
    packed value holds exactly its ``n_slots`` (:func:`layout`; the count was checked before) and every slot lies
    in the range the honest protocol gives it (``|X_Bq^T e| < 2^emask_bits`` plus ``R_B`` in
    ``[0, 2^(emask_bits + 40))``). The checks bound what a deviating platform can place in a reply; the labels are
    protected from it by the noise on them (label_privacy.py), not by these checks."""
    try:
        opened = kernels.decrypt(private_key, cv)
    except CryptoError:
        raise DeviationDetected(Step.EMASK, "masked products", "a value decrypts outside the key's signed range") \
            from None
    low, high = -(1 << plan.emask_bits), (1 << (plan.emask_bits + STAT_BITS)) + (1 << plan.emask_bits)
    for value, count in zip(opened, n_slots, strict=True):
        check_slots(value, count, plan.emask_slot, low, high, step=Step.EMASK, check="masked products")
    return opened


def open_products(plan: SlotPlan, values: list[int], pending: list[Pending], n_features: int,
                  n_tags: int) -> np.ndarray:
    """The platform's ``X_Bq^T E`` (features x T, Python ints) from the values the bank opened, ``R_B`` taken out;
    every product within ``2^emask_bits`` as the honest masks make it (the bank adds nothing here)."""
    bound = 1 << plan.emask_bits
    xte = np.zeros((n_features, n_tags), dtype=object)
    for value, (gi, start, count, r_packed) in zip(values, pending, strict=True):
        g = plan.groups[gi]
        slots = check_slots(value - r_packed, count * len(g), plan.emask_slot, -bound, bound,
                            step=Step.EMASK_OPEN, check="mask-path range")
        for f in range(count):
            xte[start + f, list(g)] = slots[f * len(g):(f + 1) * len(g)]
    return xte


__all__ = ["Pending", "layout", "masked_products", "open_for_platform", "open_products"]
