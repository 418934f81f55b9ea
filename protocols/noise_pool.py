"""Noise made ahead of time for an additively homomorphic scheme whose keys make their own noise.

One pool serves every scheme of :mod:`protocols.he` (Paillier, Okamoto-Uchiyama): what differs is the key, which
makes a value (``noise()``, ``mask_noise()``: by the private key's CRT when the pool holds it, else by the public
key's fixed-base tables).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gmpy2 import mpz

from protocols.errors import InvalidKey

PublicKey = Any  # a scheme's public key: makes noise (noise(), mask_noise())
PrivateKey = Any  # a scheme's private key: makes noise by CRT; public_key is its public key


class NoisePool:
    """Noise made ahead of time, ordinary or (``mask=True``) mask noise; each value is handed out once.

    With the private key the values are made by CRT (the key owner's fast path); without it, by the
    public key's fixed-base tables. A pool makes one kind: :meth:`check` refuses the other.
    """

    def __init__(self, public_key: PublicKey, private_key: PrivateKey | None = None, *,
                 mask: bool = False) -> None:
        if private_key is not None and private_key.public_key != public_key:
            raise InvalidKey("the private key does not belong to the pool's public key")
        self.public_key = public_key
        self._private = private_key
        self.mask = mask
        self._values: list[mpz] = []
        self.made_online = 0  # values the pool did not have when asked: made on the spot, and counted

    def __len__(self) -> int:
        return len(self._values)

    @property
    def noise_key(self) -> PublicKey | PrivateKey:
        """The key that makes this pool's values: the private key when the pool has it."""
        return self._private if self._private is not None else self.public_key

    def check(self, public_key: PublicKey, *, mask: bool) -> None:
        """Refuses noise under another key, or ordinary noise where mask noise is asked for."""
        if public_key != self.public_key:
            raise InvalidKey("the noise pool is for another key")
        if mask and not self.mask:
            raise ValueError("mask noise was asked for, and this pool holds ordinary noise "
                             "(NoisePool(..., mask=True))")

    def make(self) -> mpz:
        key = self.noise_key
        return key.mask_noise() if self.mask else key.noise()

    def fill(self, count: int) -> None:
        self._values.extend(self.make() for _ in range(count))

    def extend(self, values: Iterable[mpz]) -> None:
        self._values.extend(values)

    def take(self, count: int) -> list[mpz]:
        if count > len(self._values):
            short = count - len(self._values)
            self.made_online += short
            self.fill(short)
        out = self._values[-count:] if count else []
        del self._values[len(self._values) - count:]
        return out


__all__ = ["NoisePool"]
