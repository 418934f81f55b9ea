"""`preflight`: a new operator's set-up checked before the first job, as one table of checks.

Each check is ``ok``, ``warn`` or ``fail`` with what it found and, when it is not ok, what to change. What
both nodes check lives here: the config parses; the data file reads with its ID, tag and feature columns
(the loader's own checks, so preflight refuses exactly what the node would), which columns are empty
(dropped) or constant (carry nothing), label coverage per tag; the node's certificate (dates, role, key
file mode, key matches), its CAs and revocation lists; and the platform's ``[policy]`` against the default
training job (what the platform would refuse). The bank's peer checks (TLS, the platform's role from its
certificate, the handshake) are in ``party_bank.preflight``.

Nothing here starts a node, opens a session or runs any cryptography with the peer; no ID, value or label
is printed (columns are named, rows counted).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from party_common.auth import ROLE_NODE, CrlError, CrlFile, identity_of, validity_problem
from party_common.config import ConfigError, NodeConfig, Role, load_config
from party_common.data_loading import load_party_data
from party_common.policy import PolicyConfig, knob
from protocols.identity import customer_keys
from protocols.party_data import DataError, PartyData
from protocols.rowblocks import block_rows
from protocols.vfl_lr import MIN_ROWS, TrainParams

OK, WARN, FAIL = "ok", "warn", "fail"
EXPIRY_WARNING_DAYS = 30
MIN_LABELLED = 100  # labelled rows per tag below which the test split cannot say much (about 20 test rows)
MIN_CLASS = 30  # rows of each class per tag (uncertainty.MIN_POSITIVES asks for 30 test positives)


@dataclass(frozen=True)
class Check:
    """One line of the preflight table."""

    name: str
    status: str  # OK, WARN or FAIL
    detail: str
    fix: str = ""


@dataclass
class DataFacts:
    """What the checks learned of a node's data, for the checks that follow (policy, the default job)."""

    rows: int
    features: list[str]
    tags: list[str]
    dropped: list[str]
    constant: list[str]
    id_formats: dict[str, int]  # rows per ID format of the normal form (id_formats)


class Checks:
    """The checks of one run, in order."""

    def __init__(self) -> None:
        self.items: list[Check] = []
        self.scope = ""  # before each check's name: whose files (the bank's preflight checks the platform's too)

    def add(self, name: str, status: str, detail: str, fix: str = "") -> Check:
        check = Check(self.scope + name, status, detail, fix)
        self.items.append(check)
        return check

    def as_json(self) -> str:
        return json.dumps([c.__dict__ for c in self.items], indent=2)

    @property
    def failed(self) -> bool:
        return any(c.status == FAIL for c in self.items)

    def table(self, title: str = "") -> str:
        t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold", title=title or None)
        for head in ("CHECK", "STATUS", "FOUND", "FIX"):
            t.add_column(head, overflow="fold")
        for c in self.items:
            t.add_row(Text(c.name), Text(c.status.upper()), Text(c.detail), Text(c.fix or "-"))
        buffer = io.StringIO()
        width = shutil.get_terminal_size((200, 24)).columns if sys.stdout.isatty() else 200
        Console(file=buffer, width=width, force_terminal=False, no_color=True, highlight=False).print(t)
        lines = [line.rstrip() for line in buffer.getvalue().splitlines()]
        fails, warns = (sum(c.status == s for c in self.items) for s in (FAIL, WARN))
        lines += ["", f"{len(self.items)} checks: {fails} failed, {warns} warning(s)"
                  + ("" if fails else " - ready for the first job")]
        return "\n".join(lines)


# ---- config ----


def check_config(checks: Checks, path: str, role: Role) -> NodeConfig | None:
    try:
        config = load_config(path, expected_role=role, require_tls=True)
    except ConfigError as err:
        checks.add("config", FAIL, str(err), "edit the config file as the message says")
        return None
    checks.add("config", OK, f"{path} parses: {role} node '{config.name}', state in {config.state_dir}")
    return config


# ---- data ----


