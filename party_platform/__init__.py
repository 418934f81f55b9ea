"""The platform node: protocol sessions, partial scores under its disclosure budget, its gRPC service and CLI."""

from party_common.grpc_logging import quiet_grpc_core

quiet_grpc_core()  # before anything imports grpc: our one line on a failed handshake, not the C core's too
