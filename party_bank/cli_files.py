"""The bank CLI's access to the node's files: the operator's credentials, and `bank-node fetch` (a batch-score or
segment file downloaded over the v2 API's streamed, checked ``Download``)."""

from __future__ import annotations

import argparse
import getpass
import stat
from collections.abc import Callable
from pathlib import Path

import grpc

from party_common.config import ConfigError, NodeConfig
from protocols.errors import FedProfileError


def add_parsers(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    f = add("fetch", "download a batch-score file or a segment's groups file from the bank node to this machine")
    f.add_argument("kind", choices=("scores", "segment"), help="a batch-score file, or a segment's groups file")
    f.add_argument("name", help="the file's path under <state_dir>/scores/ (as batch-score --out), or the segment")
    f.add_argument("--out", required=True, help="where to write it on this machine")
    f.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def operator_credentials(config: NodeConfig, args: argparse.Namespace) -> tuple[Path, Path]:
    """The operator certificate and key a command calls the control API with (``--cert``/``--key``, else
    ``operators/$USER.crt`` beside the node's certificate); refused when missing or readable by others."""
    assert config.tls is not None
    operators = config.tls.cert.parent / "operators"
    user = getpass.getuser()
    cert = Path(args.cert) if args.cert else operators / f"{user}.crt"
    key = Path(args.key) if args.key else (cert.with_suffix(".key") if args.cert else operators / f"{user}.key")
    for p in (cert, key):
        if not p.exists():
            raise ConfigError(f"{p}: operator certificate/key not found; pass --cert/--key, or have the bank's CA "
                              f"issue yours: `fedprofile-certs operator {user} --dir {config.tls.cert.parent}`")
    if (mode := stat.S_IMODE(key.stat().st_mode)) & 0o077:
        raise ConfigError(f"{key}: private key has mode {mode:o}; run `chmod 600 {key}`")
    return cert, key


def fetch(config: NodeConfig, args: argparse.Namespace) -> int:
    """Download a batch-score or segment file from the node over the v2 API's streamed, checked ``Download``."""
    from party_bank.client_v2 import ScoringClient
    from party_bank.client_v2 import pb as pb2

    if args.insecure_dev:
        raise ConfigError("fetch needs the node's TLS (the v2 API): run it without --insecure-dev")
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it")
    cert, key = operator_credentials(config, args)
    assert config.tls is not None
    v2 = ScoringClient(config.client_address, cert=cert, key=key, ca=config.tls.client_ca,
                       tls_name=config.client_tls_name)
    try:
        path = v2.download(pb2.SCORES if args.kind == "scores" else pb2.SEGMENT, args.name, out)
    except grpc.RpcError as err:
        raise FedProfileError(f"the bank node refused the download: {err.details()}") from None  # type: ignore[attr-defined]
    finally:
        v2.close()
    print(f"wrote {path} ({path.stat().st_size} bytes, size and SHA-256 checked against the node's)")
    return 0


__all__ = ["add_parsers", "fetch", "operator_credentials"]
