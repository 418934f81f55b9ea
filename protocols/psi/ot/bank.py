"""The bank's side of the OT-based PSI: KKRT's OPRF receiver, driving the session over a :class:`Peer`."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

import protocols.psi.ot.messages as wire
from protocols.channel import Peer, PeerChannel
from protocols.errors import ProtocolError
from protocols.psi.ids import job_salt
from protocols.psi.messages import (
    KIND,
    NONCE,
    PARAM_MODE,
    PARAM_VERSION,
    Progress,
    PsiError,
    PsiResult,
    read_count,
)
from protocols.psi.ot.baseot import POINT, BaseOtSender
from protocols.psi.ot.items import hash_items
from protocols.psi.ot.kkrt import (
    HASHES,
    WIDTH,
    Code,
    ReceiverMatrix,
    cuckoo_bins,
    cuckoo_place,
    output_bytes,
)

log = logging.getLogger(__name__)


def make_code(salt: bytes, out_bytes: int) -> Code:
    """The pseudo-random code and output hash both parties derive from the job salt."""
    return Code([wire.derived_key(salt, "code", i) for i in range(4)], wire.derived_key(salt, "hash"), out_bytes)


class OwnValues:
    """The bank's OPRF outputs ``H(t_j)``, one per own item, and the matching of the platform's values.

    Matching sorts our values' 8-byte prefixes once and indexes them by their top ``log2 n`` bits (the values
    are uniform, so a bucket holds about one); a received value is looked up in its bucket and every
    candidate is compared on all bytes. No binary search, no sort per batch."""

    def __init__(self, n: int, out_bytes: int) -> None:
        self.values = np.zeros((n, out_bytes), dtype=np.uint8)
        self._sorted_keys = np.empty(0, dtype=np.uint64)
        self._order = np.empty(0, dtype=np.int64)
        self._starts = np.zeros(2, dtype=np.int64)
        self._shift = np.uint64(63)

    def prepare(self) -> None:
        keys = self.values[:, :8].copy().view("<u8")[:, 0]
        self._order = np.argsort(keys, kind="stable")
        self._sorted_keys = keys[self._order]
        bits = max(1, int(np.log2(max(len(keys), 2))))
        self._shift = np.uint64(64 - bits)
        edges = np.arange(2**bits + 1, dtype=np.uint64)
        edges[:-1] <<= self._shift
        starts = np.searchsorted(self._sorted_keys, edges[:-1])
        self._starts = np.append(starts, len(keys)).astype(np.int64)

    def release(self) -> None:
        """Drop our values and the index (the matching is over)."""
        self.values = np.zeros((0, self.values.shape[1]), dtype=np.uint8)
        self._sorted_keys = np.empty(0, dtype=np.uint64)
        self._order = np.empty(0, dtype=np.int64)
        self._starts = np.zeros(2, dtype=np.int64)

    def match(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(indices into values, own rows)`` of the received values equal to one of ours (all bytes compared)."""
        keys = values[:, :8].copy().view("<u8")[:, 0]
        bucket = (keys >> self._shift).astype(np.int64)
        first = self._starts[bucket]
        count = self._starts[bucket + 1] - first
        queries, slots = [], []
        active = np.flatnonzero(count > 0)
        j = 0
        while len(active):
            slot = first[active] + j
            hit = self._sorted_keys[slot] == keys[active]
            queries.append(active[hit])
            slots.append(slot[hit])
            j += 1
            active = active[count[active] > j]
        if not queries:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        query = np.concatenate(queries)
        own = self._order[np.concatenate(slots)]
        equal = (self.values[own] == values[query]).all(axis=1)
        return query[equal].astype(np.int64), own[equal].astype(np.int64)