def check_data(checks: Checks, config: NodeConfig) -> tuple[PartyData | None, DataFacts | None]:
    """Load the node's file as the node does (every refusal named), then the empty and constant columns and,
    on the bank, the label coverage of each tag."""
    d = config.data
    dropped: list[str] = []

    def on_warning(message: str) -> None:
        dropped.append(message.split("feature column '", 1)[-1].split("'", 1)[0])

    try:
        # A matrix above [data] in_memory_mb goes to a scratch file as on the node, but not in its state directory
        # (preflight runs before the node made it, with its modes).
        with tempfile.TemporaryDirectory(prefix="fedprofile-preflight-") as scratch:
            data = load_party_data(d.path, id_column=d.id_column, tag_columns=list(d.tag_columns),
                                   feature_columns=list(d.feature_columns) if d.feature_columns is not None else None,
                                   fill_missing=d.fill_missing, on_warning=on_warning,  # type: ignore[arg-type]
                                   spill_dir=scratch, in_memory_mb=d.in_memory_mb)
    except DataError as err:
        checks.add("data file", FAIL, str(err), f"fix the file, or [data] in {config.source}")
        return None, None
    checks.add("data file", OK, f"{Path(d.path).name}: {len(data):,} rows, ID column '{d.id_column}' "
               f"(no empty or duplicate IDs, in the normal form PSI matches), {len(data.feature_names)} "
               f"feature(s), {len(data.tag_names)} tag(s)")
    if dropped:
        checks.add("empty columns", WARN, f"{len(dropped)} feature column(s) with no value at all, dropped: "
                   f"{', '.join(dropped)}", "fill them in the file, or leave them out with [data] feature_columns")
    constant = constant_columns(data)
    if constant:
        checks.add("constant columns", WARN, f"{len(constant)} feature column(s) with one value in every row "
                   f"(they carry nothing): {', '.join(constant)}",
                   "leave them out with [data] feature_columns (or check the export)")
    if not dropped and not constant:
        checks.add("feature columns", OK, f"none empty or constant: {', '.join(data.feature_names[:8])}"
                   + (f" and {len(data.feature_names) - 8} more" if len(data.feature_names) > 8 else ""))
    formats = id_formats(data.ids)
    check_id_formats(checks, formats, d.id_column)
    if config.role == "bank":
        check_labels(checks, data)
    return data, DataFacts(len(data), list(data.feature_names), list(data.tag_names), dropped, constant, formats)


PHONE_INTERNATIONAL, PHONE_NATIONAL, EMAIL, OTHER = ("phone +country", "phone without country code", "e-mail",
                                                      "other text")
MIXED_SHARE = 0.01  # a second ID format on at least this share of the rows is worth a warning


def id_formats(ids: np.ndarray) -> dict[str, int]:
    """Rows per format of the IDs' normal form (what PSI hashes, ``protocols.identity``), most common first."""
    keys = customer_keys(ids)
    counts: dict[str, int] = {}
    for key in keys.tolist():
        if key.startswith("+") and key[1:].isdigit():
            kind = PHONE_INTERNATIONAL
        elif key.isdigit() and len(key) >= 7:
            kind = PHONE_NATIONAL
        elif "@" in key:
            kind = EMAIL
        else:
            kind = OTHER
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _formats_text(formats: dict[str, int]) -> str:
    total = sum(formats.values()) or 1
    return ", ".join(f"{kind} {n / total:.0%}" for kind, n in formats.items())


def check_id_formats(checks: Checks, formats: dict[str, int], column: str) -> None:
    total = sum(formats.values()) or 1
    minor = {k: n for k, n in list(formats.items())[1:] if n / total >= MIXED_SHARE}
    if minor:
        checks.add("ID format", WARN, f"column '{column}' mixes formats ({_formats_text(formats)}): PSI matches "
                   "the normal form only, so a customer stored as +447700900123 on one side and 07700900123 on the "
                   "other is not matched", "store one convention in both files (E.164, +447700900123, for phones)")
    else:
        checks.add("ID format", OK, f"column '{column}': {_formats_text(formats)} (compared in PSI's normal form)")


