"""The platform node: protocol sessions, partial scores under its disclosure budget, its gRPC service and CLI."""
