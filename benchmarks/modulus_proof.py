"""The Paillier-Blum modulus proof (``protocols.modulus_proof``): proof size, time to prove and to verify.

    python -m benchmarks.modulus_proof [--bits 1024 2048 3072] [--repeats 5] [--json PATH]

Per key size: one fresh key pair (its generation time is reported beside, for scale: a job makes three), then
the fastest of ``--repeats`` runs of ``prove`` and of ``verify``, with the caches cleared before each run so
that the work itself is timed. One thread; gmpy2.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from benchmarks.common import best_time, console, print_table, write_json
from protocols import modulus_proof
from protocols.paillier import MIN_SECURE_BITS, generate_keypair

CONTEXT = modulus_proof.proof_context("benchmark", "job", "role")


def measure(bits: int, repeats: int) -> dict[str, Any]:
    started = time.perf_counter()
    pk, sk = generate_keypair(bits, allow_insecure=bits < MIN_SECURE_BITS)
    keygen = time.perf_counter() - started
    prove_s, proof = best_time(lambda: modulus_proof.prove(sk, CONTEXT), repeats, modulus_proof.clear_caches)
    assert isinstance(proof, bytes)
    verify_s, _ = best_time(lambda: modulus_proof.verify(pk.n, proof, CONTEXT), repeats, modulus_proof.clear_caches)
    return {"bits": bits, "proof_bytes": len(proof), "prove_ms": round(prove_s * 1e3, 1),
            "verify_ms": round(verify_s * 1e3, 1), "keygen_ms": round(keygen * 1e3, 1),
            "rounds": [modulus_proof.FOURTH_ROOT_ROUNDS, modulus_proof.NTH_ROOT_ROUNDS]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.modulus_proof", description=__doc__.split("\n")[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[1024, 2048, 3072], help="modulus sizes")
    parser.add_argument("--repeats", type=int, default=5, help="runs per figure; the fastest counts")
    parser.add_argument("--json", help="write the results here (atomically)")
    args = parser.parse_args(argv)
    results = [measure(bits, args.repeats) for bits in args.bits]
    print_table("Paillier-Blum modulus proof", [(str(r["bits"]), f"{r['proof_bytes']:,}", f"{r['prove_ms']}",
                                                  f"{r['verify_ms']}", f"{r['keygen_ms']}") for r in results],
                ("bits", "proof bytes", "prove ms", "verify ms", "one keygen ms"))
    write_json(args.json, {"modulus_proof": results})
    console.print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
