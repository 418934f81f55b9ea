"""The OT-based PSI (KKRT16): its parts (transpose, bins, cuckoo table, base OTs, the OPRF), exact intersections
on adversarial ID sets, what each party sees, errors, the align job's protocol choice and the policy knob."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocols.psi.ot.bank as ot_bank
import protocols.psi.ot.kkrt as kkrt
import protocols.psi.ot.messages as wire
from party_common.jobs.align import AlignParams
from party_common.jobs.base import JobError
from party_common.policy import PSI_PROTOCOLS, PolicyConfig, PolicyRefused, parse_policy
from party_platform.policy import PlatformPolicy
from protocols.channel import LocalPeer, Message, PeerError, ProtocolError
from protocols.psi import PROTOCOLS, PsiError, PsiResult, normalise_id, protocol_of
from protocols.psi import VERSION as ECDH_VERSION
from protocols.psi.ids import job_salt, normalise_all
from protocols.psi.kernel import hash_chunk
from protocols.psi.ot import PlatformOtPsiHandler, run_bank_ot_psi
from protocols.psi.ot.baseot import BaseOtReceiver, BaseOtSender, v_of
from protocols.psi.ot.items import hash_items

ROOT = Path(__file__).resolve().parents[1]


def phones(lo: int, hi: int) -> list[str]:
    return [f"+4477{i:08d}" for i in range(lo, hi)]


class Recorder:
    """Both parties in this process over a LocalPeer, every message kept."""

    def __init__(self, platform_ids: list[str]) -> None:
        self.platform_ids = platform_ids
        self.handler: PlatformOtPsiHandler | None = None
        self.reports: list[PsiResult] = []
        self.peer = LocalPeer(self.factory)

    def factory(self, kind: str, job_id: str, params: Message) -> PlatformOtPsiHandler:
        self.handler = PlatformOtPsiHandler(job_id, params, self.platform_ids, on_result=self.reports.append)
        return self.handler

    def run(self, bank_ids: list[str], mode: str = "both", job_id: str = "job-psi-ot-01") -> tuple[PsiResult, PsiResult]:
        result = run_bank_ot_psi(_Transcribing(self.peer), job_id, bank_ids, mode=mode)
        assert len(self.reports) == 1, "the platform reports its result exactly once"
        return result, self.reports[0]

    @property
    def transcript(self) -> list[tuple[str, Message, Message]]:
        return self.peer.channels[-1].transcript


class _Transcribing:
    def __init__(self, peer: LocalPeer) -> None:
        self.peer = peer

    def open(self, kind: str, job_id: str, params: Message):  # type: ignore[no-untyped-def]
        channel = self.peer.open(kind, job_id, params)
        channel.keep_transcript = True
        return channel


# ------------------------------------------------------------------------------------ parts ----


@settings(max_examples=60, deadline=None)
@given(groups=st.integers(1, 70), row_bytes=st.integers(1, 300), seed=st.integers(0, 2**32 - 1),
       slice_bits=st.sampled_from([8, 64, 4096]))
def test_transpose_matches_bit_by_bit_and_is_an_involution(groups: int, row_bytes: int, seed: int,
                                                           slice_bits: int) -> None:
    cols = np.random.default_rng(seed).integers(0, 256, (8 * groups, row_bytes), dtype=np.uint8)
    old = kkrt.TRANSPOSE_SLICE
    kkrt.TRANSPOSE_SLICE = slice_bits  # several slices, a partial last one
    try:
        rows = kkrt.transpose_bits(cols)
        assert rows.shape == (8 * row_bytes, groups)
        assert np.array_equal(rows, kkrt.transpose_bits_reference(cols))
        assert np.array_equal(kkrt.transpose_bits(rows), cols)
    finally:
        kkrt.TRANSPOSE_SLICE = old


def test_transpose_leaves_its_input_alone() -> None:
    cols = np.arange(8, dtype=np.uint8).reshape(8, 1)  # a shape whose transposed view is contiguous
    kept = cols.copy()
    kkrt.transpose_bits(cols)
    assert np.array_equal(cols, kept)


@settings(max_examples=60, deadline=None)
@given(m=st.integers(3, 2**40), seed=st.integers(0, 2**32 - 1))
def test_the_three_bins_of_an_item_are_distinct_and_in_range(m: int, seed: int) -> None:
    tails = np.random.default_rng(seed).integers(0, 256, (200, 16), dtype=np.uint8)
    tails[0] = 0  # all windows equal: the shifts must still separate the bins
    tails[1] = 255
    bins = kkrt.bin_indices(tails, m)
    assert ((bins >= 0) & (bins < m)).all()
    assert (bins[:, 0] != bins[:, 1]).all() and (bins[:, 0] != bins[:, 2]).all() and (bins[:, 1] != bins[:, 2]).all()


def test_cuckoo_table_places_every_item_in_one_of_its_bins() -> None:
    n = 20_000
    bins_count = kkrt.cuckoo_bins(n)
    tails = np.random.default_rng(3).integers(0, 256, (n, 16), dtype=np.uint8)
    bins = kkrt.bin_indices(tails, bins_count)
    assert np.array_equal(kkrt.bin_table(tails, bins_count), bins.T)
    table = kkrt.cuckoo_place(kkrt.bin_table(tails, bins_count), bins_count)
    occupied = np.flatnonzero(table >= 0)
    assert len(occupied) == n and len(np.unique(table[occupied])) == n
    assert (bins[table[occupied]] == occupied[:, None]).any(axis=1).all()


def test_cuckoo_table_survives_forced_collisions_and_refuses_the_impossible() -> None:
    # 30 items crowding 3 hot bins, each with one more bin of its own: every item still finds a place.
    bins = np.array([[0, 1, 2 + i] for i in range(30)] + [[1, 2, 0]], dtype=np.int64).T
    table = kkrt.cuckoo_place(bins, 40, rng=np.random.default_rng(0))
    assert sorted(table[table >= 0].tolist()) == list(range(31))
    # Four items with the same three bins cannot all be placed: no stash, so the table fails, and says so.
    with pytest.raises(PsiError, match="cuckoo hashing left 1 of 4 items without a bin"):
        kkrt.cuckoo_place(np.array([[0, 1, 2]] * 4).T, 10, max_rounds=50)


@settings(max_examples=40, deadline=None)
@given(out_bytes=st.integers(8, 16), count=st.integers(0, 300), seed=st.integers(0, 2**32 - 1))
def test_the_agreed_order_is_ascending_big_endian(out_bytes: int, count: int, seed: int) -> None:
    values = np.random.default_rng(seed).integers(0, 256, (count, out_bytes), dtype=np.uint8)
    if count > 3:
        values[1, :8] = values[0, :8]  # a shared 8-byte prefix: the order falls back to all bytes
        values[3] = values[2]
        values[3, -1] ^= 1
    order = wire.sort_by_value(values)
    as_ints = [int.from_bytes(bytes(v), "big") for v in values]
    assert [as_ints[i] for i in order.tolist()] == sorted(as_ints)
    distinct = len(set(as_ints)) == count
    assert wire.strictly_ascending(values[order]) == distinct
    if count > 1 and distinct:
        assert not wire.strictly_ascending(values[order][::-1])


_ID_PARTS = st.sampled_from(["+", "00", "0", "1", "7", "9", " ", "\n", "-", "@", "a", "A", "\u0663", "\u00b2", "\uff11", "."])


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(st.lists(_ID_PARTS, max_size=14).map("".join), max_size=6),
       canonical=st.lists(st.integers(10**6, 10**12), max_size=6))
def test_the_fast_normalisation_path_gives_the_same_ids(ids: list[str], canonical: list[int]) -> None:
    mixed = [f"+{c}" if c % 2 else str(c) for c in canonical] + ids
    assert normalise_all(mixed) == [normalise_id(x) for x in mixed]
    assert normalise_all([f"+{c}" for c in canonical]) == [f"+{c}" for c in canonical]


def test_statistical_parameters() -> None:
    # libOTe's fit: about 1.54 n bins at 2^20 items, growing slowly with n; at least 8 bins.
    assert 1.50 < kkrt.cuckoo_bins(2**20) / 2**20 < 1.56
    assert kkrt.cuckoo_bins(10**7) / 10**7 < 1.58
    assert kkrt.cuckoo_bins(1) >= kkrt.MIN_BINS
    assert kkrt.cuckoo_bins(100) / 100 > kkrt.cuckoo_bins(10**5) / 10**5  # small tables need more room per item
    # 40 + log2(n) + log2(3M) bits of output: 1M x 1M -> 82 bits -> 11 bytes; 10M x 10M -> 12 bytes.
    assert kkrt.output_bytes(10**6, 3 * 10**6) == 11
    assert kkrt.output_bytes(10**7, 3 * 10**7) == 12
    assert kkrt.output_bytes(1, 3) == 8


def test_base_ots_give_the_receiver_exactly_its_chosen_keys() -> None:
    choices = [secrets.randbelow(2) for _ in range(64)]
    sender = BaseOtSender()
    receiver = BaseOtReceiver(choices, sender.message)
    keys0, keys1 = sender.keys(b"s" * 32, receiver.points, receiver.signs)
    got = receiver.keys(b"s" * 32)
    for c, k, k0, k1 in zip(choices, got, keys0, keys1, strict=True):
        assert k == (k1 if c else k0) and k0 != k1
    # whatever the choice, B_i is a random curve point: the points for all-0 and all-1 choices look alike
    assert all(v_of(int.from_bytes(receiver.points[32 * i:32 * i + 32], "little")) >= 0 for i in range(64))


def test_base_ot_refuses_points_off_the_curve_or_of_small_order() -> None:
    twist = next(u for u in range(2, 200) if _off_curve(u))
    with pytest.raises(ProtocolError, match="not on Curve25519"):
        BaseOtReceiver([0, 1], twist.to_bytes(32, "little"))
    with pytest.raises(ProtocolError, match="not reduced"):
        BaseOtReceiver([0], (2**255 - 1).to_bytes(32, "little"))
    sender = BaseOtSender()
    with pytest.raises(ProtocolError, match="small order"):
        sender.keys(b"s" * 32, bytes(32), b"\x00")  # u = 0: the point of order 2
    with pytest.raises(ProtocolError, match="sign 0 must be 0 or 1"):
        BaseOtSender().keys(b"s" * 32, (9).to_bytes(32, "little"), b"\x02")


def _off_curve(u: int) -> bool:
    try:
        v_of(u)
    except ProtocolError:
        return True
    return False


def test_oprf_matches_at_the_receivers_item_only() -> None:
    """KKRT's OPRF on one block: S's F_j(y) equals R's H(t_j) iff y is R's item in bin j."""
    choice = secrets.token_bytes(kkrt.ROW)
    bits = np.unpackbits(np.frombuffer(choice, dtype=np.uint8), bitorder="little").tolist()
    sender_ot = BaseOtSender()
    receiver_ot = BaseOtReceiver(bits, sender_ot.message)
    keys0, keys1 = sender_ot.keys(b"t" * 32, receiver_ot.points, receiver_ot.signs)
    code = ot_bank.make_code(b"t" * 32, 11)
    r = kkrt.ReceiverMatrix(keys0, keys1, code)
    s = kkrt.SenderMatrix(choice, receiver_ot.keys(b"t" * 32), code)
    rng = np.random.default_rng(5)
    items = rng.integers(0, 256, (1000, 16), dtype=np.uint8)
    occupied = rng.random(1000) < 0.7
    u, outputs = r.block(items, occupied)
    q = s.rows(u)
    mine = s.evaluate(q[occupied], items[occupied])
    assert np.array_equal(mine, outputs)
    others = s.evaluate(q[occupied], items[~occupied][:occupied.sum()] if (~occupied).sum() >= occupied.sum()
                        else rng.integers(0, 256, (int(occupied.sum()), 16), dtype=np.uint8))
    assert not (others == outputs).all(axis=1).any()


@pytest.mark.parametrize("n", [1, 2, 5, 700])
def test_matching_finds_exactly_the_equal_values_even_with_shared_prefixes(n: int) -> None:
    rng = np.random.default_rng(n)
    own = ot_bank.OwnValues(n, 11)
    own.values[:] = rng.integers(0, 256, (n, 11), dtype=np.uint8)
    if n > 3:
        own.values[1, :8] = own.values[2, :8] = own.values[0, :8]  # one bucket, three candidates
    own.prepare()
    received = rng.integers(0, 256, (2000, 11), dtype=np.uint8)
    received[:300] = own.values[rng.integers(0, n, 300)]
    if n > 3:
        received[400] = own.values[2]
        received[401, :8] = own.values[0, :8]  # a prefix match only
    found, rows = own.match(received)
    expected = [(i, r) for i in range(len(received)) for r in range(n) if (own.values[r] == received[i]).all()]
    assert sorted(zip(found.tolist(), rows.tolist(), strict=True)) == expected


def test_items_are_the_salted_hash_halves_and_repeats_are_refused_by_row() -> None:
    salt = b"k" * 32
    ids = ["Alice@x.com", "+44 7700 900123", "bob"]
    items, table = hash_items(salt, ids, 1000)
    whole = np.frombuffer(hash_chunk(salt, ids)[0], dtype=np.uint8).reshape(3, 32)
    assert np.array_equal(items, whole[:, :16]) and np.array_equal(table, kkrt.bin_table(whole[:, 16:], 1000))
    with pytest.raises(PsiError, match="rows 1 and 3 hold the same ID") as err:
        hash_items(salt, ["a@x.com", "b", " A@X.COM"], 1000)
    assert "a@x.com" not in str(err.value)
    with pytest.raises(PsiError, match="row 2: empty ID"):
        hash_items(salt, ["a", "  "], 1000)


# ------------------------------------------------------------------------------ end to end ----


@pytest.mark.parametrize(("bank", "platform"), [
    (phones(0, 500), phones(250, 900)),      # partial overlap
    (phones(0, 300), phones(1000, 1400)),    # empty intersection
    (phones(0, 400), phones(0, 400)),        # full overlap
    (phones(0, 1), phones(0, 1000)),         # one ID against many
    (phones(0, 1000), phones(999, 1000)),    # many against one
])
def test_intersection_is_exact_and_agreed(bank: list[str], platform: list[str]) -> None:
    platform = list(np.random.default_rng(1).permutation(platform))
    rec = Recorder(platform)
    ours, theirs = rec.run(bank)
    expected = set(bank) & set(platform)
    assert ours.size == theirs.size == len(expected) and set(ours.ids or []) == expected
    assert ours.ids == theirs.ids and ours.content_hash == theirs.content_hash
    assert ours.protocol == theirs.protocol == "ot"


def test_bank_only_tells_the_platform_the_size_and_nothing_else() -> None:
    rec = Recorder(phones(300, 800))
    ours, theirs = rec.run(phones(0, 400), mode="bank_only")
    assert ours.size == 100 and set(ours.ids or []) == set(phones(300, 400))
    assert theirs.ids is None and theirs.size == 100
    assert wire.MEMBERS not in {step for step, _, _ in rec.transcript}


def test_cardinality_needs_the_ecdh_protocol() -> None:
    with pytest.raises(PsiError, match="use protocol 'ecdh' for cardinality"):
        run_bank_ot_psi(Recorder(phones(0, 5)).peer, "job-psi-ot-card", phones(0, 5), mode="cardinality")
    with pytest.raises(ProtocolError, match="not offered by the OT-based protocol"):
        PlatformOtPsiHandler("job-x", {"version": wire.VERSION, "mode": "cardinality"}, phones(0, 5),
                             on_result=lambda r: None)


def test_a_tight_cuckoo_table_still_gives_the_exact_intersection(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forced collisions: 1.15 bins per item (3-hash cuckoo hashing works down to ~1.09) makes long eviction
    chains; too few bins for the items makes the bank stop before any u row leaves it."""
    monkeypatch.setattr(ot_bank, "cuckoo_bins", lambda n: int(1.15 * n) + 3)
    monkeypatch.setattr("protocols.psi.ot.platform.cuckoo_bins", lambda n: int(1.15 * n) + 3)
    rec = Recorder(phones(500, 3500))
    ours, theirs = rec.run(phones(0, 2000))
    assert set(ours.ids or []) == set(phones(500, 2000)) and ours.ids == theirs.ids
    monkeypatch.setattr(ot_bank, "cuckoo_bins", lambda n: n - 1)
    monkeypatch.setattr("protocols.psi.ot.platform.cuckoo_bins", lambda n: n - 1)
    rec = Recorder(phones(0, 100))
    with pytest.raises(PsiError, match="cuckoo hashing left"):
        rec.run(phones(0, 100))
    assert [step for step, _, _ in rec.transcript] == [wire.HELLO]


