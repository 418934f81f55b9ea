"""The bank's side of PSI: it drives the session, step by step, over a :class:`protocols.channel.Peer`."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from pathlib import Path

import protocols.psi.messages as wire
from protocols.channel import Message, Peer
from protocols.compute import ComputeSpec
from protocols.errors import ProtocolError
from protocols.psi.ids import job_salt
from protocols.psi.kernel import Blinder, Pending
from protocols.psi.messages import (
    MODES,
    VERSION,
    Progress,
    PsiError,
    PsiResult,
    batches,
    exchange_rounds,
    points_field,
)
from protocols.psi.store import PointStore, intersection
from protocols.shuffle import secret_permutation


def run_bank_psi(peer: Peer, job_id: str, ids: Sequence[str], *, mode: str = "both", batch_size: int = 50_000,
                 compute: ComputeSpec = None, spill_dir: Path | str | None = None,
                 progress: Progress | None = None) -> PsiResult:
    """Run PSI as the bank against the platform behind ``peer``.

    ``ids`` are the bank's raw IDs in file order; the result's ``ids`` are the same raw strings.
    ``compute``: where the curve kernels run (a backend, a worker count, or None for every core); the run
    owns it and closes it when it ends.
    ``spill_dir``: where doubly blinded values go (memory-mapped, deleted afterwards) for large sets.
    """
    started = time.monotonic()
    n = len(ids)
    blinder = Blinder(compute)
    stores: list[PointStore] = []
    try:
        if mode not in MODES:
            raise PsiError(f"unknown PSI mode {mode!r}; use one of {', '.join(MODES)}")
        if batch_size < 1:
            raise PsiError("batch_size must be positive")
        if n == 0:
            raise PsiError("this party has no IDs: an empty side cannot take part in PSI")
        channel = peer.open(wire.KIND, job_id, {wire.PARAM_VERSION: VERSION, wire.PARAM_MODE: mode,
                                             wire.PARAM_BATCH_SIZE: batch_size})
    except BaseException:
        blinder.close()
        raise
    try:
        nonce = secrets.token_bytes(wire.NONCE)
        hello = channel.call(wire.HELLO, {wire.BANK_NONCE: nonce, wire.BANK_SIZE: n})
        platform_nonce = hello.get(wire.PLATFORM_NONCE)
        m = wire.read_count(hello.get(wire.PLATFORM_SIZE), f"{wire.HELLO} reply platform_size")
        if not isinstance(platform_nonce, bytes) or len(platform_nonce) != wire.NONCE:
            raise ProtocolError(f"malformed {wire.HELLO} reply")
        salt = job_salt(job_id, nonce, platform_nonce)
        own_double, platform_double = PointStore(n, spill_dir), PointStore(m, spill_dir)
        own_hashes = PointStore(n, spill_dir)  # H(x) in our secret order, slot i for row perm[i]
        stores += [own_double, platform_double, own_hashes]

        perm = secret_permutation(n)
        own_batches, platform_batches = batches(n, batch_size), batches(m, batch_size)
        blinder.hash_ids(salt, ids, perm, own_hashes)  # the platform hashes its own meanwhile

        def own_points(k: int) -> Pending:
            return blinder.blind_async(own_hashes.read(*own_batches[k]))

        ahead = own_points(0)
        blinding: Pending | None = None  # the platform's previous batch, being blinded by us
        for k in range(exchange_rounds(len(own_batches), len(platform_batches), mode)):
            message: Message = {wire.INDEX: k}
            if k < len(own_batches):
                message[wire.POINTS] = ahead.result()
                if k + 1 < len(own_batches):
                    ahead = own_points(k + 1)
            if blinding is not None:
                double = blinding.result()
                lo, hi = platform_batches[k - 1]
                platform_double.write(slice(lo, hi), double)
                if mode == "both":
                    message[wire.PLATFORM_DOUBLE] = double
                blinding = None
                if progress:
                    progress("psi: platform points", hi, m)
            reply = channel.call(wire.EXCHANGE, message)
            what = f"{wire.EXCHANGE} {k} reply"
            if k < len(own_batches):
                lo, hi = own_batches[k]
                if mode != "cardinality":
                    own_double.write(perm[lo:hi], points_field(reply, wire.DOUBLE, hi - lo, what))
                if progress:
                    progress("psi: bank points", hi, n)
            if k < len(platform_batches):
                lo, hi = platform_batches[k]
                blinding = blinder.blind_async(points_field(reply, wire.POINTS, hi - lo, what))
        if blinding is not None:  # bank_only and cardinality: the platform's last batch was never sent back
            lo, hi = platform_batches[-1]
            platform_double.write(slice(lo, hi), blinding.result())

        if mode == "cardinality":
            shuffled = platform_double.take(secret_permutation(m))
            for k, (lo, hi) in enumerate(batches(m, batch_size)):
                channel.call(wire.CARDINALITY_BATCH, {wire.INDEX: k, wire.DOUBLE: shuffled[lo:hi].tobytes()})
            del shuffled
            reply = channel.call(wire.FINISH, {})
            common = reply.get(wire.SIZE)
            if not isinstance(common, int) or not 0 <= common <= min(n, m):
                raise ProtocolError(f"malformed {wire.FINISH} reply")
            result = PsiResult(mode, common, None, "", n, m, 0.0)
        else:
            members, digest = intersection(own_double, platform_double, ids)
            reply = channel.call(wire.FINISH, {wire.SIZE: len(members), wire.CONTENT_HASH: digest})
            if reply.get(wire.SIZE) != len(members) or (mode == "both" and reply.get(wire.CONTENT_HASH) != digest):
                raise ProtocolError("the platform computed a different intersection; alignment not stored")
            result = PsiResult(mode, len(members), members, digest, n, m, 0.0)
        result.seconds = time.monotonic() - started
        channel.close()
        return result
    except BaseException:
        channel.close()
        raise
    finally:
        blinder.close()
        for store in stores:
            store.close()


__all__ = ["run_bank_psi"]
