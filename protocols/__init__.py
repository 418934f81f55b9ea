"""The two-party protocols and their math (PSI, vertical LR, Paillier, packing), with no network and no files."""
