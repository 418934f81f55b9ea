"""Each party's IDs as KKRT items: normalised, hashed with the job salt, checked for empty and repeated IDs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from protocols.psi.kernel import hash_chunk, refuse_repeats
from protocols.psi.messages import PsiError
from protocols.psi.ot.kkrt import HASHES, ITEM, bin_table

CHUNK = 100_000  # IDs hashed at a time (bounds the Python strings alive at once)


def hash_items(salt: bytes, ids: Sequence[str], bins: int, *,
               stop: Callable[[], bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(items, bin_table)``: row ``r`` of ``items`` (``(n, 16)`` uint8) and column ``r`` of the bin table
    (:func:`~protocols.psi.ot.kkrt.bin_table`, ``(3, n)``, for a table of ``bins`` bins) for ``ids[r]``.

    The salted SHA-256 of the normalised ID (the same hash as the ECDH protocol's ``H(x)``): its first half is
    the item that enters the code, its second half chooses the item's 3 cuckoo bins (computed a chunk at a
    time; the second halves are not kept). Refuses an empty side, empty IDs and IDs equal after
    normalisation, naming rows, never IDs. ``stop``: polled between chunks; True abandons the work."""
    n = len(ids)
    if n == 0:
        raise PsiError("this party has no IDs: an empty side cannot take part in PSI")
    items = np.empty((n, ITEM), dtype=np.uint8)
    table = np.empty((HASHES, n), dtype=np.uint32 if bins <= 2**32 else np.int64)
    for lo in range(0, n, CHUNK):
        if stop is not None and stop():
            raise PsiError("PSI stopped while hashing")
        hi = min(lo + CHUNK, n)
        chunk = ids[lo:hi]
        hashes, empty = hash_chunk(salt, chunk.tolist() if isinstance(chunk, np.ndarray) else list(chunk))
        if empty >= 0:
            raise PsiError(f"row {lo + empty + 1}: empty ID after normalisation")
        digests = np.frombuffer(hashes, dtype=np.uint8).reshape(hi - lo, 2 * ITEM)
        items[lo:hi] = digests[:, :ITEM]
        table[:, lo:hi] = bin_table(digests[:, ITEM:], bins)
    refuse_repeats(items.view("<u8")[:, 0].copy(), ids, np.arange(n))
    return items, table


__all__ = ["hash_items"]
