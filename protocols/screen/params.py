"""The screen protocol's parameters and wire vocabulary (federated WOE and IV, docs/protocol.md "Screen")."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from protocols.errors import UserError
from protocols.he import DEFAULT_SCHEME, scheme_names

SESSION_KIND = "screen"  # the kind of session the bank opens on the platform
VERSION = "screen/1"  # the session's protocol version, checked by the platform
KEY_BITS = (2048, 3072, 4096)
# Randomised response's epsilon per (customer, tag) (protocols.screen.rr); a customer's labels over T tags: T times it.
# Measured on default_credit (10 quantile bins, 30,000 rows): IV within 0.02 of the exact one and the features'
# IV ranking kept (rank correlation 0.998) at 2; at 1 the error grows to 0.08.
DEFAULT_EPSILON = 2.0
MAX_TAGS = 64
MAX_BATCH_ROWS = 200_000


class Step:
    """Step names, in protocol order."""

    DESCRIBE = "screen.describe"  # the bank's key and row count -> the platform's features and bin counts
    ROWS = "screen.rows"  # one batch of per-row ciphertexts (all intersected rows, in alignment order)
    BINS = "screen.bins"  # the encrypted histogram: per platform feature and bin, the sum of its rows' plaintexts


class Field:
    """Field names of the session's parameters and of every step's request and reply."""

    VERSION = "version"
    HE_SCHEME = "he_scheme"
    KEY_BITS = "key_bits"
    TAGS = "tags"  # JSON list: the tags screened (the platform's policy may refuse some)
    # screen.describe
    BANK_KEY = "bank_key"
    N_ROWS = "n_rows"
    TAGS_PER_CIPHERTEXT = "tags_per_ciphertext"
    FEATURES = "features"  # reply: JSON list of the platform's screened feature names
    N_BINS = "n_bins"  # reply: int64 array, bins per feature after the platform merged small ones
    BIN_LABELS = "bin_labels"  # reply: JSON, per feature, per (merged) bin, its name
    MIN_BIN_ROWS = "min_bin_rows"  # reply: the platform's policy
    MIN_LABELLED_ROWS = "min_labelled_rows"  # reply: the platform's policy, applied by the bank after decrypting
    # screen.rows
    OFFSET = "offset"
    CIPHERTEXTS = "ciphertexts"
    RECEIVED = "received"
    # screen.bins
    BIN_CIPHERTEXTS = "bin_ciphertexts"


@dataclass(frozen=True)
class ScreenParams:
    """A screen job's protocol parameters (the ``screen`` table of its JSON)."""

    he_scheme: str = DEFAULT_SCHEME
    key_bits: int = 2048
    # Randomised response on each row's label category per tag before encryption: epsilon per (customer, tag);
    # a customer's labels over T tags are (T x epsilon)-LDP. None: off (the report says a deviating platform
    # can then read labels through what the bank derives from the bins).
    label_epsilon: float | None = DEFAULT_EPSILON
    min_bin_rows: int = 20  # the bank's own floor on every platform bin's rows (checked after decrypting)
    min_labelled_rows: int = 20  # per bin and tag; smaller bins are merged with a neighbour (bank side)
    smoothing: float = 0.5  # added to events and non-events of every bin before WOE
    batch_rows: int = 20_000  # rows per screen.rows step

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ScreenParams:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise UserError(f"unknown screen parameter {unknown[0]!r}; known: {', '.join(sorted(known))}")
        return cls(**raw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self, *, insecure_for_tests: bool = False) -> ScreenParams:
        if self.he_scheme not in scheme_names():
            raise UserError(f"he_scheme {self.he_scheme!r} is not known; known: {', '.join(scheme_names())}")
        if self.key_bits not in KEY_BITS and not (insecure_for_tests and self.key_bits in (512, 1024)):
            raise UserError(f"key_bits must be one of {', '.join(map(str, KEY_BITS))}, got {self.key_bits!r}")
        eps = self.label_epsilon
        if eps is not None and (isinstance(eps, bool) or not isinstance(eps, int | float) or not math.isfinite(eps)
                                or not 0.01 <= eps <= 64):
            raise UserError(f"label_epsilon must be a number in [0.01, 64] or null (off), got {eps!r}")
        for name in ("min_bin_rows", "min_labelled_rows", "batch_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a whole number of at least 1, got {value!r}")
        if self.batch_rows > MAX_BATCH_ROWS:
            raise UserError(f"batch_rows must be at most {MAX_BATCH_ROWS:,}")
        if isinstance(self.smoothing, bool) or not isinstance(self.smoothing, int | float) or not 0 < self.smoothing <= 10:
            raise UserError(f"smoothing must be a number in (0, 10], got {self.smoothing!r}")
        return self


__all__ = ["DEFAULT_EPSILON", "KEY_BITS", "MAX_TAGS", "SESSION_KIND", "VERSION", "Field", "ScreenParams", "Step"]
