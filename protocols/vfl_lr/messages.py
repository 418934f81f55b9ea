"""The training protocol's wire vocabulary: step and field names both parties use, and checked readers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from protocols.channel import Message
from protocols.errors import DeviationDetected, InvalidCiphertext, ProtocolError
from protocols.he import Ciphertexts, HEScheme, PublicKey, get_scheme
from protocols.vfl_lr.params import HE_SCHEME

SESSION_KIND = "train"  # the kind of session the bank opens on the platform


class Step:
    """Step names, in protocol order (docs/protocol.md, "Messages")."""

    SETUP = "train.setup"
    EPOCH = "train.epoch"
    EMASK = "train.emask"
    EMASK_OPEN = "train.emask_open"
    FORWARD = "train.forward"
    GRADIENT = "train.gradient"
    EVALUATE = "train.evaluate"  # validation rows once per epoch; test rows once, after train.finish
    FINISH = "train.finish"


class Field:
    """Field names of the session's parameters and of every step's request and reply."""

    # opening the session
    VERSION = "version"
    PARAMS = "params"  # TrainParams as JSON
    TAGS = "tags"  # tag names as a JSON list
    # train.setup
    BANK_KEY = "bank_key"
    BANK_EVALUATION_KEY = "bank_evaluation_key"  # the bank's second public key: evaluation's ciphertexts only
    N_ROWS = "n_rows"
    TRAIN_ROWS = "train_rows"
    VALIDATION_ROWS = "validation_rows"
    TEST_ROWS = "test_rows"
    LABEL_MASK = "label_mask"
    BANK_COLUMNS = "bank_columns"  # the bank's model columns (features, intercept): train.gradient's width
    PLATFORM_KEY = "platform_key"
    HE_SCHEME = "he_scheme"  # setup reply: the scheme of the platform's key, which must be the job's (params)
    N_FEATURES = "n_features"
    # setup reply of a job on bins: how the platform binned ("binned" or "raw", bins per column, width, the rule's
    # note): for the bank's report only, never a bin's edges or counts (protocols/vfl_lr/bin_width.py)
    PLATFORM_BINNING = "platform_binning"
    # setup reply: in how many epochs the platform evaluates the validation rows (protocols/vfl_lr/disclosure.py)
    MAX_VALIDATION_EVALUATIONS = "max_validation_evaluations"
    # beside each key: a zero-knowledge proof that it was made as its scheme says (protocols/vfl_lr/key_proof.py)
    BANK_KEY_PROOF = "bank_key_proof"
    BANK_EVALUATION_KEY_PROOF = "bank_evaluation_key_proof"
    PLATFORM_KEY_PROOF = "platform_key_proof"
    RESUME_STEPS = "resume_steps"  # a resumed session: the bank's checkpoint position (protocols/vfl_lr/resume.py)
    # train.epoch; EPOCH and BATCH also address every per-batch step
    EPOCH = "epoch"
    BATCH_ROWS = "batch_rows"
    BATCH_SIZES = "batch_sizes"
    LABEL_DP = "label_dp"  # bool: the bank adds label-DP noise, so the platform clips its gradient rows
    OPTIMIZER = "optimizer"  # the optimizer both parties run (the job's, or what "auto" resolved to)
    BATCH = "batch"
    FIRST_BATCH = "first_batch"  # train.epoch of a session resumed mid-epoch: the batch it resumes at
    # train.emask, train.emask_open
    MASKS = "masks"
    MASKED_PRODUCTS = "masked_products"
    VALUES = "values"
    # train.forward, train.gradient
    ROWS = "rows"
    PAIRS = "pairs"
    MASKED_GRADIENT = "masked_gradient"
    MASKED_RESIDUALS = "masked_residuals"
    # train.evaluate (also EPOCH), train.finish
    SPLIT = "split"  # "validation" or "test"
    EVALUATION_ROWS = "evaluation_rows"  # the split's row positions, exactly as given at setup
    ENCRYPTED_SCORES = "encrypted_scores"  # [[4 z_A 2^F + label code]]_A per (tag, row), tag-major
    SHUFFLED_SCORES = "shuffled_scores"  # per tag, shuffled and packed [[4 (z_A + z_B) 2^F + code]]_A
    BEST_EPOCH = "best_epoch"


def ints_to_bytes(values: Sequence[int], width: int) -> bytes:
    """Signed big-endian integers of ``width`` bytes each, concatenated."""
    return b"".join(int(v).to_bytes(width, "big", signed=True) for v in values)


def ints_from_bytes(data: bytes, width: int, *, expected: int | None = None, what: str = "values") -> list[int]:
    """The inverse of :func:`ints_to_bytes`; :class:`ProtocolError` on a length that does not fit."""
    if len(data) % width or (expected is not None and len(data) != expected * width):
        raise ProtocolError(f"{what}: {len(data)} bytes is not {expected if expected is not None else 'a whole'} "
                            f"number of {width}-byte integers")
    return [int.from_bytes(data[i:i + width], "big", signed=True) for i in range(0, len(data), width)]


def read_ciphertexts(key: PublicKey, data: object, expected: int | None, what: str, *,
                     scheme: HEScheme | None = None) -> Ciphertexts:
    """``expected`` (None: any number of) ciphertexts under ``key`` from a bytes field, each checked by
    ``scheme`` (default: the one the protocol runs on, ``params.HE_SCHEME``) to lie in its ciphertext group."""
    if not isinstance(data, bytes):
        raise ProtocolError(f"{what}: expected ciphertext bytes")
    try:
        cv = (scheme or get_scheme(HE_SCHEME)).ciphertexts_from_bytes(key, data)
    except InvalidCiphertext as err:
        raise ProtocolError(f"{what}: {err}") from err
    if expected is not None and len(cv) != expected:  # checked before anything of it is decrypted
        raise DeviationDetected(what, "count", f"{len(cv)} ciphertexts, expected {expected}")
    return cv


def read_field(message: Message, name: str, kind: type) -> Any:
    """Field ``name`` of ``message``, which must be a ``kind`` (a bool is not an int)."""
    value = message.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"field {name!r} is missing or not a {kind.__name__}")
    return value


def read_index_array(message: Message, name: str, n_rows: int) -> np.ndarray:
    """Field ``name``: distinct row positions in ``0..n_rows-1`` as a 1-d int64 array."""
    value = message.get(name)
    if not isinstance(value, np.ndarray) or value.dtype != np.int64 or value.ndim != 1:
        raise ProtocolError(f"field {name!r} must be a 1-d int64 array")
    if len(value) and (value.min() < 0 or value.max() >= n_rows):
        raise ProtocolError(f"field {name!r} holds rows outside 0..{n_rows - 1}")
    if len(np.unique(value)) != len(value):
        raise ProtocolError(f"field {name!r} repeats a row")
    return value


__all__ = ["SESSION_KIND", "Field", "Step", "ints_from_bytes", "ints_to_bytes", "read_ciphertexts", "read_field",
           "read_index_array"]
