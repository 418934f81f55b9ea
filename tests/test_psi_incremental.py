"""Incremental alignment: exact intersections across runs that add and remove IDs on either side, epochs that
end (rotation, a new key, a mode change, states that differ), damaged stored state refused and replaced by a
full run, what a re-alignment sends (only the changes), and the node's job records and audit rows."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from party_common.storage.psi_pairs import PairStateError, PairStateStore
from protocols.channel import LocalPeer, Message, PeerError
from protocols.psi import messages as wire
from protocols.psi import normalise_id
from protocols.psi.incremental import (
    IncrementalResult,
    PairState,
    PlatformIncrementalHandler,
    run_bank_incremental_psi,
)
from protocols.psi.incremental import messages as inc
from protocols.psi.messages import PsiError


def phones(lo: int, hi: int) -> list[str]:
    return [f"+4477{i:08d}" for i in range(lo, hi)]


class Pair:
    """Both sides in one process, each with the state it would have stored; every message kept."""

    def __init__(self, rotation_days: int = 30, batch_size: int = 300) -> None:
        self.rotation_days, self.batch_size = rotation_days, batch_size
        self.bank_state: PairState | None = None
        self.platform_state: PairState | None = None
        self.platform_ids: list[str] = []
        self.reports: list[IncrementalResult] = []
        self.transcript: list[tuple[str, Message, Message]] = []
        self.runs = 0

    def factory(self, kind: str, job_id: str, params: Message) -> PlatformIncrementalHandler:
        assert kind == wire.KIND and params[wire.PARAM_VERSION] == inc.VERSION
        return PlatformIncrementalHandler(job_id, params, self.platform_ids, state=self.platform_state,
                                          on_result=self.reports.append, rotation_days=self.rotation_days, compute=1)

    def open(self, kind: str, job_id: str, params: Message):
        channel = LocalPeer(self.factory).open(kind, job_id, params)
        channel.keep_transcript = True
        self.channel = channel
        return channel

    def align(self, bank_ids: list[str], platform_ids: list[str], *, mode: str = "both", new_key: bool = False,
              commit_bank: bool = True, commit_platform: bool = True) -> tuple[IncrementalResult, IncrementalResult]:
        self.platform_ids = platform_ids
        self.runs += 1
        before = len(self.reports)
        bank = run_bank_incremental_psi(self, f"job-inc-{self.runs:04d}", bank_ids, state=self.bank_state, mode=mode,
                                        batch_size=self.batch_size, new_key=new_key, compute=1)
        assert len(self.reports) == before + 1, "the platform reports its result exactly once"
        platform = self.reports[-1]
        self.transcript = list(self.channel.transcript)
        if commit_bank:
            self.bank_state = bank.state  # type: ignore[assignment]
        if commit_platform:
            self.platform_state = platform.state  # type: ignore[assignment]
        return bank, platform


def check_exact(bank: IncrementalResult, platform: IncrementalResult, bank_ids: list[str],
                platform_ids: list[str], mode: str = "both") -> None:
    expected = set(bank_ids) & set(platform_ids)
    assert bank.ids is not None and set(bank.ids) == expected and len(bank.ids) == len(expected)
    assert bank.size == platform.size == len(expected)
    if mode == "both":
        assert platform.ids == bank.ids  # the same agreed order on both sides
        assert platform.content_hash == bank.content_hash
    else:
        assert platform.ids is None


def sent_points(transcript: list, field: str, direction: int) -> int:
    """Points in ``field`` of every request (direction 0) or reply (1) of the exchanges."""
    total = 0
    for entry in transcript:
        step, request, reply = entry[0], entry[1], entry[2]
        if step == inc.EXCHANGE:
            value = (request, reply)[direction].get(field)
            total += 0 if value is None else len(value) // wire.POINT
    return total


def test_additions_and_deletions_on_both_sides_stay_exact_and_send_only_the_changes() -> None:
    pair = Pair()
    rng = np.random.default_rng(5)
    bank_ids, platform_ids = phones(0, 800), list(rng.permutation(phones(400, 3000)))
    b0, p0 = pair.align(bank_ids, platform_ids)
    check_exact(b0, p0, bank_ids, platform_ids)
    assert not b0.resumed and b0.own_added == 800 and b0.peer_added == 2600  # the first run is a full one
    epoch = b0.epoch

    # Additions only, on both sides (some of them matching each other and old IDs of the other side).
    bank_ids = bank_ids + phones(5000, 5010) + phones(2990, 3005)
    platform_ids = platform_ids + phones(5005, 5020) + phones(100, 110)
    b1, p1 = pair.align(bank_ids, platform_ids)
    check_exact(b1, p1, bank_ids, platform_ids)
    assert b1.resumed and b1.epoch == epoch
    assert (b1.own_added, b1.own_removed, b1.peer_added, b1.peer_removed) == (25, 0, 25, 0)
    assert (p1.own_added, p1.peer_added) == (25, 25)
    # The transcript carries only the new items: 25 bank points out, 25 doubles back; 25 platform points,
    # 25 doubles back to the platform; nothing else of size.
    t = pair.transcript
    assert sent_points(t, wire.POINTS, 0) == 25 and sent_points(t, wire.DOUBLE, 1) == 25
    assert sent_points(t, wire.POINTS, 1) == 25 and sent_points(t, wire.PLATFORM_DOUBLE, 0) == 25
    total = sum(len(v) for _, req, rep in t for m in (req, rep) for v in m.values() if isinstance(v, bytes))
    assert total < 4 * 25 * wire.POINT + 200, "only the deltas (and two nonces) travel"

    # Deletions only: a customer who left leaves the intersection (on both sides' lists).
    gone_bank, gone_platform = set(phones(400, 450)), set(phones(700, 720)) | set(phones(2000, 2100))
    bank_ids = [i for i in bank_ids if i not in gone_bank]
    platform_ids = [i for i in platform_ids if i not in gone_platform]
    b2, p2 = pair.align(bank_ids, platform_ids)
    check_exact(b2, p2, bank_ids, platform_ids)
    assert (b2.own_added, b2.own_removed, b2.peer_added, b2.peer_removed) == (0, 50, 0, 120)
    assert sent_points(pair.transcript, wire.POINTS, 0) == sent_points(pair.transcript, wire.POINTS, 1) == 0
    assert not set(b2.ids or []) & (gone_bank | gone_platform)

    # Both sides changing at once, removals and additions, a removed ID coming back; in a new file order.
    bank_ids = [i for i in bank_ids if not i.endswith("7")] + phones(400, 420) + phones(9000, 9100)
    platform_ids = list(rng.permutation([i for i in platform_ids if not i.endswith("3")] + phones(9050, 9200)
                                        + phones(2000, 2010)))
    b3, p3 = pair.align(list(rng.permutation(bank_ids)), platform_ids)
    check_exact(b3, p3, bank_ids, platform_ids)
    assert b3.resumed and b3.own_added == 120 and b3.peer_added == 160

    # Nothing changed: no exchange at all, the same intersection.
    b4, p4 = pair.align(bank_ids, platform_ids)
    check_exact(b4, p4, bank_ids, platform_ids)
    assert not any(step == inc.EXCHANGE for step, *_ in pair.transcript)
    assert b4.content_hash == b3.content_hash


def test_bank_only_mode_platform_learns_only_the_size_and_stays_incremental() -> None:
    pair = Pair()
    bank_ids, platform_ids = phones(0, 300), phones(100, 900)
    b0, p0 = pair.align(bank_ids, platform_ids, mode="bank_only")
    check_exact(b0, p0, bank_ids, platform_ids, mode="bank_only")
    assert pair.platform_state is not None and pair.platform_state.own_double is None  # it learns no doubles
    bank_ids, platform_ids = bank_ids[10:] + phones(900, 905), platform_ids[:-50] + phones(0, 5)
    b1, p1 = pair.align(bank_ids, platform_ids, mode="bank_only")
    check_exact(b1, p1, bank_ids, platform_ids, mode="bank_only")
    assert b1.resumed and (b1.own_added, b1.own_removed, b1.peer_added, b1.peer_removed) == (5, 10, 5, 50)
    assert sent_points(pair.transcript, wire.PLATFORM_DOUBLE, 0) == 0  # nothing doubly blinded goes back


@pytest.mark.parametrize("how", ["rotation", "new_key", "mode", "bank_stale", "platform_stale", "no_platform_state"])
def test_an_ended_epoch_forces_a_full_run_that_is_exact(how: str) -> None:
    pair = Pair(rotation_days=30)
    bank_ids, platform_ids = phones(0, 400), phones(200, 1000)
    b0, _ = pair.align(bank_ids, platform_ids)
    bank_ids, platform_ids = bank_ids + phones(1000, 1010), platform_ids + phones(1005, 1020)
    kw: dict = {}
    if how == "rotation":
        assert pair.platform_state is not None
        old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=31)).isoformat(timespec="seconds")
        pair.platform_state = replace(pair.platform_state, created_at=old)
    elif how == "new_key":
        kw["new_key"] = True
    elif how == "mode":
        kw["mode"] = "bank_only"
    elif how == "bank_stale":  # the platform stored a run the bank did not
        pair.align(bank_ids[:-1], platform_ids, commit_bank=False)
    elif how == "platform_stale":
        pair.align(bank_ids[:-1], platform_ids, commit_platform=False)
    else:
        pair.platform_state = None
    b1, p1 = pair.align(bank_ids, platform_ids, **kw)
    check_exact(b1, p1, bank_ids, platform_ids, mode=kw.get("mode", "both"))
    assert not b1.resumed and b1.epoch != b0.epoch
    assert b1.own_added == len(bank_ids) and b1.peer_added == len(platform_ids)  # everything sent again
    reason = {"rotation": "psi_key_rotation_days", "new_key": "asked for a new key", "mode": "mode",
              "bank_stale": "states differ", "platform_stale": "states differ",
              "no_platform_state": "no stored state"}[how]
    assert reason in b1.reason
    # Nothing links the epochs: the same platform IDs have other doubly blinded values under the new keys.
    old_values = {v.tobytes() for v in b0.state.peer_double}  # type: ignore[union-attr]
    assert not old_values & {v.tobytes() for v in b1.state.peer_double}  # type: ignore[union-attr]
    # ... and the new epoch goes on incrementally.
    kw.pop("new_key", None)
    b2, p2 = pair.align(bank_ids + ["+447799999999"], platform_ids, **kw)
    assert b2.resumed and b2.own_added == 1 and b2.peer_added == 0


def test_rotation_zero_keeps_no_state() -> None:
    pair = Pair(rotation_days=0)
    b0, p0 = pair.align(phones(0, 50), phones(25, 90))
    assert b0.state is None and p0.state is None and "= 0" in b0.reason
    check_exact(b0, p0, phones(0, 50), phones(25, 90))


def test_repeated_ids_are_refused_naming_rows_before_anything_of_them_leaves() -> None:
    pair = Pair()
    pair.align(phones(0, 100), phones(50, 200))
    bank_ids = phones(0, 100) + ["00447700000007"]  # row 101 is row 8's customer in another form
    assert normalise_id(bank_ids[-1]) == normalise_id(bank_ids[7])
    with pytest.raises(PsiError, match="rows 8 and 101 hold the same ID"):
        pair.align(bank_ids, phones(50, 200))
    with pytest.raises(PsiError, match="rows 3 and 101 hold the same ID"):
        pair.align(phones(0, 100) + [phones(2, 3)[0]], phones(50, 200))  # the same raw ID twice, both kept
    with pytest.raises(PeerError, match=r"platform data: rows 2 and 151"):
        pair.align(phones(0, 100), phones(50, 200) + ["+44 77 0000 0051"])
    b, p = pair.align(phones(0, 100), phones(50, 200))  # the state was not touched by the refused runs
    assert b.resumed and b.own_added == 0 and b.size == 50


def test_forged_removed_slots_are_refused() -> None:
    pair = Pair()
    pair.align(phones(0, 100), phones(50, 200))
    handler = PlatformIncrementalHandler("job-forge", {wire.PARAM_VERSION: inc.VERSION, wire.PARAM_MODE: "both",
                                                       wire.PARAM_BATCH_SIZE: 100}, phones(50, 200),
                                         state=pair.platform_state, on_result=lambda r: None, compute=1)
    assert pair.bank_state is not None
    handler.handle(inc.HELLO, {wire.BANK_NONCE: b"\1" * 32, inc.EPOCH: pair.bank_state.epoch,
                               inc.STATE_DIGEST: pair.bank_state.digest(), inc.NEW_KEY: False})
    with pytest.raises(Exception, match="removed slots must be ascending, distinct and live"):
        handler.handle(inc.PLAN, {inc.REMOVED: np.array([5, 5], dtype="<u4").tobytes(), inc.ADDED: 0,
                                  inc.SIZE_AFTER: 98})
    handler.close()


# ------------------------------------------------------------------------------------ stored state ----


def test_store_keeps_deltas_and_refuses_damage_naming_the_file(tmp_path: Path) -> None:
    pair = Pair()
    store = PairStateStore(tmp_path / "psi_pairs")
    bank_ids, platform_ids = phones(0, 300), phones(100, 900)
    b0, _ = pair.align(bank_ids, platform_ids)
    first = store.save("platform", b0.state, None)  # type: ignore[arg-type]
    loaded = store.load("platform")
    assert loaded is not None and loaded.digest() == b0.state.digest()  # type: ignore[union-attr]
    pair.bank_state = loaded
    bank_ids, platform_ids = bank_ids[5:] + phones(2000, 2003), platform_ids[:-7] + phones(3000, 3002)
    b1, p1 = pair.align(bank_ids, platform_ids)
    check_exact(b1, p1, bank_ids, platform_ids)
    store.save("platform", b1.state, loaded)  # type: ignore[arg-type]
    newest = sorted((tmp_path / "psi_pairs" / "platform").glob("seg-*.bin"))[-1]
    assert newest.stat().st_size < first / 10, "a re-alignment's segment holds its delta, not the sets"
    for stored_file in (tmp_path / "psi_pairs" / "platform").iterdir():
        data = stored_file.read_bytes()
        assert not any(i.encode() in data or i.encode("utf-32-le") in data for i in bank_ids), "no ID is stored"
    again = store.load("platform")
    assert again is not None and again.digest() == b1.state.digest()  # type: ignore[union-attr]
    assert np.array_equal(again.own_keys, b1.state.own_keys)  # type: ignore[union-attr]
    assert np.array_equal(again.own_match, b1.state.own_match)  # type: ignore[union-attr]
    assert np.array_equal(again.peer_double, b1.state.peer_double)  # type: ignore[union-attr]
    with pytest.raises(PairStateError, match="another alignment"):  # a run from the older state: refused
        store.save("platform", b1.state, loaded)  # type: ignore[arg-type]

    segment = sorted((tmp_path / "psi_pairs" / "platform").glob("seg-*.bin"))[-1]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 1
    segment.write_bytes(bytes(data))
    with pytest.raises(PairStateError, match=f"{segment.name}: segment does not match its recorded SHA-256"):
        store.load("platform")
    manifest = tmp_path / "psi_pairs" / "platform" / "manifest.json"
    manifest.write_text("{not json")
    with pytest.raises(PairStateError, match="manifest.json: damaged pair state manifest"):
        store.load("platform")
    manifest.write_text(json.dumps({"format": 99}))
    with pytest.raises(PairStateError, match="format 99"):
        store.load("platform")
    assert PairStateStore(tmp_path / "elsewhere").load("platform") is None


def test_an_epoch_of_many_runs_loads_back_exactly_as_it_was_kept(tmp_path: Path) -> None:
    """Four runs (additions, removals, a platform customer who leaves and comes back under a new slot, so an
    old bank slot's match moves to it): both nodes' loaded states equal their in-memory ones, array by array."""
    pair = Pair()
    stores = {"bank": PairStateStore(tmp_path / "bank"), "platform": PairStateStore(tmp_path / "platform")}
    bank_ids, platform_ids = phones(0, 200), phones(100, 400)
    changes = [(phones(0, 200), phones(100, 400)), (phones(3, 200) + phones(500, 510), phones(105, 400)),
               (phones(3, 200) + phones(500, 510), phones(100, 400) + phones(505, 508)),
               (phones(10, 200) + phones(500, 520), phones(100, 390) + phones(505, 508) + phones(515, 530))]
    bank_base = platform_base = None
    for bank_ids, platform_ids in changes:
        bank, platform = pair.align(bank_ids, platform_ids)
        check_exact(bank, platform, bank_ids, platform_ids)
        stores["bank"].save("platform", bank.state, bank_base)  # type: ignore[arg-type]
        stores["platform"].save("bank", platform.state, platform_base)  # type: ignore[arg-type]
        bank_base = stores["bank"].load("platform")
        platform_base = stores["platform"].load("bank")
        for kept, loaded in ((bank.state, bank_base), (platform.state, platform_base)):
            assert isinstance(kept, PairState) and loaded is not None
            for name in ("own_keys", "own_live", "own_prefix", "own_double", "peer_live", "peer_double", "own_match"):
                assert np.array_equal(getattr(kept, name), getattr(loaded, name)), name
        pair.bank_state, pair.platform_state = bank_base, platform_base
    assert len(list((tmp_path / "bank" / "platform").glob("seg-*.bin"))) == len(changes)


@pytest.mark.parametrize("lie", ["offset past the end", "object dtype", "not a segment"])
def test_a_segment_whose_header_lies_is_refused_naming_the_file(tmp_path: Path, lie: str) -> None:
    """A segment that matches its recorded hash but whose header points outside the file, names a type a
    segment never holds, or is no segment at all: refused naming the file, never read past its end."""
    pair = Pair()
    store = PairStateStore(tmp_path / "psi_pairs")
    b0, _ = pair.align(phones(0, 50), phones(20, 80))
    store.save("platform", b0.state, None)  # type: ignore[arg-type]
    folder = tmp_path / "psi_pairs" / "platform"
    segment = sorted(folder.glob("seg-*.bin"))[-1]
    data = segment.read_bytes()
    magic = 8
    head_len = int.from_bytes(data[magic:magic + 8], "big")
    header = json.loads(data[magic + 8:magic + 8 + head_len])
    if lie == "offset past the end":
        header[0]["offset"] = len(data)
    elif lie == "object dtype":
        header[0]["dtype"] = "|O"
    head = json.dumps(header).encode()
    head += b" " * (-(magic + 8 + len(head)) % 16)
    forged = data[:magic] + len(head).to_bytes(8, "big") + head + data[magic + 8 + head_len:]
    if lie == "not a segment":
        forged = b"PK\x03\x04" + data[4:]
    segment.write_bytes(forged)
    manifest = folder / "manifest.json"
    meta = json.loads(manifest.read_text())
    meta["segments"][-1]["sha256"] = hashlib.sha256(forged).hexdigest()
    manifest.write_text(json.dumps(meta))
    with pytest.raises(PairStateError, match=f"{segment.name}: damaged segment"):
        store.load("platform")


# --------------------------------------------------------------------------------------- the nodes ----


def test_nodes_align_incrementally_record_counts_only_and_fall_back_from_damaged_state(tmp_path: Path) -> None:
    import pandas as pd

    from tests.nodes_fixture import make_nodes, simulated_files

    files = simulated_files(tmp_path / "data")
    state_dir = tmp_path / "state"

    def align(nodes, params: dict) -> dict:
        job = nodes.bank.wait(nodes.bank.submit("align", "", params), timeout_s=120)
        assert job.status == "succeeded", job.error
        return job

    first = align(make_nodes(files, state_dir), {"incremental": True})
    assert first.result["psi_protocol"] == "ecdh" and first.result["resumed"] is False
    assert (state_dir / "bank" / "psi_pairs" / "platform" / "manifest.json").exists()
    assert (state_dir / "platform" / "psi_pairs" / "bank" / "manifest.json").exists()

    # Ten bank customers leave, five platform customers leave: the nodes restart on the new files.
    bank, platform = pd.read_csv(files.bank, dtype={"id": str}), pd.read_csv(files.platform, dtype={"id": str})
    bank.iloc[10:].to_csv(tmp_path / "bank2.csv", index=False)
    platform.iloc[5:].to_csv(tmp_path / "platform2.csv", index=False)
    files.bank, files.platform = tmp_path / "bank2.csv", tmp_path / "platform2.csv"
    nodes = make_nodes(files, state_dir)
    second = align(nodes, {"incremental": True})
    r = second.result
    assert r["resumed"] is True and (r["own_new"], r["own_removed"], r["peer_new"], r["peer_removed"]) == (0, 10, 0, 5)
    assert r["points_sent"] == 0 and r["seconds_saved"] is not None and r["estimated_full_seconds"] > 0
    expected = set(bank["id"].iloc[10:].astype(str)) & set(platform["id"].iloc[5:].astype(str))
    assert r["intersection_size"] == len(expected)
    stored = nodes.bank.stores.alignments.load(second.job_id)
    assert set(stored.ids or []) == expected
    events = nodes.bank.stores.jobs.audit_events(second.job_id, event="psi incremental")
    assert len(events) == 1 and "removed 10" in events[0].detail
    platform_job = nodes.platform.stores.jobs.get(second.job_id)
    assert platform_job.result["own_removed"] == 5 and platform_job.result["peer_removed"] == 10
    some_ids = set(bank["id"].astype(str)) | set(platform["id"].astype(str))
    for record in (json.dumps(r), json.dumps(platform_job.result),
                   *(e.detail for node in (nodes.bank, nodes.platform) for e in node.stores.jobs.audit_events())):
        assert not any(i in record for i in some_ids), "no ID in job records or audit rows"

    # A damaged bank state: refused, naming the file; the run is a full alignment under a new key, and exact.
    segment = sorted((state_dir / "bank" / "psi_pairs" / "platform").glob("seg-*.bin"))[0]
    segment.write_bytes(segment.read_bytes()[:-10])
    nodes = make_nodes(files, state_dir)
    third = align(nodes, {"incremental": True})
    assert third.result["resumed"] is False and segment.name in third.result["stored_state_refused"]
    assert third.result["new_epoch_reason"] == "the bank has no stored state for this pair"
    assert third.result["intersection_size"] == len(expected)
    assert nodes.bank.stores.jobs.audit_events(third.job_id, event="psi state refused")

    with pytest.raises(Exception, match="incremental alignment offers modes both, bank_only"):
        nodes.bank.submit("align", "", {"incremental": True, "mode": "cardinality"})


def test_matching_and_screening_agree_with_brute_force() -> None:
    from protocols.psi.incremental.state import DOUBLE, match_live, peer_values, screen

    rng = np.random.default_rng(3)
    for n, m in ((50, 5000), (5000, 50), (300, 300)):
        own = np.frombuffer(rng.bytes(32 * n), dtype=DOUBLE).copy()
        peer = np.frombuffer(rng.bytes(32 * m), dtype=DOUBLE).copy()
        shared = min(n, m) // 3
        peer[:shared] = own[n - shared:]
        # A peer value with an own value's 8-byte prefix but another tail: a candidate that must not match.
        decoy = bytearray(own[0].tobytes())
        decoy[12] ^= 1  # past the 8-byte prefix, within the 16 bytes a peer value is kept as
        peer[-1] = np.frombuffer(bytes(decoy), dtype=DOUBLE)[0]
        own_live, peer_live = rng.random(n) < 0.9, rng.random(m) < 0.9
        expected = [i for i in range(n) if own_live[i] and any(own[i] == peer[j] for j in np.flatnonzero(peer_live))]
        assert match_live(own, own_live, peer, peer_live).tolist() == expected
        assert match_live(own, own_live, peer_values(peer), peer_live).tolist() == expected  # as kept
    keys = rng.integers(0, 2**63, 10_000).astype(np.uint64) * np.uint64(2)
    small = keys[:100]
    assert set(np.flatnonzero(np.isin(keys, small)).tolist()) <= set(screen(small, keys).tolist())


def test_policy_reads_the_rotation_period() -> None:
    from party_common.policy import parse_policy

    assert parse_policy({}, "p.toml [policy]").psi_key_rotation_days == 30
    assert parse_policy({"psi_key_rotation_days": 0}, "p.toml [policy]").psi_key_rotation_days == 0
    for bad in (-1, True, 7.5, 4000):
        with pytest.raises(ValueError, match="'psi_key_rotation_days' must be a whole number of days"):
            parse_policy({"psi_key_rotation_days": bad}, "p.toml [policy]")


def test_raw_keys_tell_texts_apart_and_find_them() -> None:
    from protocols.party_data import as_ids
    from protocols.psi.incremental.rawkeys import BLOCK, find_keys, raw_keys

    texts = ["a", "ab", "abc", "abcd", "b", "", "Ünïcødé@example.com", "+447700900123", "+44 7700 900123",
             "x" * 300, "x" * 301, "  a", "A"] + [f"id-{i}" for i in range(BLOCK + 5)]  # two blocks
    keys = raw_keys(texts)
    assert len({(int(a), int(b)) for a, b in keys.tolist()}) == len(texts)
    assert np.array_equal(raw_keys(as_ids(texts)), keys)  # numpy StringDType (the nodes' IDs) as lists
    stored = keys[::2]
    at = find_keys(stored, keys)
    assert at.tolist() == [i // 2 if i % 2 == 0 else -1 for i in range(len(texts))]
    shared = np.array([[7, 1], [7, 2], [9, 3]], dtype=np.uint64)  # two stored rows share a first key
    wanted = np.array([[7, 2], [7, 1], [7, 3], [9, 3]], dtype=np.uint64)
    assert find_keys(shared, wanted).tolist() == [1, 0, -1, 2]


def test_the_agreed_order_is_byte_order() -> None:
    from protocols.psi.incremental.state import DOUBLE, value_order

    rng = np.random.default_rng(9)
    values = np.frombuffer(rng.bytes(32 * 500), dtype=DOUBLE).copy()
    values[7] = np.frombuffer(values[3].tobytes()[:8] + rng.bytes(24), dtype=DOUBLE)[0]  # a shared prefix
    for vs in (values, np.delete(values, 7)):
        assert [vs[i].tobytes() for i in value_order(vs)] == sorted(v.tobytes() for v in vs)


def test_platform_policy_rotation_zero_keeps_no_state_on_either_node(tmp_path: Path) -> None:
    from dataclasses import replace as replace_config

    from party_bank.node import BankNode
    from party_common.data_loading import load_party_data
    from party_common.link import LocalPlatformLink
    from party_common.policy import PolicyConfig
    from party_common.storage import memory_node_stores
    from party_platform.node import PlatformNode
    from tests.nodes_fixture import node_config, simulated_files

    files = simulated_files(tmp_path / "data")
    state_dir = tmp_path / "state"
    config = replace_config(node_config(state_dir, "platform", files.platform),
                            policy=PolicyConfig(psi_key_rotation_days=0))
    platform = PlatformNode(config, data=load_party_data(files.platform, id_column="id"), stores=memory_node_stores())
    bank = BankNode(node_config(state_dir, "bank", files.bank, files.tags), LocalPlatformLink(platform),
                    data=load_party_data(files.bank, id_column="id", tag_columns=files.tags), stores=memory_node_stores())
    job = bank.wait(bank.submit("align", "", {"incremental": True}), timeout_s=120)
    assert job.status == "succeeded", job.error
    assert job.result["resumed"] is False and "psi_key_rotation_days = 0" in job.result["new_epoch_reason"]
    assert job.result["intersection_size"] == len(files.shared_ids)
    for role in ("bank", "platform"):
        assert not list((state_dir / role / "psi_pairs").glob("*/manifest.json")), f"the {role} keeps no state"
