"""train.setup's key fields as an honest bank sends them, for tests that write the bank's setup by hand."""

from __future__ import annotations

from typing import Any

from protocols.channel import Message
from protocols.he import get_scheme
from protocols.vfl_lr import key_proof
from protocols.vfl_lr.messages import Field


def bank_key_fields(job_id: str, training: Any, evaluation: Any) -> Message:
    """The bank's two public keys (of key pairs ``training`` and ``evaluation``) and their proofs for ``job_id``."""
    scheme = get_scheme("paillier")
    return {Field.BANK_KEY: training[0].to_bytes(), Field.BANK_EVALUATION_KEY: evaluation[0].to_bytes(),
            **key_proof.attach(scheme, training[1], job_id, key_proof.BANK_TRAINING),
            **key_proof.attach(scheme, evaluation[1], job_id, key_proof.BANK_EVALUATION)}
