"""PSI: correctness for known overlaps, output modes, what the platform learns, errors, what is sent."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from protocols.alignment import AlignmentError, AlignmentStore
from protocols.channel import LocalPeer, Message, PeerError, ProtocolError
from protocols.psi import (
    VERSION,
    Blinder,
    PlatformPsiHandler,
    PsiError,
    make_platform_psi_handler,
    normalise_id,
    run_bank_psi,
)


def phones(lo: int, hi: int) -> list[str]:
    return [f"+4477{i:08d}" for i in range(lo, hi)]


class Recorder:
    """Runs PSI in one process and keeps the platform handler and every message both ways."""

    def __init__(self, platform_ids: list[str], workers: int = 1, spill_dir: Path | None = None) -> None:
        self.platform_ids = platform_ids
        self.workers = workers
        self.spill_dir = spill_dir
        self.handler: PlatformPsiHandler | None = None
        self.peer = LocalPeer(self.factory)

    def factory(self, kind: str, job_id: str, params: Message) -> PlatformPsiHandler:
        assert kind == "psi"
        self.handler = make_platform_psi_handler(job_id, params, self.platform_ids, workers=self.workers,
                                                 spill_dir=self.spill_dir)
        return self.handler

    def run(self, bank_ids: list[str], **kw):
        for ch in self.peer.channels:
            ch.keep_transcript = True
        result = run_bank_psi(_Transcribing(self.peer), "job-psi-test-01", bank_ids, workers=self.workers, **kw)
        return result, self.handler.result


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
    # Checked in the worker pool, chunk by chunk: rows are still counted from the top of the file.
    many = phones(0, 6000)
    many[5999] = " " + many[10].replace("+44", "0044")
    blinder = Blinder(2)
    try:
        with pytest.raises(PsiError, match="rows 11 and 6000 hold the same ID"):
            blinder.check_ids(many)
        many[5999], many[4500] = "x", " "
        with pytest.raises(PsiError, match="row 4501: empty ID"):
            blinder.check_ids(many)
    finally:
        blinder.close()


def test_platform_refuses_out_of_order_and_malformed_steps() -> None:
    params = {"version": VERSION, "mode": "both", "batch_size": 10}
    handler = PlatformPsiHandler("job-psi-order-1", params, phones(0, 20), workers=1)
    with pytest.raises(ProtocolError, match="out of order"):
        handler.handle("psi.finish", {"size": 0, "content_hash": ""})
    handler.handle("psi.hello", {"bank_nonce": b"\x01" * 32, "bank_size": 15})
    with pytest.raises(ProtocolError, match="batch 1 arrived where batch 0"):
        handler.handle("psi.exchange", {"index": 1, "points": b"\x09" * 320})
    with pytest.raises(ProtocolError, match="must hold 10 points"):
        handler.handle("psi.exchange", {"index": 0, "points": b"\x09" * 31})
    with pytest.raises(ProtocolError, match="small order"):
        handler.handle("psi.exchange", {"index": 0, "points": b"\x00" * 320})
    with pytest.raises(ProtocolError, match="should not"):  # nothing to return in the first exchange
        handler.handle("psi.exchange", {"index": 0, "points": b"\x09" * 320, "platform_double": b"\x09" * 320})
    reply = handler.handle("psi.exchange", {"index": 0, "points": b"\x09" * 320})
    assert len(reply["double"]) == len(reply["points"]) == 320
    with pytest.raises(ProtocolError, match="platform_double must hold 10 points"):
        handler.handle("psi.exchange", {"index": 1, "points": b"\x09" * 160})
    with pytest.raises(ProtocolError, match="out of order"):
        handler.handle("psi.finish", {"size": 0, "content_hash": ""})
    handler.close()
    with pytest.raises(ProtocolError, match="not supported"):
        PlatformPsiHandler("job-psi-order-2", {**params, "version": "psi-v0"}, ["a"], workers=1)


class DroppingPeer:
    """A platform that disappears after a few steps, as a crashed or disconnected node would."""

    def __init__(self, inner: LocalPeer, after: int) -> None:
        self.inner, self.after = inner, after

    def open(self, kind: str, job_id: str, params: Message):
        channel = self.inner.open(kind, job_id, params)
        original, count = channel.call, [0]

        def call(step: str, message: Message) -> Message:
            count[0] += 1
            if count[0] > self.after:
                raise PeerError("step: peer unreachable (connection reset)", code="UNAVAILABLE")
            return original(step, message)

        channel.call = call  # type: ignore[method-assign]
        return channel


def test_peer_dropping_mid_stream_stores_nothing(tmp_path: Path) -> None:
    rec = Recorder(phones(0, 500))
    store = AlignmentStore(tmp_path)
    with pytest.raises(PeerError, match="unreachable"):
        run_bank_psi(DroppingPeer(rec.peer, after=3), "job-psi-drop-1", phones(0, 400), batch_size=50)
    assert rec.handler.result is None
    assert store.list() == []


def test_parallel_workers_give_the_same_result() -> None:
    bank, platform = phones(0, 6000), phones(3000, 9000)
    ours, theirs = Recorder(platform, workers=2).run(bank, batch_size=5000)
    assert ours.size == 3000 and ours.ids == theirs.ids
    solo, _ = Recorder(platform, workers=1).run(bank, batch_size=5000)
    assert set(solo.ids) == set(ours.ids)


@pytest.mark.parametrize(("n_bank", "n_platform", "batch"), [(1000, 90, 100), (90, 1000, 100), (300, 300, 300)])
def test_uneven_batch_counts(n_bank: int, n_platform: int, batch: int) -> None:
    # More bank batches than platform batches and the other way round: the pipelined exchanges line up.
    bank, platform = phones(0, n_bank), phones(n_bank - 50, n_bank - 50 + n_platform)
    for mode in ("both", "bank_only", "cardinality"):
        rec = Recorder(platform)
        ours, theirs = rec.run(bank, mode=mode, batch_size=batch)
        assert ours.size == theirs.size == 50
        exchanges = [step for step, _, _ in rec.peer.channels[0].transcript if step == "psi.exchange"]
        bank_batches, platform_batches = -(-n_bank // batch), -(-n_platform // batch)
        extra = 1 if mode == "both" else 0
        assert len(exchanges) == max(bank_batches, platform_batches + extra)


def test_large_sets_spill_to_files_that_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import protocols.psi as psi

    monkeypatch.setattr(psi, "SPILL_AT", 100)
    seen: list[bool] = []
    original = psi.PointStore.__init__

    def spying_init(self, size, spill_dir):  # type: ignore[no-untyped-def]
        original(self, size, spill_dir)
        seen.append(self.spilled)
        assert not self.spilled or any(Path(spill_dir).iterdir())

    monkeypatch.setattr(psi.PointStore, "__init__", spying_init)
    rec = Recorder(phones(100, 400), spill_dir=tmp_path / "platform")
    result = run_bank_psi(rec.peer, "job-psi-spill-1", phones(0, 300), batch_size=64, spill_dir=tmp_path / "bank")
    assert result.size == 200 and set(result.ids) == set(phones(100, 300))
    assert rec.handler.result.ids == result.ids
    assert len(seen) == 4 and all(seen)  # both sides' own and peer values
    rec.handler.close()  # as the node does when the session ends
    assert list((tmp_path / "bank").iterdir()) == list((tmp_path / "platform").iterdir()) == []


@pytest.mark.parametrize("spilled", [False, True])
def test_matching_falls_back_on_prefix_collisions(spilled: bool, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import protocols.psi as psi

    if spilled:  # files streamed back 2 slots at a time
        monkeypatch.setattr(psi, "SPILL_AT", 1)
        monkeypatch.setattr(psi.PointStore, "READ_CHUNK", 2)
    spill = tmp_path if spilled else None
    rng = np.random.default_rng(5)
    own, peer = psi.PointStore(6, spill), psi.PointStore(5, spill)
    assert own.spilled is peer.spilled is spilled
    raw = rng.integers(0, 256, size=(11, 32), dtype=np.uint8)
    raw[7, :8] = raw[8, :8]  # two peer values share an 8-byte prefix (the fallback path)
    raw[2, :8] = raw[9, :8]  # an own value shares a prefix with a peer value but differs after it
    own.write(slice(0, 6), raw[:6].tobytes())
    peer.write(np.array([4, 0, 1, 2, 3]), np.concatenate([raw[7:10], raw[[0, 4]]]).tobytes())
    assert psi._matches(own, peer)[0].tolist() == [0, 4]
    assert own.take(np.array([5, 0, 5])).tobytes() == raw[[5, 0, 5]].tobytes()
    peer.write(slice(0, 1), raw[5].tobytes())  # unique prefixes now: the searchsorted path
    assert psi._matches(own, peer)[0].tolist() == [0, 4, 5]  # not 2, whose prefix alone matches
    assert psi._matches(peer, own)[0].tolist() == [0, 2, 3]
    own.close()
    peer.close()
    assert list(tmp_path.iterdir()) == []


def test_alignment_store_round_trip_and_integrity(tmp_path: Path) -> None:
    rec = Recorder(phones(100, 300))
    ours, _ = rec.run(phones(0, 200), batch_size=64)
    store = AlignmentStore(tmp_path)
    store.save_result("job-align-0001", ours, peer_name="platform")
    loaded = store.load("job-align-0001")
    assert loaded.ids == ours.ids and loaded.content_hash == ours.content_hash and loaded.size == 100
    with pytest.raises(AlignmentError, match="never overwritten"):
        store.save_result("job-align-0001", ours, peer_name="platform")
    ids_file = tmp_path / "job-align-0001.ids.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(reversed(ours.ids))}), ids_file)
    with pytest.raises(AlignmentError, match="do not match"):
        store.load("job-align-0001")
    with pytest.raises(AlignmentError, match="no alignment"):
        store.load("job-nothing-01")
    assert list(tmp_path.glob("*.tmp")) == []
