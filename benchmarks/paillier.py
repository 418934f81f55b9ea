"""Paillier kernels: ours vs phe vs SecretFlow HEU (ZPaillier and OU), and our Okamoto-Uchiyama beside HEU's OU
(benchmarks/ou_kernels.py), same key size, one thread each.

    python -m benchmarks.paillier [--quick] [--bits 2048] [--json PATH]

Kernels, each as operations per second on one thread, each timed as the fastest of three runs (ours and
the peers' alike; on a shared machine other jobs only ever add time):

- encrypt m values. Ours online: with noise ``h_s^r`` made ahead by the key owner (CRT, window tables)
  in a :class:`NoisePool`, so only the online multiplication is timed; ours offline: noise values made
  per second by ``NoisePool.fill`` (the tables are built before timing, once per key). phe and HEU:
  their ordinary encryption (noise included).
- noise, ours only, values per second (tables built before timing; their build time is reported):
  ``noise_public_per_s``, ordinary noise by the public key (what a party makes under the other's key);
  ``mask_noise_per_s``, mask noise (exponent of n_bits + 128 bits, for re-randomising what the key holder
  decrypts) by the public key, the other party's path; ``mask_noise_crt_per_s``, mask noise by the key
  owner (CRT, exponent reduced mod p - 1 and q - 1).
- ``X^T [[d]]`` for an m x n matrix of signed 8-bit scalars, counted as m * n mul-adds. Ours:
  ``matvec_t`` (bucket multi-exponentiation); phe: sum of ``ciphertext * scalar``; HEU: evaluator ``mul``
  and ``add_inplace``, with negative scalars multiplied by their magnitude into a second accumulator that
  is subtracted once per column (HEU multiplies by a negative plaintext ten times slower).
- decrypt values. Ours (``decrypt_per_value_per_s``): the training protocol's packed path, per value and
  including packing and unpacking: masked signed values packed at encryption in 69-bit slots (29 to a
  2048-bit plaintext), one CRT decryption per plaintext. Beside it: ``decrypt_horner_per_value_per_s``,
  ciphertexts of masked 120-bit values packed afterwards by Horner's rule (17 to a plaintext; 120
  squarings mod n^2 per value, counted), and ``decrypt_plain_per_s``, one CRT decryption per value.
  phe and HEU: one decryption per value.

``two_core_speedup`` is one process's ``matvec_t`` time over ``PaillierPool(2).matvec_t``'s on the same
data (at least 2048 rows, n columns); the pool gives each worker half the columns, as it does in training,
where the platform's matrix has tens to hundreds of columns. ``two_core_ceiling`` is the same one-process
time over the slower of two bare processes each running one half at the same moment, with nothing sent
and nothing pooled: what this machine's two cores give this work at best (big-integer arithmetic shares
caches and memory bandwidth; on this shared machine it has ranged from 1.2 to 2.0). All three are timed
interleaved, 12 rounds, the fastest of each, so that a slow spell of the machine hits them alike.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import secrets
import sys
import time
from typing import Any

import numpy as np

from benchmarks.common import best_time, console, fmt, print_table, rate, ratio, write_json
from benchmarks.ou_kernels import bench_ou
from protocols.packing import SlotLayout, pack_signed, slots_per_plaintext, unpack_signed
from protocols.paillier import (
    MIN_SECURE_BITS,
    CipherVector,
    NoisePool,
    PrivateKey,
    PublicKey,
    generate_keypair,
    matvec_t,
)
from protocols.paillier_pool import PaillierPool

HORNER_SLOT = 120  # masked values of up to 120 bits, packed on ciphertexts
PAIR_SLOT = 69  # the training protocol's signed slot for a masked residual (protocols/vfl_lr.py)
SPEEDUP_ROWS = 2048
SPEEDUP_REPEATS = 12
REPEATS = 3  # every kernel, ours and the peers': the fastest of three runs
NOISE_COUNT = 300  # values per noise kind
KERNELS = ("encrypt_online_per_s", "encrypt_offline_per_s", "muladd_per_s", "decrypt_per_value_per_s")
NOISE_KERNELS = ("noise_public_per_s", "mask_noise_per_s", "mask_noise_crt_per_s")


def _timed_matvec(args: tuple[PublicKey, list[Any], np.ndarray]) -> float:
    """One half of the speed-up product, timed inside a bare process (no pool, no transfer timed)."""
    public_key, values, X = args
    cv = CipherVector(public_key, values)
    started = time.perf_counter()
    matvec_t(cv, X)
    return time.perf_counter() - started


def _exact(d: list[int], X: np.ndarray) -> list[int]:
    return [int(v) for v in np.array(d, dtype=object) @ X.astype(object)]


def _decrypt_horner(sk: PrivateKey, cv: CipherVector, layout: SlotLayout) -> list[int]:
    opened = layout.unpack(sk.decrypt_raw(layout.pack_ciphertexts(cv)))
    return [v for row in opened for v in row][:len(cv)]


def _open_packed(sk: PrivateKey, cv: CipherVector, count: int, k: int) -> list[int]:
    opened = sk.decrypt(cv)
    return [v for j, value in enumerate(opened)
            for v in unpack_signed(value, min(k, count - j * k), PAIR_SLOT)]


def bench_noise(pk: PublicKey, sk: PrivateKey, count: int) -> dict[str, float]:
    """Ordinary public-key noise and mask noise (public key and key owner): values per second, and the
    seconds each public window table takes to build (once per key and process)."""
    out: dict[str, float] = {}
    for name, pool in (("noise_public", NoisePool(pk)), ("mask_noise", NoisePool(pk, mask=True)),
                       ("mask_noise_crt", NoisePool(pk, sk, mask=True))):
        table_s, _ = best_time(pool.make)  # the first value builds the table (the CRT tables already exist)
        per_s, _ = rate(count, lambda pool=pool: pool.fill(count), REPEATS)
        assert sk.decrypt(CipherVector(pk, pool.take(count))) == [0] * count, f"{name} is not noise"
        out[f"{name}_per_s"] = per_s
        if name != "mask_noise_crt":
            out[f"{name}_table_s"] = table_s
    return out


def bench_ours(bits: int, X: np.ndarray, values: list[int], n_dec: int,
               X_speed: np.ndarray) -> dict[str, Any]:
    m, n = X.shape
    pk, sk = generate_keypair(bits, allow_insecure=bits < MIN_SECURE_BITS)
    noise = NoisePool(pk, sk)
    noise.make()  # builds the key owner's window tables (once per key), outside the timing
    offline, _ = rate(m, lambda: noise.fill(m), REPEATS)
    noise.take(len(noise))
    online, cv = rate(m, lambda: pk.encrypt(values, pool=noise), REPEATS, setup=lambda: noise.fill(m))
    assert noise.made_online == 0 and len(noise) == 0
    assert sk.decrypt(cv) == values, "encryption is wrong"  # type: ignore[arg-type]
    noise_rates = bench_noise(pk, sk, NOISE_COUNT)
    muladd, product = rate(m * n, lambda: matvec_t(cv, X), REPEATS)  # type: ignore[arg-type]
    assert sk.decrypt(product) == _exact(values, X), "X^T [[d]] is wrong"  # type: ignore[arg-type]

    # Two cores against one, same data, enough rows for the pool to split them.
    rows = X_speed.shape[0]
    d_speed = [secrets.randbits(40) - 2**39 for _ in range(rows)]
    half = X_speed.shape[1] // 2
    with PaillierPool(2) as pool, mp.get_context("forkserver").Pool(2) as bare:
        pool.fill(noise, rows)  # not timed; also starts both workers before the timing
        cv_speed = pk.encrypt(d_speed, pool=noise)
        halves = [(pk, cv_speed.values, X_speed[:, :half]), (pk, cv_speed.values, X_speed[:, half:])]
        bare.map(_timed_matvec, halves)  # starts both processes before the timing
        # Interleaved, so a slow spell of the shared machine hits every variant alike; the fastest of each.
        single_s = pooled_s = together_s = float("inf")
        for _ in range(SPEEDUP_REPEATS):
            seconds, single = best_time(lambda: matvec_t(cv_speed, X_speed))
            single_s = min(single_s, seconds)
            seconds, pooled = best_time(lambda: pool.matvec_t(cv_speed, X_speed))
            pooled_s = min(pooled_s, seconds)
            together_s = min(together_s, max(bare.map(_timed_matvec, halves, chunksize=1)))
    assert pooled.values == single.values, "the pool's X^T [[d]] differs"  # type: ignore[attr-defined]

    # Decryption, packed: masked 120-bit values, 17 to a plaintext by Horner's rule on ciphertexts.
    layout = SlotLayout.for_key(pk, HORNER_SLOT)
    masked = [secrets.randbits(HORNER_SLOT) for _ in range(n_dec)]
    noise.fill(n_dec)
    masked_cv = pk.encrypt(masked, pool=noise)
    dec_horner, opened = rate(n_dec, lambda: _decrypt_horner(sk, masked_cv, layout), REPEATS)
    assert opened == masked, "Horner-packed decryption is wrong"
    # The protocol's other route: signed values packed at encryption in 69-bit slots.
    k = slots_per_plaintext(pk, PAIR_SLOT)
    signed = [secrets.randbits(PAIR_SLOT - 2) - 2 ** (PAIR_SLOT - 3) for _ in range(n_dec)]
    pack_s, packed = best_time(lambda: [pack_signed(signed[s:s + k], PAIR_SLOT) for s in range(0, n_dec, k)], REPEATS)
    packed_cv = pk.encrypt(packed, pool=noise)  # type: ignore[arg-type]
    open_s, opened = best_time(lambda: _open_packed(sk, packed_cv, n_dec, k), REPEATS)
    assert opened == signed, "packed decryption is wrong"
    dec_packed = n_dec / (pack_s + open_s)  # packing (the sender's) + decryption + unpacking
    plain_cv = pk.encrypt(signed, pool=noise)
    dec_plain, opened = rate(n_dec, lambda: sk.decrypt(plain_cv), REPEATS)
    assert opened == signed, "decryption is wrong"
    return {"encrypt_online_per_s": online, "encrypt_offline_per_s": offline, "muladd_per_s": muladd,
            "decrypt_per_value_per_s": dec_packed, "decrypt_plain_per_s": dec_plain,
            "decrypt_horner_per_value_per_s": dec_horner, "values_per_decryption": k,
            "values_per_decryption_horner": layout.n_slots,
            "matvec_one_process_s": single_s, "matvec_two_workers_s": pooled_s,
            "matvec_two_halves_apart_s": together_s, **noise_rates}


def bench_phe(bits: int, X: np.ndarray, values: list[int], n_enc: int, n_dec: int) -> dict[str, Any]:
    from phe import paillier

    n = X.shape[1]
    pub, priv = paillier.generate_paillier_keypair(n_length=bits)
    enc, cts = rate(n_enc, lambda: [pub.encrypt(int(v)) for v in values[:n_enc]], REPEATS)
    rows = min(n_enc, X.shape[0])  # phe is slow: the product over a slice of the same rows

    def product() -> list[Any]:
        out = []
        for j in range(n):
            acc = cts[0] * int(X[0, j])  # type: ignore[index]
            for i in range(1, rows):
                acc = acc + cts[i] * int(X[i, j])  # type: ignore[index]
            out.append(acc)
        return out

    muladd, result = rate(rows * n, product, REPEATS)
    opened = [priv.decrypt(c) for c in result]  # type: ignore[attr-defined]
    assert opened == _exact(values[:rows], X[:rows]), "phe product is wrong"
    dec, opened = rate(n_dec, lambda: [priv.decrypt(c) for c in cts[:n_dec]], REPEATS)  # type: ignore[index]
    assert opened == values[:n_dec], "phe decryption is wrong"
    return {"encrypt_online_per_s": enc, "encrypt_offline_per_s": None, "muladd_per_s": muladd,
            "decrypt_per_value_per_s": dec, "muladd_rows": rows}


def bench_heu(schema: str, bits: int, X: np.ndarray, values: list[int], n_dec: int) -> dict[str, Any]:
    from heu import phe as hphe

    m, n = X.shape
    kit = hphe.setup(getattr(hphe.SchemaType, schema), bits)
    encryptor, evaluator, decryptor = kit.encryptor(), kit.evaluator(), kit.decryptor()
    enc, cts = rate(m, lambda: [encryptor.encrypt_raw(int(v)) for v in values], REPEATS)
    rows = min(m, 1000)
    # Scalars by column: (row, |x|, sign) for the non-zero entries, as plaintexts made ahead.
    columns = [[(i, kit.plaintext(abs(int(x))), x > 0) for i, x in enumerate(X[:rows, j].tolist()) if x]
               for j in range(n)]
    zero = encryptor.encrypt_raw(0)

    def product() -> list[Any]:
        out = []
        for col in columns:
            pos, neg = None, None
            for i, scalar, positive in col:
                term = evaluator.mul(cts[i], scalar)  # type: ignore[index]
                if positive:
                    pos = term if pos is None else (evaluator.add_inplace(pos, term), pos)[1]
                else:
                    neg = term if neg is None else (evaluator.add_inplace(neg, term), neg)[1]
            pos = pos if pos is not None else zero
            out.append(pos if neg is None else evaluator.sub(pos, neg))
        return out

    muladd, result = rate(rows * n, product, REPEATS)
    opened = [decryptor.decrypt_raw(c) for c in result]  # type: ignore[attr-defined]
    assert opened == _exact(values[:rows], X[:rows]), f"HEU {schema} product is wrong"
    dec, opened = rate(n_dec, lambda: [decryptor.decrypt_raw(c) for c in cts[:n_dec]], REPEATS)  # type: ignore[index]
    assert opened == values[:n_dec], f"HEU {schema} decryption is wrong"
    return {"encrypt_online_per_s": enc, "encrypt_offline_per_s": None, "muladd_per_s": muladd,
            "decrypt_per_value_per_s": dec, "muladd_rows": rows}


def run(args: argparse.Namespace) -> dict[str, Any]:
    m, n, n_dec = (300, 8, 50) if args.quick else (2000, 16, 200)
    n_phe = 100 if args.quick else 300  # phe encrypts some 70 values a second at 2048 bits
    rng = np.random.default_rng(0)
    X = rng.integers(-128, 128, size=(m, n)).astype(np.int64)  # signed 8-bit scalars
    X_speed = rng.integers(-128, 128, size=(max(m, SPEEDUP_ROWS), n)).astype(np.int64)
    values = [int(v) for v in rng.integers(-(2**40), 2**40, size=m)]
    console.print(f"Paillier kernels, {args.bits}-bit keys, one thread each: encrypt {m}, "
                  f"X^T [[d]] {m}x{n}, decrypt {n_dec}", markup=False)
    ours = bench_ours(args.bits, X, values, n_dec, X_speed)
    unavailable: dict[str, str] = {}
    peers: dict[str, Any] = {"phe": bench_phe(args.bits, X, values, n_phe, n_dec)}
    for name, schema in (("heu", "ZPaillier"), ("heu_ou", "OU")):
        try:
            peers[name] = bench_heu(schema, args.bits, X, values, n_dec)
        except ImportError as err:
            peers[name], unavailable[name] = None, f"HEU is not installed ({err}): pip install sf-heu"
            console.print(f"[yellow]{name}: {unavailable[name]}[/]")
    heu, ou, phe = peers.get("heu") or {}, peers.get("heu_ou") or {}, peers["phe"]
    ours_ou = bench_ou(args.bits, X, values, n_dec, _exact(values, X))
    ratios = {
        "encrypt_online_vs_heu": ratio(ours["encrypt_online_per_s"], heu.get("encrypt_online_per_s")),
        "encrypt_offline_vs_heu": ratio(ours["encrypt_offline_per_s"], heu.get("encrypt_online_per_s")),
        "muladd_vs_heu": ratio(ours["muladd_per_s"], heu.get("muladd_per_s")),
        "muladd_vs_phe": ratio(ours["muladd_per_s"], phe.get("muladd_per_s")),
        "decrypt_vs_heu": ratio(ours["decrypt_per_value_per_s"], heu.get("decrypt_per_value_per_s")),
        "encrypt_online_vs_heu_ou": ratio(ours["encrypt_online_per_s"], ou.get("encrypt_online_per_s")),
        "muladd_vs_heu_ou": ratio(ours["muladd_per_s"], ou.get("muladd_per_s")),
        "decrypt_vs_heu_ou": ratio(ours["decrypt_per_value_per_s"], ou.get("decrypt_per_value_per_s")),
        # Our Okamoto-Uchiyama (protocols.he.ou, benchmarks/ou_kernels.py) against HEU's OU.
        "ou_encrypt_online_vs_heu_ou": ratio(ours_ou["encrypt_online_per_s"], ou.get("encrypt_online_per_s")),
        "ou_muladd_vs_heu_ou": ratio(ours_ou["muladd_per_s"], ou.get("muladd_per_s")),
        "ou_decrypt_vs_heu_ou": ratio(ours_ou["decrypt_per_value_per_s"], ou.get("decrypt_per_value_per_s")),
        "ou_noise_mbx_vs_fixed_base": ratio(ours_ou["noise_mbx_per_s"], ours_ou["noise_public_per_s"]),
    }
    speedup = round(ours["matvec_one_process_s"] / ours["matvec_two_workers_s"], 2)
    ceiling = round(ours["matvec_one_process_s"] / ours["matvec_two_halves_apart_s"], 2)
    result = {"bits": args.bits, "ours": ours, "ours_ou": ours_ou, "peers": peers, "ratios": ratios, "two_core_speedup": speedup,
              "two_core_ceiling": ceiling,
              "mask_vs_ordinary_noise": ratio(ours["mask_noise_per_s"], ours["noise_public_per_s"]),
              "sizes": {"encrypt": m, "matvec": [m, n], "decrypt": n_dec, "phe_encrypt": n_phe,
                        "noise": NOISE_COUNT,
                        "phe_matvec_rows": phe["muladd_rows"], "heu_matvec_rows": min(m, 1000),
                        "speedup_matvec": list(X_speed.shape)},
              "unavailable": unavailable, "cpu_count": os.cpu_count()}
    rows = [(key, fmt(ours[key]), fmt(phe.get(key)), fmt(heu.get(key)), fmt(ou.get(key))) for key in KERNELS]
    rows.append(("decrypt_plain_per_s", fmt(ours["decrypt_plain_per_s"]), "", "", ""))
    rows.extend((f"our OU {key}", fmt(ours_ou[key]), "", "", fmt(ou.get(key))) for key in KERNELS)
    rows.extend((f"our OU {key}", fmt(ours_ou[key]), "", "", "") for key in ("noise_public_per_s", "noise_mbx_per_s"))
    rows.append(("decrypt_horner_per_value_per_s", fmt(ours["decrypt_horner_per_value_per_s"]), "", "", ""))
    rows.extend((key, fmt(ours[key]), "", "", "") for key in NOISE_KERNELS)
    print_table(f"Operations per second (one thread, {args.bits}-bit keys)", rows,
                ("kernel", "ours", "phe", "HEU ZPaillier", "HEU OU"))
    print_table("Ours / peer (higher is faster)", [(k, fmt(v)) for k, v in ratios.items()] +
                [("two_core_speedup", fmt(speedup)), ("two_core_ceiling (two bare processes)", fmt(ceiling))],
                ("ratio", "value"))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.paillier", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: finishes in well under a minute")
    parser.add_argument("--bits", type=int, default=2048, help="modulus bits, all libraries")
    parser.add_argument("--json", help="write the results here (atomically)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before HEU is imported
    write_json(args.json, run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
