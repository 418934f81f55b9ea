"""The Paillier-Blum modulus proof (protocols/modulus_proof.py) and its place in train.setup (issue 23, item 6:
moduli of many primes, a factor = 1 mod 4, a square factor).

A cheating key holder knows its factors and does the best that knowledge allows (``cheating_proof``): wherever a
fourth root or an N-th root exists it sends it, so a refusal below comes from the statement being false, not from
a sloppy forger.
"""

from __future__ import annotations

import gc
import secrets
import weakref
from pathlib import Path
from typing import Any

import gmpy2
import pytest
from gmpy2 import mpz

from party_common.audit import DEVIATION_EVENT
from protocols import modulus_proof as mp
from protocols.channel import LocalPeer, Message, PeerError
from protocols.errors import DeviationDetected, InvalidKey
from protocols.he import HEScheme, get_scheme
from protocols.he.paillier import PaillierScheme
from protocols.paillier import PublicKey, generate_keypair
from protocols.paillier_math import check_modulus, random_blum_prime
from protocols.vfl_lr import (
    PlatformTrainHandler,
    TrainParams,
    key_proof,
    make_platform_train_handler,
    run_bank_training,
)
from protocols.vfl_lr.messages import Field, Step
from tests.nodes_fixture import FAST_TRAIN, SimulatedFiles, make_nodes, simulated_files
from tests.test_label_privacy import synthetic

CONTEXT = mp.proof_context("test", "job-1", "bank training")


def prime_of(bits: int, residue: int, modulus: int) -> mpz:
    """A prime of ``bits`` bits (top two set) that is ``residue`` mod ``modulus``."""
    while True:
        p = gmpy2.next_prime(mpz(secrets.randbits(bits)) | (mpz(3) << (bits - 2)))
        while p % modulus != residue:
            p = gmpy2.next_prime(p)
        if p.bit_length() == bits:
            return p