def run_bank_ot_psi(peer: Peer, job_id: str, ids: Sequence[str], *, mode: str = "both",
                    progress: Progress | None = None) -> PsiResult:
    """Run the OT-based PSI as the bank (the OPRF receiver) against the platform behind ``peer``.

    ``ids`` are the bank's raw IDs in file order; the result's ``ids`` are the same raw strings, in the
    agreed order (ascending OPRF value). Work is single-threaded numpy and AES; the next block of ``u``
    rows is computed on a helper thread while the previous one travels.
    """
    started = time.monotonic()
    n = len(ids)
    if mode not in wire.MODES:
        raise PsiError(f"PSI mode {mode!r} is not offered by the OT-based protocol (it offers "
                       f"{', '.join(wire.MODES)}); use protocol 'ecdh' for cardinality")
    if n == 0:
        raise PsiError("this party has no IDs: an empty side cannot take part in PSI")
    nonce = secrets.token_bytes(NONCE)
    ahead = ThreadPoolExecutor(1, thread_name_prefix="psi-ot-bank")
    stop = threading.Event()
    # Our items need only our nonce: they are hashed while the session opens and psi.ot.hello travels.
    bins = cuckoo_bins(n)
    hashing = ahead.submit(hash_items, wire.item_salt(job_id, nonce), ids, bins, stop=stop.is_set)
    channel: PeerChannel | None = None
    try:
        channel = peer.open(KIND, job_id, {PARAM_VERSION: wire.VERSION, PARAM_MODE: mode})
        base = BaseOtSender()
        hello = channel.call(wire.HELLO, {wire.BANK_NONCE: nonce, wire.BANK_SIZE: n,
                                          wire.BASE_OT_SENDER: base.message})
        m = read_count(hello.get(wire.PLATFORM_SIZE), f"{wire.HELLO} reply platform_size")
        platform_nonce = wire.bytes_field(hello, wire.PLATFORM_NONCE, NONCE, f"{wire.HELLO} reply platform_nonce")
        points = wire.bytes_field(hello, wire.BASE_OT_POINTS, WIDTH * POINT, f"{wire.HELLO} reply base-OT points")
        signs = wire.bytes_field(hello, wire.BASE_OT_SIGNS, WIDTH, f"{wire.HELLO} reply base-OT signs")
        salt = job_salt(job_id, nonce, platform_nonce)
        items, bin_choices = hashing.result()  # nothing derived from our IDs leaves before this passes
        log.debug("psi-ot bank: hashed at %.2f s", time.monotonic() - started)
        keys0, keys1 = base.keys(salt, points, signs)
        table = cuckoo_place(bin_choices, bins)
        del bin_choices
        log.debug("psi-ot bank: cuckoo at %.2f s", time.monotonic() - started)
        out_bytes = output_bytes(n, HASHES * m)
        matrix = ReceiverMatrix(keys0, keys1, make_code(salt, out_bytes))
        own = OwnValues(n, out_bytes)

        held = {"items": items, "table": table}  # dropped once every block is out
        del items, table

        def block(lo: int, hi: int) -> np.ndarray:
            slots = held["table"][lo:hi]
            occupied = slots >= 0
            u, outputs = matrix.block(held["items"][np.where(occupied, slots, 0)], occupied)
            own.values[slots[occupied]] = outputs
            return u

        blocks = [(lo, min(lo + wire.BLOCK_BINS, bins)) for lo in range(0, bins, wire.BLOCK_BINS)]
        pending: Future[np.ndarray] = ahead.submit(block, *blocks[0])
        for k, (_, hi) in enumerate(blocks):
            u = pending.result()
            if k + 1 < len(blocks):
                pending = ahead.submit(block, *blocks[k + 1])
            channel.call(wire.EXTEND, {wire.INDEX: k, wire.U_ROWS: u.tobytes()})
            if progress:
                progress("psi: oblivious PRF", hi, bins)
        held.clear()
        log.debug("psi-ot bank: streamed at %.2f s", time.monotonic() - started)
        own.prepare()

        found_positions, found_rows = [], []
        total = HASHES * m
        value_batches = wire.value_batches(total, out_bytes)

        def fetch(k: int) -> bytes:
            lo, hi = value_batches[k]
            reply = channel.call(wire.VALUES, {wire.INDEX: k})
            return wire.bytes_field(reply, wire.VALUES_FIELD, (hi - lo) * out_bytes, f"{wire.VALUES} {k} reply")

        fetching = ahead.submit(fetch, 0)  # the next batch travels while we match this one
        for k, (lo, hi) in enumerate(value_batches):
            data = fetching.result()
            if k + 1 < len(value_batches):
                fetching = ahead.submit(fetch, k + 1)
            where, rows = own.match(np.frombuffer(data, dtype=np.uint8).reshape(hi - lo, out_bytes))
            found_positions.append(where + lo)
            found_rows.append(rows)
            if progress:
                progress("psi: platform values", hi, total)
        positions = np.concatenate(found_positions)
        log.debug("psi-ot bank: values at %.2f s", time.monotonic() - started)
        rows = np.concatenate(found_rows)
        if not wire.all_distinct(rows, n):
            raise ProtocolError("the platform sent two values that match one bank ID; alignment not stored")
        values = own.values[rows]
        own.release()  # before the member list is built
        order = wire.sort_by_value(values)
        positions, rows, values = positions[order], rows[order], values[order]
        digest = wire.content_hash(values)
        log.debug("psi-ot bank: sorted at %.2f s", time.monotonic() - started)
        if mode == "both":
            for k, lo in enumerate(range(0, len(positions), wire.POSITIONS_PER_MESSAGE)):
                channel.call(wire.MEMBERS, {wire.INDEX: k,
                                            wire.POSITIONS: positions[lo:lo + wire.POSITIONS_PER_MESSAGE]})
        members_listed = ahead.submit(wire.take_ids, ids, rows)  # during the finish round trip
        reply = channel.call(wire.FINISH, {wire.SIZE: len(rows), wire.CONTENT_HASH: digest})
        if reply.get(wire.SIZE) != len(rows) or (mode == "both" and reply.get(wire.CONTENT_HASH) != digest):
            raise ProtocolError("the platform computed a different intersection; alignment not stored")
        members = members_listed.result()
        log.debug("psi-ot bank: finished at %.2f s", time.monotonic() - started)
        result = PsiResult(mode, len(members), members, digest, n, m, time.monotonic() - started, "ot")
        channel.close()
        return result
    except BaseException:
        if channel is not None:
            channel.close()
        raise
    finally:
        stop.set()
        ahead.shutdown(wait=True, cancel_futures=True)


__all__ = ["OwnValues", "make_code", "run_bank_ot_psi"]
