"""Private evaluation: held-out rows' joint scores reach the bank only as a shuffled multiset per tag.

For the rows of one split (validation or test) the bank sends, per tag and row, ``[[4 z_A 2^F + c]]_A``
under its own key, where ``c`` is the row's label code (0, 1, or :data:`UNKNOWN`). One ciphertext per
(row, tag), not one per row with the tags in slots: every tag gets its own permutation, so the bank cannot
line up a row's scores across tags (a row's pattern of labels over several tags often singles it out).

The platform, per tag: draws a fresh secret permutation (:func:`secret_permutation`), puts the bank's
ciphertexts in that order, packs :func:`eval_slots` of them into one by Horner's rule (``EVAL_SLOT``-bit
signed slots), and multiplies each packed ciphertext by ``Enc_mask(sum_j 4 z_B[j] 2^F 2^(EVAL_SLOT j))``:
that adds its own clipped fixed-point ``z_B`` slot-wise and re-randomises with mask noise, so nothing of
the bank's own noise survives. The bank decrypts, per tag, a shuffled list of ``4 (z_A + z_B) 2^F + c``:
the multiset of (joint score, label) pairs that AUC, KS, log-loss, calibration, gains and lift need, and
no row it could put them on. docs/protocol.md says what that multiset still tells the bank.
"""

from __future__ import annotations

from typing import Any

import gmpy2
import numpy as np
from gmpy2 import mpz

from protocols.errors import CryptoError, DeviationDetected, ProtocolError
from protocols.evaluation_metrics import tag_metrics
from protocols.he import Ciphertexts, HEScheme, Kernels, NoisePool, PrivateKey, PublicKey
from protocols.packing import pack_signed, slots_per_plaintext
from protocols.paillier_pool import Shipped
from protocols.shuffle import secret_permutation
from protocols.vfl_lr.encoding import check_slots, encode_z
from protocols.vfl_lr.model import sigmoid
from protocols.vfl_lr.params import F_BITS, Z_CLIP

VALIDATION, TEST = "validation", "test"
SPLITS = (VALIDATION, TEST)
CODE_BITS = 2  # the label code sits in the two low bits of a slot
UNKNOWN = 2  # the code of a row whose label the bank does not know (0 and 1 are the labels)
SLOT_BOUND = 4 * 2 * (int(Z_CLIP) << F_BITS)  # |4 (z_A + z_B) 2^F| of clipped scores: an honest slot lies within +-2^28 (+ code)
EVAL_SLOT = 32  # |4 (z_A + z_B) 2^F + c| <= 4 * 2 * 32 * 2^20 + 3 < 2^29: a signed 32-bit slot never carries


def eval_slots(key: PublicKey) -> int:
    """Evaluation values per packed ciphertext under ``key`` (63 for a 2048-bit key)."""
    return slots_per_plaintext(key, EVAL_SLOT)