def check_id_match(checks: Checks, bank: DataFacts, platform: DataFacts) -> None:
    """Whether the two files' IDs are of the same format: different ones match no customer in PSI."""
    ours, theirs = next(iter(bank.id_formats), None), next(iter(platform.id_formats), None)
    if ours is None or theirs is None:
        return
    if ours != theirs:
        checks.add("ID formats match", FAIL, f"the bank's IDs are mostly {ours} ({_formats_text(bank.id_formats)}), "
                   f"the platform's mostly {theirs} ({_formats_text(platform.id_formats)}): PSI would match almost "
                   "no customer", "agree on one ID (and one convention for it) with the platform")
    else:
        checks.add("ID formats match", OK, f"both files' IDs are mostly {ours}")


def constant_columns(data: PartyData) -> list[str]:
    """Feature columns holding one value on every row (after filling), read a block of rows at a time."""
    lows = np.full(data.features.shape[1], np.inf)
    highs = np.full(data.features.shape[1], -np.inf)
    X = data.features
    step = block_rows(X.shape[1])
    for a in range(0, len(X), step):
        block = np.asarray(X[a:a + step])
        lows, highs = np.minimum(lows, block.min(axis=0)), np.maximum(highs, block.max(axis=0))
    return [name for name, lo, hi in zip(data.feature_names, lows, highs, strict=True) if lo == hi]


def check_labels(checks: Checks, data: PartyData) -> None:
    """Per tag: labelled rows and each class; a tag the bank cannot train is a failure."""
    for t, tag in enumerate(data.tag_names):
        column = data.labels[:, t]
        known = int(np.sum(~np.isnan(column)))
        positives = int(np.nansum(column))
        negatives = known - positives
        found = f"{known:,} of {len(column):,} rows labelled ({known / len(column):.0%}), {positives:,} positive"
        if known == 0 or positives == 0 or negatives == 0:
            checks.add(f"tag {tag}", FAIL, found + ": one class only, nothing to learn",
                       "label both classes in the file, or leave the tag out of [data] tag_columns")
        elif known < MIN_LABELLED or min(positives, negatives) < MIN_CLASS:
            checks.add(f"tag {tag}", WARN, found + f": fewer than {MIN_LABELLED} labelled rows or {MIN_CLASS} of a "
                       "class; its test metrics will be too uncertain to act on", "label more customers")
        else:
            checks.add(f"tag {tag}", OK, found)


# ---- certificates ----


def _load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def check_certificates(checks: Checks, config: NodeConfig, *, now: dt.datetime | None = None) -> None:
    """This node's certificate and key, the CAs and CRLs of ``[tls]``; each file named in its check."""
    tls = config.tls
    if tls is None:
        return
    now = now or dt.datetime.now(dt.UTC)
    try:
        cert = _load_cert(tls.cert)
    except (OSError, ValueError) as err:
        checks.add("certificate", FAIL, f"{tls.cert}: not a PEM certificate ({err})",
                   "issue one with `fedprofile-certs node NAME --dir DIR`")
        cert = None
    if cert is not None:
        who = identity_of(cert)
        problem = validity_problem(cert, now)
        left = (cert.not_valid_after_utc - now).days
        found = f"{tls.cert.name}: '{who.name}' ({who.role or 'no role'}), valid until {cert.not_valid_after_utc:%Y-%m-%d}"
        renew = f"issue a new one: `fedprofile-certs node {who.name} --dir {tls.cert.parent} --file NEW`"
        if problem:
            checks.add("certificate", FAIL, f"{tls.cert}: {problem}", renew)
        elif who.role != ROLE_NODE:
            checks.add("certificate", FAIL, f"{found}: not a node certificate (OU={who.role or 'none'})",
                       "[tls] cert must be the node's certificate (fedprofile-certs node), not an operator's")
        elif left < EXPIRY_WARNING_DAYS:
            checks.add("certificate", WARN, f"{found}: expires in {left} day(s)", renew)
        else:
            checks.add("certificate", OK, found)
    check_key(checks, tls.key, cert)
    own_ca = tls.client_ca if config.role == "bank" else None
    for label, ca_path, crl_path in (("peer CA", tls.peer_ca, tls.peer_crl), ("own CA", own_ca, tls.client_crl)):
        if ca_path is not None:
            ca = check_ca(checks, label, ca_path, now)
            if ca is not None and crl_path is not None:
                check_crl(checks, f"{label} CRL", crl_path, ca_path)
    if cert is not None and own_ca is not None:
        try:
            cert.verify_directly_issued_by(_load_cert(own_ca))
            checks.add("CA matches", OK, f"{tls.cert.name} is issued by {own_ca.name} ([tls] client_ca), the CA the "
                       "platform must hold as its [tls] peer_ca")
        except (ValueError, TypeError, OSError) as err:
            checks.add("CA matches", FAIL, f"{tls.cert.name} is not issued by {own_ca} ({err})",
                       "one CA per organisation: the node's certificate and its operators' come from the same "
                       "`fedprofile-certs ca` folder")


