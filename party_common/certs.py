"""`fedprofile-certs`: each organisation's CA, its node and operator certificates, and its revocation list.

Each organisation keeps its material in its own folder and gives the other organisation only two public
files, ``ca.crt`` and ``crl.pem``::

    fedprofile-certs ca --org bank --dir certs/bank         # ca.crt, ca.key (0600), crl.pem, index.json
    fedprofile-certs node bank --dir certs/bank --host bank.example.com    # node.crt, node.key
    fedprofile-certs operator alice --dir certs/bank        # operators/alice.crt, operators/alice.key
    fedprofile-certs revoke --dir certs/bank --operator alice   # or --cert FILE, or --serial HEX
    fedprofile-certs crl --dir certs/bank                   # sign the CRL again (next update in 30 days)
    fedprofile-certs list --dir certs/bank
    fedprofile-certs init --out certs --operator alice      # a trial: both organisations' folders at once

A certificate's role is its subject's organisational unit (``OU=node`` or ``OU=operator``, see
``party_common.auth``), its holder's name the common name. Nothing is ever overwritten: a file that exists
stops the command with an error naming it (rotate by issuing under a new ``--file`` name, then revoking the
old certificate). Private keys are written with mode 0600, atomically. EC P-256 keys, SHA-256 signatures.
Commands that change a folder's ``index.json`` (issue, revoke, crl) hold an exclusive lock on its
``index.lock`` from reading the index to writing it, so people issuing at the same time each get their row.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import ipaddress
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from party_common.auth import ROLE_NODE, ROLE_OPERATOR
from party_common.storage.files import atomic_write
from protocols.errors import UserError

CA_DAYS = 3 * 365
NODE_DAYS = 365
OPERATOR_DAYS = 90
CRL_DAYS = 30
BACKDATE = dt.timedelta(minutes=5)  # tolerate clocks a little behind
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
REASONS = {r.name: r for r in (x509.ReasonFlags.unspecified, x509.ReasonFlags.key_compromise,
                               x509.ReasonFlags.superseded, x509.ReasonFlags.cessation_of_operation,
                               x509.ReasonFlags.affiliation_changed)}


class CertsError(UserError):
    """A certificate command cannot run as asked; the message names the file or the option."""


def _check_name(name: str, what: str) -> str:
    if not NAME_RE.match(name):
        raise CertsError(f"{what} {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-', starting with a "
                         "letter or digit")
    return name


def _subject(common_name: str, org: str, role: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem(obj: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return obj.public_bytes(serialization.Encoding.PEM)


def _publish(files: list[tuple[Path, bytes, int]]) -> None:
    """Write new files, never over existing ones; all or none (a failure removes what this call wrote)."""
    for path, _, _ in files:
        if path.exists():
            raise CertsError(f"{path} already exists; fedprofile-certs never overwrites certificates or keys "
                             "(issue under another --file name, or use another folder)")
    written: list[Path] = []
    try:
        for path, data, mode in files:
            try:
                atomic_write(path, data, mode=mode, overwrite=False)
            except FileExistsError:
                raise CertsError(f"{path} appeared while writing; nothing was overwritten") from None
            written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, key_cert_sign=ca, crl_sign=ca, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=not ca,
                         encipher_only=False, decipher_only=False)


@dataclass
class OrgFolder:
    """One organisation's CA folder: ``ca.crt``, ``ca.key``, ``crl.pem``, ``index.json`` and what it issued."""

    path: Path

    @property
    def ca_cert_path(self) -> Path:
        return self.path / "ca.crt"

    @property
    def crl_path(self) -> Path:
        return self.path / "crl.pem"

    @property
    def index_path(self) -> Path:
        return self.path / "index.json"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold this folder's index lock (``index.lock``, fcntl.flock: also between threads, each with its
        own open file) for one read-modify-write of ``index.json`` and what goes with it."""
        if not self.index_path.exists():  # say what is missing; no lock file in a folder that is no CA folder
            self._ca()
            self.index()
        fd = os.open(self.path / "index.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    @classmethod
    def create(cls, path: Path, org: str, *, days: int = CA_DAYS) -> OrgFolder:
        """A new CA for ``org`` in ``path`` (refused if the folder already holds one)."""
        folder = cls(Path(path))
        for name in ("ca.crt", "ca.key", "index.json", "crl.pem"):
            if (folder.path / name).exists():
                raise CertsError(f"{folder.path / name} already exists: {folder.path} already holds a CA; "
                                 "fedprofile-certs never overwrites one")
        folder.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = _subject(f"{org} CA", org, "ca")
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        index = {"org": org, "crl_number": 0, "certificates": []}
        _publish([(folder.path / "ca.key", _key_pem(key), 0o600), (folder.ca_cert_path, _pem(cert), 0o644),
                  (folder.index_path, json.dumps(index, indent=2).encode(), 0o644)])
        folder.write_crl()
        return folder

    def _ca(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key_path = self.path / "ca.key"
        if not key_path.exists() or not self.ca_cert_path.exists():
            raise CertsError(f"{self.path} holds no CA (ca.crt and ca.key); make one with "
                             f"`fedprofile-certs ca --org NAME --dir {self.path}`")
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertsError(f"{key_path}: not an EC private key")
        return key, x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())

    def index(self) -> dict:
        try:
            return json.loads(self.index_path.read_text())
        except FileNotFoundError:
            raise CertsError(f"{self.index_path} not found: {self.path} is not a fedprofile-certs CA folder") from None
        except json.JSONDecodeError as err:
            raise CertsError(f"{self.index_path}: not valid JSON ({err})") from err

    def _save_index(self, index: dict) -> None:
        atomic_write(self.index_path, json.dumps(index, indent=2).encode())

    def issue(self, role: str, name: str, *, days: int, hosts: Sequence[str] = (), file: str | None = None,
              start: dt.datetime | None = None) -> tuple[Path, Path]:
        """A certificate for a node (server and client use, SANs ``hosts``) or an operator (client only),
        valid for ``days`` from ``start`` (default: now)."""
        _check_name(name, f"{role} name")
        stem = _check_name(file or (ROLE_NODE if role == ROLE_NODE else name), "--file")
        where = self.path if role == ROLE_NODE else self.path / "operators"
        cert_path, key_path = where / f"{stem}.crt", where / f"{stem}.key"
        with self._locked():
            return self._issue(role, name, days=days, hosts=hosts, cert_path=cert_path, key_path=key_path,
                               start=start)

    def _issue(self, role: str, name: str, *, days: int, hosts: Sequence[str], cert_path: Path, key_path: Path,
               start: dt.datetime | None) -> tuple[Path, Path]:
        ca_key, ca_cert = self._ca()
        index = self.index()
        now = start or dt.datetime.now(dt.UTC)
        not_after = now + dt.timedelta(days=days)
        if days < 1:
            raise CertsError(f"--days {days}: a certificate is valid for at least one day")
        if not_after > ca_cert.not_valid_after_utc:
            raise CertsError(f"a {days}-day certificate would outlive the CA in {self.path} (valid until "
                             f"{ca_cert.not_valid_after_utc:%Y-%m-%d}); pass fewer --days or make a new CA")
        key = ec.generate_private_key(ec.SECP256R1())
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if role == ROLE_NODE else [])
        builder = (
            x509.CertificateBuilder().subject_name(_subject(name, index["org"], role)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(_new_serial(index))
            .not_valid_before(now - BACKDATE).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        sans: list[x509.GeneralName] = []
        for host in dict.fromkeys(hosts):
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _publish([(key_path, _key_pem(key), 0o600), (cert_path, _pem(cert), 0o644)])
        index["certificates"].append({"serial": f"{cert.serial_number:x}", "role": role, "name": name,
                                      "file": str(cert_path.relative_to(self.path)),
                                      "not_after": cert.not_valid_after_utc.isoformat(), "revoked_at": None})
        self._save_index(index)
        return cert_path, key_path

    def revoke(self, serial: int, reason: str = "unspecified") -> dict:
        """Add ``serial`` to this CA's CRL and sign it again; return the certificate's index entry."""
        if reason not in REASONS:
            raise CertsError(f"--reason {reason!r}: one of {', '.join(REASONS)}")
        with self._locked():
            return self._revoke(serial, reason)

    def _revoke(self, serial: int, reason: str) -> dict:
        index = self.index()
        entry = next((c for c in index["certificates"] if int(c["serial"], 16) == serial), None)
        if entry is None:
            raise CertsError(f"serial {serial:x} was not issued by the CA in {self.path} (see `fedprofile-certs "
                             f"list --dir {self.path}`)")
        if entry["revoked_at"]:
            raise CertsError(f"{entry['role']} '{entry['name']}' (serial {serial:x}) is already revoked "
                             f"({entry['revoked_at']})")
        entry["revoked_at"] = dt.datetime.now(dt.UTC).isoformat()
        entry["reason"] = reason
        self._save_index(index)
        self._write_crl(CRL_DAYS)
        return entry

    def write_crl(self, *, days: int = CRL_DAYS) -> Path:
        """Sign the CRL from the index again (a new CRL number, next update ``days`` on)."""
        with self._locked():
            return self._write_crl(days)

    def _write_crl(self, days: int) -> Path:
        ca_key, ca_cert = self._ca()
        index = self.index()
        index["crl_number"] = int(index.get("crl_number", 0)) + 1
        now = dt.datetime.now(dt.UTC)
        builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
                   .last_update(now - BACKDATE).next_update(now + dt.timedelta(days=days))
                   .add_extension(x509.CRLNumber(index["crl_number"]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False))
        for c in index["certificates"]:
            if c["revoked_at"]:
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder().serial_number(int(c["serial"], 16))
                    .revocation_date(dt.datetime.fromisoformat(c["revoked_at"]))
                    .add_extension(x509.CRLReason(REASONS[c.get("reason", "unspecified")]), critical=False)
                    .build())
        atomic_write(self.crl_path, _pem(builder.sign(ca_key, hashes.SHA256())))
        self._save_index(index)
        return self.crl_path


def _new_serial(index: dict) -> int:
    """A random serial (``x509.random_serial_number``, 159 bits) that no certificate in the index has."""
    taken = {int(c["serial"], 16) for c in index["certificates"]}
    while (serial := x509.random_serial_number()) in taken:  # pragma: no cover - 2^-159 a draw
        pass
    return serial


def serial_of(cert_file: Path) -> int:
    try:
        return x509.load_pem_x509_certificate(Path(cert_file).read_bytes()).serial_number
    except FileNotFoundError:
        raise CertsError(f"{cert_file}: no such certificate file") from None
    except ValueError as err:
        raise CertsError(f"{cert_file}: not a PEM certificate ({err})") from err


def init_local_pki(out: Path, *, bank_name: str = "bank", platform_name: str = "platform",
                   extra_hosts: list[str] | None = None, operators: list[str] | tuple[str, ...] = (),
                   node_days: int = NODE_DAYS) -> dict[str, Path]:
    """A trial: ``out/bank`` and ``out/platform``, each a CA with its node certificate and CRL, and an
    operator certificate per name in ``operators`` from the bank's CA. Returns the paths by label
    (operators as ``operator_cert:NAME`` and ``operator_key:NAME``; the first one also as ``operator_cert``
    and ``operator_key``)."""
    hosts = ["localhost", "127.0.0.1", "::1", *(extra_hosts or [])]
    paths: dict[str, Path] = {}
    for org, node_name in (("bank", bank_name), ("platform", platform_name)):
        folder = OrgFolder.create(Path(out) / org, org)
        cert, key = folder.issue(ROLE_NODE, node_name, days=node_days, hosts=[node_name, *hosts])
        paths.update({f"{org}_dir": folder.path, f"{org}_ca": folder.ca_cert_path, f"{org}_crl": folder.crl_path,
                      f"{org}_cert": cert, f"{org}_key": key})
    bank = OrgFolder(paths["bank_dir"])
    for person in operators:
        cert, key = bank.issue(ROLE_OPERATOR, person, days=OPERATOR_DAYS)
        paths.update({f"operator_cert:{person}": cert, f"operator_key:{person}": key})
        paths.setdefault("operator_cert", cert)
        paths.setdefault("operator_key", key)
    return paths


def _list(folder: OrgFolder) -> str:
    now = dt.datetime.now(dt.UTC)
    lines = []
    for c in folder.index()["certificates"]:
        status = (f"revoked {c['revoked_at'][:16]}" if c["revoked_at"]
                  else "expired" if dt.datetime.fromisoformat(c["not_after"]) < now else "valid")
        lines.append(f"{c['serial']:>40s}  {c['role']:8s} {c['name']:24s} until {c['not_after'][:10]}  {status}"
                     f"  {c['file']}")
    return "\n".join(lines) or f"{folder.path}: no certificates issued yet"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedprofile-certs", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ca = sub.add_parser("ca", help="make an organisation's CA, its empty CRL and index in a new folder")
    ca.add_argument("--org", required=True, help="the organisation's name (the certificates' O)")
    ca.add_argument("--dir", required=True, type=Path)
    ca.add_argument("--days", type=int, default=CA_DAYS)
    node = sub.add_parser("node", help="the organisation's node certificate (server and client)")
    node.add_argument("name", help="the node's name (its certificate's CN and a SAN; the peer's config names it)")
    node.add_argument("--dir", required=True, type=Path)
    node.add_argument("--host", action="append", default=[], help="extra SAN (DNS name or IP), repeatable")
    node.add_argument("--days", type=int, default=NODE_DAYS)
    node.add_argument("--file", help="file name stem (default: node); a new name to rotate")
    op = sub.add_parser("operator", help="a person's client certificate for the bank node's control API")
    op.add_argument("name", help="the person (1-64 letters, digits, '.', '_', '@', '-'); audit records show it")
    op.add_argument("--dir", required=True, type=Path)
    op.add_argument("--days", type=int, default=OPERATOR_DAYS)
    op.add_argument("--file", help="file name stem under operators/ (default: the name); a new name to rotate")
    rev = sub.add_parser("revoke", help="revoke a certificate: add it to the CA's CRL and sign the CRL again")
    rev.add_argument("--dir", required=True, type=Path)
    which = rev.add_mutually_exclusive_group(required=True)
    which.add_argument("--operator", help="the operator's name (operators/NAME.crt)")
    which.add_argument("--cert", type=Path, help="a certificate file")
    which.add_argument("--serial", help="a serial number in hex (see `list`)")
    rev.add_argument("--reason", default="unspecified", choices=list(REASONS))
    crl = sub.add_parser("crl", help="sign the CRL again (do this before its next update)")
    crl.add_argument("--dir", required=True, type=Path)
    crl.add_argument("--days", type=int, default=CRL_DAYS)
    ls = sub.add_parser("list", help="the certificates a CA issued, with their status")
    ls.add_argument("--dir", required=True, type=Path)
    init = sub.add_parser("init", help="a trial on one machine: both organisations' folders and node certificates")
    init.add_argument("--out", type=Path, default=Path("certs"))
    init.add_argument("--bank-name", default="bank")
    init.add_argument("--platform-name", default="platform")
    init.add_argument("--host", action="append", default=[], help="extra SAN (DNS name or IP), repeatable")
    init.add_argument("--operator", action="append", default=[], help="a person's operator certificate, repeatable")
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            paths = init_local_pki(args.out, bank_name=args.bank_name, platform_name=args.platform_name,
                                   extra_hosts=args.host, operators=args.operator)
            for label, p in paths.items():
                print(f"{label:24s} {p}")
            if not args.operator:
                print(f"no operator certificates yet: `fedprofile-certs operator NAME --dir {args.out / 'bank'}`")
        elif args.command == "ca":
            folder = OrgFolder.create(args.dir, args.org, days=args.days)
            print(f"CA of {args.org} in {folder.path}: give the other organisation ca.crt and crl.pem only")
        elif args.command in ("node", "operator"):
            role = ROLE_NODE if args.command == "node" else ROLE_OPERATOR
            hosts = [args.name, *args.host] if role == ROLE_NODE else []
            cert, key = OrgFolder(args.dir).issue(role, args.name, days=args.days, hosts=hosts, file=args.file)
            print(f"{role} certificate for {args.name}: {cert} (key {key}, mode 0600), valid {args.days} days")
        elif args.command == "revoke":
            folder = OrgFolder(args.dir)
            if args.serial:
                try:
                    serial = int(args.serial, 16)
                except ValueError:
                    raise CertsError(f"--serial {args.serial!r} is not a hexadecimal number") from None
            else:
                serial = serial_of(args.cert or folder.path / "operators" / f"{args.operator}.crt")
            entry = folder.revoke(serial, args.reason)
            print(f"revoked {entry['role']} '{entry['name']}' (serial {entry['serial']}); {folder.crl_path} "
                  "updated: copy it to the other organisation, whose node reads it on its next call")
        elif args.command == "crl":
            print(f"signed {OrgFolder(args.dir).write_crl(days=args.days)} (next update in {args.days} days)")
        elif args.command == "list":
            print(_list(OrgFolder(args.dir)))
    except UserError as err:
        print(f"fedprofile-certs {args.command}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
