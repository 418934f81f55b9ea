"""Proofs that each public key sent in ``train.setup`` was made as its scheme says (for Paillier: that the modulus
is a Paillier-Blum modulus, ``protocols.modulus_proof``), bound to the job so that none is replayed for another.

The sender attaches :func:`attach` beside each key; the receiver runs :func:`check` right after
reading the key, before anything is encrypted under it. A missing or failing proof is what the honest protocol
never sends: :class:`~protocols.errors.DeviationDetected` at ``train.setup``, check ``modulus proof``.
"""

from __future__ import annotations

from typing import Any

from protocols.channel import Message
from protocols.errors import DeviationDetected, InvalidKey
from protocols.he import HEScheme
from protocols.modulus_proof import proof_context
from protocols.vfl_lr.messages import Field
from protocols.vfl_lr.params import VERSION

KEY_PROOF_CHECK = "modulus proof"
CONTEXT_DOMAIN = "fedprofile/vfl_lr/key"
# The keys' roles: a proof for one key of a job does not pass for another of the same job.
BANK_TRAINING, BANK_EVALUATION, PLATFORM_TRAINING = "bank training", "bank evaluation", "platform training"


def key_context(job_id: str, role: str) -> bytes:
    """What a key's proof is bound to: the protocol version, the job and the key's role."""
    return proof_context(CONTEXT_DOMAIN, VERSION, job_id, role)


def attach(scheme: HEScheme, private_key: Any, job_id: str, role: str) -> dict[str, bytes]:
    """The field to send beside a key: ``{field: proof}``, or nothing for a scheme without key proofs."""
    proof = scheme.key_proof(private_key, key_context(job_id, role))
    return {} if proof is None else {proof_field(role): proof}


def proof_field(role: str) -> str:
    """The message field carrying the proof of the key with ``role``."""
    return {BANK_TRAINING: Field.BANK_KEY_PROOF, BANK_EVALUATION: Field.BANK_EVALUATION_KEY_PROOF,
            PLATFORM_TRAINING: Field.PLATFORM_KEY_PROOF}[role]


def check(scheme: HEScheme, public_key: Any, message: Message, job_id: str, role: str, step: str) -> None:
    """The proof beside ``public_key`` in ``message`` holds for this job and role; else DeviationDetected."""
    proof = message.get(proof_field(role))
    if proof is not None and not isinstance(proof, bytes):
        raise DeviationDetected(step, KEY_PROOF_CHECK, f"the {role} key's proof is not bytes")
    try:
        scheme.verify_key_proof(public_key, proof, key_context(job_id, role))
    except InvalidKey as err:
        raise DeviationDetected(step, KEY_PROOF_CHECK, f"the {role} key: {err}") from err


__all__ = ["BANK_EVALUATION", "BANK_TRAINING", "KEY_PROOF_CHECK", "PLATFORM_TRAINING", "attach", "check", "key_context",
           "proof_field"]
