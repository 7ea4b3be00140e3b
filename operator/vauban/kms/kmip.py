"""The `kmip` key provider: KEKs live in a KMIP key manager and never leave it.

KMIP (OASIS) is what the HSMs and key managers of sovereign providers speak. Vauban uses
PyKMIP's client (`ProxyKmipClient`) over mutual TLS, and lets the key manager do the
cryptography:

- `create_kek`: Create an AES-256 symmetric key (usage Encrypt|Decrypt, Name = the label),
  then Activate it. The reference returned is the key's Unique Identifier: no key material
  ever reaches Vauban.
- `wrap`: the server runs Encrypt with AES-256-GCM under the KEK, the context as GCM's
  additional authenticated data (KMIP 1.4's "Authenticated Encryption Additional Data"), a
  16-byte tag, and an IV the server generates (FIPS-validated modules require that).
- `unwrap`: the server runs Decrypt with the same parameters and checks the tag; another
  context, another KEK or any altered byte fails the check, which is reported as `WrongKey`.
- `destroy_kek`: Revoke (cessation of operation) if the key is active, then Destroy.

PyKMIP's `ProxyKmipClient.encrypt/decrypt` cannot send additional data nor return the tag
(its KMIP 1.2-era API predates them), although PyKMIP's messages and server support both from
KMIP 1.4. Encrypt and Decrypt are therefore sent as KMIP 1.4 payloads through an internal
class of PyKMIP. That, and the TLS socket below, are PyKMIP's internals: they are used only
in `vauban.kms.pykmip_internals`, which says why and what breaks if PyKMIP changes. PyKMIP is
pinned to 0.11.0, its last release; it is unmaintained.

Wrapped format, version 1 (every length is the next field's size)::

    0x01 || u16 len || KEK id (UTF-8) || u8 len || IV || u8 len || tag (16) || ciphertext

The additional data given to the server is ``"vauban-kmip-wrap\\0" || 0x01 || u16 len ||
KEK id || context``: the header is self-delimiting, so no two (KEK id, context) pairs give the
same bytes, and the KEK id recorded in the blob cannot be swapped. The KEK id in the blob
also lets `unwrap` refuse a key wrapped under another KEK without asking the server.

Why a tag of exactly 16 bytes is checked here: PyKMIP's server (like some others) accepts
any tag length it is given on Decrypt, so a blob whose tag was truncated to 4 bytes would be
checked against 32 bits only. `unwrap` refuses any other length before the server sees it.

One TLS connection per call: the operator calls rarely (a data key per database, an unwrap per
backup or restore), the calls come from several threads (`asyncio.to_thread`), and a
connection per call never finds itself stale after a key manager restart. Every socket
operation (connect, handshake, each read) times out after `timeout` seconds.

TLS is configured here, not by PyKMIP: PyKMIP's client verifies the chain but not the
server's name and allows TLS 1.0. Here TLS ≥ 1.2, the chain to `ca_file`, and the server's
name (`server_name`, by default `host`) are all checked.
"""

from __future__ import annotations

import contextlib
import ssl
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kmip import enums  # type: ignore[import-untyped]
from kmip.core import exceptions as kmip_core_exceptions  # type: ignore[import-untyped]
from kmip.pie import exceptions as kmip_pie_exceptions  # type: ignore[import-untyped]

from vauban.kms import KekNotFound, KeyProviderError, WrongKey, pykmip_internals

__all__ = ["KekNotFound", "KmipProvider"]

DATA_KEY_BYTES = 32
TAG_BYTES = 16
_FORMAT = b"\x01"
_AAD_LABEL = b"vauban-kmip-wrap\x00"
# Failures a server reports when the GCM tag does not verify: KMIP's own reason, and the
# catch-all PyKMIP's server answers for any exception of its crypto library (InvalidTag
# included). On Decrypt of an active key that exists, with parameters the server just accepted
# on Encrypt, that leaves a wrong key, context or tag.
_TAG_FAILURES = frozenset(
    {enums.ResultReason.CRYPTOGRAPHIC_FAILURE, enums.ResultReason.GENERAL_FAILURE}
)
_KmipFailure = (kmip_pie_exceptions.KmipOperationFailure, kmip_core_exceptions.KmipError)


