"""Hiding the label mask from the platform (``TrainParams.hide_label_mask``): per-pair encodings on both sides.

In this mode the platform never learns which (row, tag) labels the bank knows (docs/protocol.md, "Label
mask"). The platform sends one ``[[z_B 2^F]]_P`` per (row, tag), row-major; the bank, which knows ``M``,

* takes ``X_Aq^T (M_t o z_B 2^F)`` per tag over its labelled rows only and Horner-packs the tags of each
  feature into the slots of the default layout (:func:`cross_products`), which it then masks as always;
* returns the residuals tag-major, ``plan.pairs_per_ct`` rows of one tag to a ciphertext: slot i holds
  ``k_t (d'_it 2^F) + rho_it + e_it`` for a labelled pair and ``e_it`` for an unlabelled one, with
  ``k_t = round(2^G / m_t)`` (:func:`tag_scales`) and ``rho_it`` a dither uniform on ``[-k_t/2, k_t/2]``
  (:func:`residuals`). Each packed ciphertext is multiplied by a fresh ``Enc_P`` under mask noise, so its
  noise is uniform in the platform's noise group whichever slots came from the platform's own ciphertexts.

The platform removes ``X_Bq^T E`` as always and divides by ``4 2^G`` instead of ``4 m_t``: it learns its
gradient, not ``m_t``. The dither keeps ``k_t`` out of the integers it decrypts (without it the gcd of
``k_t X_Bq^T (M_t o d'_t 2^F)`` over the features would give ``k_t``, and with it ``m_t``).
"""

from __future__ import annotations

import secrets

import gmpy2
import numpy as np
from gmpy2 import mpz

from protocols.he import Ciphertexts, HEScheme, Kernels, NoisePool
from protocols.packing import SlotLayout, pack_signed
from protocols.vfl_lr.params import SlotPlan


def tag_scales(counts: np.ndarray, plan: SlotPlan) -> list[int]:
    """Per tag, ``k_t = round(2^G / m_t)`` for ``m_t`` labelled rows in the batch (0 for a tag with none)."""
    top = 1 << (plan.scale_bits + 1)
    return [(top + int(m)) // (2 * int(m)) if m > 0 else 0 for m in counts]


def residual_cts(n_rows: int, plan: SlotPlan) -> int:
    """Ciphertexts of one batch's residuals: per tag, ``n_rows`` slots ``plan.pairs_per_ct`` to a ciphertext."""
    return plan.n_tags * plan.pair_cts(n_rows)


def cross_products(scheme: HEScheme, pool: Kernels, pairs: Ciphertexts, Xq: np.ndarray, m: np.ndarray,
                   plan: SlotPlan) -> list[Ciphertexts]:
    """Per tag group, per feature: ``[[X_Aq^T (M_t o z_B 2^F)]]_P`` with the group's tags in signed slots.

    ``pairs`` holds ``[[z_B 2^F]]_P`` per (row, tag), row-major. Unmasked and not re-randomised: the
    caller adds ``Enc_P(R_A)`` with mask noise, as for the default layout.
    """
    n, T = m.shape
    pk, d = pairs.public_key, Xq.shape[1]
    per_tag: list[list[mpz]] = []
    for t in range(T):
        idx = np.flatnonzero(m[:, t])
        if len(idx) == 0:
            per_tag.append([mpz(1)] * d)  # Enc(0) without noise; the caller's Enc(R_A) re-randomises it
            continue
        sub = scheme.ciphertexts(pk, [pairs.values[int(i) * T + t] for i in idx])
        per_tag.append(pool.matvec_t(sub, Xq[idx]).values)
    out = []
    for g in plan.groups:
        column = [per_tag[t][j] for j in range(d) for t in g]  # feature-major, the group's tags inside
        out.append(scheme.pack_ciphertexts(scheme.ciphertexts(pk, column), SlotLayout(plan.cross_slot, len(g))))
    return out


def residuals(scheme: HEScheme, pairs: Ciphertexts, m: np.ndarray, c: np.ndarray, e: np.ndarray,
              scales: list[int], plan: SlotPlan, noise: NoisePool) -> Ciphertexts:
    """``[[k_t (z_B 2^F + c) + rho + e]]_P`` on labelled pairs and ``[[e]]_P`` elsewhere, tag-major, packed.

    ``c`` is the bank's plaintext part ``(z_A + 2 - 4 y) 2^F`` (rows x T), ``e`` the masks of every pair,
    ``noise`` a mask-noise pool under the platform's key (one value per packed ciphertext).
    """
    pk = pairs.public_key
    n, T = m.shape
    n2 = scheme.ciphertext_modulus(pk)
    shift = mpz(1) << plan.pair_slot
    per_ct = plan.pairs_per_ct
    values = pairs.values
    out: list[mpz] = []
    for t in range(T):
        k = scales[t]
        half = k // 2
        for start in range(0, n, per_ct):
            chunk = range(start, min(start + per_ct, n))
            acc = mpz(1)
            for i in reversed(chunk):  # Horner: the first row of the chunk ends in the lowest slot
                if acc != 1:
                    acc = gmpy2.powmod(acc, shift, n2)
                if m[i, t]:
                    acc = acc * values[i * T + t] % n2
            if acc != 1 and k != 1:
                acc = gmpy2.powmod(acc, k, n2)
            plain = [k * int(c[i, t]) + secrets.randbelow(k + 1) - half + int(e[i, t]) if m[i, t] else int(e[i, t])
                     for i in chunk]
            fresh = scheme.encrypt(pk, [pack_signed(plain, plan.pair_slot)], noise).values[0]
            out.append(acc * fresh % n2)
    return scheme.ciphertexts(pk, out)


__all__ = ["cross_products", "residual_cts", "residuals", "tag_scales"]
