"""Checkpoints of a training session, where a resumed session starts, and the label-DP noise it replays.

**Positions.** ``steps`` counts the optimiser steps (batches) of the job, the same on both sides. The bank
saves its state after every ``checkpoint_every``-th batch of an epoch (not its last), after each epoch's
validation and bookkeeping, and once more when its model and report are complete (``"done"``: a bank
killed after that finishes without the platform). The platform saves after every ``checkpoint_every``-th
batch and after each epoch's last batch, keeping the last :data:`PLATFORM_KEEP` positions. It saves before
it answers ``train.gradient`` and the bank saves after the answer, so the platform is at most one position
ahead of the bank: the bank's latest position is always among the platform's.

**Resume.** A resumed session is a new session of the same job ID: fresh Paillier keys on both sides,
fresh masks, fresh encryption noise. ``train.setup`` carries ``resume_steps`` (the bank's position); the
platform loads its state at exactly that position or refuses. Mid-epoch, the next ``train.epoch`` repeats
the epoch's batches with ``first_batch`` (the mask path runs for the remaining batches only).

**Label-DP noise** is the one random input to the weights (masks cancel exactly). It comes from a keyed
stream, :class:`KeyedRandom`: ChaCha20 keyed with HMAC-SHA256(noise key, "epoch:batch:what"), the noise key
fixed when the job starts (:func:`job_noise_key`: from the bank's local secret and the job's seed, alignment
and tags, so a rerun draws the same noise; 32 bytes from ``secrets`` without a secret) and kept in the bank's
checkpoint (0600). A batch
replayed after a resume carries exactly the noise it carried before, so the platform never gets a second,
differently-noised view of a gradient (averaging two such views would halve the noise variance: a second
release outside the accountant). With the same weights, masks fresh, everything a replay shows either
party is what it showed before or independent of the data (docs/protocol.md, "Resume").
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import secrets
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from protocols.vfl_lr.params import VERSION, TrainingError, TrainParams
from protocols.vfl_lr.state import BankTrainState, PlatformTrainState

BANK_KIND = "bank-train-checkpoint"
PLATFORM_KIND = "platform-train-checkpoint"
PLATFORM_KEEP = 3  # positions the platform keeps (the bank's latest is one of the last two)
NOISE_KEY_BYTES = 32


class Checkpoints(Protocol):
    """Where one job's checkpoint lives: one document, replaced atomically by each save."""

    def load(self) -> dict[str, Any] | None:
        """The last saved document, or None."""
        ...

    def save(self, doc: dict[str, Any]) -> None:
        """Replace the document atomically (a crash leaves the old one or the new one)."""
        ...


class MemoryCheckpoints:
    """Checkpoints held in memory (one process; both parties of a test, or a job that needs no resume)."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] | None = None
        self.saves = 0

    def load(self) -> dict[str, Any] | None:
        return self.doc

    def save(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.saves += 1


def new_noise_key() -> bytes:
    return secrets.token_bytes(NOISE_KEY_BYTES)


def job_noise_key(secret: bytes, *, seed: int, alignment_hash: str, tags: list[str] | tuple[str, ...]) -> bytes:
    """The label-DP noise key of a job: HMAC-SHA256 under the bank's local secret (32 random bytes that never
    leave its state directory) of the job's seed, alignment and tags. The same job run again (``rerun``, same
    seed) trains on the same noisy labels, so it gives the same results and shows the platform nothing new; a
    platform that knows the seed, the alignment and the tags, but not the secret, cannot tell the key from
    random (HMAC is a PRF), so the noise stays unpredictable to it (docs/security.md, "Labels")."""
    if len(secret) != NOISE_KEY_BYTES:
        raise ValueError(f"the bank's noise secret is {NOISE_KEY_BYTES} bytes")
    label = json.dumps({"purpose": "label-dp-noise", "seed": int(seed), "alignment": alignment_hash,
                        "tags": list(tags)}, sort_keys=True)
    return hmac.new(secret, label.encode(), hashlib.sha256).digest()


class KeyedRandom(random.Random):
    """A ``random.Random`` whose every bit comes from ChaCha20 keyed by HMAC-SHA256(key, label).

    The same (key, label) gives the same draws (``gauss`` included) on every run; without the key they are
    unpredictable. Not seedable: ``seed`` does nothing.
    """

    def __init__(self, key: bytes, label: str) -> None:
        if len(key) != NOISE_KEY_BYTES:
            raise ValueError(f"a noise key is {NOISE_KEY_BYTES} bytes")
        stream_key = hmac.new(key, label.encode(), hashlib.sha256).digest()
        self._stream = Cipher(algorithms.ChaCha20(stream_key, bytes(16)), mode=None).encryptor()
        super().__init__()

    def seed(self, *args: Any, **kwargs: Any) -> None:  # noqa: D401 - random.Random's hook
        return None

    def _bytes(self, n: int) -> bytes:
        return self._stream.update(bytes(n))

    def getrandbits(self, k: int) -> int:
        if k <= 0:
            return 0
        n = (k + 7) // 8
        return int.from_bytes(self._bytes(n), "big") >> (8 * n - k)

    def random(self) -> float:
        return (int.from_bytes(self._bytes(7), "big") >> 3) * 2.0 ** -53

    def normals(self, n: int) -> np.ndarray:
        """``n`` standard normal draws at once (Box-Muller on 53-bit uniforms from the same keystream): what label
        DP's noise on every (row, tag) of a large alignment needs, at C speed rather than one ``gauss`` a call."""
        pairs = (n + 1) // 2
        words = np.frombuffer(self._bytes(16 * pairs), dtype=">u8").astype(np.uint64) >> np.uint64(11)
        u = words.astype(np.float64) * 2.0 ** -53
        radius = np.sqrt(-2.0 * np.log1p(-u[0::2]))  # 1 - u in (0, 1]: never log(0)
        angle = 2.0 * np.pi * u[1::2]
        return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:n]


