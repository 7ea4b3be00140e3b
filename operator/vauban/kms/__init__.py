"""Key providers: where key-encryption keys (KEKs) live and who wraps data keys with them.

One small interface, three providers: `kubernetes-secret` (the KEK's material in a Secret of
the operator's namespace, wrapping done here), `kmip` (the KEK in a key manager speaking KMIP)
and `pkcs11` (the KEK on an HSM token, through the vendor's PKCS#11 module). With the last two
the KEK never leaves the HSM and is referenced by an id. The operator stores, per cluster and
KEK version, only what `create_kek` returns: material for the first, an identifier otherwise.

Calls are synchronous (PyKMIP and PKCS#11 are); the operator runs them in threads, so every
provider must be thread-safe.
"""

from __future__ import annotations

from typing import Protocol


class KeyProviderError(Exception):
    """The key manager cannot be used (unreachable, refused, misconfigured); the message is for
    humans and carries no secret."""


class KekNotFound(KeyProviderError):
    """The key manager has no such KEK: destroyed (crypto-shredded), or made by another key
    manager. Unlike other KeyProviderErrors, retrying does not help."""


class WrongKey(Exception):
    """The key does not open this wrapped key: another key, another context, or tampering."""


class KeyProvider(Protocol):
    name: str

    def create_kek(self, label: str) -> str:
        """Create a new AES-256 key-encryption key; return its reference."""
        ...

    def wrap(self, kek_ref: str, plaintext: bytes, context: bytes) -> bytes:
        """Encrypt a data key under the KEK, bound to `context` (associated data)."""
        ...

    def unwrap(self, kek_ref: str, wrapped: bytes, context: bytes) -> bytes:
        """Decrypt a wrapped data key; raises WrongKey when it does not open."""
        ...

    def destroy_kek(self, kek_ref: str) -> None:
        """Destroy the KEK: every data key it wraps becomes unreadable."""
        ...
