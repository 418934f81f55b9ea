"""Paillier kernels: ours vs phe vs SecretFlow HEU (ZPaillier and OU), same key size, one thread each.

    python -m benchmarks.paillier [--quick] [--bits 2048] [--json PATH]

Kernels: encrypt m values (ours: online with noise made ahead by the key owner, and the offline noise
rate on its own); ``X^T [[d]]`` for m x n signed 8-bit scalars (mul-adds per second); decrypt n values
(ours: the protocol's packed path, many masked values per plaintext, so the per-value rate counts one
decryption per plaintext; plain CRT decryption reported beside it). ``two_core_speedup`` is our
``X^T [[d]]`` on a 2-process pool against one process, same data.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from typing import Any

import numpy as np

from benchmarks.common import console, fmt, print_table, rate, ratio, write_json
from protocols.packing import pack_signed, slots_per_plaintext, unpack_signed
from protocols.paillier import NoisePool, generate_keypair, matvec_t
from protocols.paillier_pool import PaillierPool

PAIR_SLOT = 69  # the training protocol's slot for a masked residual (protocols/vfl_lr.py)


def bench_ours(bits: int, m: int, n: int, n_dec: int, X: np.ndarray, values: list[int]) -> dict[str, Any]:
    pk, sk = generate_keypair(bits)
    noise = NoisePool(pk, sk)
    offline, _ = rate(m, lambda: noise.fill(m))
    online, cv = rate(m, lambda: pk.encrypt(values, pool=noise))
    muladd, product = rate(m * n, lambda: matvec_t(cv, X))  # type: ignore[arg-type]
    expected = (np.array(values[:m], dtype=object) @ X.astype(object)).tolist()
    assert sk.decrypt(product) == [int(v) for v in expected], "X^T [[d]] is wrong"
    with PaillierPool(2) as pool:
        pool.matvec_t(cv[:64], X[:64])  # start the workers before timing
        pooled, _ = rate(m * n, lambda: pool.matvec_t(cv, X))  # type: ignore[arg-type]
    # Decryption, packed as the protocol packs masked residuals: k values per plaintext.
    k = slots_per_plaintext(pk, PAIR_SLOT)
    masked = [secrets.randbits(PAIR_SLOT - 2) for _ in range(n_dec)]
    packed = [pack_signed(masked[s:s + k], PAIR_SLOT) for s in range(0, n_dec, k)]
    packed_cv = pk.encrypt(packed, pool=noise)
    dec_packed, opened = rate(n_dec, lambda: sk.decrypt(packed_cv))
    unpacked = [v for j, value in enumerate(opened) for v in  # type: ignore[attr-defined]
                unpack_signed(value, min(k, n_dec - j * k), PAIR_SLOT)]
    assert unpacked == masked, "packed decryption is wrong"
    plain_cv = pk.encrypt(masked, pool=noise)
    dec_plain, _ = rate(n_dec, lambda: sk.decrypt(plain_cv))
    return {"encrypt_online_per_s": online, "encrypt_offline_per_s": offline, "muladd_per_s": muladd,
            "muladd_2_workers_per_s": pooled, "decrypt_per_value_per_s": dec_packed,
            "decrypt_plain_per_s": dec_plain, "values_per_decryption": k}


def bench_phe(bits: int, m: int, n: int, n_dec: int, X: np.ndarray, values: list[int]) -> dict[str, Any]:
    from phe import paillier

    pub, priv = paillier.generate_paillier_keypair(n_length=bits)
    enc, cts = rate(m, lambda: [pub.encrypt(int(v)) for v in values[:m]])
    rows = min(m, 300)  # phe is slow: a slice of the same product

    def product() -> list[object]:
        out = []
        for j in range(n):
            acc = cts[0] * int(X[0, j])  # type: ignore[index]
            for i in range(1, rows):
                acc = acc + cts[i] * int(X[i, j])  # type: ignore[index]
            out.append(acc)
        return out

    muladd, _ = rate(rows * n, product)
    dec, _ = rate(n_dec, lambda: [priv.decrypt(c) for c in cts[:n_dec]])  # type: ignore[index]
    return {"encrypt_online_per_s": enc, "encrypt_offline_per_s": None, "muladd_per_s": muladd,
            "decrypt_per_value_per_s": dec}


def bench_heu(schema: str, bits: int, m: int, n: int, n_dec: int, X: np.ndarray, values: list[int]) -> dict[str, Any]:
    from heu import phe as hphe

    kit = hphe.setup(getattr(hphe.SchemaType, schema), bits)
    encryptor, evaluator, decryptor = kit.encryptor(), kit.evaluator(), kit.decryptor()
    enc, cts = rate(m, lambda: [encryptor.encrypt_raw(int(v)) for v in values[:m]])
    scalars = [[kit.plaintext(int(x)) for x in row] for row in X.T.tolist()]
    rows = min(m, 1000)

    def product() -> list[object]:
        out = []
        for j in range(n):
            col = scalars[j]
            acc = evaluator.mul(cts[0], col[0])  # type: ignore[index]
            for i in range(1, rows):
                evaluator.add_inplace(acc, evaluator.mul(cts[i], col[i]))  # type: ignore[index]
            out.append(acc)
        return out

    muladd, _ = rate(rows * n, product)
    dec, _ = rate(n_dec, lambda: [decryptor.decrypt_raw(c) for c in cts[:n_dec]])  # type: ignore[index]
    return {"encrypt_online_per_s": enc, "encrypt_offline_per_s": None, "muladd_per_s": muladd,
            "decrypt_per_value_per_s": dec}


def run(args: argparse.Namespace) -> dict[str, Any]:
    m, n, n_dec = (300, 8, 60) if args.quick else (2000, 16, 300)
    rng = np.random.default_rng(0)
    X = rng.integers(-127, 128, size=(m, n)).astype(np.int64)
    values = [int(v) for v in rng.integers(-(2**40), 2**40, size=m)]
    console.print(f"Paillier kernels, {args.bits}-bit keys, one thread each: encrypt {m}, X^T[[d]] {m}x{n}, "
                  f"decrypt {n_dec}")
    ours = bench_ours(args.bits, m, n, n_dec, X, values)
    peers: dict[str, Any] = {"phe": bench_phe(args.bits, min(m, 300), n, min(n_dec, 100), X, values)}
    for name, schema in (("heu", "ZPaillier"), ("heu_ou", "OU")):
        try:
            peers[name] = bench_heu(schema, args.bits, m, n, n_dec, X, values)
        except ImportError as err:
            peers[name] = None
            console.print(f"[yellow]HEU not installed ({err}); install the [bench] extra[/]")
    heu, ou, phe = peers.get("heu") or {}, peers.get("heu_ou") or {}, peers["phe"]
    ratios = {
        "encrypt_online_vs_heu": ratio(ours["encrypt_online_per_s"], heu.get("encrypt_online_per_s")),
        "encrypt_offline_vs_heu": ratio(ours["encrypt_offline_per_s"], heu.get("encrypt_online_per_s")),
        "muladd_vs_heu": ratio(ours["muladd_per_s"], heu.get("muladd_per_s")),
        "muladd_vs_phe": ratio(ours["muladd_per_s"], phe.get("muladd_per_s")),
        "decrypt_vs_heu": ratio(ours["decrypt_per_value_per_s"], heu.get("decrypt_per_value_per_s")),
        "encrypt_online_vs_heu_ou": ratio(ours["encrypt_online_per_s"], ou.get("encrypt_online_per_s")),
        "muladd_vs_heu_ou": ratio(ours["muladd_per_s"], ou.get("muladd_per_s")),
        "decrypt_vs_heu_ou": ratio(ours["decrypt_per_value_per_s"], ou.get("decrypt_per_value_per_s")),
    }
    result = {"bits": args.bits, "sizes": {"encrypt": m, "matvec": [m, n], "decrypt": n_dec}, "ours": ours,
              "peers": peers, "ratios": ratios,
              "two_core_speedup": round(ours["muladd_2_workers_per_s"] / ours["muladd_per_s"], 2),
              "cpu_count": os.cpu_count()}
    rows = []
    for key in ("encrypt_online_per_s", "encrypt_offline_per_s", "muladd_per_s", "decrypt_per_value_per_s"):
        rows.append((key, fmt(ours[key]), fmt(phe.get(key)), fmt(heu.get(key)), fmt(ou.get(key))))
    print_table("Operations per second (one thread)", rows, ("kernel", "ours", "phe", "HEU ZPaillier", "HEU OU"))
    console.print({k: v for k, v in ratios.items()}, f"two_core_speedup={result['two_core_speedup']}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.paillier", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--bits", type=int, default=2048)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    write_json(args.json, run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
