"""Additively homomorphic encryption behind one seam (:mod:`protocols.he.scheme`), schemes by name.

A protocol looks its scheme up here (``get_scheme("paillier")``) and holds it as a parameter; it never
imports a scheme's classes. A new scheme implements :class:`HEScheme` in a module of this package and is
listed in :data:`SCHEMES`; a job parameter (``he_scheme``) then picks it.
"""

from __future__ import annotations

from protocols.errors import UserError
from protocols.he.ou import OU, OUScheme
from protocols.he.paillier import PAILLIER, PaillierScheme
from protocols.he.scheme import Ciphertexts, HEScheme, Kernels, NoisePool, PrivateKey, PublicKey

DEFAULT_SCHEME = PAILLIER
SCHEMES: dict[str, HEScheme] = {PAILLIER: PaillierScheme(), OU: OUScheme()}


def get_scheme(name: str = DEFAULT_SCHEME) -> HEScheme:
    """The scheme registered as ``name``; :class:`UserError` naming the known ones otherwise."""
    try:
        return SCHEMES[name]
    except (KeyError, TypeError):
        raise UserError(f"unknown HE scheme {name!r} (he_scheme); known: {', '.join(sorted(SCHEMES))}") from None


def scheme_names() -> list[str]:
    return sorted(SCHEMES)


__all__ = ["DEFAULT_SCHEME", "OU", "PAILLIER", "SCHEMES", "Ciphertexts", "HEScheme", "Kernels", "NoisePool",
           "PrivateKey", "PublicKey", "get_scheme", "scheme_names"]
