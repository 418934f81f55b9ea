"""`platform-node serve --config platform.toml`: run the platform's node."""

from __future__ import annotations

import argparse
import logging
import sys

import grpc
from grpc_health.v1.health import HealthServicer

from party_common.config import load_config
from party_common.jobs import SESSION_KINDS
from party_common.runtime import (
    INSECURE_WARNING,
    read_tls_files,
    run_until_signalled,
    setup_logging,
    start_node_server,
)
from party_common.transport import MAX_GRPC_MESSAGE
from party_platform.node import PlatformNode
from party_platform.service import NodeServicer, SessionRegistry
from proto import fedprofile_v1_pb2_grpc as pb_grpc
from protocols.errors import FedProfileError

log = logging.getLogger("party_platform")


def build_server(config_path: str, *,
                 insecure_dev: bool = False) -> tuple[grpc.Server, HealthServicer, PlatformNode, SessionRegistry, int]:
    """Load config and data and start the Node service; return (server, health, node, sessions, port)."""
    config = load_config(config_path, expected_role="platform", require_tls=not insecure_dev)
    tls = None if insecure_dev else read_tls_files(config)
    node = PlatformNode(config)
    registry = SessionRegistry(node.open_session, kinds=SESSION_KINDS,
                               max_sessions=config.policy.max_concurrent_jobs)
    servicer = NodeServicer(node, registry, max_payload_bytes=config.max_payload_mb * 2**20)
    server, health, port = start_node_server(
        config, lambda s: pb_grpc.add_NodeServicer_to_server(servicer, s), ["fedprofile.v1.Node"],
        tls=tls, client_ca=tls.peer_ca if tls else None)  # only the bank's CA may connect
    return server, health, node, registry, port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="platform-node", description="The e-commerce platform's node.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="answer the bank node's PSI, training and scoring calls")
    serve.add_argument("--config", required=True, help="the node's TOML file")
    serve.add_argument("--insecure-dev", action="store_true", help="plaintext gRPC, no client auth (laptop only)")
    serve.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if args.insecure_dev:
        print(INSECURE_WARNING, file=sys.stderr)
    try:
        server, health, node, registry, port = build_server(args.config, insecure_dev=args.insecure_dev)
    except FedProfileError as err:
        print(f"platform-node: {err}", file=sys.stderr)
        return 2
    log.info("platform node '%s' listening on port %d (max gRPC message %d bytes)", node.config.name, port,
             MAX_GRPC_MESSAGE)
    run_until_signalled(server, health, registry.close_all)
    return 0


if __name__ == "__main__":
    sys.exit(main())
