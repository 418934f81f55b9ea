"""The bank node: job controller, control API for data scientists, scoring, segments, and its CLI."""
