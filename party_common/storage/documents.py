"""JSON documents keyed by job ID (models, reports, training checkpoints): one file each, written atomically.

Documents are JSON objects. Numpy scalars and arrays are stored as plain numbers and lists; NaN and
infinities are refused (``allow_nan=False``): strict JSON any reader can parse, and a non-finite number in
a model or report is a bug to catch when it is written, not when it is read back. Store None for "undefined".
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from party_common.storage.files import atomic_write, ensure_private_dir
from party_common.storage.jobs import JOB_ID_RE, check_job_id
from protocols.errors import NotFound, UserError


class DocumentError(UserError):
    """A document cannot be stored (not JSON, a non-finite number), is damaged, or already exists."""


class DocumentExists(DocumentError):
    """A document with that job ID exists and ``overwrite`` was not asked for."""


class UnknownDocument(DocumentError, NotFound):
    """No document with that job ID in this store."""


def _plain(value: Any) -> Any:
    """``json.dumps`` default: numpy values as Python numbers and lists; anything else is refused."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):  # np.float64, np.int64, np.bool_, ...
        return value.item()
    raise TypeError(f"a value of type {type(value).__name__} cannot be stored in a JSON document")


def encode_document(kind: str, job_id: str, doc: dict[str, Any]) -> bytes:
    """``doc`` as strict JSON (sorted keys); :class:`DocumentError` says why it cannot be stored."""
    if not isinstance(doc, dict):
        raise DocumentError(f"{kind} {job_id}: a document is a JSON object (dict), not {type(doc).__name__}")
    try:
        return json.dumps(doc, indent=1, sort_keys=True, allow_nan=False, default=_plain).encode()
    except ValueError as err:  # allow_nan=False, or a circular reference
        raise DocumentError(f"{kind} {job_id}: {err}; documents hold only finite numbers "
                            "(store None for an undefined value)") from err
    except TypeError as err:
        raise DocumentError(f"{kind} {job_id}: {err}") from err


def decode_document(where: str, data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise DocumentError(f"{where}: damaged document, not valid JSON: {err}") from err
    if not isinstance(doc, dict):
        raise DocumentError(f"{where}: damaged document, not a JSON object")
    return doc


def _exists_message(kind: str, job_id: str, write_once: bool, where: str = "") -> str:
    if write_once:
        return (f"{kind} {job_id} is stored already{where}; a stored {kind} is never replaced: a second save "
                "under the same job ID is refused")
    return f"{kind} {job_id} already exists{where}"


def _check_deletable(kind: str, job_id: str, write_once: bool) -> None:
    if write_once:  # delete then save would replace it
        raise DocumentError(f"{kind} {job_id}: a stored {kind} is never deleted or replaced")


class FileDocumentStore:
    """Documents as ``<directory>/<job_id><suffix>`` files, mode 0600, in a private (0700) directory.

    ``kind`` names the documents in messages ("no model job-..."). Writes are atomic: a crash or an error
    mid-write leaves the previous document (or none) and no temporary file. ``write_once`` (the models): a
    document once stored is never replaced nor deleted; a second save is refused whatever ``overwrite`` says,
    atomically (the new file is published by a hard link, which fails if the name exists).
    """

    def __init__(self, directory: Path, *, suffix: str = ".json", kind: str = "document",
                 write_once: bool = False) -> None:
        if not suffix.startswith(".") or "/" in suffix or len(suffix) < 2:
            raise ValueError(f"document suffix must look like '.json', got {suffix!r}")
        self.directory = ensure_private_dir(Path(directory))
        self.suffix = suffix
        self.kind = kind
        self.write_once = write_once

    def path(self, job_id: str) -> Path:
        """Where the document of ``job_id`` is (or would be) stored."""
        return self.directory / f"{check_job_id(job_id)}{self.suffix}"

    def save(self, job_id: str, doc: dict[str, Any], *, overwrite: bool = False) -> None:
        path = self.path(job_id)
        data = encode_document(self.kind, job_id, doc)
        try:
            atomic_write(path, data, mode=0o600, overwrite=overwrite and not self.write_once)
        except FileExistsError as err:
            raise DocumentExists(_exists_message(self.kind, job_id, self.write_once, f" ({path})")) from err

    def load(self, job_id: str) -> dict[str, Any]:
        path = self.path(job_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise UnknownDocument(f"no {self.kind} for job {job_id} (no {path})") from None
        except OSError as err:
            raise DocumentError(f"{path}: cannot read {self.kind}: {err}") from err
        return decode_document(str(path), data)

    def exists(self, job_id: str) -> bool:
        return self.path(job_id).exists()

    def list(self) -> list[str]:
        """Job IDs of the stored documents, sorted."""
        names = (p.name[:-len(self.suffix)] for p in self.directory.glob(f"*{self.suffix}"))
        return sorted(name for name in names if JOB_ID_RE.match(name))

    def delete(self, job_id: str, *, missing_ok: bool = False) -> None:
        _check_deletable(self.kind, job_id, self.write_once)
        try:
            self.path(job_id).unlink()
        except FileNotFoundError:
            if not missing_ok:
                raise UnknownDocument(f"no {self.kind} for job {job_id}") from None


class MemoryDocumentStore:
    """The same contract as :class:`FileDocumentStore`, in a dict (of the encoded JSON): for tests."""

    def __init__(self, *, kind: str = "document", write_once: bool = False) -> None:
        self.kind = kind
        self.write_once = write_once
        self._lock = threading.Lock()
        self._docs: dict[str, bytes] = {}

    def save(self, job_id: str, doc: dict[str, Any], *, overwrite: bool = False) -> None:
        check_job_id(job_id)
        data = encode_document(self.kind, job_id, doc)
        with self._lock:
            if (self.write_once or not overwrite) and job_id in self._docs:
                raise DocumentExists(_exists_message(self.kind, job_id, self.write_once))
            self._docs[job_id] = data

    def load(self, job_id: str) -> dict[str, Any]:
        check_job_id(job_id)
        with self._lock:
            data = self._docs.get(job_id)
        if data is None:
            raise UnknownDocument(f"no {self.kind} for job {job_id}")
        return decode_document(f"{self.kind} {job_id}", data)

    def exists(self, job_id: str) -> bool:
        check_job_id(job_id)
        with self._lock:
            return job_id in self._docs

    def list(self) -> list[str]:
        with self._lock:
            return sorted(self._docs)

    def delete(self, job_id: str, *, missing_ok: bool = False) -> None:
        check_job_id(job_id)
        _check_deletable(self.kind, job_id, self.write_once)
        with self._lock:
            if self._docs.pop(job_id, None) is None and not missing_ok:
                raise UnknownDocument(f"no {self.kind} for job {job_id}")