class KmipProvider:
    """KEKs in a KMIP key manager, reached at `host:port` with a client certificate."""

    name = "kmip"

    def __init__(
        self,
        host: str,
        port: int,
        cert_file: str | Path,
        key_file: str | Path,
        ca_file: str | Path,
        *,
        server_name: str | None = None,
        timeout: int = 5,
    ) -> None:
        """`server_name` is the name the server's certificate must carry (default `host`);
        `timeout` is in whole seconds (PyKMIP's unit). Raises KeyProviderError when the
        certificates cannot be loaded."""
        if timeout < 1:
            raise ValueError("timeout must be at least one second")
        self.host, self.port, self.timeout = host, port, timeout
        self.server_name = server_name or host
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(str(cert_file), str(key_file))
        except (OSError, ssl.SSLError) as e:
            raise KeyProviderError(f"cannot load the KMIP client certificate or CA: {e}") from e
        self._context = context

    @property
    def _where(self) -> str:
        return f"KMIP server {self.host}:{self.port}"

    # -- the KeyProvider interface ---------------------------------------------------------

    def create_kek(self, label: str) -> str:
        with self._client() as client:
            uid = _call(
                "create a KEK",
                None,
                lambda: client.create(
                    enums.CryptographicAlgorithm.AES,
                    256,
                    name=label,
                    cryptographic_usage_mask=[
                        enums.CryptographicUsageMask.ENCRYPT,
                        enums.CryptographicUsageMask.DECRYPT,
                    ],
                ),
            )
            if not isinstance(uid, str) or not uid:
                raise KeyProviderError(f"{self._where} returned no identifier for a new key")
            try:
                _call("activate the KEK", uid, lambda: client.activate(uid))
            except KeyProviderError:
                # A pre-active key is of no use: try not to leave it behind.
                with contextlib.suppress(KeyProviderError):
                    _call("destroy the KEK", uid, lambda: client.destroy(uid))
                raise
            return uid

    def wrap(self, kek_ref: str, plaintext: bytes, context: bytes) -> bytes:
        if len(plaintext) != DATA_KEY_BYTES:
            raise ValueError(f"a data key is {DATA_KEY_BYTES} bytes, not {len(plaintext)}")
        header = _header(kek_ref)
        with self._client() as client:
            sealed = _call(
                "encrypt with the KEK",
                kek_ref,
                lambda: pykmip_internals.encrypt_aead(
                    client, kek_ref, plaintext, _AAD_LABEL + header + context, TAG_BYTES
                ),
            )
        ciphertext, iv, tag = sealed.ciphertext, sealed.iv, sealed.tag
        if not (isinstance(ciphertext, bytes) and isinstance(iv, bytes) and isinstance(tag, bytes)):
            raise KeyProviderError(
                f"{self._where} did not return ciphertext, IV and tag for AES-GCM"
            )
        if len(tag) != TAG_BYTES or not 12 <= len(iv) <= 255:
            raise KeyProviderError(
                f"{self._where} returned a {len(tag)}-byte tag and a {len(iv)}-byte IV; "
                f"expected {TAG_BYTES} and 12 or more"
            )
        return header + bytes([len(iv)]) + iv + bytes([len(tag)]) + tag + ciphertext

    def unwrap(self, kek_ref: str, wrapped: bytes, context: bytes) -> bytes:
        wrapped_under, iv, tag, ciphertext = _parse(wrapped)
        if wrapped_under != kek_ref:
            raise WrongKey(f"this data key was wrapped under KEK {wrapped_under}, not {kek_ref}")
        aad = _AAD_LABEL + _header(kek_ref) + context
        with self._client() as client:
            try:
                plaintext = pykmip_internals.decrypt_aead(client, kek_ref, ciphertext, iv, tag, aad)
            except _KmipFailure as e:
                if e.reason in _TAG_FAILURES:
                    raise WrongKey(
                        f"KEK {kek_ref} does not open this data key in this context "
                        "(another context, or altered data)"
                    ) from None
                raise _failure(e, "decrypt with the KEK", kek_ref) from None
        if not isinstance(plaintext, bytes):
            raise KeyProviderError(f"{self._where} returned no plaintext on Decrypt")
        return plaintext

    def destroy_kek(self, kek_ref: str) -> None:
        """Revoke (if active) and destroy. A KEK that is already gone is not an error: this is
        what a retried deletion sees."""
        with self._client() as client:
            try:
                state = _state(client, kek_ref)
                if state in (enums.State.DESTROYED, enums.State.DESTROYED_COMPROMISED):
                    return
                if state == enums.State.ACTIVE:
                    _call(
                        "revoke the KEK",
                        kek_ref,
                        lambda: client.revoke(
                            enums.RevocationReasonCode.CESSATION_OF_OPERATION,
                            kek_ref,
                            revocation_message="deleted by Vauban (crypto-shredding)",
                        ),
                    )
                _call("destroy the KEK", kek_ref, lambda: client.destroy(kek_ref))
            except KekNotFound:
                return

    # -- connection ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _client(self) -> Iterator[Any]:
        """An open ProxyKmipClient for one call. Network and protocol errors, during the
        connection or the exchange, become KeyProviderError; WrongKey and KeyProviderError
        raised inside pass through."""
        client = pykmip_internals.connect(
            self.host, self.port, self.timeout, self._context, self.server_name
        )
        try:
            client.open()
        except (OSError, EOFError) as e:
            raise KeyProviderError(f"{self._where}: {_describe(e)}") from e
        try:
            yield client
        except (KeyProviderError, WrongKey):
            raise
        except (OSError, EOFError) as e:
            raise KeyProviderError(f"{self._where}: {_describe(e)} (mid-exchange)") from e
        except Exception as e:
            # PyKMIP's own errors (a message it cannot decode, say): their text could quote the
            # message, so only the type is told.
            raise KeyProviderError(
                f"the exchange with {self._where} failed in PyKMIP ({type(e).__name__})"
            ) from e
        finally:
            with contextlib.suppress(Exception):
                client.close()


