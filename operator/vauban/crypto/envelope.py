"""Envelope encryption of keys: a key-encryption key wraps another key with AES-256-GCM.

The operator wraps each database's data key (DEK) with a key-encryption key (KEK); the backup
agent wraps each backup's own key with the DEK. The *context* is the associated data: it binds
a wrapped key to where it belongs (a database, a backup location), so a wrapped key moved
elsewhere no longer opens, even with the right key.

Wrapped format, version 1: ``0x01 || nonce (12 random bytes) || ciphertext || tag (16)``.
Random nonces are safe here: a KEK wraps far fewer than the 2^32 keys after which GCM's
random-nonce collision risk would matter.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_VERSION = b"\x01"


class WrongKey(Exception):
    """The key-encryption key does not open this wrapped key (or the context differs)."""

    def __init__(
        self,
        message: str = "the key does not open this backup: wrong or rotated-away data key",
    ) -> None:
        super().__init__(message)


def generate_key() -> bytes:
    """A fresh random 256-bit key from the operating system's CSPRNG."""
    return os.urandom(KEY_BYTES)


def check_key(key: bytes, what: str = "key") -> None:
    """Raise ValueError unless `key` is a 256-bit key. The message never shows the key."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"the {what} must be {KEY_BYTES} bytes, not {len(key)}")


def wrap_key(kek: bytes, key: bytes, context: bytes) -> bytes:
    """`key` encrypted and authenticated under `kek`, bound to `context`."""
    check_key(kek, "key-encryption key")
    check_key(key)
    nonce = os.urandom(NONCE_BYTES)
    return _VERSION + nonce + AESGCM(kek).encrypt(nonce, key, _VERSION + context)


def unwrap_key(kek: bytes, wrapped: bytes, context: bytes) -> bytes:
    """The key `wrap_key(kek, key, context)` wrapped; WrongKey for any other kek, context or
    a wrapped key that was altered."""
    check_key(kek, "key-encryption key")
    if len(wrapped) != 1 + NONCE_BYTES + KEY_BYTES + TAG_BYTES or wrapped[:1] != _VERSION:
        # A truncated or foreign value is indistinguishable from tampering for the caller.
        raise WrongKey()
    nonce, sealed = wrapped[1 : 1 + NONCE_BYTES], wrapped[1 + NONCE_BYTES :]
    try:
        return AESGCM(kek).decrypt(nonce, sealed, _VERSION + context)
    except InvalidTag:
        raise WrongKey() from None
