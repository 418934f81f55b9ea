"""Our Okamoto-Uchiyama kernels (protocols.he.ou), measured as ``benchmarks.paillier`` measures Paillier's, for
the comparison with HEU's OU there (``ratios.ou_*_vs_heu_ou``), and the noise kernels compared with Intel's
multi-buffer exponentiation (``mbx_exp_mb8``, 8 lanes of AVX-512 IFMA) where it loads.

- ``encrypt_online_per_s``: ``G^m * noise`` with noise made ahead by the key owner (the same 41-bit signed
  values as the other libraries); ``encrypt_offline_per_s``: the owner's noise (CRT) per second.
- ``muladd_per_s``: ``X^T [[d]]`` (bucket multi-exponentiation mod n), m * n mul-adds.
- ``decrypt_per_value_per_s``: the protocol's packed path, signed values in 69-bit slots (9 to a plaintext
  at 2048 bits), packing + one decryption mod p^2 per plaintext + unpacking; ``decrypt_plain_per_s``: one
  decryption per value.
- ``noise_public_per_s`` (fixed-base windows, r of 256 bits, the other party's path) beside
  ``noise_mbx_per_s`` (the same exponentiations, 8 to a ``mbx_exp_mb8`` call) when the library loads.
"""

from __future__ import annotations

import ctypes
import secrets
from typing import Any

import numpy as np
from gmpy2 import mpz

from benchmarks.common import best_time, rate
from protocols.he import get_scheme
from protocols.he.ou_keys import CipherVector, NoisePool
from protocols.packing import pack_signed, unpack_signed

PAIR_SLOT = 69
REPEATS = 3


def _mbx_exp() -> Any:
    """``mbx_exp_mb8`` from ipp-crypto's libcrypto_mb, or None where it does not load."""
    try:
        from protocols.psi.x25519 import _MB_LIB, _RUNTIME, _find

        for name in _RUNTIME:
            ctypes.CDLL(str(_find("intel-cmplr-lib-rt", name)), mode=ctypes.RTLD_GLOBAL)
        lib = ctypes.CDLL(str(_find("ipp-crypto", _MB_LIB)))
    except (OSError, TypeError):
        return None
    fn = lib.mbx_exp_mb8
    fn.restype = ctypes.c_uint64
    fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    lib.mbx_exp_BufferSize.restype = ctypes.c_int
    lib.mbx_exp_BufferSize.argtypes = [ctypes.c_int]
    return lib, fn


def _mbx_noise(base: mpz, modulus: mpz, exponents: list[int], exp_bits: int) -> list[mpz] | None:
    """``base^e mod modulus`` for each e, eight per ``mbx_exp_mb8`` call (None: library or size unsupported)."""
    loaded = _mbx_exp()
    bits = modulus.bit_length()
    if loaded is None or bits not in (1024, 2048, 3072, 4096):
        return None
    lib, fn = loaded
    words = bits // 64
    size = lib.mbx_exp_BufferSize(bits)
    buffer = ctypes.create_string_buffer(size)
    B = np.tile(np.frombuffer(int(base).to_bytes(words * 8, "little"), np.uint64), (8, 1))
    M = np.tile(np.frombuffer(int(modulus).to_bytes(words * 8, "little"), np.uint64), (8, 1))
    E, Out = np.zeros((8, words), np.uint64), np.zeros((8, words), np.uint64)

    def pointers(A: np.ndarray) -> np.ndarray:
        return np.arange(8, dtype=np.uint64) * np.uint64(words * 8) + np.uint64(A.ctypes.data)

    po, pb, pe, pm = pointers(Out), pointers(B), pointers(E), pointers(M)
    out: list[mpz] = []
    for start in range(0, len(exponents), 8):
        chunk = exponents[start:start + 8]
        for lane, e in enumerate(chunk):
            E[lane] = np.frombuffer(int(e).to_bytes(words * 8, "little"), np.uint64)
        if fn(po.ctypes.data, pb.ctypes.data, pe.ctypes.data, exp_bits, pm.ctypes.data, bits, buffer, size):
            return None
        out.extend(mpz(int.from_bytes(Out[lane].tobytes(), "little")) for lane in range(len(chunk)))
    return out


def _open_packed(scheme: Any, sk: Any, cv: Any, count: int, k: int) -> list[int]:
    opened = scheme.decrypt(sk, cv)
    return [v for j, value in enumerate(opened) for v in unpack_signed(value, min(k, count - j * k), PAIR_SLOT)]


def bench_ou(bits: int, X: np.ndarray, values: list[int], n_dec: int, exact: list[int]) -> dict[str, Any]:
    scheme = get_scheme("ou")
    m, n = X.shape
    pk, sk = scheme.generate_keypair(bits, allow_insecure=bits < 2048)
    noise = NoisePool(pk, sk)
    noise.make()  # the owner's tables, outside the timing
    offline, _ = rate(m, lambda: noise.fill(m), REPEATS)
    noise.take(len(noise))
    pk.g_pow(mpz(1)), pk.g_pow(mpz(-1))  # the G and G^-1 tables, once per key
    online, cv = rate(m, lambda: scheme.encrypt(pk, values, noise), REPEATS, setup=lambda: noise.fill(m))
    assert noise.made_online == 0 and scheme.decrypt(sk, cv) == values, "OU encryption is wrong"
    muladd, product = rate(m * n, lambda: scheme.matvec_t(cv, X), REPEATS)
    assert scheme.decrypt(sk, product) == exact, "OU X^T [[d]] is wrong"
    k = scheme.slots_per_plaintext(pk, PAIR_SLOT)
    signed = [secrets.randbits(PAIR_SLOT - 2) - 2 ** (PAIR_SLOT - 3) for _ in range(n_dec)]
    noise.fill(2 * n_dec)
    pack_s, packed = best_time(lambda: [pack_signed(signed[s:s + k], PAIR_SLOT) for s in range(0, n_dec, k)], REPEATS)
    packed_cv = scheme.encrypt(pk, packed, noise)
    open_s, opened = best_time(lambda: _open_packed(scheme, sk, packed_cv, n_dec, k), REPEATS)
    assert opened == signed, "OU packed decryption is wrong"
    plain_cv = scheme.encrypt(pk, signed, noise)
    dec_plain, opened = rate(n_dec, lambda: scheme.decrypt(sk, plain_cv), REPEATS)
    assert opened == signed, "OU decryption is wrong"
    public = NoisePool(pk)
    public.make()  # the public noise table
    count = 400
    noise_public, _ = rate(count, lambda: public.fill(count), REPEATS)
    exponents = [secrets.randbits(pk.r_bits) for _ in range(count)]
    mbx_per_s = None
    if _mbx_noise(pk.h, pk.n, exponents[:8], pk.r_bits) is not None:
        mbx_per_s, made = rate(count, lambda: _mbx_noise(pk.h, pk.n, exponents, pk.r_bits), REPEATS)
        assert sk.decrypt(CipherVector(pk, made)) == [0] * count, "mbx noise is not noise"  # type: ignore[arg-type]
    return {"encrypt_online_per_s": online, "encrypt_offline_per_s": offline, "muladd_per_s": muladd,
            "decrypt_per_value_per_s": n_dec / (pack_s + open_s), "decrypt_plain_per_s": dec_plain,
            "values_per_decryption": k, "noise_public_per_s": noise_public, "noise_mbx_per_s": mbx_per_s}


__all__ = ["bench_ou"]
