"""The platform's policy: what it allows the bank, read from its config's ``[policy]`` table.

Example::

    [policy]
    max_released_projections = 12       # distinct projections (weight vectors) per customer: scoring, evaluation
    max_bank_columns = 1000             # training: the most model columns the bank may declare
    max_validation_evaluations = 1      # training: epochs whose validation rows the platform evaluates, per job
    min_evaluation_rows = 20            # training: the smallest validation or test split it evaluates
    min_stability_rows = 1000           # stability: the fewest rows it computes feature indices over
    allowed_feature_columns = ["visits", "basket_value"]  # platform features joint models may use (default all)
    allowed_tags = ["tag_car_owner"]    # tags the bank may train and score (default any)
    allowed_models = ["train-..."]      # model job IDs that may be scored (default any not revoked)
    min_intersection = 100              # smallest intersection the platform stores or trains on
    max_concurrent_jobs = 8             # open protocol sessions at once
    max_psi_rows = 5_000_000            # most IDs the bank may declare in one PSI
    psi_protocols = ["ot", "ecdh"]      # PSI protocols the platform accepts (default both)
    psi_key_rotation_days = 30          # incremental alignment: a key epoch's longest life (0: keep no state)
    partial_score_calls_per_minute = 600
    partial_score_rows_per_day = 1_000_000
    approval = "manual"                 # or "auto" (default): jobs wait for `platform-node approve JOB`

How long an idle session lives is the node's session lifecycle (``[node]``), not a policy key.
Every refusal names the knob (``[policy] <key>``) so the bank's job error tells its data scientist what the
platform would have to change. The errors live here, below both nodes: the platform raises them, gRPC maps
them (``party_common.grpc_errors``) and the bank recognises a job that waits for approval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from party_common.known_keys import unknown_key_message
from protocols.errors import PeerError, ProtocolError
from protocols.he import scheme_names
from protocols.stability import MIN_STABILITY_ROWS
from protocols.vfl_lr.disclosure import MAX_BANK_COLUMNS, MAX_VALIDATION_EVALUATIONS, MIN_EVALUATION_ROWS

APPROVAL_MODES = ("auto", "manual")
PSI_PROTOCOLS = ("ot", "ecdh")  # protocols.psi.PROTOCOLS (a test checks they agree)
HE_SCHEMES = tuple(scheme_names())  # protocols.he: what a training job's he_scheme may name
KEY_SIZES = (2048, 3072, 4096)  # what a training job's key_bits may be (TrainParams.validate)
AWAITING_APPROVAL = "awaiting approval"  # the job status while the platform's operator has not approved
_APPROVAL_MARK = "awaiting approval by the platform's operator"
REFUSED_BY_OPERATOR = "refused by the platform's operator"  # the error of a job the operator refused


class PolicyRefused(ProtocolError):
    """The platform's policy does not allow this; the message names the ``[policy]`` key."""


class QuotaExceeded(PolicyRefused):
    """A rate or volume limit of the policy is reached for now; retrying later may succeed."""


