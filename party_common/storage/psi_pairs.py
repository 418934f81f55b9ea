"""The incremental alignment's state of each pair, on disk (``protocols.psi.incremental.state.PairState``).

Layout, under the node's state directory (0700; files 0600)::

    psi_pairs/<peer>/manifest.json        the epoch (ID, start, mode, salt, this node's scalar), the list of
                                          segments with the SHA-256 of each, and the state digest
    psi_pairs/<peer>/seg-<epoch>-<n>.bin  one run's delta: removed slots and new items of both lists (a JSON
                                          header naming each array's dtype, shape and offset, then the
                                          arrays' bytes: loading takes views of one buffer, no copy)

A run that continues an epoch appends one segment (the size of its delta, not of the sets) and then
replaces the manifest atomically: the manifest is the commit, so a node that stops half-way keeps the state
before the run. A new epoch writes one segment with everything and a new manifest, then deletes the old
epoch's files. Loading checks every segment against its hash and the replayed state against the digest:
a damaged or missing file is refused with a :class:`PairStateError` naming it (the align job then starts a
new epoch: a full alignment).

The manifest holds this node's secret scalar of the epoch; the state directory is private to the node, and
nothing here is logged. No ID is stored: per own slot a 128-bit key of its raw text
(``protocols.psi.incremental.rawkeys``, to tell new IDs from kept ones), an 8-byte salted hash prefix and
the blinded value; the peer's items only as live flags and doubly blinded values. A removed slot's entries
stay in the older segment that added them until the epoch ends.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from pathlib import Path

import numpy as np

from party_common.storage.files import atomic_write, ensure_private_dir
from protocols.errors import UserError
from protocols.psi.incremental.state import DOUBLE, PEER, PEER_BYTES, PairState
from protocols.psi.messages import POINT

FORMAT = 3  # 2: peer values kept as their first 16 bytes; 3: segments as flat arrays, not npz
SEGMENT_MAGIC = b"PSISEG3\n"
_ALIGN = 16  # each array starts at a multiple of 16 bytes
_PEER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def pair_key(peer: str) -> str:
    """The directory name of the pair with ``peer`` (a node name, or the caller's certificate name)."""
    if _PEER_RE.match(peer):
        return peer
    return "peer-" + hashlib.sha256(peer.encode()).hexdigest()[:24]


class PairStateError(UserError):
    """A stored pair state is damaged, missing a part, or changed by another run meanwhile."""


def _segment(own_removed: np.ndarray, own_keys: np.ndarray, own_prefix: np.ndarray, own_double: np.ndarray | None,
             peer_removed: np.ndarray, peer_added: int, peer_double: np.ndarray | None, matches: np.ndarray) -> bytes:
    arrays = {"matches": matches.astype(np.int64).reshape(-1, 2), "own_removed": own_removed.astype(np.int64), "own_keys": own_keys.astype(np.uint64), "own_prefix": own_prefix.astype("<u8"), "peer_removed": peer_removed.astype(np.int64),
              "peer_added": np.array([peer_added], dtype=np.int64)}
    if own_double is not None:
        arrays["own_double"] = own_double.view(np.uint8).reshape(-1, POINT)
    if peer_double is not None:
        arrays["peer_double"] = peer_double.view(np.uint8).reshape(-1, PEER_BYTES)
    return _pack(arrays)


def _pack(arrays: dict[str, np.ndarray]) -> bytes:
    """The arrays as one segment: magic, header length, JSON header (name, dtype, shape, offset), data."""
    header, parts, offset = [], [], 0
    for name, array in arrays.items():
        raw = np.ascontiguousarray(array).tobytes()
        header.append({"name": name, "dtype": array.dtype.str, "shape": list(array.shape), "offset": offset})
        parts.append(raw + bytes(-len(raw) % _ALIGN))
        offset += len(parts[-1])
    head = json.dumps(header).encode()
    head += b" " * (-(len(SEGMENT_MAGIC) + 8 + len(head)) % _ALIGN)
    return b"".join([SEGMENT_MAGIC, len(head).to_bytes(8, "big"), head, *parts])


def _unpack(data: bytearray) -> dict[str, np.ndarray]:
    """The arrays of a segment, as views of ``data`` (writable, no copy); a ValueError if it is malformed."""
    if bytes(data[:len(SEGMENT_MAGIC)]) != SEGMENT_MAGIC:
        raise ValueError("not a pair state segment of this format")
    size = int.from_bytes(data[len(SEGMENT_MAGIC):len(SEGMENT_MAGIC) + 8], "big")
    base = len(SEGMENT_MAGIC) + 8 + size
    if base > len(data):
        raise ValueError("header longer than the file")
    arrays = {}
    for item in json.loads(bytes(data[len(SEGMENT_MAGIC) + 8:base])):
        dtype = np.dtype(str(item["dtype"]))
        shape = tuple(int(d) for d in item["shape"])
        count, start = int(np.prod(shape, dtype=np.int64)), base + int(item["offset"])
        if dtype.kind not in "iub" or min(shape, default=0) < 0 or int(item["offset"]) < 0 \
                or start + count * dtype.itemsize > len(data):
            raise ValueError(f"array {item['name']!r} outside the file or of a type a segment does not hold")
        arrays[str(item["name"])] = np.frombuffer(data, dtype=dtype, count=count, offset=start).reshape(shape)
    return arrays


def _joined(parts: list[np.ndarray], empty: np.ndarray) -> np.ndarray:
    """The segments' arrays of one kind, end to end, in one copy (none for a single segment, whose arrays are
    views of its writable buffer): loading an epoch of k runs costs one pass over the state, not k."""
    if not parts:
        return empty
    if len(parts) == 1:
        return parts[0] if parts[0].flags.writeable else parts[0].copy()
    return np.concatenate(parts)


def _assemble(state: PairState, parts: dict[str, list[np.ndarray]]) -> None:
    """``state``'s arrays from every segment's (after :meth:`PairStateStore._replay` of each, in order): a dead
    slot keeps nothing of its item; each slot's match is the last one recorded for it."""
    dead_own, dead_peer = ~state.own_live, ~state.peer_live
    state.own_keys = _joined(parts["own_keys"], state.own_keys)
    state.own_keys[dead_own] = 0
    state.own_prefix = _joined(parts["own_prefix"], state.own_prefix)
    if state.own_double is not None:
        state.own_double = _joined(parts["own_double"], state.own_double)
        state.own_double[dead_own] = np.zeros(1, DOUBLE)[0]
    if state.peer_double is not None:
        state.peer_double = _joined(parts["peer_double"], state.peer_double)
        state.peer_double[dead_peer] = np.zeros(1, PEER)[0]
    if state.own_double is not None and state.peer_double is not None:
        state.own_match = np.full(state.own_slots, -1, dtype=np.int64)
        for matches in parts["matches"]:  # in run order: a later match of a slot replaces an earlier one
            state.own_match[matches[:, 0]] = matches[:, 1]


class PairStateStore:
    """Each pair's state in ``directory`` (made private, 0700); one pair per peer name."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()

    def _dir(self, peer: str) -> Path:
        if not _PEER_RE.match(peer):
            raise PairStateError(f"peer name {peer!r} cannot name a pair state directory")
        return self.directory / peer

    def manifest_path(self, peer: str) -> Path:
        return self._dir(peer) / "manifest.json"

    def exists(self, peer: str) -> bool:
        return self.manifest_path(peer).exists()

    def load(self, peer: str) -> PairState | None:
        """The stored state of the pair with ``peer``; None if there is none; :class:`PairStateError` naming
        the file if it is damaged."""
        path = self.manifest_path(peer)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise PairStateError(f"{path}: cannot read the pair's stored PSI state: {err}") from err
        try:
            meta = json.loads(text)
            if meta["format"] != FORMAT:
                raise ValueError(f"format {meta['format']!r}, this node reads {FORMAT}")
            state = PairState(epoch=str(meta["epoch"]), created_at=str(meta["created_at"]), mode=str(meta["mode"]),
                              role=str(meta["role"]), salt=bytes.fromhex(meta["salt"]),
                              secret=bytes.fromhex(meta["secret"]),
                              own_double=np.zeros(0, DOUBLE) if meta["own_double"] else None,
                              peer_double=np.zeros(0, PEER) if meta["peer_double"] else None)
            segments = [(str(s["file"]), str(s["sha256"])) for s in meta["segments"]]
            digest = str(meta["digest"])
            state.age_days()  # created_at must parse
        except (ValueError, TypeError, KeyError) as err:
            raise PairStateError(f"{path}: damaged pair state manifest: {err!r}") from err
        parts: dict[str, list[np.ndarray]] = {"own_keys": [], "own_prefix": [], "own_double": [], "peer_double": [],
                                              "matches": []}
        for name, sha in segments:
            self._replay(state, path.parent / name, sha, parts)
        _assemble(state, parts)
        if state.digest() != digest:
            raise PairStateError(f"{path}: the stored segments do not add up to the recorded state digest")
        return state

    @staticmethod
    def _read(path: Path, sha: str, what: str) -> bytearray:
        try:
            with path.open("rb") as f:  # into a writable buffer: the loaded state's arrays are views of it
                data = bytearray(os.fstat(f.fileno()).st_size)
                if f.readinto(data) != len(data):
                    raise OSError("the file changed size while it was read")
        except OSError as err:
            raise PairStateError(f"{path}: cannot read {what} of the pair's stored PSI state: {err}") from err
        if hashlib.sha256(data).hexdigest() != sha:
            raise PairStateError(f"{path}: {what} does not match its recorded SHA-256 (damaged or changed)")
        return data

    def _replay(self, state: PairState, path: Path, sha: str, parts: dict[str, list[np.ndarray]]) -> None:
        """Check one segment and take its arrays (views) into ``parts``; the live flags follow it."""
        data = self._read(path, sha, "segment")
        try:
            z = _unpack(data)
            own_removed, peer_removed = z["own_removed"], z["peer_removed"]
            prefix, peer_added = z["own_prefix"], int(z["peer_added"][0])
            matches = z["matches"].reshape(-1, 2)
            keys = z["own_keys"].reshape(-1, 2)  # one new own slot per key
            own_double = z["own_double"].reshape(-1).view(DOUBLE) if state.own_double is not None else None
            peer_double = z["peer_double"].reshape(-1).view(PEER) if state.peer_double is not None else None
            if len(prefix) != len(keys) or (own_double is not None and len(own_double) != len(keys)) or \
                    (peer_double is not None and len(peer_double) != peer_added):
                raise ValueError("arrays of different lengths")
            own_live = np.concatenate([state.own_live, np.ones(len(keys), dtype=bool)])
            peer_live = np.concatenate([state.peer_live, np.ones(peer_added, dtype=bool)])
            for removed, live in ((own_removed, own_live), (peer_removed, peer_live)):
                if len(removed) and (removed.min() < 0 or removed.max() >= len(live) or not live[removed].all()
                                     or len(np.unique(removed)) != len(removed)):
                    raise ValueError("removed slots that were not live")
            if len(matches) and (matches.min() < 0 or matches[:, 0].max() >= len(own_live)
                                 or matches[:, 1].max() >= len(peer_live)):
                raise ValueError("matches outside the slots")
        except (ValueError, KeyError, TypeError, IndexError, OSError) as err:
            raise PairStateError(f"{path}: damaged segment of the pair's stored PSI state: {err}") from err
        own_live[own_removed] = False
        peer_live[peer_removed] = False
        state.own_live, state.peer_live = own_live, peer_live  # flags grow per segment (1 byte per slot)
        parts["own_keys"].append(keys)
        parts["own_prefix"].append(prefix)
        parts["matches"].append(matches)
        if own_double is not None:
            parts["own_double"].append(own_double)
        if peer_double is not None:
            parts["peer_double"].append(peer_double)

    def seconds_per_item(self, peer: str) -> float:
        """What an item cost in the full alignment that started the stored epoch (0.0 if unknown)."""
        try:
            return float(json.loads(self.manifest_path(peer).read_text()).get("full_seconds_per_item", 0.0))
        except (OSError, ValueError, TypeError, AttributeError):
            return 0.0

    def save(self, peer: str, state: PairState, base: PairState | None, *, seconds_per_item: float = 0.0) -> int:
        """Keep ``state``, the result of a run that continued ``base`` (the state loaded before it; None or
        another epoch: a new epoch, written whole). Appends only the run's delta when the epoch goes on.
        Refused if the stored state changed since ``base`` was loaded (another run of the same pair).
        Returns the bytes written."""
        pair_dir = ensure_private_dir(self._dir(peer))
        with self._lock:
            path = pair_dir / "manifest.json"
            stored = json.loads(path.read_text()) if path.exists() else None
            fresh = base is None or stored is None or stored.get("epoch") != state.epoch or base.epoch != state.epoch
            if not fresh and stored is not None and base is not None and stored.get("digest") != base.digest():
                raise PairStateError(f"{path}: another alignment with {peer} changed the stored state meanwhile; "
                                     "this run's state is not kept (the next run starts a new key epoch)")
            if fresh:
                own_lo, peer_lo = 0, 0
                own_removed = np.flatnonzero(~state.own_live)
                peer_removed = np.flatnonzero(~state.peer_live)
                segments: list[dict[str, str]] = []
            else:
                assert base is not None and stored is not None
                own_lo, peer_lo = base.own_slots, base.peer_slots
                own_removed = np.flatnonzero(base.own_live & ~state.own_live[:own_lo])
                peer_removed = np.flatnonzero(base.peer_live & ~state.peer_live[:peer_lo])
                segments = list(stored["segments"])
            # Slots born and removed within this one segment are written as live then removed (replay order).
            matches = np.zeros((0, 2), dtype=np.int64)
            if len(state.own_match) == state.own_slots and state.own_slots:  # the pairs this run found
                before = np.full(state.own_slots, -1, dtype=np.int64)
                if not fresh and base is not None and len(base.own_match) == base.own_slots:
                    before[:base.own_slots] = base.own_match
                found = np.flatnonzero((state.own_match != before) & (state.own_match >= 0))
                matches = np.stack([found, state.own_match[found]], axis=1)
            data = _segment(own_removed, state.own_keys[own_lo:], state.own_prefix[own_lo:],
                            None if state.own_double is None else state.own_double[own_lo:], peer_removed,
                            state.peer_slots - peer_lo, None if state.peer_double is None else state.peer_double[peer_lo:],
                            matches)
            name = f"seg-{state.epoch[:12]}-{len(segments) + 1:06d}.bin"
            atomic_write(pair_dir / name, data, mode=0o600)
            segments.append({"file": name, "sha256": hashlib.sha256(data).hexdigest()})
            meta = {"format": FORMAT, "epoch": state.epoch, "created_at": state.created_at, "mode": state.mode,
                    "role": state.role, "salt": state.salt.hex(), "secret": state.secret.hex(),
                    "own_double": state.own_double is not None, "peer_double": state.peer_double is not None,
                    "segments": segments, "digest": state.digest(),
                    "full_seconds_per_item": seconds_per_item}
            atomic_write(path, json.dumps(meta, indent=1).encode(), mode=0o600)
            if fresh:  # the files of an ended epoch
                keep = {s["file"] for s in segments} | {"manifest.json"}
                for old in pair_dir.iterdir():
                    if old.name not in keep and not old.name.startswith("."):
                        old.unlink(missing_ok=True)
            return len(data)

    def delete(self, peer: str) -> None:
        """Forget the pair's state (the platform keeps none, or the bank was told so)."""
        pair_dir = self._dir(peer)
        with self._lock:
            if pair_dir.exists():
                (pair_dir / "manifest.json").unlink(missing_ok=True)
                for old in pair_dir.iterdir():
                    old.unlink(missing_ok=True)


__all__ = ["FORMAT", "PairStateError", "PairStateStore", "pair_key"]
