"""The additively homomorphic encryption (HE) seam: what a protocol asks of a scheme, whichever it is.

A protocol holds a :class:`HEScheme` (looked up by name, :func:`protocols.he.get_scheme`) and calls it for
everything that depends on the scheme: keys (generate, serialise, validate a received key against the
job's key size, fingerprint, prove to the receiver that a key was made as the scheme says and check that proof), noise made ahead of time, encryption, ciphertexts from and to bytes,
addition, scalar multiplication and ``X^T [[d]]``, packing ciphertexts by Horner's rule, decryption, and
the encrypted histogram. The key, ciphertext-vector and noise-pool objects are the scheme's own; the
protocol only passes them back to the scheme (or calls the methods the ``Protocol`` classes below name).

The schemes this seam is for (Paillier, Okamoto-Uchiyama) share one shape, and the interface states it
rather than hiding it: a ciphertext is an integer modulo :meth:`HEScheme.ciphertext_modulus`, adding
plaintexts multiplies ciphertexts, multiplying a plaintext by k raises its ciphertext to the k-th power,
and the plaintext space holds signed integers up to ``public_key.max_int``. Kernels written on that shape
(``protocols.paillier_math.matvec_t_values``, :mod:`protocols.he.histogram`) serve every scheme.

Errors are the scheme-neutral ones of :mod:`protocols.errors`: :class:`~protocols.errors.InvalidKey`,
:class:`~protocols.errors.InvalidCiphertext`, :class:`~protocols.errors.PlaintextOverflow`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Protocol

import numpy as np
from gmpy2 import mpz

from protocols.compute import Compute, ComputeSpec
from protocols.errors import InvalidKey
from protocols.he.histogram import histogram_values, spread_histogram
from protocols.packing import SlotLayout


class PublicKey(Protocol):
    """What a protocol reads of a public key (the rest stays inside its scheme)."""

    n_bits: int  # the modulus's size: the job's key_bits
    byte_len: int  # bytes of one serialised ciphertext (and of one opened value sent back, ints_to_bytes)
    max_int: int  # plaintexts are signed integers in [-max_int, max_int]

    def to_bytes(self) -> bytes: ...

    def fingerprint(self) -> str: ...

    def encode(self, values: Any) -> list[mpz]: ...

    def decode(self, residues: Any) -> list[int]: ...


class PrivateKey(Protocol):
    public_key: Any


class Ciphertexts(Protocol):
    """A vector of ciphertexts under one public key; slicing keeps the key."""

    public_key: Any
    values: list[mpz]

    def __len__(self) -> int: ...

    def __getitem__(self, index: slice) -> Any: ...

    def add(self, other: Any) -> Any: ...

    def add_plain(self, ints: Sequence[int] | np.ndarray) -> Any: ...

    def mul_plain(self, ints: Sequence[int] | np.ndarray) -> Any: ...

    def to_bytes(self) -> bytes: ...


class NoisePool(Protocol):
    """Noise made ahead of time, ordinary or mask noise (``mask``); each value is handed out once."""

    mask: bool

    def __len__(self) -> int: ...

    def check(self, public_key: Any, *, mask: bool) -> None:
        """Refuses noise under another key, or ordinary noise where mask noise is asked for."""

    def take(self, count: int) -> list[mpz]: ...


class Kernels(Protocol):
    """The scheme's heavy operations spread over a compute backend (it owns the backend: :meth:`close`)."""

    compute: Compute
    workers: int

    def __enter__(self) -> Any: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def close(self) -> None: ...

    def fill(self, pool: Any, count: int) -> None: ...

    def encrypt(self, public_key: Any, ints: Sequence[int] | np.ndarray, *, noise: Any = None,
                mask: bool = False) -> Any: ...

    def decrypt_raw(self, private_key: Any, cv: Any, *, small: bool = False) -> list[mpz]: ...

    def decrypt(self, private_key: Any, cv: Any) -> list[int]: ...

    def matvec_t(self, cv: Any, X: np.ndarray) -> Any: ...


