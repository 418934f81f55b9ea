"""The platform's policy, enforced: the knobs of ``[policy]`` (``party_common.policy``) checked on every
session the bank opens, every PSI result and every partial-score call. Each refusal names its knob.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from party_common.config import ConfigError
from party_common.policy import PolicyConfig, PolicyRefused, QuotaExceeded, knob
from party_common.storage import JobStore
from protocols.channel import Message
from protocols.party_data import PartyData
from protocols.psi import protocol_of
from protocols.vfl_lr.disclosure import EvaluationLimits
from protocols.vfl_lr.messages import Field

SCORE_EVENT = "partial scores"  # audit rows of partial-score calls (count = rows answered)
DAY_S = 86_400.0
MINUTE_S = 60.0


def restrict_features(data: PartyData, allowed: Sequence[str] | None, where: str) -> PartyData:
    """The platform's data with only the feature columns the policy allows joint models to use."""
    if allowed is None:
        return data
    unknown = [c for c in allowed if c not in data.feature_names]
    if unknown:
        raise ConfigError(f"{where}: 'allowed_feature_columns' names column(s) {', '.join(unknown)} that "
                          f"{data.source} does not have (it has {', '.join(data.feature_names)})")
    return data.select_columns(allowed)


class PlatformPolicy:
    """The checks of one platform node's policy; thread-safe. ``clock``: seconds since the epoch (tests)."""

    def __init__(self, policy: PolicyConfig, *, platform_rows: int, jobs: JobStore,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = policy
        self._clock = clock
        self._lock = threading.Lock()
        self._calls: collections.deque[float] = collections.deque()
        self._rows: collections.deque[tuple[float, int]] = collections.deque()
        self._rows_total = 0  # the sum of self._rows' counts, kept as they come and go (a call must not cost O(day))
        self.max_psi_rows = policy.max_psi_rows or max(1_000_000, 10 * platform_rows)
        if policy.partial_score_rows_per_day is not None:  # the day's rows survive a restart: from the audit
            since = dt.datetime.fromtimestamp(clock() - DAY_S, dt.UTC).isoformat(timespec="seconds")
            for event in jobs.audit_events(event=SCORE_EVENT, since=since):
                if event.outcome == "ok":
                    self._rows.append((dt.datetime.fromisoformat(event.at).timestamp(), event.count))
                    self._rows_total += event.count

    @property
    def evaluation_limits(self) -> EvaluationLimits:
        """What a training session may ask of the platform (protocols/vfl_lr/disclosure.py)."""
        c = self.config
        return EvaluationLimits(max_bank_columns=c.max_bank_columns,
                                max_validation_evaluations=c.max_validation_evaluations,
                                min_evaluation_rows=c.min_evaluation_rows)

    @property
    def manual_approval(self) -> bool:
        return self.config.approval == "manual"

    # ---- sessions ----

    def check_session(self, kind: str, params: Message, alignment_size: int | None) -> None:
        """Refuse a session the policy does not allow: a PSI protocol not accepted, tags not allowed, an
        alignment too small."""
        if kind == "psi":
            protocol = protocol_of(params)
            if protocol not in self.config.psi_protocols:
                raise PolicyRefused(f"the platform's policy does not accept PSI protocol '{protocol}' "
                                    f"({knob('psi_protocols')}: {', '.join(self.config.psi_protocols)}); "
                                    f"run the alignment with protocol '{self.config.psi_protocols[0]}'")
        if kind == "train":
            self.check_tags(_session_tags(params), "trained")
            self.check_encryption(params)
            if alignment_size is not None:
                self.check_intersection(alignment_size)

    def check_encryption(self, params: Message) -> None:
        """Refuse a training session under an HE scheme or a key size the policy does not accept (the session's
        parameters name both; a job that names neither runs Paillier with 2048-bit keys)."""
        scheme, bits = _session_encryption(params)
        if scheme not in self.config.he_schemes:
            raise PolicyRefused(f"the platform's policy does not accept HE scheme '{scheme}' ({knob('he_schemes')}: "
                                f"{', '.join(self.config.he_schemes)})")
        if bits not in self.config.key_bits:
            raise PolicyRefused(f"the platform's policy does not accept {bits}-bit keys ({knob('key_bits')}: "
                                f"{', '.join(map(str, self.config.key_bits))})")

    def check_intersection(self, size: int) -> None:
        least = self.config.min_intersection
        if least is not None and size < least:
            raise PolicyRefused(f"the intersection has {size} customers; the platform's policy needs at least "
                                f"{least} ({knob('min_intersection')})")

    def check_tags(self, tags: Sequence[str], verb: str) -> None:
        allowed = self.config.allowed_tags
        if allowed is None:
            return
        refused = [t for t in tags if t not in allowed]
        if refused:
            raise PolicyRefused(f"the platform's policy does not allow tag(s) {', '.join(refused)} to be {verb} "
                                f"({knob('allowed_tags')}: {', '.join(allowed) or 'none'})")

    # ---- scoring ----

    def check_scoring(self, model_job_id: str, tags: Sequence[str], rows: int) -> None:
        """Refuse a partial-score call the policy does not allow now; count it when allowed."""
        models = self.config.allowed_models
        if models is not None and model_job_id not in models:
            raise PolicyRefused(f"the platform's policy does not allow model {model_job_id} to be scored "
                                f"({knob('allowed_models')})")
        self.check_tags(tags, "scored")
        now = self._clock()
        with self._lock:
            per_minute = self.config.partial_score_calls_per_minute
            while self._calls and self._calls[0] <= now - MINUTE_S:
                self._calls.popleft()
            if per_minute is not None and len(self._calls) >= per_minute:
                raise QuotaExceeded(f"{len(self._calls)} partial-score calls in the last minute; the platform "
                                    f"allows {per_minute} ({knob('partial_score_calls_per_minute')}); "
                                    "try again later")
            per_day = self.config.partial_score_rows_per_day
            self._forget_rows_before(now - DAY_S)
            used = self._rows_total
            if per_day is not None and used + rows > per_day:
                raise QuotaExceeded(f"answering {rows} rows would make {used + rows} partial-score rows in the "
                                    f"last 24 hours; the platform allows {per_day} "
                                    f"({knob('partial_score_rows_per_day')}); try again later")
            self._calls.append(now)
            self._rows.append((now, rows))
            self._rows_total += rows

    def _forget_rows_before(self, cutoff: float) -> None:
        while self._rows and self._rows[0][0] <= cutoff:
            self._rows_total -= self._rows.popleft()[1]

    def rows_today(self) -> int:
        """Partial-score rows answered in the last 24 hours (as the rows-per-day quota counts them)."""
        now = self._clock()
        with self._lock:
            self._forget_rows_before(now - DAY_S)
            return self._rows_total

    def describe(self) -> dict[str, Any]:
        return {**self.config.describe(), "max_psi_rows": self.max_psi_rows}


def _session_tags(params: Message) -> list[str]:
    """The tags a training session names (the protocol's own field); the handler checks the rest."""
    try:
        tags = json.loads(str(params.get(Field.TAGS, "[]")))
    except ValueError:
        return []
    return [str(t) for t in tags] if isinstance(tags, list) else []


def _session_encryption(params: Message) -> tuple[str, object]:
    """The HE scheme and key size a training session's parameters name (the handler validates the rest)."""
    try:
        p = json.loads(str(params.get(Field.PARAMS, "{}")))
    except ValueError:
        p = {}
    p = p if isinstance(p, dict) else {}
    return str(p.get("he_scheme", "paillier")), p.get("key_bits", 2048)


__all__ = ["SCORE_EVENT", "PlatformPolicy", "restrict_features"]