# -- helpers -------------------------------------------------------------------------------


def _header(kek_ref: str) -> bytes:
    uid = kek_ref.encode("utf-8")
    if not uid or len(uid) > 0xFFFF:
        raise ValueError("a KMIP key identifier is 1 to 65535 bytes")
    return _FORMAT + struct.pack(">H", len(uid)) + uid


def _parse(wrapped: bytes) -> tuple[str, bytes, bytes, bytes]:
    """(KEK id, IV, tag, ciphertext); WrongKey for anything that is not format 1 with a
    16-byte tag: a foreign or truncated value is indistinguishable from tampering."""
    not_ours = WrongKey("not a data key wrapped by the kmip provider (or altered)")
    try:
        if wrapped[:1] != _FORMAT:
            raise not_ours
        (uid_len,) = struct.unpack_from(">H", wrapped, 1)
        at = 3
        uid_bytes, at = wrapped[at : at + uid_len], at + uid_len
        iv_len = wrapped[at]
        iv, at = wrapped[at + 1 : at + 1 + iv_len], at + 1 + iv_len
        tag_len = wrapped[at]
        tag, ciphertext = wrapped[at + 1 : at + 1 + tag_len], wrapped[at + 1 + tag_len :]
        uid = uid_bytes.decode("utf-8")
    except (struct.error, IndexError, UnicodeDecodeError):
        raise not_ours from None
    if (
        len(uid_bytes) != uid_len
        or len(iv) != iv_len
        or iv_len < 12
        or tag_len != TAG_BYTES
        or len(tag) != TAG_BYTES
        or len(ciphertext) != DATA_KEY_BYTES
    ):
        raise not_ours
    return uid, iv, tag, ciphertext


def _state(client: Any, kek_ref: str) -> Any:
    _, attributes = _call(
        "read the KEK's state", kek_ref, lambda: client.get_attributes(kek_ref, ["State"])
    )
    for attribute in attributes:
        if attribute.attribute_name.value == "State":
            return attribute.attribute_value.value
    return None


def _call(what: str, kek_ref: str | None, operation: Any) -> Any:
    try:
        return operation()
    except _KmipFailure as e:
        raise _failure(e, what, kek_ref) from None


def _failure(e: Exception, what: str, kek_ref: str | None) -> KeyProviderError:
    """A KMIP failure as a KeyProviderError that says what was refused and why. The server's
    message is kept: a KMIP server's messages describe the request, never key material."""
    reason = getattr(e, "reason", None)
    message = getattr(e, "message", None) or str(e)
    if reason == enums.ResultReason.ITEM_NOT_FOUND:
        return KekNotFound(
            f"the KMIP server has no KEK {kek_ref}: destroyed, or created on another server"
        )
    reason_name = getattr(reason, "name", str(reason))
    key = f" {kek_ref}" if kek_ref else ""
    return KeyProviderError(f"the KMIP server refused to {what}{key}: {reason_name}: {message}")


def _describe(e: BaseException) -> str:
    """What went wrong with the connection, in words that say where to look."""
    if isinstance(e, ssl.SSLError):
        # e.g. CERTIFICATE_VERIFY_FAILED with OpenSSL's explanation: a trust problem (CA,
        # name, expiry), not a network one.
        detail = getattr(e, "verify_message", None)
        return f"TLS failed: {e.reason or e}" + (f": {detail}" if detail else "")
    if isinstance(e, TimeoutError):
        return "unreachable: timed out"
    if isinstance(e, EOFError):
        return "the connection was closed"
    return f"unreachable: {getattr(e, 'strerror', None) or e or type(e).__name__}"
