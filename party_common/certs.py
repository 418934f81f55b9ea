"""TLS material for local use: one CA per organisation, a certificate per node, an operator certificate.

`fedprofile-certs init --out DIR` writes:

* ``bank-ca.crt``/``bank-ca.key``, ``platform-ca.crt``/``platform-ca.key``: each organisation's own CA
  (in production each organisation uses its own PKI and sends the other only its CA certificate);
* ``bank.crt``/``bank.key`` and ``platform.crt``/``platform.key``: node certificates for both server and
  client use, with SANs for localhost and 127.0.0.1 plus the node's name;
* ``operator.crt``/``operator.key``: a data scientist's client certificate for the bank's control API.

Private keys are written with mode 0600, atomically. Built with ``cryptography``; EC P-256 keys.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from party_common.storage.files import atomic_write

VALID_DAYS = 365


def _name(common_name: str, org: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    atomic_write(path, pem, mode=0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    atomic_write(path, cert.public_bytes(serialization.Encoding.PEM))


def make_ca(org: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = _name(f"{org} CA", org)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_leaf(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str, org: str,
              *, hosts: list[str], server: bool = True) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, org)).issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def init_local_pki(out: Path, *, bank_name: str = "bank", platform_name: str = "platform",
                   extra_hosts: list[str] | None = None) -> dict[str, Path]:
    """Make both organisations' CAs, node certificates and an operator certificate under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    hosts = ["localhost", "127.0.0.1", "::1", *(extra_hosts or [])]
    paths: dict[str, Path] = {}
    for org, node_name in (("bank", bank_name), ("platform", platform_name)):
        ca_key, ca_cert = make_ca(org)
        _write_key(out / f"{org}-ca.key", ca_key)
        _write_cert(out / f"{org}-ca.crt", ca_cert)
        key, cert = make_leaf(ca_key, ca_cert, node_name, org, hosts=[node_name, *hosts])
        _write_key(out / f"{org}.key", key)
        _write_cert(out / f"{org}.crt", cert)
        paths.update({f"{org}_ca": out / f"{org}-ca.crt", f"{org}_cert": out / f"{org}.crt",
                      f"{org}_key": out / f"{org}.key"})
        if org == "bank":
            op_key, op_cert = make_leaf(ca_key, ca_cert, "operator", org, hosts=[], server=False)
            _write_key(out / "operator.key", op_key)
            _write_cert(out / "operator.crt", op_cert)
            paths.update({"operator_cert": out / "operator.crt", "operator_key": out / "operator.key"})
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedprofile-certs", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="make a local CA per organisation and certificates for both nodes")
    init.add_argument("--out", type=Path, default=Path("certs"))
    init.add_argument("--bank-name", default="bank")
    init.add_argument("--platform-name", default="platform")
    init.add_argument("--host", action="append", default=[], help="extra SAN (DNS name or IP), repeatable")
    args = parser.parse_args(argv)
    paths = init_local_pki(args.out, bank_name=args.bank_name, platform_name=args.platform_name,
                           extra_hosts=args.host)
    for label, p in sorted(paths.items()):
        print(f"{label:14s} {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