def many_primes(count: int, bits: int, total: int) -> list[tuple[mpz, int]]:
    """``count`` Blum primes whose product has exactly ``total`` bits: ``count - 1`` of ``bits`` bits and a last one
    sized to fill the modulus."""
    primes = [random_blum_prime(bits) for _ in range(count - 1)]
    rest = mpz(1)
    for p in primes:
        rest *= p
    last = gmpy2.next_prime((mpz(1) << (total - 1)) // rest + 1)
    while last % 4 != 3:
        last = gmpy2.next_prime(last)
    assert (rest * last).bit_length() == total
    return [(p, 1) for p in [*primes, last]]


def cheating_proof(factors: list[tuple[mpz, int]], context: bytes = CONTEXT) -> tuple[mpz, bytes]:
    """The best proof a key holder who knows ``N = prod p^k`` can make, for factors p = 3 mod 4 or 5 mod 8.

    In the cyclic group mod p^k (order m = 2^s o, o odd, s <= 2 here) the fourth powers are the elements of odd
    order, and ``y^(4^-1 mod o)`` is a fourth root of each; an N-th root exists for every y when gcd(N, m) = 1.
    Where no (a, b) makes ``(-1)^a w^b y`` a fourth power mod every p^k, or no N-th root exists, it sends 1.
    """
    n = mpz(1)
    for p, k in factors:
        n *= p ** k
    parts = [(p ** k, p ** (k - 1) * (p - 1)) for p, k in factors]

    def odd(m: mpz) -> mpz:
        while m % 2 == 0:
            m //= 2
        return m

    def fits(v: mpz) -> bool:
        return all(gmpy2.powmod(v, odd(m), pk) == 1 for pk, m in parts)

    # w: of Jacobi symbol -1, and of those the first of 64 that lets 32 challenges through (for p^2 q, a w that
    # is a residue mod p lets every one through).
    candidates = (mpz(secrets.randbelow(int(n) - 2) + 2) for _ in range(1000))
    for w in [c for c in candidates if gmpy2.jacobi(c, n) == -1][:64]:
        if all(any(fits((-1) ** a * (w if b else 1) * y % n) for a in (0, 1)
                                                for b in (0, 1)) for y in mp.challenges(n, w, context, 32)):
            break
    ys = mp.challenges(n, w, context, max(mp.FOURTH_ROOT_ROUNDS, mp.NTH_ROOT_ROUNDS))

    def combine(residues: list[mpz]) -> mpz:
        x = mpz(0)
        for (pk, _), r in zip(parts, residues, strict=True):
            rest = n // pk
            x += r * rest * gmpy2.invert(rest, pk)
        return x % n

    fourth = []
    for y in ys[:mp.FOURTH_ROOT_ROUNDS]:
        round_ = (0, 0, mpz(1))
        for a in (0, 1):
            for b in (0, 1):
                v = (-1) ** a * (w if b else 1) * y % n
                if fits(v):
                    round_ = (a, b, combine([gmpy2.powmod(v, gmpy2.invert(4, odd(m)), pk) for pk, m in parts]))
        fourth.append(round_)
    nth = []
    for y in ys[:mp.NTH_ROOT_ROUNDS]:
        coprime = all(gmpy2.gcd(n, m) == 1 for _, m in parts)
        nth.append(combine([gmpy2.powmod(y, gmpy2.invert(n, m), pk) for pk, m in parts]) if coprime else mpz(1))
    return n, mp.encode_proof(n, w, fourth, nth)


@pytest.fixture(scope="module")
def key() -> Any:
    return generate_keypair(2048)


def test_an_honest_proof_verifies_and_is_made_once_per_key_and_context(key: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    pk, sk = key
    proof = mp.prove(sk, CONTEXT)
    mp.verify(pk.n, proof, CONTEXT)
    assert len(proof) == 10 + 256 + 80 * 257 + 4 * 256
    # The same key and context: neither proving nor verifying again runs a challenge.
    drawn: list[int] = []
    monkeypatch.setattr(mp, "challenges", lambda *args: drawn.append(1) or [])  # type: ignore[func-returns-value]
    assert mp.prove(sk, CONTEXT) == proof
    mp.verify(pk.n, proof, CONTEXT)
    assert drawn == []


def test_a_proof_made_does_not_keep_the_private_key_alive() -> None:
    """Proofs are cached with the key object: a session that drops its key drops the factors with it."""
    _, sk = generate_keypair(1024, allow_insecure=True)
    mp.prove(sk, CONTEXT)
    alive = weakref.ref(sk)
    del sk
    gc.collect()
    assert alive() is None


def test_the_cheating_prover_passes_for_an_honest_modulus() -> None:
    """The forger below is as good as the honest prover where the statement holds: its refusals count."""
    p, q = random_blum_prime(512), random_blum_prime(512)
    n, proof = cheating_proof([(p, 1), (q, 1)])
    mp.verify(n, proof, CONTEXT)


@pytest.mark.parametrize("shape", ["4 primes of 512 bits", "32 primes of 64 bits"])
def test_a_modulus_of_many_primes_is_refused(shape: str) -> None:
    count, bits = (4, 512) if shape.startswith("4") else (32, 64)
    n, proof = cheating_proof(many_primes(count, bits, 2048))
    check_modulus(n, allow_insecure=False)  # what the size and small-factor checks cannot catch
    with pytest.raises(InvalidKey, match="fourth-root round"):
        mp.verify(n, proof, CONTEXT)


def test_a_modulus_with_a_factor_1_mod_4_is_refused() -> None:
    n, proof = cheating_proof([(prime_of(1024, 5, 8), 1), (random_blum_prime(1024), 1)])
    with pytest.raises(InvalidKey, match="fourth-root round"):
        mp.verify(n, proof, CONTEXT)


def test_a_modulus_with_a_square_factor_passes_the_fourth_roots_and_fails_the_nth_roots() -> None:
    """p^2 q with Blum p and q: every fourth root exists (the fourth-root rounds cannot see it); gcd(N, phi(N))
    = p, so the N-th roots do not."""
    while True:  # p^2 q of exactly 2048 bits
        p, q = random_blum_prime(512), random_blum_prime(1024)
        if (p * p * q).bit_length() == 2048:
            break
    n, proof = cheating_proof([(p, 2), (q, 1)])
    check_modulus(n, allow_insecure=False)
    with pytest.raises(InvalidKey, match="N-th-root round 0 fails"):
        mp.verify(n, proof, CONTEXT)


def test_a_proof_for_another_context_or_another_key_is_refused(key: Any) -> None:
    pk, sk = key
    proof = mp.prove(sk, CONTEXT)
    for other in (mp.proof_context("test", "job-2", "bank training"), mp.proof_context("test", "job-1", "platform training"),
                  key_proof.key_context("job-1", key_proof.BANK_TRAINING)):
        with pytest.raises(InvalidKey, match="another key or context"):
            mp.verify(pk.n, proof, other)
    other_pk, _ = generate_keypair(2048)
    with pytest.raises(InvalidKey, match="made for another key"):
        mp.verify(other_pk.n, proof, CONTEXT)


def test_tampered_truncated_weakened_or_missing_proofs_are_refused(key: Any) -> None:
    pk, sk = key
    proof = mp.prove(sk, CONTEXT)
    nb = 256

    def flipped(at: int) -> bytes:
        return proof[:at] + bytes([proof[at] ^ 1]) + proof[at + 1:]

    cases = {
        "w": (flipped(10 + nb - 1), "made for another key"),
        "x of round 7": (flipped(10 + nb + 7 * (nb + 1) + nb), "fourth-root round 7"),
        "a flag": (flipped(10 + nb + 3 * (nb + 1)), "fourth-root round 3"),
        "z": (flipped(len(proof) - 1), "N-th-root round 3"),
        "truncated": (proof[:-1], "wrong length"),
        "format": (b"PBM0" + proof[4:], "format"),
        "size": (proof[:4] + (nb + 1).to_bytes(2, "big") + proof[6:], "another size"),
        "missing": (None, "missing"),
    }
    for name, (bad, message) in cases.items():
        with pytest.raises(InvalidKey, match=message):
            mp.verify(pk.n, bad, CONTEXT)  # type: ignore[arg-type]
        assert name
    # Fewer rounds than the verifier's: a valid 40-round proof is still refused (the prover sets no soundness).
    w = mpz(int.from_bytes(proof[10:10 + nb], "big"))
    rounds = [(proof[o] & 1, proof[o] >> 1, mpz(int.from_bytes(proof[o + 1:o + 1 + nb], "big")))
              for o in range(10 + nb, 10 + nb + 40 * (nb + 1), nb + 1)]
    zs = [mpz(int.from_bytes(proof[o:o + nb], "big")) for o in range(len(proof) - 4 * nb, len(proof), nb)]
    with pytest.raises(InvalidKey, match="40 \\+ 4 rounds; 80 \\+ 4 are required"):
        mp.verify(pk.n, mp.encode_proof(pk.n, w, rounds, zs), CONTEXT)


def test_the_scheme_hook_carries_the_proof(key: Any) -> None:
    """Paillier makes and checks its proof through the HE seam; a scheme without proofs takes none."""
    pk, sk = key
    scheme = get_scheme("paillier")
    proof = scheme.key_proof(sk, CONTEXT)
    assert proof is not None
    scheme.verify_key_proof(pk, proof, CONTEXT)
    with pytest.raises(InvalidKey, match="missing"):
        scheme.verify_key_proof(pk, None, CONTEXT)


def test_a_scheme_without_key_proofs_sends_none_and_takes_none(key: Any) -> None:
    """The seam's default, for a scheme that has no proof yet: no field is sent, none is asked for, and one sent
    is refused (a receiver never skips a proof it was sent)."""

    class NoProofs(PaillierScheme):
        key_proof = HEScheme.key_proof  # type: ignore[assignment]
        verify_key_proof = HEScheme.verify_key_proof  # type: ignore[assignment]

    pk, sk = key
    scheme = NoProofs()
    assert key_proof.attach(scheme, sk, "job-1", key_proof.BANK_TRAINING) == {}
    key_proof.check(scheme, pk, {}, "job-1", key_proof.BANK_TRAINING, Step.SETUP)
    with pytest.raises(DeviationDetected, match="has no key proof, but the peer sent one"):
        key_proof.check(scheme, pk, {Field.BANK_KEY_PROOF: b"x"}, "job-1", key_proof.BANK_TRAINING, Step.SETUP)


# ---- in train.setup ----

def bad_platform_key(bits: int, job_id: str) -> tuple[bytes, bytes]:
    """A platform key of four primes with the best proof its maker can give, for this job and role."""
    n, proof = cheating_proof(many_primes(4, bits // 4, bits), key_proof.key_context(job_id, key_proof.PLATFORM_TRAINING))
    return PublicKey(n).to_bytes(), proof


@pytest.mark.parametrize("deviation", ["four-prime key", "no proof", "the bank's proof"])
def test_a_platform_sending_a_bad_key_is_stopped_at_setup(deviation: str) -> None:
    bank, platform = synthetic(240, 6)

    def factory(kind: str, job_id: str, message: dict) -> Any:
        handler = make_platform_train_handler(job_id, message, platform, on_result=lambda m: None, compute=1,
                                              insecure_for_tests=True)
        setup = handler._steps[Step.SETUP]

        def deviating(msg: Message) -> Message:
            reply = dict(setup(msg))
            if deviation == "four-prime key":
                reply[Field.PLATFORM_KEY], reply[Field.PLATFORM_KEY_PROOF] = bad_platform_key(1024, job_id)
            elif deviation == "no proof":
                del reply[Field.PLATFORM_KEY_PROOF]
            else:  # a valid proof, but of another key (the bank's own, sent back)
                reply[Field.PLATFORM_KEY], reply[Field.PLATFORM_KEY_PROOF] = msg[Field.BANK_KEY], msg[Field.BANK_KEY_PROOF]
            return reply

        handler._steps[Step.SETUP] = deviating
        return handler

    params = TrainParams(epochs=1, batch_size=200, key_bits=1024, validation_share=0.2, label_dp="on")
    with pytest.raises(DeviationDetected, match="train.setup: check 'modulus proof' failed: the platform training "
                                                "key: modulus proof: ") as raised:
        run_bank_training(LocalPeer(factory), "job-bad-key", bank, params, compute=1, insecure_for_tests=True)
    assert raised.value.step == Step.SETUP and raised.value.check == "modulus proof"


def test_a_bank_replaying_another_jobs_proof_is_stopped_at_setup() -> None:
    """The bank's key proofs are bound to the job: the platform refuses a setup whose proof was made for another,
    and its session answers nothing more."""
    bank, platform = synthetic(240, 6)
    handlers: list[PlatformTrainHandler] = []

    def factory(kind: str, job_id: str, message: dict) -> Any:
        handlers.append(make_platform_train_handler(job_id, message, platform, on_result=lambda m: None, compute=1,
                                                    insecure_for_tests=True))
        return handlers[-1]

    class Replaying(LocalPeer):
        def open(self, kind: str, job_id: str, params: Message) -> Any:
            channel = super().open(kind, job_id, params)
            call = channel.call

            def replay(step: str, message: Message) -> Message:
                if step == Step.SETUP:  # the evaluation key's proof, re-made for another job
                    _, sk = generate_keypair(1024, allow_insecure=True)
                    pk_bytes = sk.public_key.to_bytes()
                    proof = mp.prove(sk, key_proof.key_context("job-other", key_proof.BANK_EVALUATION))
                    message = {**message, Field.BANK_EVALUATION_KEY: pk_bytes, Field.BANK_EVALUATION_KEY_PROOF: proof}
                return call(step, message)

            channel.call = replay  # type: ignore[method-assign]
            return channel

    params = TrainParams(epochs=1, batch_size=200, key_bits=1024, validation_share=0.2, label_dp="on")
    with pytest.raises(PeerError, match="train.setup: check 'modulus proof' failed: the bank evaluation key: "
                                        "modulus proof: fourth-root round 0 fails"):
        run_bank_training(Replaying(factory), "job-replayed", bank, params, compute=1, insecure_for_tests=True)
    assert handlers[0].stage == "stopped"  # whatever the bank sends next is refused


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> SimulatedFiles:
    return simulated_files(tmp_path_factory.mktemp("sim"))


def test_the_nodes_stop_and_audit_a_bad_platform_key(files: SimulatedFiles, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The real nodes: a platform whose key is four primes is stopped by the bank at setup; the job fails on the
    bank with an audit row naming the step and the check, and the platform's session is cancelled."""
    nodes = make_nodes(files, tmp_path)
    original = PlatformTrainHandler._setup

    def deviating(self: PlatformTrainHandler, message: Message) -> Message:
        reply = dict(original(self, message))
        reply[Field.PLATFORM_KEY], reply[Field.PLATFORM_KEY_PROOF] = bad_platform_key(self.p.key_bits, self.job_id)
        return reply

    assert nodes.bank.wait(nodes.bank.submit("align", "", {})).status == "succeeded"
    monkeypatch.setattr(PlatformTrainHandler, "_setup", deviating)
    job = nodes.bank.wait(nodes.bank.submit("train", "", {"train": FAST_TRAIN}), timeout_s=300)
    assert job.status == "failed" and "check 'modulus proof' failed" in (job.error or "")
    [event] = [e for e in nodes.bank.stores.jobs.audit_events(job.job_id) if e.event == DEVIATION_EVENT]
    assert event.detail == "step train.setup: check 'modulus proof'" and event.outcome == "stopped"
    assert nodes.platform.stores.jobs.get(job.job_id).status == "cancelled"  # the bank stopped its session


def test_the_platform_node_stops_and_audits_a_bank_key_proof_for_another_job(files: SimulatedFiles, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The real nodes, the other way round: the bank's training key goes with a proof made for another job; the
    platform refuses it at setup and audits the check, and the bank's job fails naming it."""
    nodes = make_nodes(files, tmp_path)
    honest = key_proof.attach

    def for_another_job(scheme: Any, private_key: Any, job_id: str, role: str) -> Message:
        return honest(scheme, private_key, job_id + "-other" if role == key_proof.BANK_TRAINING else job_id, role)

    assert nodes.bank.wait(nodes.bank.submit("align", "", {})).status == "succeeded"
    monkeypatch.setattr(key_proof, "attach", for_another_job)
    job = nodes.bank.wait(nodes.bank.submit("train", "", {"train": FAST_TRAIN}), timeout_s=300)
    assert job.status == "failed" and "check 'modulus proof' failed" in (job.error or "")
    [event] = [e for e in nodes.platform.stores.jobs.audit_events(job.job_id) if e.event == DEVIATION_EVENT]
    assert event.detail == "step train.setup: check 'modulus proof'" and event.outcome == "stopped"
    assert nodes.platform.stores.jobs.get(job.job_id).status == "failed"
