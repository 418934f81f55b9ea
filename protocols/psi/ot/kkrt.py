"""The arithmetic of KKRT16's batched OPRF, vectorised over blocks of bins: statistical parameters, cuckoo
hashing, the pseudo-random code, the IKNP-style OT-extension matrices and the bit-matrix transpose.

Notation (Kolesnikov, Kumaresan, Rosulek, Trieu, CCS 2016, "Efficient batched oblivious PRF with
applications to private set intersection"): the receiver R (the bank) holds one item per bin of a cuckoo
table of ``m`` bins; the sender S (the platform) holds ``w = 512`` choice bits ``s`` and, per base OT, the
key ``k_i^{s_i}``; R holds both keys ``k_i^0, k_i^1``. Column ``i`` of a matrix is ``G(k)``, AES-128-CTR
under that key. R sends the rows ``u_j = t_j xor G1_j xor C(x_j)`` with ``t_j = G0_j``; S computes
``q_j = G_{s}_j xor (u_j and s) = t_j xor (C(x_j) and s)``. The OPRF of bin ``j`` is
``F_j(y) = H(q_j xor (C(y) and s))``, which R knows only at its own item: ``F_j(x_j) = H(t_j)``.

Bit order: bit ``k`` of a byte string is ``byte[k // 8] >> (k % 8) & 1`` (as libOTe's blocks on x86).
Everything here is pure computation on numpy arrays (no messages, no secrets drawn here except where named).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from protocols.psi.messages import PsiError

WIDTH = 512  # code length in bits = number of base OTs (libOTe's KKRT uses 4 x 128)
ROW = WIDTH // 8  # bytes per row of the OT-extension matrices
ITEM = 16  # bytes of an item (the PRC input): the first half of the salted SHA-256 of the normalised ID
HASHES = 3  # cuckoo hash functions
STAT_BITS = 40  # statistical security: cuckoo failure and false-positive probability each <= 2^-40
MIN_BINS = 8
MAX_CUCKOO_ROUNDS = 2_000
_ZERO_IV = bytes(16)
_HASH_TWEAK = np.frombuffer(bytes(range(ROW)), dtype="<u8")  # tells the four 16-byte chunks apart in H


# ------------------------------------------------------------------------------ parameters ----


def cuckoo_bins(n: int) -> int:
    """Bins for ``n`` items with 3 hash functions and no stash, for failure probability <= 2^-40.

    libOTe's experimentally fitted bound (cryptoTools ``CuckooIndex::selectParams``, 3 hashes, no stash;
    after Pinkas, Schneider, Zohner, "Scalable private set intersection based on OT extension", TOPS 2018):
    ``lambda = a * e + b`` with ``a = 123.5 * (1 + erf((log2 n - 6.3) / (2.3 sqrt 2))) / 2`` and
    ``b = -130 * (1 + erf((log2 n - 6.45) / (2.18 sqrt 2))) / 2 - log2 n``; so ``e = (lambda - b) / a``.
    Small sets get at least ``MIN_BINS`` bins (and the fit's own growth of e below 2^12 items).
    """
    if n < 1:
        raise ValueError("a cuckoo table needs at least one item")
    nn = math.log2(max(n, 2))
    a = 123.5 / 2 * (1 + math.erf((nn - 6.3) / (2.3 * math.sqrt(2))))
    b = -130 / 2 * (1 + math.erf((nn - 6.45) / (2.18 * math.sqrt(2)))) - nn
    e = (STAT_BITS - b) / a
    return max(MIN_BINS, math.ceil(e * n))


def output_bytes(n: int, m_values: int) -> int:
    """Bytes of each OPRF output so that a false match among ``n`` own values and ``m_values`` received ones has
    probability <= 2^-40: ``lambda + log2(n) + log2(m_values)`` bits (KKRT section 5), at least 8 bytes."""
    bits = STAT_BITS + math.log2(max(n, 1)) + math.log2(max(m_values, 1))
    return max(8, math.ceil(bits / 8))


# ---------------------------------------------------------------------------- bit transpose ----

_M1, _M2, _M3 = np.uint64(0x00AA00AA00AA00AA), np.uint64(0x0000CCCC0000CCCC), np.uint64(0x00000000F0F0F0F0)
_S1, _S2, _S3 = np.uint64(7), np.uint64(14), np.uint64(28)
TRANSPOSE_SLICE = 4096  # bits (rows of the output) per slice


def _transpose8x8(words: np.ndarray) -> None:
    """In place: each uint64 as an 8x8 bit matrix (bit 8r + c) becomes its transpose (Hacker's Delight 7-3)."""
    t = np.empty_like(words)
    for mask, shift in ((_M1, _S1), (_M2, _S2), (_M3, _S3)):
        np.right_shift(words, shift, out=t)
        t ^= words
        t &= mask
        words ^= t
        t <<= shift
        words ^= t


def transpose_bits(cols: np.ndarray) -> np.ndarray:
    """The bit matrix whose row ``r`` is bit ``r`` of every input row: ``(w, b/8)`` bytes -> ``(b, w/8)`` bytes.

    Input row ``i`` holds column ``i`` (``b`` bits); output row ``r`` holds bit ``r`` of each column. Two byte
    transposes (numpy copies) around an 8x8 bit transpose of each uint64 (three mask-and-shift rounds), a
    slice of ``TRANSPOSE_SLICE`` bits at a time: on this machine the byte transposes are 4-5x faster when
    the slice fits in the L2 cache (0.2 s per million 512-bit rows, against 0.6 s for 65,536-row slices).
    """
    w, nb = cols.shape
    if w % 8:
        raise ValueError("the number of columns must be a multiple of 8")
    out = np.empty((nb, 8, w // 8), dtype=np.uint8)
    step = TRANSPOSE_SLICE // 8
    for lo in range(0, nb, step):
        hi = min(lo + step, nb)
        # x[c, a, k] = cols[8a + k, c]: the 8 bytes of column group a at byte c, as one little-endian word
        part = np.ascontiguousarray(cols[:, lo:hi])  # strided views transpose 3x slower than a copied slice
        x = part.reshape(w // 8, 8, hi - lo).transpose(2, 0, 1).copy()  # a copy: changed in place
        words = x.view("<u8").reshape(hi - lo, w // 8)
        _transpose8x8(words)
        # now byte d of word (c, a) holds bit d of bytes cols[8a .. 8a+7, c]: row 8c + d, byte a
        out[lo:hi] = words.view(np.uint8).reshape(hi - lo, w // 8, 8).transpose(0, 2, 1)
    return out.reshape(nb * 8, w // 8)


def transpose_bits_reference(cols: np.ndarray) -> np.ndarray:
    """:func:`transpose_bits` by unpacking every bit (slow; the tests' reference)."""
    bits = np.unpackbits(cols, axis=1, bitorder="little")  # (w, b)
    return np.packbits(bits.T, axis=1, bitorder="little")


# ----------------------------------------------------------------------------------- hashing ----


def bin_indices(tails: np.ndarray, m: int) -> np.ndarray:
    """The 3 distinct bins (``(k, 3)`` int64) of each item, from its 16 independent hash bytes ``tails``.

    Overlapping 64-bit windows at byte offsets 0, 4, 8, reduced mod ``m``, ``m - 1``, ``m - 2`` and shifted
    past the bins already taken, so the three bins are distinct and uniform among distinct triples (as
    libOTe's ``buildRow``). The bias of a 64-bit value mod ``m`` is below ``m / 2^64``.
    """
    if m < HASHES:
        raise ValueError(f"a cuckoo table needs at least {HASHES} bins")
    k = len(tails)
    windows = np.empty((k, HASHES), dtype=np.uint64)
    for h in range(HASHES):
        windows[:, h] = np.ascontiguousarray(tails[:, 4 * h:4 * h + 8]).view("<u8")[:, 0]
    out = np.empty((k, HASHES), dtype=np.int64)
    out[:, 0] = windows[:, 0] % np.uint64(m)
    second = (windows[:, 1] % np.uint64(m - 1)).astype(np.int64)
    second += second >= out[:, 0]
    out[:, 1] = second
    low, high = np.minimum(out[:, 0], out[:, 1]), np.maximum(out[:, 0], out[:, 1])
    third = (windows[:, 2] % np.uint64(m - 2)).astype(np.int64)
    third += third >= low
    third += third >= high
    out[:, 2] = third
    return out


def bin_table(tails: np.ndarray, m: int) -> np.ndarray:
    """:func:`bin_indices` by hash function: ``(3, k)`` uint32 (int64 from 2^32 bins), ``[h, i]`` the bin of item
    ``i`` under hash function ``h`` (so ``reshape(-1)`` lists entry ``h * k + i``)."""
    return bin_indices(tails, m).T.astype(np.uint32 if m <= 2**32 else np.int64)


def cuckoo_place(bins: np.ndarray, m: int, rng: np.random.Generator | None = None,
                 max_rounds: int = MAX_CUCKOO_ROUNDS) -> np.ndarray:
    """A cuckoo table: for each of ``m`` bins the item (column of ``bins``, a :func:`bin_table`) in it, or -1.

    Vectorised rounds of random-walk insertion: every homeless item tries one of its bins; of several
    items aiming at one bin one wins; the loser and the evicted occupant each try one of their two other
    bins next round. No stash: if items are still homeless after ``max_rounds`` rounds the table fails
    (probability <= 2^-40 for :func:`cuckoo_bins`'s table size; with too few bins, or adversarial bins,
    it fails for sure) and a :class:`PsiError` says so.
    """
    n = bins.shape[1]
    rng = rng or np.random.default_rng()
    index_type = np.int32 if n < 2**31 else np.int64  # 4 bytes per bin and item up to 2^31 items
    table = np.full(m, -1, dtype=index_type)
    choice = np.zeros(n, dtype=np.int8)  # which of its bins an item is in, or tries next
    homeless = np.arange(n, dtype=index_type)
    for _ in range(max_rounds):
        if len(homeless) == 0:
            return table
        target = bins[choice[homeless], homeless]
        before = table[target]
        table[target] = homeless  # of several items aiming at one bin, one is stored
        won = table[target] == homeless
        losers = homeless[~won]
        # the previous occupant of every bin a new item took (exactly one item won each such bin)
        evicted = before[won]
        evicted = evicted[evicted >= 0]
        homeless = np.concatenate([losers, evicted])
        # move to one of the two other hash functions, at random
        choice[homeless] = (choice[homeless] + rng.integers(1, HASHES, size=len(homeless))) % HASHES
    if len(homeless):
        raise PsiError(f"cuckoo hashing left {len(homeless)} of {n} items without a bin after {max_rounds} rounds "
                       f"({m} bins); this happens with probability below 2^-{STAT_BITS} for random IDs: run the "
                       "alignment again (it draws a new salt)")
    return table


# ------------------------------------------------------------------- code, hash and the PRG ----


def _ecb(key: bytes, data: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return encryptor.update(data) + encryptor.finalize()


class Code:
    """The pseudo-random code ``C(x) = (AES_K1(x) xor x) || ... || (AES_K4(x) xor x)`` (512 bits; libOTe's
    ``KkrtNcoOtSender::encode``) and the output hash ``H(z) = xor_k (AES_F(z_k xor tau_k) xor z_k)`` over
    the four 16-byte chunks of a row, with a fixed key ``F`` (libOTe's fixed-key hash, with a tweak per
    chunk). All four code keys and ``F`` come from the job salt, which both parties' nonces fix."""

    def __init__(self, code_keys: Sequence[bytes], hash_key: bytes, out_bytes: int) -> None:
        if len(code_keys) != ROW // 16 or any(len(k) != 16 for k in code_keys) or len(hash_key) != 16:
            raise ValueError("the code needs four 16-byte keys and a 16-byte hash key")
        if not 8 <= out_bytes <= 16:
            raise ValueError("outputs are 8 to 16 bytes")
        self.code_keys = list(code_keys)
        self.hash_key = hash_key
        self.out_bytes = out_bytes

    def encode(self, items: np.ndarray) -> np.ndarray:
        """``C(x)`` for each 16-byte item (``(k, 16)`` uint8) as ``(k, 64)`` uint8."""
        k = len(items)
        words = np.ascontiguousarray(items).view("<u8")  # (k, 2)
        data = words.tobytes()
        out = np.empty((k, ROW // 8), dtype="<u8")
        for i, key in enumerate(self.code_keys):
            out[:, 2 * i:2 * i + 2] = np.frombuffer(_ecb(key, data), dtype="<u8").reshape(k, 2)
            out[:, 2 * i:2 * i + 2] ^= words
        return out.view(np.uint8)

    def hash_rows(self, rows: np.ndarray) -> np.ndarray:
        """``H(z)`` truncated to ``out_bytes``, for each 64-byte row (``(k, 64)`` uint8) -> ``(k, out_bytes)``."""
        k = len(rows)
        words = np.ascontiguousarray(rows).view("<u8")  # (k, 8)
        tweaked = words ^ _HASH_TWEAK
        permuted = np.frombuffer(_ecb(self.hash_key, tweaked.tobytes()), dtype="<u8").reshape(k, ROW // 8)
        permuted = permuted ^ words
        folded = permuted[:, 0:2] ^ permuted[:, 2:4]
        folded ^= permuted[:, 4:6]
        folded ^= permuted[:, 6:8]
        return np.ascontiguousarray(folded.view(np.uint8)[:, :self.out_bytes])


class ColumnStreams:
    """``G(k_i)`` for each base-OT key: AES-128-CTR keystreams, read a block of bins at a time, in order."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        self._streams = [Cipher(algorithms.AES(k), modes.CTR(_ZERO_IV)).encryptor() for k in keys]

    def next(self, bins: int) -> np.ndarray:
        """The next ``bins`` bits of every column, as ``(columns, bins/8)`` uint8 (``bins`` a multiple of 8)."""
        zeros = bytes(bins // 8)
        out = np.empty((len(self._streams), bins // 8), dtype=np.uint8)
        for i, stream in enumerate(self._streams):
            out[i] = np.frombuffer(stream.update(zeros), dtype=np.uint8)
        return out


def block_bins(lo: int, hi: int) -> int:
    """Bins a block of ``[lo, hi)`` occupies in the column streams: rounded up to a multiple of 8."""
    return -(-(hi - lo) // 8) * 8


# -------------------------------------------------------------------------- the two matrices ----


class ReceiverMatrix:
    """R's side of the OT extension: both keys of every base OT; yields ``u`` rows and ``H(t)`` per block."""

    def __init__(self, keys0: Sequence[bytes], keys1: Sequence[bytes], code: Code) -> None:
        if len(keys0) != WIDTH or len(keys1) != WIDTH:
            raise ValueError(f"the OT extension needs {WIDTH} base-OT key pairs")
        self.g0, self.g1, self.code = ColumnStreams(keys0), ColumnStreams(keys1), code

    def block(self, items: np.ndarray, occupied: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For a block of bins: ``items`` (``(b, 16)``, any bytes where a bin is empty) and ``occupied``
        (``(b,)`` bool). Returns the ``u`` rows to send (``(b, 64)``) and ``H(t_j)`` of the occupied bins."""
        b = len(items)
        padded = block_bins(0, b)
        c0, c1 = self.g0.next(padded), self.g1.next(padded)
        t = transpose_bits(c0)[:b]
        c1 ^= c0
        u = transpose_bits(c1)[:b]
        code = self.code.encode(items[occupied])
        u[occupied] ^= code
        return u, self.code.hash_rows(t[occupied])


class SenderMatrix:
    """S's side: its choice bits ``s`` and the key ``k_i^{s_i}`` of every base OT; ``q`` rows per block."""

    def __init__(self, choice: bytes, keys: Sequence[bytes], code: Code) -> None:
        if len(choice) != ROW or len(keys) != WIDTH:
            raise ValueError(f"the OT extension needs {WIDTH} choice bits and keys")
        self.s = np.frombuffer(choice, dtype=np.uint8).copy()
        self.g, self.code = ColumnStreams(keys), code

    def rows(self, u: np.ndarray) -> np.ndarray:
        """``q_j = G_s_j xor (u_j and s)`` for a block of received ``u`` rows (``(b, 64)``)."""
        b = len(u)
        q = transpose_bits(self.g.next(block_bins(0, b)))[:b]
        q ^= u & self.s
        return q

    def evaluate(self, q: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``F_j(y) = H(q_j xor (C(y) and s))`` for pairs of a ``q`` row and an item (both ``(k, ...)``)."""
        z = self.code.encode(items)
        z &= self.s
        z ^= q
        return self.code.hash_rows(z)


__all__ = [
    "HASHES", "ITEM", "ROW", "STAT_BITS", "WIDTH", "Code", "ColumnStreams", "ReceiverMatrix", "SenderMatrix",
    "bin_indices", "bin_table", "block_bins", "cuckoo_bins", "cuckoo_place", "output_bytes", "transpose_bits",
    "transpose_bits_reference",
]
