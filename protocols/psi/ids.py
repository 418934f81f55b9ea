"""The job salt; the normal form of an ID is ``protocols.identity``'s, shared with loading, scoring and the split."""

from __future__ import annotations

import hashlib

from protocols.identity import normalise_all, normalise_id

_SALT_TAG = b"fedprofile/psi/v1/salt"


def job_salt(job_id: str, bank_nonce: bytes, platform_nonce: bytes) -> bytes:
    """SHA-256 over the salt tag, the job ID and both nonces, each prefixed by its 4-byte length."""
    h = hashlib.sha256()
    for part in (_SALT_TAG, job_id.encode(), bank_nonce, platform_nonce):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


__all__ = ["job_salt", "normalise_all", "normalise_id"]