def check_key(checks: Checks, key_path: Path, cert: x509.Certificate | None) -> None:
    try:
        mode = stat.S_IMODE(key_path.stat().st_mode)
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        checks.add("private key", FAIL, f"{key_path}: cannot be read as a PEM private key ({err})",
                   "run preflight as the node's user; [tls] key must be the certificate's unencrypted key")
        return
    if mode & 0o077:
        checks.add("private key", FAIL, f"{key_path}: mode {mode:o}, readable by others", f"chmod 600 {key_path}")
        return
    if cert is not None and key.public_key().public_bytes(  # type: ignore[union-attr]
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != cert.public_key(
    ).public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        checks.add("private key", FAIL, f"{key_path} is not the key of the certificate",
                   "[tls] key must be the key issued with [tls] cert")
        return
    checks.add("private key", OK, f"{key_path.name}: mode 600, matches the certificate")


def check_ca(checks: Checks, label: str, path: Path, now: dt.datetime) -> x509.Certificate | None:
    try:
        ca = _load_cert(path)
    except (OSError, ValueError) as err:
        checks.add(label, FAIL, f"{path}: not a PEM certificate ({err})", "copy the organisation's ca.crt again")
        return None
    try:
        is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    problem = validity_problem(ca, now)
    if problem or not is_ca:
        checks.add(label, FAIL, f"{path}: " + (problem or "not a CA certificate"),
                   "ask its organisation for its current ca.crt")
        return None
    checks.add(label, OK, f"{path.name}: CA '{identity_of(ca).org or identity_of(ca).name}', valid until "
               f"{ca.not_valid_after_utc:%Y-%m-%d}")
    return ca


def check_crl(checks: Checks, label: str, path: Path, ca_path: Path) -> None:
    try:
        crl = CrlFile(path, ca_path.read_bytes())
    except (CrlError, OSError, ValueError) as err:
        checks.add(label, FAIL, f"{path}: {err}", f"ask the CA's organisation for its crl.pem (signed by {ca_path.name})")
        return
    next_update = crl.next_update
    if next_update is not None and next_update < dt.datetime.now(dt.UTC):
        checks.add(label, WARN, f"{path.name}: its next update was due {next_update:%Y-%m-%d}",
                   "ask its organisation to sign it again (`fedprofile-certs crl`) and copy it here")
    else:
        checks.add(label, OK, f"{path.name}: signed by {ca_path.name}")


# ---- the platform's policy against the default training job ----


def check_policy(checks: Checks, policy: PolicyConfig, *, released: int | None, bank: DataFacts | None,
                 platform: DataFacts | None, where: str) -> None:
    """What the platform's ``[policy]`` (in ``where``) would refuse of the default job: align (OT), then train
    every tag of the bank's config with default parameters, then score them. ``bank``/``platform``: the facts of
    each side's data when known here."""
    found: list[Check] = []
    name = checks.scope + "platform policy"

    def refuse(status: str, detail: str, fix: str) -> None:
        found.append(Check(name, status, detail, fix))

    default_protocol = "ot"
    if default_protocol not in policy.psi_protocols:
        refuse(FAIL, f"{knob('psi_protocols')} = {list(policy.psi_protocols)}: the default alignment (OT) is refused",
               f"align with `bank-node align --protocol {policy.psi_protocols[0]}`, or add \"ot\" in {where}")
    if policy.approval == "manual":
        refuse(WARN, f"{knob('approval')} = \"manual\": every job waits until the platform's operator approves it",
               "the platform's operator runs `platform-node approve JOB` (or sets approval = \"auto\")")
    if platform is not None and policy.allowed_feature_columns is not None:
        unknown = [c for c in policy.allowed_feature_columns if c not in platform.features]
        if unknown:
            refuse(FAIL, f"{knob('allowed_feature_columns')} names column(s) the platform's file lacks: "
                   f"{', '.join(unknown)}", f"correct the list in {where}")
    if bank is not None:
        if policy.allowed_tags is not None:
            refused = [t for t in bank.tags if t not in policy.allowed_tags]
            if refused:
                refuse(FAIL, f"{knob('allowed_tags')} does not allow tag(s) {', '.join(refused)}",
                       f"train with `--tags` among {', '.join(policy.allowed_tags) or 'none'}, or allow them in {where}")
        if len(bank.features) + 1 > policy.max_bank_columns:
            refuse(FAIL, f"the bank's {len(bank.features)} features and the intercept exceed "
                   f"{knob('max_bank_columns')} = {policy.max_bank_columns}",
                   f"select fewer columns with [data] feature_columns, or raise it in {where}")
        tags = len(bank.tags)
        limit = released if released is not None else (len(platform.features) // 2 if platform else None)
        if limit is not None and tags > limit:
            refuse(FAIL, f"scoring one model of {tags} tags releases {tags} projections per customer; the platform "
                   f"allows {limit} ({knob('max_released_projections')})",
                   "train fewer tags per model (`--tags`)")
        if policy.max_psi_rows is not None and bank.rows > policy.max_psi_rows:
            refuse(FAIL, f"the bank's {bank.rows:,} IDs exceed {knob('max_psi_rows')} = {policy.max_psi_rows:,}",
                   f"align a subset, or raise it in {where}")
    if bank is not None and platform is not None:
        most = min(bank.rows, platform.rows)  # the intersection is at most this
        least = max(policy.min_intersection or 0, MIN_ROWS)
        if most < least:
            refuse(FAIL, f"the intersection is at most {most:,} customers; training needs at least {least:,}"
                   + (f" ({knob('min_intersection')})" if policy.min_intersection else ""),
                   "align on more customers")
        validation = int(most * (1 - TrainParams().test_share) * TrainParams().validation_share_for(most))
        if validation < policy.min_evaluation_rows:
            refuse(WARN, f"even a full overlap gives about {validation} validation rows; the platform evaluates "
                   f"no split under {policy.min_evaluation_rows} ({knob('min_evaluation_rows')})",
                   "align on more customers, or raise validation_share (`--params`)")
    if not found:
        found.append(Check(name, OK, f"{where} allows the default job (align with OT, train "
                           + (f"tags {', '.join(bank.tags)}" if bank else "the bank's tags") + ", score them)"))
    checks.items.extend(found)


def platform_preflight(config_path: str) -> Checks:
    """`platform-node preflight`: the platform's config, data, certificates, and its policy against its data."""
    checks = Checks()
    config = check_config(checks, config_path, "platform")
    if config is None:
        return checks
    _, facts = check_data(checks, config)
    check_certificates(checks, config)
    check_policy(checks, config.policy, released=config.max_released_projections, bank=None, platform=facts,
                 where=f"[policy] of {config.source}")
    return checks


__all__ = ["Check", "Checks", "DataFacts", "FAIL", "OK", "WARN", "check_certificates", "check_config", "check_data",
           "check_id_formats", "check_id_match", "check_labels", "id_formats", "check_policy", "constant_columns", "platform_preflight"]