class AwaitingApproval(PolicyRefused):
    """The platform runs in approval mode and its operator has not approved this job (yet)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} is {_APPROVAL_MARK} ([policy] approval = \"manual\"); "
                         f"they approve it with `platform-node approve {job_id}`")


def is_awaiting_approval(err: BaseException) -> bool:
    """Whether ``err`` (the bank's view of a platform refusal) means "wait for the platform's approval"."""
    return isinstance(err, AwaitingApproval) or (isinstance(err, PeerError) and _APPROVAL_MARK in str(err))


def knob(key: str) -> str:
    """How a refusal names a policy key."""
    return f"[policy] {key}"


@dataclass(frozen=True)
class PolicyConfig:
    """The platform's ``[policy]`` table; None means "no limit" (or, for the lists, "any")."""

    allowed_feature_columns: tuple[str, ...] | None = None
    allowed_tags: tuple[str, ...] | None = None
    allowed_models: tuple[str, ...] | None = None
    min_intersection: int | None = None
    max_concurrent_jobs: int = 8
    max_psi_rows: int | None = None  # None: ten times the platform's own rows, at least 1,000,000
    partial_score_calls_per_minute: int | None = None
    partial_score_rows_per_day: int | None = None
    approval: str = "auto"
    # Training sessions (protocols/vfl_lr/disclosure.py): what the bank may read through train.gradient and evaluation.
    max_bank_columns: int = MAX_BANK_COLUMNS
    max_validation_evaluations: int = MAX_VALIDATION_EVALUATIONS
    min_evaluation_rows: int = MIN_EVALUATION_ROWS
    # Stability (protocols/stability.py): the fewest alignment rows the platform computes its indices over.
    min_stability_rows: int = MIN_STABILITY_ROWS
    psi_protocols: tuple[str, ...] = PSI_PROTOCOLS
    psi_key_rotation_days: int = 30  # incremental alignment (docs/psi.md): days a key epoch lasts; 0 keeps no state
    # Training sessions: the HE schemes (he_scheme) and key sizes (key_bits) the platform accepts; default every one.
    he_schemes: tuple[str, ...] = HE_SCHEMES
    key_bits: tuple[int, ...] = KEY_SIZES
    # Screen sessions (protocols/screen): whether the bank may compute WOE and IV over the platform's features,
    # the rows every bin it sums must hold (smaller ones merged first), and the labelled rows per bin and tag
    # the bank must merge up to after decrypting.
    allow_screen: bool = True
    min_screen_bin_rows: int = 50
    min_screen_labelled_rows: int = 20

    def describe(self) -> dict[str, Any]:
        """The policy as plain values (for `platform-node policy` and the docs)."""
        return {key: (list(value) if isinstance(value, tuple) else value) for key, value in self.__dict__.items()}


_LISTS = ("allowed_feature_columns", "allowed_tags", "allowed_models")
_POSITIVE = ("min_intersection", "max_concurrent_jobs", "max_psi_rows", "partial_score_calls_per_minute",
             "partial_score_rows_per_day", "max_bank_columns", "max_validation_evaluations", "min_evaluation_rows",
             "min_stability_rows", "min_screen_bin_rows", "min_screen_labelled_rows")
KNOWN_KEYS = frozenset({*_LISTS, *_POSITIVE, "approval", "max_released_projections", "psi_protocols", "he_schemes",
                        "key_bits", "allow_screen", "psi_key_rotation_days"})


def parse_policy(table: dict[str, Any], where: str) -> PolicyConfig:
    """``[policy]`` checked; raises :class:`ValueError` naming the key (the config loader adds the file)."""
    refusal = unknown_key_message(table, KNOWN_KEYS, where)
    if refusal:
        raise ValueError(refusal)
    values: dict[str, Any] = {}
    for key in _LISTS:
        if key in table:
            items = table[key]
            if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
                raise ValueError(f"{where}: '{key}' must be a list of names, got {items!r}")
            values[key] = tuple(items)
    for key in _POSITIVE:
        if key in table:
            value = table[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{where}: '{key}' must be a whole number of at least 1, got {value!r}")
            values[key] = value
    if "psi_protocols" in table:
        chosen = table["psi_protocols"]
        if (not isinstance(chosen, list) or not chosen
                or not all(isinstance(p, str) and p in PSI_PROTOCOLS for p in chosen) or len(set(chosen)) != len(chosen)):
            raise ValueError(f"{where}: 'psi_protocols' must be a non-empty list of distinct names from "
                             f"{', '.join(PSI_PROTOCOLS)}, got {chosen!r}")
        values["psi_protocols"] = tuple(chosen)
    if "psi_key_rotation_days" in table:
        days = table["psi_key_rotation_days"]
        if not isinstance(days, int) or isinstance(days, bool) or not 0 <= days <= 3650:
            raise ValueError(f"{where}: 'psi_key_rotation_days' must be a whole number of days from 0 (keep no "
                             f"incremental PSI state) to 3650, got {days!r}")
        values["psi_key_rotation_days"] = days
    for key, known in (("he_schemes", HE_SCHEMES), ("key_bits", KEY_SIZES)):
        if key in table:
            chosen = table[key]
            if (not isinstance(chosen, list) or not chosen or not all(v in known and not isinstance(v, bool)
                                                                      for v in chosen) or len(set(chosen)) != len(chosen)):
                raise ValueError(f"{where}: '{key}' must be a non-empty list of distinct values from "
                                 f"{', '.join(map(str, known))}, got {chosen!r}")
            values[key] = tuple(chosen)
    if "allow_screen" in table:
        if not isinstance(table["allow_screen"], bool):
            raise ValueError(f"{where}: 'allow_screen' must be true or false, got {table['allow_screen']!r}")
        values["allow_screen"] = table["allow_screen"]
    if "approval" in table:
        if table["approval"] not in APPROVAL_MODES:
            raise ValueError(f"{where}: 'approval' must be one of {', '.join(APPROVAL_MODES)}, "
                             f"got {table['approval']!r}")
        values["approval"] = table["approval"]
    return PolicyConfig(**values)


__all__ = ["APPROVAL_MODES", "HE_SCHEMES", "KEY_SIZES", "PSI_PROTOCOLS", "AWAITING_APPROVAL", "REFUSED_BY_OPERATOR", "AwaitingApproval", "KNOWN_KEYS", "PolicyConfig",
           "PolicyRefused", "QuotaExceeded", "is_awaiting_approval", "knob", "parse_policy"]
