"""Files an operator may download from the bank node: batch score files and segments' groups files.

One place decides which file a download name means (used by the v2 ``Scoring.Download`` call; a v1 ``fetch``
takes the same function): a score file by its path relative to ``<state_dir>/scores/`` (the same rules as
when it was written: no absolute path, no '..', no symbolic link on the way, .csv or .parquet), a segment by
its name. Nothing outside those two directories can be named.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from party_bank.score_files import OutputError
from party_bank.segments import SegmentService
from protocols.errors import NotFound

SCORES, SEGMENT = "scores", "segment"
CHUNK_BYTES = 1 << 20  # each message well under gRPC's 2 MiB cap


@dataclass(frozen=True)
class FilePiece:
    offset: int
    data: bytes
    last: bool
    sha256: str  # of the whole file, on the last piece only


def score_file(scores_dir: Path, name: str) -> Path:
    """The existing score file ``name`` (relative to ``scores_dir``); refuses what could lead out of it."""
    text = (name or "").strip()
    rel = Path(text)
    if not text or rel.is_absolute() or text.startswith("~") or ".." in rel.parts:
        raise OutputError(f"{text or '(no name)'}: name a score file by its path under the node's scores/ "
                          "directory, as BatchScore answered it (no absolute path, no '..')")
    if rel.suffix not in (".csv", ".parquet"):
        raise OutputError(f"{text}: score files are .csv or .parquet")
    root = scores_dir
    for depth in range(1, len(rel.parts) + 1):
        if root.joinpath(*rel.parts[:depth]).is_symlink():
            raise OutputError(f"{text}: a symbolic link on the way; downloads stay inside the scores/ directory")
    path = root / rel
    if not path.is_file():
        raise NotFound(f"no score file {text} on the bank node (BatchScore writes them)")
    return path


def download_path(segments: SegmentService, kind: str, name: str) -> Path:
    """The file a download of ``kind`` (``scores`` or ``segment``) named ``name`` reads."""
    if kind == SCORES:
        return score_file(segments.scores_dir, name)
    if kind == SEGMENT:
        path = segments.segments_dir / segments.get(name)["file"]  # NotFound for an unknown segment
        if not path.is_file():
            raise NotFound(f"segment {name}: its groups file is missing on the bank node")
        return path
    raise OutputError(f"download: unknown kind {kind!r}; use '{SCORES}' or '{SEGMENT}'")


def read_pieces(path: Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[FilePiece]:
    """The file's bytes in pieces, the last one with the SHA-256 of everything read (one open file)."""
    digest = hashlib.sha256()
    offset = 0
    with path.open("rb") as f:
        data = f.read(chunk_bytes)
        while True:
            digest.update(data)
            following = f.read(chunk_bytes)
            last = not following
            yield FilePiece(offset, data, last, digest.hexdigest() if last else "")
            if last:
                return
            offset += len(data)
            data = following
