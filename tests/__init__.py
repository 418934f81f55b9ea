"""`make test`: unit, property, transcript, node-level and end-to-end tests."""
