"""Sealing a secret to the platform's recovery key: X25519, HKDF-SHA256, AES-256-GCM.

The platform's security officers make one X25519 key pair (`vauban recovery-key generate`),
keep the private half offline and give the public half to the operator at install. The
operator seals each key-encryption key of the `kubernetes-secret` provider to it; only the
private half opens what was sealed, so the bucket holding the sealed keys gives a thief
nothing.

Sealed format, version 1 (``0x01 || ephemeral public key (32) || nonce (12) || ciphertext ||
tag (16)``): a fresh ephemeral X25519 key per sealing; the AES key is HKDF-SHA256 of the shared
secret, salted with the ephemeral and the recipient's public keys, with info
``vauban/recovery/1``; the associated data is the caller's context (what the secret is, for
which cluster and version), so a sealed key copied to another name no longer opens.

Keys are written as text: ``vauban-recovery-public:<base64 of 32 bytes>`` and
``vauban-recovery-private:<base64 of 32 bytes>``. The prefixes keep one from being pasted
where the other belongs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PUBLIC_PREFIX = "vauban-recovery-public:"
PRIVATE_PREFIX = "vauban-recovery-private:"
_VERSION = b"\x01"
_KEY_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16
_INFO = b"vauban/recovery/1"


class InvalidRecoveryKey(ValueError):
    """The text is not a recovery key of the expected kind; the message never shows it."""


class NotSealedToThisKey(Exception):
    """The sealed secret does not open with this private key (another recovery key, another
    context, or tampering)."""


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _decode(text: str, prefix: str, what: str) -> bytes:
    text = text.strip()
    if not text.startswith(prefix):
        raise InvalidRecoveryKey(f"a {what} starts with {prefix!r}")
    try:
        raw = base64.b64decode(text.removeprefix(prefix), validate=True)
    except binascii.Error:
        raise InvalidRecoveryKey(f"the {what} is not valid base64") from None
    if len(raw) != _KEY_BYTES:
        raise InvalidRecoveryKey(f"a {what} holds {_KEY_BYTES} bytes, not {len(raw)}")
    return raw


def generate() -> tuple[str, str]:
    """A new recovery key pair, as text: (private, public)."""
    private = X25519PrivateKey.generate()
    raw = private.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return (
        PRIVATE_PREFIX + base64.b64encode(raw).decode("ascii"),
        PUBLIC_PREFIX + base64.b64encode(_raw(private.public_key())).decode("ascii"),
    )


def public_key(text: str) -> X25519PublicKey:
    return X25519PublicKey.from_public_bytes(_decode(text, PUBLIC_PREFIX, "recovery public key"))


def private_key(text: str) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(
        _decode(text, PRIVATE_PREFIX, "recovery private key")
    )


def fingerprint(public: X25519PublicKey) -> str:
    """Names a recovery key without revealing anything: the first 16 bytes of the SHA-256 of
    its public half, in hex. Recorded beside each sealed key, so the officers know which
    private key to fetch."""
    return hashlib.sha256(_raw(public)).hexdigest()[:32]


def _aes_key(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=_KEY_BYTES, salt=ephemeral + recipient, info=_INFO
    ).derive(shared)


def seal(recipient: X25519PublicKey, secret: bytes, context: bytes) -> bytes:
    ephemeral = X25519PrivateKey.generate()
    ephemeral_raw = _raw(ephemeral.public_key())
    key = _aes_key(ephemeral.exchange(recipient), ephemeral_raw, _raw(recipient))
    nonce = os.urandom(_NONCE_BYTES)
    return _VERSION + ephemeral_raw + nonce + AESGCM(key).encrypt(nonce, secret, _VERSION + context)


def open_sealed(private: X25519PrivateKey, sealed: bytes, context: bytes) -> bytes:
    """What `seal` sealed to this key's public half with `context`; NotSealedToThisKey
    otherwise."""
    header = 1 + _KEY_BYTES + _NONCE_BYTES
    if len(sealed) < header + _TAG_BYTES or sealed[:1] != _VERSION:
        raise NotSealedToThisKey("not a sealed secret of format 1")
    ephemeral_raw = sealed[1 : 1 + _KEY_BYTES]
    nonce, ciphertext = sealed[1 + _KEY_BYTES : header], sealed[header:]
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(ephemeral_raw))
        key = _aes_key(shared, ephemeral_raw, _raw(private.public_key()))
        return AESGCM(key).decrypt(nonce, ciphertext, _VERSION + context)
    except (InvalidTag, ValueError):
        # ValueError: an all-zero shared secret (a low-order ephemeral point), i.e. forged.
        raise NotSealedToThisKey(
            "the recovery key does not open it: sealed to another recovery key, or altered"
        ) from None