def test_normalised_forms_match() -> None:
    rec = Recorder(["ALICE@example.com", "+44 7700 900123", "carol"])
    ours, theirs = rec.run(["alice@EXAMPLE.com", "0044 7700 900123", "bob"])
    assert sorted(ours.ids or []) == ["0044 7700 900123", "alice@EXAMPLE.com"]
    assert sorted(theirs.ids or []) == ["+44 7700 900123", "ALICE@example.com"]


def test_bad_input_is_refused_before_anything_derived_from_ids_leaves() -> None:
    rec = Recorder(phones(0, 10))
    with pytest.raises(PsiError, match="rows 1 and 3 hold the same ID"):
        rec.run(["+447700900123", "b", "0044 7700 900 123"])
    assert [step for step, _, _ in rec.transcript] == [wire.HELLO]
    rec = Recorder(["x", "b", " X"])
    with pytest.raises(PeerError, match="platform data: rows 1 and 3"):
        rec.run(phones(0, 10))
    steps = [step for step, _, _ in rec.transcript]
    assert wire.VALUES not in steps  # the platform never sent a value
    assert rec.handler is not None and rec.handler.result is None
    with pytest.raises(PsiError, match="empty side"):
        run_bank_ot_psi(Recorder(phones(0, 3)).peer, "job-x", [])


