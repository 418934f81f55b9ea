"""Simulated data, the two-process loopback cluster, the runner and `make demo`."""
