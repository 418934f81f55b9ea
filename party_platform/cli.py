"""`platform-node serve --config platform.toml`: run the platform's node."""

from __future__ import annotations

import argparse
import logging
import sys

from party_common.config import ConfigError, load_config
from party_common.runtime import INSECURE_WARNING, read_tls_files, run_until_signalled, setup_logging
from party_common.transport import (
    MAX_GRPC_MESSAGE,
    NodeServicer,
    TransportError,
    add_health,
    bind,
    make_server,
    server_credentials,
)
from proto import fedprofile_v1_pb2_grpc as pb_grpc

log = logging.getLogger("party_platform")


def build_server(config_path: str, *, insecure_dev: bool = False):
    """Load config and data, and return (server, node, health, port) ready to start."""
    from party_platform.node import FEATURES, PlatformNode

    config = load_config(config_path, expected_role="platform", require_tls=not insecure_dev)
    node = PlatformNode(config)
    server = make_server()
    servicer = NodeServicer(node_name=config.name, registry=node.registry, features=FEATURES, scorer=node,
                            max_payload_bytes=config.max_payload_mb * 2**20)
    pb_grpc.add_NodeServicer_to_server(servicer, server)
    health = add_health(server, ["fedprofile.v1.Node"])
    if insecure_dev:
        creds = None
    else:
        cert, key, peer_ca, _ = read_tls_files(config)
        creds = server_credentials(cert, key, peer_ca)
    port = bind(server, config.listen, creds)
    return server, node, health, port


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
        server, node, health, port = build_server(args.config, insecure_dev=args.insecure_dev)
    except (ConfigError, TransportError, PermissionError, ValueError) as err:
        print(f"platform-node: {err}", file=sys.stderr)
        return 2
    server.start()
    log.info("platform node '%s' listening on port %d (max gRPC message %d bytes)", node.config.name, port,
             MAX_GRPC_MESSAGE)

    def stop() -> None:
        health.enter_graceful_shutdown()
        node.registry.close_all()

    run_until_signalled(server, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