# --------------------------------------------------------------------- what each party sees ----


def _shapes(transcript: list[tuple[str, Message, Message]]) -> list[tuple[str, list[tuple[str, int]], list[tuple[str, int]]]]:
    def shape(message: Message) -> list[tuple[str, int]]:
        return sorted((k, len(v) if isinstance(v, bytes | np.ndarray) else -1) for k, v in message.items())
    return [(step, shape(req), shape(rep)) for step, req, rep in transcript]


def test_each_party_sees_only_what_kkrt_says() -> None:
    """The platform (OPRF sender) sees the base-OT point, the u rows (one 64-byte row per cuckoo bin) and, in
    mode "both", the positions of the matched values; the bank sees the base-OT points and 3M values. Every
    message's fields and sizes depend only on the set sizes and the intersection size, not on the IDs."""
    n, m = 700, 900
    rec = Recorder(phones(10_000, 10_000 + m))
    rec.run(phones(0, n - 200) + phones(10_000, 10_200))
    first = rec.transcript
    rec2 = Recorder(phones(50_000, 50_000 + m))
    rec2.run(phones(70_000, 70_000 + n - 200) + phones(50_700, 50_900))
    assert _shapes(first) == _shapes(rec2.transcript)  # same sizes, different IDs: the same view

    bins = kkrt.cuckoo_bins(n)
    out = kkrt.output_bytes(n, 3 * m)
    by_step: dict[str, list[tuple[Message, Message]]] = {}
    for step, req, rep in first:
        by_step.setdefault(step, []).append((req, rep))
    assert set(by_step) == {wire.HELLO, wire.EXTEND, wire.VALUES, wire.MEMBERS, wire.FINISH}
    hello_req, hello_rep = by_step[wire.HELLO][0]
    assert set(hello_req) == {wire.BANK_NONCE, wire.BANK_SIZE, wire.BASE_OT_SENDER}
    assert set(hello_rep) == {wire.PLATFORM_NONCE, wire.PLATFORM_SIZE, wire.BASE_OT_POINTS, wire.BASE_OT_SIGNS}
    assert all(set(req) == {wire.INDEX, wire.U_ROWS} and rep == {} for req, rep in by_step[wire.EXTEND])
    assert sum(len(req[wire.U_ROWS]) for req, _ in by_step[wire.EXTEND]) == bins * kkrt.ROW
    assert sum(len(rep[wire.VALUES_FIELD]) for _, rep in by_step[wire.VALUES]) == 3 * m * out
    assert sum(len(req[wire.POSITIONS]) for req, _ in by_step[wire.MEMBERS]) == 200

    # The u rows look uniform (each is masked by the PRG of a key the platform does not hold), and the
    # values the bank gets of non-members are all distinct from each other.
    u = np.frombuffer(b"".join(req[wire.U_ROWS] for req, _ in by_step[wire.EXTEND]), dtype=np.uint8)
    assert abs(np.unpackbits(u).mean() - 0.5) < 0.01
    values = np.frombuffer(b"".join(rep[wire.VALUES_FIELD] for _, rep in by_step[wire.VALUES]),
                           dtype=np.uint8).reshape(3 * m, out)
    assert len(np.unique(values, axis=0)) == 3 * m

    # Nothing sent is an ID, a normalised ID, or a plain or salted hash of one (or a part of the salted hash).
    sent = b"".join(v if isinstance(v, bytes) else v.tobytes() if isinstance(v, np.ndarray) else str(v).encode()
                    for _, req, rep in first for msg in (req, rep) for v in msg.values())
    salts = (wire.item_salt("job-psi-ot-01", hello_req[wire.BANK_NONCE]),
             job_salt("job-psi-ot-01", hello_req[wire.BANK_NONCE], hello_rep[wire.PLATFORM_NONCE]))
    for raw in phones(0, 30) + phones(10_000, 10_030):
        assert raw.encode() not in sent and normalise_id(raw).encode() not in sent
        assert hashlib.sha256(raw.encode()).digest() not in sent
        for salt in salts:
            salted = hashlib.sha256(b"fedprofile/psi/v1/id-to-point\x00" + salt + normalise_id(raw).encode()).digest()
            assert salted[:12] not in sent and salted[16:28] not in sent


