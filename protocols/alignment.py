"""Stored PSI results ("alignments"): the intersection in the order both nodes agreed on.

An alignment is two files in the node's state directory: ``<job>.ids.parquet`` (the member IDs, in
order; absent when this node learned only the size) and ``<job>.json`` (mode, size, the content hash
both nodes compare, and a digest of the IDs file). Each is written atomically, the IDs first and the
JSON last, so an alignment exists only once it is whole; loading checks the digest.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from party_common.storage.files import atomic_write

_JOB = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class AlignmentError(ValueError):
    """An alignment is missing, damaged, or does not match what was expected."""


@dataclass
class Alignment:
    job_id: str
    mode: str
    size: int
    ids: list[str] | None
    content_hash: str
    created_at: str
    peer_name: str
    ids_digest: str = ""


def _ids_digest(ids: list[str]) -> str:
    h = hashlib.sha256()
    for value in ids:
        data = value.encode()
        h.update(len(data).to_bytes(4, "big"))
        h.update(data)
    return h.hexdigest()


class AlignmentStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _paths(self, job_id: str) -> tuple[Path, Path]:
        if not _JOB.match(job_id):
            raise AlignmentError(f"invalid alignment job ID {job_id!r}")
        return self.directory / f"{job_id}.json", self.directory / f"{job_id}.ids.parquet"

    def save(self, alignment: Alignment) -> Alignment:
        meta_path, ids_path = self._paths(alignment.job_id)
        if meta_path.exists():
            raise AlignmentError(f"alignment {alignment.job_id} already exists; alignments are never overwritten")
        if alignment.ids is not None:
            if len(alignment.ids) != alignment.size:
                raise AlignmentError("alignment size does not match its IDs")
            buffer = io.BytesIO()
            pq.write_table(pa.table({"id": pa.array(alignment.ids, type=pa.string())}), buffer)
            atomic_write(ids_path, buffer.getvalue(), mode=0o600)
            alignment.ids_digest = _ids_digest(alignment.ids)
        meta = {"job_id": alignment.job_id, "mode": alignment.mode, "size": alignment.size,
                "content_hash": alignment.content_hash, "created_at": alignment.created_at,
                "peer_name": alignment.peer_name, "ids_digest": alignment.ids_digest,
                "has_ids": alignment.ids is not None}
        atomic_write(meta_path, json.dumps(meta, indent=2).encode(), mode=0o600)
        return alignment

    def save_result(self, job_id: str, result: object, *, peer_name: str) -> Alignment:
        """Store a :class:`protocols.psi.PsiResult`."""
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        return self.save(Alignment(job_id=job_id, mode=result.mode, size=result.size,  # type: ignore[attr-defined]
                                   ids=result.ids, content_hash=result.content_hash,  # type: ignore[attr-defined]
                                   created_at=now, peer_name=peer_name))

    def load(self, job_id: str) -> Alignment:
        meta_path, ids_path = self._paths(job_id)
        if not meta_path.exists():
            raise AlignmentError(f"no alignment {job_id} in {self.directory}")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise AlignmentError(f"{meta_path}: damaged alignment record: {err}") from err
        ids = None
        if meta.get("has_ids"):
            try:
                ids = pq.read_table(ids_path).column("id").to_pylist()
            except Exception as err:
                raise AlignmentError(f"{ids_path}: cannot read alignment IDs: {err}") from err
            if _ids_digest(ids) != meta["ids_digest"] or len(ids) != meta["size"]:
                raise AlignmentError(f"{ids_path}: alignment IDs do not match their recorded digest")
        return Alignment(job_id=meta["job_id"], mode=meta["mode"], size=meta["size"], ids=ids,
                         content_hash=meta["content_hash"], created_at=meta["created_at"],
                         peer_name=meta["peer_name"], ids_digest=meta["ids_digest"])

    def list(self) -> list[str]:
        return sorted(p.name[:-5] for p in self.directory.glob("*.json"))
