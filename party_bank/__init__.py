"""The bank node: job controller, control API for data scientists, scoring, segments, and its CLI."""

from party_common.grpc_logging import quiet_grpc_core

quiet_grpc_core()  # before anything imports grpc: our one line on a failed handshake, not the C core's too
