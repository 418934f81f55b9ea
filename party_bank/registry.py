"""The bank's model registry: trained models by name, aliases (NAME@LABEL) and retirement on both nodes.

State lives in the node's ``registry`` document store (``party_common.storage``): one document per retired
model (keyed by its train job ID) and one document of every alias (:data:`ALIASES_DOC`), rewritten whole and
atomically, so moving an alias from one model to another is one write. Every change is an audit row.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from party_common.link import PlatformLink
from party_common.storage import NodeStores
from party_common.storage.jobs import JobRecord, now
from party_common.watch import WatchedDocuments
from protocols.errors import NotFound, UserError

ALIASES_DOC = "registry_aliases"  # alias -> model job ID, for every alias
ALIAS_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}@[A-Za-z0-9_.-]{1,32}$")
MAX_MODELS = 100_000  # train jobs the list reads at most


class ModelRetired(NotFound):
    """The model was retired: it no longer scores on either node."""


class UnknownAlias(NotFound):
    """No alias of that name."""


def is_alias(ref: str) -> bool:
    """Aliases hold an '@'; job IDs never do."""
    return "@" in ref


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not ALIAS_RE.match(alias):
        raise UserError(f"invalid alias {alias!r}: write NAME@LABEL, e.g. car-owner@prod (letters, digits, "
                        "'_', '.', '-'; name up to 64, label up to 32)")
    return alias


LATEST = "latest"  # a model reference: the newest finished train job that is not retired


class ModelRegistry:
    """Names, aliases and retirement of the bank's trained models; ``link`` retires the platform's halves."""

    def __init__(self, stores: NodeStores, link: PlatformLink) -> None:
        self.stores = stores
        self.link = link
        self._lock = threading.Lock()  # alias and retire writes, one at a time
        # The registry as last read: resolving a model on a Score call reads no file. This node is its only
        # writer and reads it again after each of its writes; a change by hand shows within CHECK_EVERY_S.
        self._docs = WatchedDocuments(stores.registry)
        # What 'latest' named, and for which state: (job store status version, registry snapshot, job ID). A
        # Score naming 'latest' then costs no query of the job list; a train job that finishes or a model
        # retired (here, or in the registry's files) moves the state and the next call looks again.
        self._latest: tuple[int, object, str] | None = None

    # ---- reading ----

    def aliases(self) -> dict[str, str]:
        """Every alias and the model job ID it points at."""
        doc = self._docs.get(ALIASES_DOC)
        return {} if doc is None else dict(doc.get("aliases") or {})

    def retirement(self, model_job_id: str) -> dict[str, Any] | None:
        """The registry entry of a retired model, None while it is active."""
        if model_job_id == ALIASES_DOC:
            return None
        entry = self._docs.get(model_job_id)
        return None if entry is None else dict(entry)

    def resolve(self, ref: str) -> str:
        """The train job ID that ``ref`` (a job ID or an alias) names; a retired model is refused."""
        job_id = self._lookup(ref)
        entry = self.retirement(job_id)
        if entry is not None:
            raise ModelRetired(f"model {job_id} was retired at {entry['retired_at']}: it no longer scores "
                               "(`bank-node models` lists the active ones)")
        return job_id

    def _lookup(self, ref: str) -> str:
        ref = (ref or "").strip()
        if not ref:
            raise UserError("name a model: a train job ID, an alias NAME@LABEL or 'latest'")
        if ref == LATEST:
            return self._newest()
        if not is_alias(ref):
            return ref
        job_id = self.aliases().get(check_alias(ref))
        if job_id is None:
            raise UnknownAlias(f"no model alias {ref!r} (`bank-node models` lists the aliases; "
                               "`bank-node models alias NAME@LABEL MODEL` sets one)")
        return job_id

    def _newest(self) -> str:
        """The newest finished train job that is not retired (what 'latest' names), kept until a job changes
        status or the registry changes."""
        # Both read before the job list: a change after them moves one of them, so the next call looks again.
        version, snapshot = self.stores.jobs.status_version, self._docs.snapshot()
        kept = self._latest
        if kept is not None and snapshot is not None and kept[0] == version and kept[1] is snapshot:
            return kept[2]
        for record in self.stores.jobs.list(-1, kind="train", status="succeeded", brief=True):  # IDs only
            if self.retirement(record.job_id) is None:
                self._latest = (version, snapshot, record.job_id)
                return record.job_id
        raise NotFound("no trained model on this node yet ('latest' names the newest finished train job)")

    def trained(self, job_id: str) -> JobRecord:
        """The finished train job ``job_id`` whose model half this node holds; NotFound otherwise."""
        try:
            record = self.stores.jobs.get(job_id)
        except NotFound as err:
            raise NotFound(f"no model {job_id}: no such job on the bank node") from err
        if record.kind != "train" or record.status != "succeeded" or not self.stores.models.exists(job_id):
            raise NotFound(f"no model {job_id}: job {job_id} is not a finished train job")
        return record

    def list(self) -> list[dict[str, Any]]:
        """Every trained model, newest first: name, aliases, tags, joint test AUC per tag, status."""
        by_model: dict[str, list[str]] = {}
        for alias, job_id in sorted(self.aliases().items()):
            by_model.setdefault(job_id, []).append(alias)
        models = []
        for record in self.stores.jobs.list(MAX_MODELS, kind="train", status="succeeded"):
            result = record.result
            metrics = result.get("metrics") or {}
            tags = list(result.get("tags") or record.params.get("tags") or metrics)
            entry = self.retirement(record.job_id)
            models.append({
                "model": record.job_id, "name": record.name, "aliases": by_model.get(record.job_id, []),
                "tags": tags, "test_auc": {t: ((metrics.get(t) or {}).get("joint") or {}).get("auc") for t in tags},
                # which model scores each tag: "joint", or "bank_only" when the platform's part did not earn it
                "served": {t: ((metrics.get(t) or {}).get("served") or {}).get("model") for t in tags},
                # the test AUC of the model that serves each tag (the bank-only one's where it serves)
                "served_test_auc": {t: ((metrics.get(t) or {}).get(
                    ((metrics.get(t) or {}).get("served") or {}).get("model") or "joint") or {}).get("auc")
                    for t in tags},
                "alignment": result.get("alignment_job_id") or record.params.get("alignment_job_id", ""),
                "created_at": record.created_at, "status": "retired" if entry else "active",
                "retired_at": entry["retired_at"] if entry else None,
            })
        return models

    # ---- changing ----

    def set_alias(self, alias: str, ref: str) -> dict[str, Any]:
        """Point ``alias`` at the model ``ref`` names (moving it if it points elsewhere), atomically."""
        check_alias(alias)
        with self._lock:
            job_id = self.resolve(ref)
            self.trained(job_id)
            aliases = self.aliases()
            previous = aliases.get(alias)
            aliases[alias] = job_id
            self._save_aliases(aliases)
        moved = previous is not None and previous != job_id
        self.stores.jobs.audit(job_id, "alias set", f"{alias} -> {job_id}" + (f" (was {previous})" if moved else ""))
        if moved:
            self.stores.jobs.audit(previous, "alias moved away", f"{alias} -> {job_id}")
        return {"alias": alias, "model": job_id, "previous": previous}

    def remove_alias(self, alias: str) -> dict[str, Any]:
        check_alias(alias)
        with self._lock:
            aliases = self.aliases()
            job_id = aliases.pop(alias, None)
            if job_id is None:
                raise UnknownAlias(f"no model alias {alias!r}")
            self._save_aliases(aliases)
        self.stores.jobs.audit(job_id, "alias removed", alias)
        return {"alias": alias, "model": job_id}

    def retire(self, ref: str) -> dict[str, Any]:
        """Retire a model on both nodes (idempotent): the platform first; if it cannot be reached, nothing changes
        here. Then the bank marks it retired and drops its aliases."""
        with self._lock:
            job_id = self._lookup(ref)
            self.trained(job_id)
            entry = self.retirement(job_id)
            if entry is not None:
                return {**entry, "already_retired": True}
            platform = self.link.retire_model(job_id)  # PeerError when the platform is down: not retired
            aliases = self.aliases()
            removed = sorted(a for a, j in aliases.items() if j == job_id)
            entry = {"model": job_id, "status": "retired", "retired_at": now(),
                     "platform_retired_at": platform.retired_at, "aliases_removed": removed}
            self.stores.registry.save(job_id, entry, overwrite=True)
            self._docs.invalidate()
            if removed:
                self._save_aliases({a: j for a, j in aliases.items() if j != job_id})
        self.stores.jobs.audit(job_id, "model retired", f"on both nodes; aliases removed: {', '.join(removed) or '-'}")
        return {**entry, "already_retired": False}

    def _save_aliases(self, aliases: dict[str, str]) -> None:
        self.stores.registry.save(ALIASES_DOC, {"aliases": dict(sorted(aliases.items())), "updated_at": now()},
                                  overwrite=True)
        self._docs.invalidate()


__all__ = ["ALIASES_DOC", "ModelRegistry", "ModelRetired", "UnknownAlias", "check_alias", "is_alias"]