# ------------------------------------------------------------------------------ errors ----


def _hello(handler: PlatformOtPsiHandler, n: int = 50) -> Message:
    return handler.handle(wire.HELLO, {wire.BANK_NONCE: b"\x01" * 32, wire.BANK_SIZE: n,
                                       wire.BASE_OT_SENDER: BaseOtSender().message})


def test_platform_refuses_out_of_order_and_malformed_steps() -> None:
    reports: list[PsiResult] = []
    params = {"version": wire.VERSION, "mode": "both"}
    handler = PlatformOtPsiHandler("job-psi-ot-bad", params, phones(0, 20), on_result=reports.append)
    try:
        with pytest.raises(ProtocolError, match="out of order"):
            handler.handle(wire.EXTEND, {wire.INDEX: 0, wire.U_ROWS: b""})
        with pytest.raises(ProtocolError, match="unknown PSI step"):
            handler.handle("psi.ot.everything", {})
        with pytest.raises(ProtocolError, match="base-OT point must be 32 bytes"):
            handler.handle(wire.HELLO, {wire.BANK_NONCE: b"\x01" * 32, wire.BANK_SIZE: 50, wire.BASE_OT_SENDER: b"x"})
        _hello(handler)
        rows = kkrt.cuckoo_bins(50)
        with pytest.raises(ProtocolError, match="batch 1 arrived where batch 0"):
            handler.handle(wire.EXTEND, {wire.INDEX: 1, wire.U_ROWS: bytes(rows * 64)})
        with pytest.raises(ProtocolError, match=f"must be {rows * 64} bytes"):
            handler.handle(wire.EXTEND, {wire.INDEX: 0, wire.U_ROWS: bytes(rows * 64 - 1)})
        with pytest.raises(ProtocolError, match="out of order"):
            handler.handle(wire.FINISH, {wire.SIZE: 0, wire.CONTENT_HASH: ""})
        handler.handle(wire.EXTEND, {wire.INDEX: 0, wire.U_ROWS: bytes(rows * 64)})
        handler.handle(wire.VALUES, {wire.INDEX: 0})
        with pytest.raises(ProtocolError, match="positions must be"):
            handler.handle(wire.MEMBERS, {wire.INDEX: 0, wire.POSITIONS: np.array([1.5])})
        with pytest.raises(ProtocolError, match="outside 0..59"):
            handler.handle(wire.MEMBERS, {wire.INDEX: 0, wire.POSITIONS: np.array([60], dtype=np.int64)})
        handler.handle(wire.MEMBERS, {wire.INDEX: 0, wire.POSITIONS: np.array([3, 3], dtype=np.int64)})
        with pytest.raises(ProtocolError, match="named 2"):
            handler.handle(wire.FINISH, {wire.SIZE: 1, wire.CONTENT_HASH: "0" * 64})
        with pytest.raises(ProtocolError, match="named one platform ID twice"):
            handler.handle(wire.FINISH, {wire.SIZE: 2, wire.CONTENT_HASH: "0" * 64})
        with pytest.raises(ProtocolError, match="already refused"):
            handler.handle(wire.FINISH, {wire.SIZE: 2, wire.CONTENT_HASH: "0" * 64})
        assert reports == []
    finally:
        handler.close()
    with pytest.raises(ProtocolError, match="accepts at most 10"):
        limited = PlatformOtPsiHandler("job-x", params, phones(0, 5), on_result=reports.append, max_bank_size=10,
                                       limit_name="[policy] max_psi_rows")
        try:
            _hello(limited, n=11)
        finally:
            limited.close()
    with pytest.raises(ProtocolError, match="version"):
        PlatformOtPsiHandler("job-x", {"version": ECDH_VERSION, "mode": "both"}, phones(0, 5), on_result=reports.append)