def packed_count(n_rows: int, key: PublicKey) -> int:
    """Packed ciphertexts per tag for ``n_rows`` rows."""
    return -(-n_rows // eval_slots(key))


def label_codes(labels: np.ndarray) -> np.ndarray:
    """(rows, T) int64 label codes: the 0/1 label, or :data:`UNKNOWN` where it is NaN."""
    return np.where(np.isnan(labels), UNKNOWN, np.nan_to_num(labels, nan=0.0)).astype(np.int64)


# ---------------------------------------------------------------------------------------- bank ----


def encrypt_rows(scheme: HEScheme, pool: Kernels, pk: PublicKey, sk: PrivateKey, z_a: np.ndarray,
                 codes: np.ndarray) -> Ciphertexts:
    """``[[4 z_A 2^F + c]]_A`` per (tag, row), tag-major: tag 0's rows first, in the order of ``z_a``."""
    values = (encode_z(z_a) << CODE_BITS) + codes
    noise = scheme.noise_pool(pk, sk)  # ordinary noise by CRT: the platform, which cannot decrypt, holds these
    pool.fill(noise, values.size)
    return scheme.encrypt(pk, values.T.ravel().tolist(), noise)


def open_scores(pool: Kernels, sk: PrivateKey, cv: Ciphertexts, codes: np.ndarray,
                what: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per tag, the shuffled (joint score ``(z_A + z_B) 2^F``, label code) arrays the platform returned.

    ``codes`` are the (rows, T) codes the bank sent: each tag must come back with exactly that multiset of
    codes, or the reply is refused (:class:`ProtocolError`), as is a slot that overflowed.
    """
    n, T = codes.shape
    k, per_tag = eval_slots(sk.public_key), packed_count(n, sk.public_key)
    if len(cv) != per_tag * T:  # checked before anything is decrypted
        raise DeviationDetected(what, "count", f"{len(cv)} ciphertexts, expected {per_tag * T}")
    try:
        values = pool.decrypt(sk, cv)
    except CryptoError as err:
        raise ProtocolError(f"{what}: the shuffled scores do not decode: {err}") from err
    out = []
    for t in range(T):
        slots: list[int] = []
        for j in range(per_tag):
            slots.extend(check_slots(values[t * per_tag + j], min(k, n - j * k), EVAL_SLOT, -SLOT_BOUND,
                                     SLOT_BOUND + (1 << CODE_BITS), step=what, check="shuffled scores"))
        v = np.array(slots, dtype=np.int64)
        out.append((v >> CODE_BITS, v & ((1 << CODE_BITS) - 1)))
    for t, (_, got) in enumerate(out):
        if not np.array_equal(np.bincount(got, minlength=4), np.bincount(codes[:, t], minlength=4)):
            raise DeviationDetected(what, "label codes", f"tag {t} came back with other label codes than the rows sent")
    return out


def scores_metrics(opened: list[tuple[np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
    """:func:`protocols.evaluation_metrics.tag_metrics` per tag, on the labelled pairs of the shuffled multiset."""
    out = []
    for z, codes in opened:
        known = codes != UNKNOWN
        out.append(tag_metrics(codes[known].astype(np.float64), sigmoid(z[known] / (1 << F_BITS))))
    return out


# ------------------------------------------------------------------------------------ platform ----


def _horner_groups(modulus: mpz, shipped: Shipped, sizes: list[int], slot_bits: int) -> list[mpz]:
    """Each group of consecutive ciphertexts (``sizes``) packed into one, element j in slot j (``modulus``: the
    scheme's ciphertext modulus)."""
    values, n2, shift = shipped.values(), modulus, mpz(1) << slot_bits
    out, start = [], 0
    for size in sizes:
        group = values[start:start + size]
        acc = group[-1]
        for c in reversed(group[:-1]):
            acc = gmpy2.powmod(acc, shift, n2) * c % n2
        out.append(acc)
        start += size
    return out


def shuffle_and_add(scheme: HEScheme, pool: Kernels, cv: Ciphertexts, z_b: np.ndarray,
                    noise: NoisePool) -> Ciphertexts:
    """The platform's answer: per tag, the bank's ciphertexts (tag-major, as :func:`encrypt_rows` sends
    them) in a fresh secret order, packed, plus ``4 z_B 2^F`` of the same rows, re-randomised.

    ``z_b`` is (rows, T) in fixed point (:func:`protocols.vfl_lr.encoding.encode_z`); ``noise`` is a mask
    pool under the bank's key. Returns :func:`packed_count` ciphertexts per tag, tag-major.
    """
    key = cv.public_key
    n, T = z_b.shape
    if len(cv) != n * T:
        raise ValueError(f"{len(cv)} ciphertexts for {n} rows and {T} tags")
    noise.check(key, mask=True)
    k = eval_slots(key)
    ordered: list[mpz] = []
    sizes: list[int] = []
    plains: list[int] = []
    for t in range(T):
        perm = secret_permutation(n)
        column = cv.values[t * n:(t + 1) * n]
        ordered.extend(column[i] for i in perm)
        shifted = (z_b[perm, t].astype(np.int64) << CODE_BITS).tolist()
        for s in range(0, n, k):
            sizes.append(min(k, n - s))
            plains.append(pack_signed(shifted[s:s + k], EVAL_SLOT))
    modulus = scheme.ciphertext_modulus(key)
    packed = _pack_on(pool, modulus, ordered, sizes)
    enc_z = scheme.encrypt(key, plains, noise)  # adds z_B and re-randomises
    return scheme.add(scheme.ciphertexts(key, packed), enc_z)


def _pack_on(pool: Kernels, modulus: mpz, values: list[mpz], sizes: list[int]) -> list[mpz]:
    """:func:`_horner_groups` with the groups spread over the pool's workers."""
    bits = modulus.bit_length()
    parts = min(pool.workers, len(sizes))
    if parts <= 1:
        return _horner_groups(modulus, Shipped(values, bits), sizes, EVAL_SLOT)
    bounds = np.linspace(0, len(sizes), parts + 1).astype(int)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    futures = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        chunk = Shipped(values[starts[a]:starts[b]], bits)
        futures.append(pool.compute.submit(_horner_groups, modulus, chunk, sizes[a:b], EVAL_SLOT))
    return [v for f in futures for v in f.result()]


__all__ = ["CODE_BITS", "EVAL_SLOT", "SPLITS", "TEST", "UNKNOWN", "VALIDATION", "encrypt_rows", "eval_slots",
           "label_codes", "open_scores", "packed_count", "scores_metrics", "secret_permutation",
           "shuffle_and_add"]
