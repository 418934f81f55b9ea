"""PSI: correctness for known overlaps, output modes, what the platform learns, errors, what is sent."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

import protocols.psi.store as psi_store
from protocols.channel import LocalPeer, Message, PeerError, ProtocolError
from protocols.compute import InlineCompute, ProcessPoolCompute, ThreadCompute
from protocols.psi import (
    VERSION,
    Blinder,
    PlatformPsiHandler,
    PointStore,
    PsiError,
    PsiResult,
    content_hash,
    job_salt,
    make_platform_psi_handler,
    normalise_id,
    run_bank_psi,
    x25519,
)
from protocols.psi import messages as wire
from protocols.psi.kernel import hash_to_point
from protocols.psi.store import as_points, match_rows


def phones(lo: int, hi: int) -> list[str]:
    return [f"+4477{i:08d}" for i in range(lo, hi)]


class Recorder:
    """Runs PSI in one process and keeps the platform handler, what it reported, and every message both ways."""

    def __init__(self, platform_ids: list[str], workers: int = 1, spill_dir: Path | None = None) -> None:
        self.platform_ids = platform_ids
        self.workers = workers
        self.spill_dir = spill_dir
        self.handler: PlatformPsiHandler | None = None
        self.reports: list[PsiResult] = []  # every result the platform handed to on_result
        self.peer = LocalPeer(self.factory)

    def factory(self, kind: str, job_id: str, params: Message) -> PlatformPsiHandler:
        assert kind == wire.KIND
        self.handler = make_platform_psi_handler(job_id, params, self.platform_ids, on_result=self.reports.append,
                                                 compute=self.workers, spill_dir=self.spill_dir)
        return self.handler

    def run(self, bank_ids: list[str], **kw) -> tuple[PsiResult, PsiResult]:
        result = run_bank_psi(_Transcribing(self.peer), "job-psi-test-01", bank_ids, compute=self.workers, **kw)
        assert len(self.reports) == 1, "the platform reports its result exactly once"
        assert self.handler is not None and self.handler.result is self.reports[0]
        return result, self.reports[0]


class _Transcribing:
    def __init__(self, peer: LocalPeer) -> None:
        self.peer = peer

    def open(self, kind: str, job_id: str, params: Message):
        channel = self.peer.open(kind, job_id, params)
        channel.keep_transcript = True
        return channel


@pytest.mark.parametrize(("bank", "platform"), [
    (phones(0, 500), phones(250, 900)),      # partial overlap
    (phones(0, 300), phones(1000, 1400)),    # 0%
    (phones(0, 400), phones(0, 400)),        # 100%
    (phones(0, 1), phones(0, 1000)),         # one-element side
])
def test_intersection_is_exact_and_agreed(bank: list[str], platform: list[str]) -> None:
    rng = np.random.default_rng(1)
    platform = list(rng.permutation(platform))
    rec = Recorder(platform)
    ours, theirs = rec.run(bank, batch_size=128)
    expected = set(bank) & set(platform)
    assert ours.size == theirs.size == len(expected)
    assert set(ours.ids) == expected
    assert ours.ids == theirs.ids  # the same agreed order on both sides
    assert ours.content_hash == theirs.content_hash


def test_modes_reveal_only_what_they_promise() -> None:
    bank, platform = phones(0, 400), phones(300, 800)
    rec = Recorder(platform)
    ours, theirs = rec.run(bank, mode="bank_only", batch_size=100)
    assert ours.size == 100 and set(ours.ids) == set(phones(300, 400))
    assert theirs.ids is None and theirs.size == 100
    # In bank_only mode the platform never receives doubly blinded values of its own users: it has
    # nothing it could compare against the bank's points.
    sent = [req for _, req, _ in rec.peer.channels[0].transcript]
    assert sent and not any("platform_double" in req for req in sent)
    rec = Recorder(platform)
    ours, theirs = rec.run(bank, mode="cardinality", batch_size=100)
    assert ours.size == theirs.size == 100 and ours.ids is None and theirs.ids is None
    # In cardinality mode the bank never gets its own doubly blinded values back, and the platform gets
    # its own only shuffled across the whole set.
    transcript = rec.peer.channels[0].transcript
    replies = [reply for step, _, reply in transcript if step == "psi.exchange"]
    assert replies and not any("double" in reply for reply in replies)
    assert not any("platform_double" in req for _, req, _ in transcript)
    assert sum(1 for step, _, _ in transcript if step == "psi.cardinality_batch") == 5


def test_nothing_sent_contains_an_id_or_its_plain_hash() -> None:
    bank, platform = phones(0, 300), phones(200, 500)
    rec = Recorder(platform)
    rec.run(bank, batch_size=64)
    wire = b"".join(
        b"".join(v if isinstance(v, bytes) else str(v).encode() for v in msg.values())
        for _, req, rep in rec.peer.channels[0].transcript for msg in (req, rep))
    assert len(wire) > 32 * 600
    for raw in bank[:50] + platform[-50:]:
        for needle in (raw.encode(), hashlib.sha256(raw.encode()).digest(), hashlib.sha256(raw.encode()).hexdigest().encode(),
                       normalise_id(raw).encode()):
            assert needle not in wire


def test_normalisation_forms() -> None:
    assert normalise_id("  +44 7700-900 123 ") == "+447700900123"
    assert normalise_id("0044 (7700) 900123") == "+447700900123"
    assert normalise_id("Alice@Example.COM ") == "alice@example.com"
    assert normalise_id("ＡＢＣ-12") == "abc-12"  # NFKC full-width letters
    rec = Recorder(["ALICE@example.com", "+44 7700 900123"])
    ours, _ = rec.run(["alice@EXAMPLE.com", "+447700900123", "bob"], batch_size=2)
    assert ours.size == 2


def test_bad_input_is_refused_with_rows_named() -> None:
    with pytest.raises(PsiError, match="rows 1 and 3 hold the same ID") as err:
        run_bank_psi(Recorder(phones(0, 10)).peer, "job-psi-err-01", ["a@x.com", "b", "A@X.COM "])
    assert "a@x.com" not in str(err.value)
    with pytest.raises(PsiError, match="row 2: empty ID"):
        run_bank_psi(Recorder(phones(0, 10)).peer, "job-psi-err-02", ["a", "  "])
    with pytest.raises(PsiError, match="empty side"):
        run_bank_psi(Recorder(phones(0, 10)).peer, "job-psi-err-03", [])
    with pytest.raises(PeerError, match="platform data: .*same ID"):
        run_bank_psi(Recorder(["x", "X"]).peer, "job-psi-err-04", ["a"])
    with pytest.raises(PsiError, match="unknown PSI mode"):
        run_bank_psi(Recorder(["x"]).peer, "job-psi-err-05", ["a"], mode="everything")
    # Hashed in a secret order, chunk by chunk on the workers: rows are still counted from the top of the file.
    many = phones(0, 6000)
    many[5999] = " " + many[10].replace("+44", "0044")
    order = np.random.default_rng(7).permutation(6000)
    blinder = Blinder(CountingPool(2), min_chunk=500)
    try:
        with pytest.raises(PsiError, match="rows 11 and 6000 hold the same ID"):
            blinder.hash_ids(b"s" * 32, many, order, PointStore(6000, None))
        many[5999], many[4500], many[17] = "x", " ", "\t"
        with pytest.raises(PsiError, match="row 18: empty ID"):
            blinder.hash_ids(b"s" * 32, many, order, PointStore(6000, None))
        assert blinder.compute.submitted == 4  # type: ignore[attr-defined]
    finally:
        blinder.close()


def test_nothing_leaves_a_party_before_its_ids_pass_the_checks() -> None:
    """Both sides hash and check after psi.hello (the salt needs both nonces): a bad bank file stops the bank
    before its first exchange; a bad platform file stops the platform before it answers one."""
    rec = Recorder(phones(0, 10))
    channels: list = []

    class Watching(_Transcribing):
        def open(self, kind: str, job_id: str, params: Message):  # type: ignore[no-untyped-def]
            channels.append(super().open(kind, job_id, params))
            return channels[-1]

    with pytest.raises(PsiError, match="rows 1 and 3"):
        run_bank_psi(Watching(rec.peer), "job-psi-check-1", ["+447700900123", "b", "0044 7700 900 123"])
    assert [step for step, _, _ in channels[-1].transcript] == [wire.HELLO]
    rec = Recorder(["x", "b", " X"])
    with pytest.raises(PeerError, match="platform data: rows 1 and 3"):
        run_bank_psi(Watching(rec.peer), "job-psi-check-2", phones(0, 10))
    assert [step for step, _, _ in channels[-1].transcript] == [wire.HELLO]  # exchange 0 got no reply
    assert rec.handler is not None and rec.handler.result is None


def test_a_session_closed_while_hashing_stops_its_work() -> None:
    params = {"version": VERSION, "mode": "both", "batch_size": 1000}
    handler = PlatformPsiHandler("job-psi-close-1", params, phones(0, 30_000), on_result=lambda r: None, compute=2)
    handler.handle(wire.HELLO, {"bank_nonce": b"\x01" * 32, "bank_size": 10})
    handler.close()
    assert handler.hashing is not None and handler.hashing.done()
    assert handler.blinder.secret == b""
    if isinstance(handler.blinder.compute, ThreadCompute):  # the multi-buffer kernel's backend
        with pytest.raises(RuntimeError, match="closed"):
            handler.blinder.compute.submit(len, "x")


def test_platform_refuses_out_of_order_and_malformed_steps() -> None:
    params = {"version": VERSION, "mode": "both", "batch_size": 10}
    reports: list[PsiResult] = []
    handler = PlatformPsiHandler("job-psi-order-1", params, phones(0, 20), on_result=reports.append, compute=1)
    with pytest.raises(ProtocolError, match="out of order"):
        handler.handle(wire.FINISH, {"size": 0, "content_hash": ""})
    handler.handle(wire.HELLO, {"bank_nonce": b"\x01" * 32, "bank_size": 15})
    with pytest.raises(ProtocolError, match="batch 1 arrived where batch 0"):
        handler.handle(wire.EXCHANGE, {"index": 1, "points": b"\x09" * 320})
    with pytest.raises(ProtocolError, match="must hold 10 points"):
        handler.handle(wire.EXCHANGE, {"index": 0, "points": b"\x09" * 31})
    with pytest.raises(ProtocolError, match="small order"):
        handler.handle(wire.EXCHANGE, {"index": 0, "points": b"\x00" * 320})
    with pytest.raises(ProtocolError, match="should not"):  # nothing to return in the first exchange
        handler.handle(wire.EXCHANGE, {"index": 0, "points": b"\x09" * 320, "platform_double": b"\x09" * 320})
    reply = handler.handle(wire.EXCHANGE, {"index": 0, "points": b"\x09" * 320})
    assert len(reply["double"]) == len(reply["points"]) == 320
    with pytest.raises(ProtocolError, match="platform_double must hold 10 points"):
        handler.handle(wire.EXCHANGE, {"index": 1, "points": b"\x09" * 160})
    with pytest.raises(ProtocolError, match="out of order"):
        handler.handle(wire.FINISH, {"size": 0, "content_hash": ""})
    handler.close()
    assert reports == [] and handler.result is None
    with pytest.raises(ProtocolError, match="not supported"):
        PlatformPsiHandler("job-psi-order-2", {**params, "version": "psi-v0"}, ["a"], on_result=reports.append,
                           compute=1)


class DroppingPeer:
    """A platform that disappears after a few steps (or at one named step), as a crashed or disconnected
    node would. The bank still closes its end of the session, as it does over gRPC."""

    def __init__(self, inner: LocalPeer, after: int | None = None, at_step: str | None = None) -> None:
        self.inner, self.after, self.at_step = inner, after, at_step

    def open(self, kind: str, job_id: str, params: Message):
        channel = self.inner.open(kind, job_id, params)
        original, count = channel.call, [0]

        def call(step: str, message: Message) -> Message:
            count[0] += 1
            if step == self.at_step or (self.after is not None and count[0] > self.after):
                raise PeerError("step: peer unreachable (connection reset)", code="UNAVAILABLE")
            return original(step, message)

        channel.call = call  # type: ignore[method-assign]
        return channel


def test_peer_dropping_mid_stream_leaves_no_files_and_no_result(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psi_store, "SPILL_AT", 100)  # both sides spill every store to files
    spilled: list[PointStore] = []
    original = PointStore.__init__

    def spying_init(self: PointStore, size: int, spill_dir: Path | str | None) -> None:
        original(self, size, spill_dir)
        spilled.append(self)

    monkeypatch.setattr(PointStore, "__init__", spying_init)
    rec = Recorder(phones(0, 500), spill_dir=tmp_path / "platform")
    with pytest.raises(PeerError, match="unreachable"):
        run_bank_psi(DroppingPeer(rec.peer, after=3), "job-psi-drop-1", phones(0, 400), batch_size=50,
                     spill_dir=tmp_path / "bank")
    assert len(spilled) == 6 and all(store.size >= 100 for store in spilled)  # files were made on both sides
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank", "platform"]
    assert list((tmp_path / "bank").iterdir()) == list((tmp_path / "platform").iterdir()) == []
    assert rec.reports == [] and rec.handler is not None and rec.handler.result is None


@pytest.mark.parametrize("mode", ["both", "bank_only", "cardinality"])
def test_platform_reports_its_result_once_after_finish(mode: str) -> None:
    bank, platform = phones(0, 300), phones(200, 450)
    rec = Recorder(platform)
    ours, theirs = rec.run(bank, mode=mode, batch_size=64)  # run() checks: exactly one report
    assert theirs.size == ours.size == 100 and theirs.mode == mode
    assert theirs.own_count == 250 and theirs.peer_count == 300
    if mode == "both":
        assert theirs.ids == ours.ids and theirs.content_hash == ours.content_hash
    else:
        assert theirs.ids is None
    with pytest.raises(ProtocolError, match="has finished"):  # nothing can make it report again
        rec.handler.handle(wire.FINISH, {"size": 100, "content_hash": ours.content_hash})
    assert len(rec.reports) == 1


def test_platform_never_reports_a_session_closed_before_finish() -> None:
    rec = Recorder(phones(200, 450))
    with pytest.raises(PeerError, match="unreachable"):
        run_bank_psi(DroppingPeer(rec.peer, at_step=wire.FINISH), "job-psi-drop-2", phones(0, 300), batch_size=64)
    assert rec.handler is not None and rec.handler.expected == wire.FINISH  # every exchange had happened
    assert rec.reports == [] and rec.handler.result is None


def test_platform_never_reports_a_finish_it_refuses() -> None:
    class Tampering:  # a bank whose finish claims another intersection
        def __init__(self, inner: LocalPeer) -> None:
            self.inner = inner

        def open(self, kind: str, job_id: str, params: Message):
            channel = self.inner.open(kind, job_id, params)
            original = channel.call

            def call(step: str, message: Message) -> Message:
                if step == wire.FINISH:
                    message = {**message, wire.CONTENT_HASH: "0" * 64}
                return original(step, message)

            channel.call = call  # type: ignore[method-assign]
            return channel

    rec = Recorder(phones(200, 450))
    with pytest.raises(PeerError, match="different intersections"):
        run_bank_psi(Tampering(rec.peer), "job-psi-tamper-1", phones(0, 300), batch_size=64)
    assert rec.reports == []


def test_parallel_workers_give_the_same_result() -> None:
    bank, platform = phones(0, 6000), phones(3000, 9000)
    ours, theirs = Recorder(platform, workers=2).run(bank, batch_size=5000)
    assert ours.size == 3000 and ours.ids == theirs.ids
    solo, _ = Recorder(platform, workers=1).run(bank, batch_size=5000)
    assert set(solo.ids) == set(ours.ids)


class CountingPool:
    """A backend (a process pool underneath) that counts the work it is given and whether it was closed."""

    def __init__(self, workers: int) -> None:
        self._pool = ProcessPoolCompute(workers)
        self.workers = workers
        self.submitted = 0
        self.closed = False

    def submit(self, fn, /, *args):  # type: ignore[no-untyped-def]
        self.submitted += 1
        return self._pool.submit(fn, *args)

    def keep(self, secret):  # type: ignore[no-untyped-def]
        return self._pool.keep(secret)

    def close(self) -> None:
        self.closed = True
        self._pool.close()


def test_a_local_process_pool_becomes_threads_for_the_multi_buffer_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = ProcessPoolCompute(2)
    blinder = Blinder(pool)
    try:
        expected = ThreadCompute if x25519.kernel().name == "multi-buffer" else ProcessPoolCompute
        assert isinstance(blinder.compute, expected) and blinder.workers == 2
    finally:
        blinder.close()
    x25519.kernel.cache_clear()
    monkeypatch.setenv(x25519.ENV, "cryptography")
    try:
        blinder = Blinder(ProcessPoolCompute(2))  # cryptography holds the GIL: processes it stays
        assert isinstance(blinder.compute, ProcessPoolCompute)
        blinder.close()
    finally:
        x25519.kernel.cache_clear()


def test_blinder_gives_the_same_bytes_inline_and_on_a_process_pool() -> None:
    secret = bytes(range(1, 33))
    salt = hashlib.sha256(b"salt").digest()
    ids = phones(0, 500)
    order = np.arange(500)[::-1].copy()
    pool = CountingPool(2)
    inline = Blinder(InlineCompute(), min_chunk=50, secret=secret)
    parallel = Blinder(pool, min_chunk=50, secret=secret)
    try:
        hashed, pooled = PointStore(500, None), PointStore(500, None)
        inline.hash_ids(salt, ids, order, hashed)
        assert hashed.read(0, 1) == hash_to_point(salt, ids[499]) and hashed.read(499, 500) == hash_to_point(salt, ids[0])
        parallel.hash_ids(salt, ids, order, pooled)
        assert pooled.read(0, 500) == hashed.read(0, 500)
        assert pool.submitted == 2  # one chunk per worker
        singles = inline.blind_async(hashed.read(0, 500)).result()
        assert len(singles) == 32 * len(ids)
        assert parallel.blind_async(hashed.read(0, 500)).result() == singles
        assert pool.submitted == 4
        # Fewer than two chunks' worth runs in this process, not on the pool.
        assert parallel.blind_async(singles[:32 * 99]).result() == inline.blind_async(singles[:32 * 99]).result()
        assert pool.submitted == 4
    finally:
        inline.close()
        parallel.close()
    assert pool.closed and parallel.secret == b""  # the blinder owns its compute


# A pinned vector: any change to normalisation, the domain tag, the salt or the hashing breaks it, and
# with it compatibility with nodes already deployed (which would then silently find no intersection).
VECTOR_JOB = "job-psi-vector-01"
VECTOR_BANK_NONCE = bytes(range(32))
VECTOR_PLATFORM_NONCE = bytes(range(32, 64))
VECTOR_A = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")  # RFC 7748 6.1
VECTOR_B = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")


def test_pinned_vector() -> None:
    assert VERSION == "psi-x25519-v2"
    salt = job_salt(VECTOR_JOB, VECTOR_BANK_NONCE, VECTOR_PLATFORM_NONCE)
    assert salt.hex() == "8a345e6741c3a57e078a57ed4f11bce9ff15f9e12bc61c583d78863c537209fc"
    raw = " +44 7700-900 123"
    assert normalise_id(raw) == "+447700900123"
    point = hash_to_point(salt, raw)
    assert point.hex() == "385c91c21d4327b7c9bfa393f69646040628dd9bdc6274747088fa89ae7542ee"
    a, b = Blinder(1, secret=VECTOR_A), Blinder(1, secret=VECTOR_B)
    try:
        a_h = a.blind_async(point).result()
        assert a_h.hex() == "46bcb2bb6762e8fd51bbdb2abf06e03c8ce0ae8abc6200bdd61ade66a8b13e20"
        hashed = PointStore(1, None)
        b.hash_ids(salt, ["+447700900123"], np.arange(1), hashed)
        assert hashed.read(0, 1) == point
        b_h = b.blind_async(hashed.read(0, 1)).result()
        assert b_h.hex() == "134616773a22eea971e2f16f54bba282d31576b29c56e6ccd6a8aab7df1fb43d"
        ab_h = b.blind_async(a_h).result()
        assert ab_h.hex() == "3a0d45f51134596363052d0c36c0cf5d61405569d92515a6ff1d31037af6494c"
        assert a.blind_async(b_h).result() == ab_h
    finally:
        a.close()
        b.close()
    assert content_hash(as_points(ab_h)) == "a0c29815452e3b74bfb2072bb3463b4227ceaf379e6cfa591ffd2cf4f6c1b9a1"


@pytest.mark.parametrize(("n_bank", "n_platform", "batch"), [(1000, 90, 100), (90, 1000, 100), (300, 300, 300)])
def test_uneven_batch_counts(n_bank: int, n_platform: int, batch: int) -> None:
    # More bank batches than platform batches and the other way round: the pipelined exchanges line up.
    bank, platform = phones(0, n_bank), phones(n_bank - 50, n_bank - 50 + n_platform)
    for mode in ("both", "bank_only", "cardinality"):
        rec = Recorder(platform)
        ours, theirs = rec.run(bank, mode=mode, batch_size=batch)
        assert ours.size == theirs.size == 50
        exchanges = [step for step, _, _ in rec.peer.channels[0].transcript if step == wire.EXCHANGE]
        bank_batches, platform_batches = -(-n_bank // batch), -(-n_platform // batch)
        extra = 1 if mode == "both" else 0
        assert len(exchanges) == max(bank_batches, platform_batches + extra)


def test_large_sets_spill_to_files_that_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psi_store, "SPILL_AT", 100)
    seen: list[bool] = []
    original = PointStore.__init__

    def spying_init(self: PointStore, size: int, spill_dir: Path | str | None) -> None:
        original(self, size, spill_dir)
        seen.append(self.spilled)
        assert not self.spilled or any(Path(spill_dir).iterdir())

    monkeypatch.setattr(PointStore, "__init__", spying_init)
    rec = Recorder(phones(100, 400), spill_dir=tmp_path / "platform")
    result = run_bank_psi(rec.peer, "job-psi-spill-1", phones(0, 300), batch_size=64, spill_dir=tmp_path / "bank")
    assert result.size == 200 and set(result.ids) == set(phones(100, 300))
    assert len(rec.reports) == 1 and rec.reports[0].ids == result.ids
    assert len(seen) == 6 and all(seen)  # both sides' own hashes, own and peer values
    rec.handler.close()  # as the node does when the session ends
    assert list((tmp_path / "bank").iterdir()) == list((tmp_path / "platform").iterdir()) == []


@pytest.mark.parametrize("spilled", [False, True])
def test_matching_falls_back_on_prefix_collisions(spilled: bool, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    if spilled:  # files streamed back 2 slots at a time
        monkeypatch.setattr(psi_store, "SPILL_AT", 1)
        monkeypatch.setattr(PointStore, "READ_CHUNK", 2)
    spill = tmp_path if spilled else None
    rng = np.random.default_rng(5)
    own, peer = PointStore(6, spill), PointStore(5, spill)
    assert own.spilled is peer.spilled is spilled
    assert len(list(tmp_path.iterdir())) == (2 if spilled else 0)
    raw = rng.integers(0, 256, size=(11, 32), dtype=np.uint8)
    raw[7, :8] = raw[8, :8]  # two peer values share an 8-byte prefix (the fallback path)
    raw[2, :8] = raw[9, :8]  # an own value shares a prefix with a peer value but differs after it
    own.write(slice(0, 6), raw[:6].tobytes())
    peer.write(np.array([4, 0, 1, 2, 3]), np.concatenate([raw[7:10], raw[[0, 4]]]).tobytes())
    assert match_rows(own, peer)[0].tolist() == [0, 4]
    assert own.take(np.array([5, 0, 5])).tobytes() == raw[[5, 0, 5]].tobytes()
    peer.write(slice(0, 1), raw[5].tobytes())  # unique prefixes now: the searchsorted path
    assert match_rows(own, peer)[0].tolist() == [0, 4, 5]  # not 2, whose prefix alone matches
    assert match_rows(peer, own)[0].tolist() == [0, 2, 3]
    own.close()
    peer.close()
    assert list(tmp_path.iterdir()) == []