def test_a_session_closed_mid_way_reports_nothing_and_stops() -> None:
    reports: list[PsiResult] = []
    handler = PlatformOtPsiHandler("job-psi-ot-close", {"version": wire.VERSION, "mode": "both"}, phones(0, 300_000),
                                   on_result=reports.append)
    _hello(handler)
    handler.close()  # while the platform is still hashing: the helper stops at its next chunk
    assert reports == [] and handler.values is None


# ------------------------------------------------------------------- job and policy ----


def test_the_align_job_picks_and_checks_the_protocol() -> None:
    assert AlignParams().protocol == "ot" and AlignParams(mode="bank_only").protocol == "ot"
    assert AlignParams(mode="cardinality").protocol == "ecdh"
    assert AlignParams(protocol="ecdh").protocol == "ecdh"
    with pytest.raises(JobError, match="protocol 'ot' offers modes both, bank_only, not 'cardinality'"):
        AlignParams(mode="cardinality", protocol="ot")
    with pytest.raises(JobError, match="'protocol' must be one of"):
        AlignParams(protocol="rr22")
    assert protocol_of({"version": wire.VERSION}) == "ot" and protocol_of({"version": ECDH_VERSION}) == "ecdh"
    assert set(PROTOCOLS) == set(PSI_PROTOCOLS)


