"""Benchmarks: our code and the peer libraries side by side, one run each (`make bench`)."""