class HEScheme(ABC):
    """An additively homomorphic scheme, as the protocols use it. Every method works on whole vectors."""

    name: str  # the registry's name, and what a job parameter (he_scheme) will say

    # ---- keys ----

    @abstractmethod
    def generate_keypair(self, key_bits: int, *, allow_insecure: bool = False) -> tuple[Any, Any]:
        """A fresh (public, private) key pair with a modulus of ``key_bits`` bits."""

    @abstractmethod
    def public_key_from_bytes(self, data: bytes, *, key_bits: int | None,
                              allow_insecure: bool = False) -> Any:
        """A peer's serialised public key, validated (of exactly ``key_bits`` bits when given) before any
        work that grows with its size; :class:`~protocols.errors.InvalidKey` otherwise."""

    @abstractmethod
    def validate_public_key(self, public_key: Any, *, key_bits: int | None, allow_insecure: bool = False) -> None:
        """The checks a receiver can make on a key object; :class:`~protocols.errors.InvalidKey` on failure."""

    def fingerprint(self, public_key: Any) -> str:
        """A stable hex digest of the serialised key (recorded in models and reports)."""
        return str(public_key.fingerprint())

    def key_proof(self, private_key: Any, context: bytes) -> bytes | None:
        """A non-interactive zero-knowledge proof, bound to ``context`` (the job, the protocol, the key's role),
        that the key was made as this scheme says; None for a scheme that has none (its receivers then take
        none: :meth:`verify_key_proof`)."""
        return None

    def verify_key_proof(self, public_key: Any, proof: bytes | None, context: bytes) -> None:
        """Checks a peer's :meth:`key_proof` for ``public_key`` and ``context``; :class:`~protocols.errors.InvalidKey`
        naming what failed (a missing proof, for a scheme that has them)."""
        if proof is not None:
            raise InvalidKey(f"the {self.name} scheme has no key proof, but the peer sent one")

    # ---- noise and encryption ----

    @abstractmethod
    def noise_pool(self, public_key: Any, private_key: Any = None, *, mask: bool = False) -> NoisePool:
        """An empty pool of noise under ``public_key`` (made by the fast private path when
        ``private_key`` is given); ``mask``: noise that re-randomises a ciphertext even against the key
        holder. Fill it ahead of time with :meth:`Kernels.fill`."""

    @abstractmethod
    def encrypt(self, public_key: Any, ints: Sequence[int] | np.ndarray, noise: NoisePool) -> Ciphertexts:
        """Encryptions of signed integers with noise taken from ``noise`` (one multiplication each online)."""

    @abstractmethod
    def kernels(self, compute: ComputeSpec = None) -> Kernels:
        """The heavy operations on ``compute`` (a backend, a worker count, or None for every core)."""

    # ---- ciphertexts ----

    @abstractmethod
    def ciphertexts(self, public_key: Any, values: list[mpz]) -> Ciphertexts:
        """A vector of raw ciphertext values (made by this scheme's kernels) under ``public_key``."""

    @abstractmethod
    def ciphertexts_from_bytes(self, public_key: Any, data: bytes) -> Ciphertexts:
        """A peer's ciphertexts, each checked to lie in the ciphertext group;
        :class:`~protocols.errors.InvalidCiphertext` otherwise."""

    @abstractmethod
    def concat(self, parts: Sequence[Ciphertexts]) -> Ciphertexts:
        """One vector of several under the same key."""

    @abstractmethod
    def ciphertext_modulus(self, public_key: Any) -> mpz:
        """The modulus ciphertexts live in: adding plaintexts is a product modulo it (n^2 for Paillier)."""

    def add(self, a: Ciphertexts, b: Ciphertexts) -> Ciphertexts:
        """Element-wise ``[[x + y]]``."""
        return a.add(b)

    def add_plain(self, cv: Ciphertexts, ints: Sequence[int] | np.ndarray) -> Ciphertexts:
        """Element-wise ``[[x + k]]`` for plaintext integers k (no fresh noise)."""
        return cv.add_plain(ints)

    def mul_plain(self, cv: Ciphertexts, ints: Sequence[int] | np.ndarray) -> Ciphertexts:
        """Element-wise ``[[k x]]`` for signed plaintext integers k."""
        return cv.mul_plain(ints)

    @abstractmethod
    def matvec_t(self, cv: Ciphertexts, X: np.ndarray) -> Ciphertexts:
        """``[[X^T d]]`` for an integer matrix X of shape (len(cv), k) (bucket multi-exponentiation)."""

    @abstractmethod
    def rerandomize(self, cv: Ciphertexts, noise: NoisePool) -> Ciphertexts:
        """The same plaintexts under fresh mask noise from ``noise`` (a mask pool)."""

    # ---- packing ----

    @abstractmethod
    def slots_per_plaintext(self, public_key: Any, slot_bits: int) -> int:
        """How many signed slots of ``slot_bits`` bits fit in one plaintext."""

    @abstractmethod
    def pack_ciphertexts(self, cv: Ciphertexts, layout: SlotLayout) -> Ciphertexts:
        """Groups of ``layout.n_slots`` ciphertexts packed into one each by Horner's rule (slot j = element
        j of its group); each plaintext must be non-negative and below ``2**layout.slot_bits``."""

    # ---- decryption ----

    @abstractmethod
    def decrypt(self, private_key: Any, cv: Ciphertexts) -> list[int]:
        """Signed plaintexts (CRT); :class:`~protocols.errors.PlaintextOverflow` for a value in the overflow
        band, :class:`~protocols.errors.InvalidCiphertext` for ciphertexts under another key."""

    # ---- the encrypted histogram ----

    def encrypted_histogram(self, cv: Ciphertexts, bins: np.ndarray, n_bins: int | Sequence[int], *,
                            kernels: Kernels | None = None, noise: NoisePool | None = None) -> Ciphertexts:
        """Per feature and bin, the encrypted sum of the rows' values in that bin (additions only).

        ``cv`` holds one ciphertext per row (its plaintext may pack several tags' values in slots, as the
        caller's layout says: the sums are slot-wise); ``bins`` is (rows,) or (rows, features) of bin
        indices, feature j's in ``[0, n_bins[j])``. Returns ``sum(n_bins)`` ciphertexts, feature-major.
        An empty bin is an encryption of 0 without noise: pass ``noise`` (a mask pool, one value per
        output) to re-randomise every output before it goes to the key holder. ``kernels`` spreads the
        features over its workers. See :mod:`protocols.he.histogram`.
        """
        modulus = self.ciphertext_modulus(cv.public_key)
        if kernels is None:
            values = histogram_values(cv.values, bins, n_bins, modulus)
        else:
            values = spread_histogram(kernels.compute, cv.values, bins, n_bins, modulus)
        out = self.ciphertexts(cv.public_key, values)
        return out if noise is None else self.rerandomize(out, noise)


__all__ = ["Ciphertexts", "HEScheme", "Kernels", "NoisePool", "PrivateKey", "PublicKey"]