def test_the_platform_policy_names_the_protocols_it_accepts() -> None:
    from party_common.storage.jobs import MemoryJobStore

    jobs = MemoryJobStore()
    policy = PlatformPolicy(parse_policy({"psi_protocols": ["ecdh"]}, "platform.toml [policy]"), platform_rows=10,
                            jobs=jobs)
    policy.check_session("psi", {"version": ECDH_VERSION}, None)
    with pytest.raises(PolicyRefused, match=r"does not accept PSI protocol 'ot' \(\[policy\] psi_protocols: ecdh\)"):
        policy.check_session("psi", {"version": wire.VERSION}, None)
    both = PlatformPolicy(PolicyConfig(), platform_rows=10, jobs=jobs)
    both.check_session("psi", {"version": wire.VERSION}, None)
    for bad in (["rr22"], [], "ot", ["ot", "ot"], [["ot"]]):
        with pytest.raises(ValueError, match="'psi_protocols' must be a non-empty list"):
            parse_policy({"psi_protocols": bad}, "platform.toml [policy]")


# ------------------------------------------------------------ cross-check with SecretFlow ----

PEER_PYTHON = ROOT / ".venv-peers" / "bin" / "python"


@pytest.mark.skipif(not PEER_PYTHON.exists() or os.environ.get("FEDPROFILE_SKIP_PEERS") == "1",
                    reason="no .venv-peers (make .venv-peers/.installed) for SecretFlow's KKRT and RR22")