def params_digest(params: TrainParams) -> str:
    """What ties a checkpoint to its job's parameters (as the session carries them)."""
    return hashlib.sha256(params.to_json().encode()).hexdigest()


# ------------------------------------------------------------------------------ the bank ----


def bank_checkpoint(state: BankTrainState, noise_key: bytes, params: TrainParams, *,
                    done: dict[str, Any] | None = None) -> dict[str, Any]:
    """The bank's document: its state, the noise key, and (``done``) the finished model and report."""
    doc: dict[str, Any] = {"kind": BANK_KIND, "version": VERSION, "params": params_digest(params),
                           "noise_key": noise_key.hex(), "state": state.to_dict()}
    if done is not None:
        doc["done"] = done
    return doc


def read_bank_checkpoint(doc: Mapping[str, Any], params: TrainParams, *,
                         where: str) -> tuple[BankTrainState, bytes, dict[str, Any] | None]:
    """(state, noise key, finished outcome or None) from :func:`bank_checkpoint`'s document."""
    _check(doc, BANK_KIND, params, where)
    try:
        key = bytes.fromhex(str(doc["noise_key"]))
    except (KeyError, ValueError) as err:
        raise TrainingError(f"{where}: damaged checkpoint: no noise key") from err
    if len(key) != NOISE_KEY_BYTES:
        raise TrainingError(f"{where}: damaged checkpoint: the noise key has {len(key)} bytes")
    done = doc.get("done")
    return BankTrainState.from_dict(doc["state"], params, where=where), key, done if isinstance(done, dict) else None


def resume_point(state: BankTrainState) -> dict[str, Any] | None:
    """Where a job resumed from its checkpoint continues, for its history and report (1-based epoch and batch,
    the optimiser steps already taken); None for a job that starts afresh."""
    if not state.steps:
        return None
    if state.epoch >= 0 and len(state.history) == state.epoch:  # saved inside that epoch
        epoch, batch = state.epoch + 1, state.next_batch + 1
        text = f"resumed from epoch {epoch}" + (f", batch {batch}" if batch > 1 else "")
    else:  # saved after an epoch's validation
        epoch, batch = state.epoch + 2, 1
        text = f"resumed from epoch {epoch} (the checkpoint after epoch {state.epoch + 1})"
    return {"epoch": epoch, "batch": batch, "steps": state.steps, "text": f"{text}; {state.steps} steps kept"}


# -------------------------------------------------------------------------- the platform ----


def platform_checkpoint(previous: Mapping[str, Any] | None, state: PlatformTrainState, params: TrainParams, *,
                        epoch_done: bool) -> dict[str, Any]:
    """The platform's document with ``state`` (at ``state.steps``) added and only the last positions kept."""
    kept = [p for p in (previous or {}).get("positions", []) if p.get("steps") != state.steps]
    kept.append({"steps": state.steps, "epoch_done": epoch_done, "state": state.to_dict()})
    return {"kind": PLATFORM_KIND, "version": VERSION, "params": params_digest(params),
            "positions": kept[-PLATFORM_KEEP:]}


def read_platform_checkpoint(doc: Mapping[str, Any] | None, params: TrainParams, steps: int, *,
                             where: str) -> tuple[PlatformTrainState, bool]:
    """(state, whether its epoch's batches are all done) at position ``steps``; :class:`TrainingError` if absent."""
    if doc is None:
        raise TrainingError(f"{where}: no checkpoint of this job on the platform node, so it cannot resume "
                            f"at step {steps}")
    _check(doc, PLATFORM_KIND, params, where)
    for position in doc.get("positions", []):
        if position.get("steps") == steps:
            state = PlatformTrainState.from_dict(position["state"], params, where=where)
            if state.steps != steps:
                raise TrainingError(f"{where}: damaged checkpoint: position {steps} holds step {state.steps}")
            return state, bool(position.get("epoch_done"))
    have = ", ".join(str(p.get("steps")) for p in doc.get("positions", [])) or "none"
    raise TrainingError(f"{where}: the platform node has no checkpoint at step {steps} (it has: {have})")


def _check(doc: Mapping[str, Any], kind: str, params: TrainParams, where: str) -> None:
    if doc.get("kind") != kind or doc.get("version") != VERSION:
        raise TrainingError(f"{where}: not a {kind} of protocol {VERSION}")
    if doc.get("params") != params_digest(params):
        raise TrainingError(f"{where}: the checkpoint was made with other training parameters")


__all__ = ["BANK_KIND", "PLATFORM_KEEP", "PLATFORM_KIND", "Checkpoints", "KeyedRandom", "MemoryCheckpoints",
           "bank_checkpoint", "job_noise_key", "new_noise_key", "params_digest", "platform_checkpoint", "read_bank_checkpoint",
           "read_platform_checkpoint", "resume_point"]