@pytest.mark.parametrize("protocol", ["kkrt", "rr22"])
def test_same_intersection_as_secretflow(protocol: str, tmp_path: Path) -> None:
    """SecretFlow's PSI (spu) on the same IDs, both parties as processes: the same intersection as ours."""
    probe = subprocess.run([str(PEER_PYTHON), "-c", "import spu.psi"], capture_output=True)
    if probe.returncode:
        pytest.skip("spu does not import in .venv-peers")
    from benchmarks.psi import make_ids
    from benchmarks.psi_peers import _read_ids, _write_ids, secretflow

    bank, platform, exact = make_ids(3000, 0.3, seed=4)
    ours, _ = Recorder(platform).run(bank)
    assert set(ours.ids or []) == exact
    if protocol == "rr22":
        figures = secretflow("rr22", bank, platform, exact, str(PEER_PYTHON), lambda pids: None)
        assert figures["correct"] and figures["size"] == len(exact)
        return
    # KKRT through the same runner: it takes --protocol kkrt
    for rank, ids in enumerate((bank, platform)):
        _write_ids(tmp_path / f"in{rank}.csv", ids)
    from benchmarks.psi_peers import SECRETFLOW_RUNNER, _free_ports

    ports = ",".join(map(str, _free_ports(2)))
    procs = [subprocess.Popen([str(PEER_PYTHON), str(SECRETFLOW_RUNNER), "--rank", str(rank), "--protocol", "kkrt",
                               "--ports", ports, "--input", str(tmp_path / f"in{rank}.csv"),
                               "--output", str(tmp_path / f"out{rank}.csv")], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for rank in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert set(_read_ids(tmp_path / "out0.csv")) == exact == set(ours.ids or [])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
