"""The `pkcs11` key provider: KEKs are secret-key objects of a PKCS#11 token (an HSM, a cloud
HSM service, SoftHSM2 in tests) and never leave it.

PKCS#11 (OASIS "Cryptoki") is the C interface HSM vendors ship as a shared library (the
"module"); Vauban drives it through `python-pkcs11` and lets the token do the cryptography:

- `create_kek`: C_GenerateKey of an AES-256 key object on the token (CKA_TOKEN), private,
  sensitive and never extractable (CKA_SENSITIVE, CKA_EXTRACTABLE false), neither modifiable
  nor copyable, allowed to encrypt and decrypt only (no wrap, unwrap, sign, verify, derive).
  Its CKA_LABEL is the label the operator gives (`vauban-kek-<cluster uid>-v<n>`, one per
  version); its CKA_ID is 16 random bytes, and the reference returned is that id in
  hexadecimal: unique on the token even if a label were reused, and no key material. The
  key's attributes are read back, and a token that ignored the template is refused.
- `wrap`: C_Encrypt with CKM_AES_GCM under the KEK: a 12-byte IV from the token's random
  generator (C_GenerateRandom), the context as GCM's additional authenticated data, a
  128-bit tag. The IV comes from the token because its generator is the one the HSM's
  certification covers, and because GCM's one hard rule — never the same IV twice under a
  key — then does not depend on the operator's host; a random 96-bit IV is safe for far more
  wraps than a KEK version ever makes (one per data key per rotation).
- `unwrap`: C_Decrypt with the same parameters; the token checks the tag, and another
  context, another KEK or any altered byte fails it: `WrongKey`.
- `destroy_kek`: C_DestroyObject (crypto-shredding). Afterwards the key cannot be found and
  `wrap`/`unwrap` raise `KekNotFound`; destroying a key that is already gone is not an error.

Wrapped format, version 1 (every length is the next field's size)::

    0x01 || u16 len || KEK reference (ASCII hex) || u8 len || IV (12) || u8 len || tag (16)
         || ciphertext (32)

The additional data given to the token is ``"vauban-pkcs11-wrap\\0" || 0x01 || u16 len ||
KEK reference || context``: the header is self-delimiting, so no two (KEK, context) pairs give
the same bytes, and the KEK recorded in the blob cannot be swapped. The recorded KEK lets
`unwrap` refuse a key wrapped under another KEK without asking the token. The tag length is
checked here (exactly 16 bytes): SoftHSM2, like other tokens, verifies whatever tag length it
is told, so a tag truncated to 4 bytes would be checked on 32 bits only.

Threads and sessions: **a lock, and a session per call.** The operator calls providers from
several threads (`asyncio.to_thread`). python-pkcs11 initialises a module with
C_Initialize(NULL), by which PKCS#11 lets the module assume it is never called from two
threads at once (SoftHSM2 then turns its own locks off); a PKCS#11 session is not thread-safe
either, and the login is shared by all the sessions of a process, so one call's logout would
end another's. Every call into a module therefore holds one lock per module, shared by every
provider of the process, and runs in its own session: open, log in, operate, log out, close.
(Without the lock, eight threads crash SoftHSM2 within a few hundred calls.) Calls are rare —
a data key per database, an unwrap per backup, restore or rotation, a few milliseconds each on
SoftHSM2 — and a session per call is never stale after an HSM restart. After a failed login,
or a failure saying the token or session is gone, the module is finalised and initialised
again (`_reset`), which closes what python-pkcs11 left open and makes it look for its tokens
afresh.

The PIN is read from `pin_file` (a mounted Secret) at each login, so a changed Secret is
picked up without a restart; it is never logged nor put in a message. A PIN the token refused
is not tried again until the file changes: repeated wrong PINs lock a token's user, an outage
only its security officer can end.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import GCMParams

from vauban.kms import KekNotFound, KeyProviderError, WrongKey

DATA_KEY_BYTES = 32
TAG_BYTES = 16
IV_BYTES = 12
KEK_ID_BYTES = 16
_FORMAT = b"\x01"
_AAD_LABEL = b"vauban-pkcs11-wrap\x00"
# The tag check failing, as tokens report it: the standard CKR_ENCRYPTED_DATA_INVALID,
# CKR_AEAD_DECRYPT_FAILED (PKCS#11 3.0, 0x35: python-pkcs11 does not name it), and SoftHSM2's
# CKR_GENERAL_ERROR. On C_Decrypt with a key just found on the token and parameters of the
# right sizes, that leaves a wrong key, context or tag.
_TAG_FAILURES = (p11.EncryptedDataInvalid, p11.GeneralError)
_AEAD_DECRYPT_FAILED = "Unmapped error code 0x35"
# Failures after which the module is re-initialised before the next call (see `_reset`).
_STALE = (
    p11.TokenNotPresent,
    p11.TokenNotRecognised,
    p11.DeviceRemoved,
    p11.DeviceError,
    p11.SessionClosed,
    p11.SessionHandleInvalid,
    p11.UserNotLoggedIn,
)

# The template of a KEK; CKA_ID and CKA_LABEL are added per key.
KEK_TEMPLATE: dict[Attribute, Any] = {
    Attribute.CLASS: ObjectClass.SECRET_KEY,
    Attribute.KEY_TYPE: KeyType.AES,
    Attribute.VALUE_LEN: 32,
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.MODIFIABLE: False,
    Attribute.COPYABLE: False,
    Attribute.ENCRYPT: True,
    Attribute.DECRYPT: True,
    Attribute.WRAP: False,
    Attribute.UNWRAP: False,
    Attribute.SIGN: False,
    Attribute.VERIFY: False,
    Attribute.DERIVE: False,
}
# What must read back from a new KEK, whatever the token made of the template.
_REQUIRED = {
    Attribute.TOKEN: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.ENCRYPT: True,
    Attribute.DECRYPT: True,
}

_modules_guard = threading.Lock()
_module_locks: dict[str, threading.Lock] = {}


def _load(module: str) -> tuple[Any, threading.Lock]:
    """The loaded, initialised module and its lock; both shared by the whole process (a
    module is initialised once per process)."""
    with _modules_guard:
        lock = _module_locks.setdefault(module, threading.Lock())
        with lock:
            return pkcs11.lib(module), lock


class Pkcs11Provider:
    """KEKs on the token labelled `token_label` of the PKCS#11 `module`, logged in as its
    user with the PIN in `pin_file`."""

    name = "pkcs11"

    def __init__(self, module: str | Path, token_label: str, pin_file: str | Path) -> None:
        """Loads and initialises the module, and reads the PIN file once; raises
        KeyProviderError when either cannot be. The token itself is first used by a call:
        an HSM that is away at start-up is reported then, per cluster."""
        if not token_label:
            raise KeyProviderError("a PKCS#11 token label is needed")
        self.module = os.path.realpath(module)
        self.token_label = token_label
        self.pin_file = Path(pin_file)
        self._read_pin()
        try:
            self._lib, self._lock = _load(self.module)
        except p11.PKCS11Error as e:
            raise KeyProviderError(f"cannot load the PKCS#11 module {module}: {e}") from e
        self._refused_pin: str | None = None

    @property
    def _where(self) -> str:
        return f"PKCS#11 token {self.token_label!r}"

    # -- the KeyProvider interface ---------------------------------------------------------

    def create_kek(self, label: str) -> str:
        kek_id = os.urandom(KEK_ID_BYTES)
        with self._session("create a KEK", None, rw=True) as session:
            key = session.generate_key(
                KeyType.AES, 256, id=kek_id, label=label, store=True, template=KEK_TEMPLATE
            )
            try:
                found = key.get_attributes(list(_REQUIRED))
            except p11.PKCS11Error:
                found = {}
            if any(found.get(a) != value for a, value in _REQUIRED.items()):
                with contextlib.suppress(p11.PKCS11Error):
                    key.destroy()
                raise KeyProviderError(
                    f"{self._where} did not make the KEK as asked (a token object, sensitive, "
                    "not extractable, encrypt and decrypt): refused, and the key destroyed"
                )
        return kek_id.hex()

    def wrap(self, kek_ref: str, plaintext: bytes, context: bytes) -> bytes:
        if len(plaintext) != DATA_KEY_BYTES:
            raise ValueError(f"a data key is {DATA_KEY_BYTES} bytes, not {len(plaintext)}")
        header = _header(kek_ref)
        with self._session("encrypt with the KEK", kek_ref) as session:
            key = self._kek(session, kek_ref)
            iv = session.generate_random(IV_BYTES * 8)
            if not isinstance(iv, bytes) or len(iv) != IV_BYTES:
                raise KeyProviderError(f"{self._where} returned no {IV_BYTES}-byte random IV")
            sealed = key.encrypt(
                plaintext,
                mechanism=Mechanism.AES_GCM,
                mechanism_param=GCMParams(iv, _AAD_LABEL + header + context, TAG_BYTES * 8),
            )
        # PKCS#11's GCM output is the ciphertext followed by the tag.
        if not isinstance(sealed, bytes) or len(sealed) != DATA_KEY_BYTES + TAG_BYTES:
            raise KeyProviderError(
                f"{self._where} returned {len(sealed) if isinstance(sealed, bytes) else 'no'} "
                f"bytes for AES-GCM; expected {DATA_KEY_BYTES} and a {TAG_BYTES}-byte tag"
            )
        ciphertext, tag = sealed[:DATA_KEY_BYTES], sealed[DATA_KEY_BYTES:]
        return header + bytes([IV_BYTES]) + iv + bytes([TAG_BYTES]) + tag + ciphertext

    def unwrap(self, kek_ref: str, wrapped: bytes, context: bytes) -> bytes:
        wrapped_under, iv, tag, ciphertext = _parse(wrapped)
        if wrapped_under != kek_ref:
            raise WrongKey(f"this data key was wrapped under KEK {wrapped_under}, not {kek_ref}")
        aad = _AAD_LABEL + _header(kek_ref) + context
        with self._session("decrypt with the KEK", kek_ref) as session:
            key = self._kek(session, kek_ref)
            try:
                plaintext = key.decrypt(
                    ciphertext + tag,
                    mechanism=Mechanism.AES_GCM,
                    mechanism_param=GCMParams(iv, aad, TAG_BYTES * 8),
                )
            except p11.PKCS11Error as e:
                if isinstance(e, _TAG_FAILURES) or str(e) == _AEAD_DECRYPT_FAILED:
                    raise WrongKey(
                        f"KEK {kek_ref} does not open this data key in this context "
                        "(another context, or altered data)"
                    ) from None
                raise
        if not isinstance(plaintext, bytes) or len(plaintext) != DATA_KEY_BYTES:
            raise KeyProviderError(f"{self._where} returned no {DATA_KEY_BYTES}-byte plaintext")
        return plaintext

    def destroy_kek(self, kek_ref: str) -> None:
        """Destroy the key object (every object with this id, should there be several). A KEK
        that is already gone is not an error: this is what a retried deletion sees."""
        kek_id = _kek_id(kek_ref)
        with self._session("destroy the KEK", kek_ref, rw=True) as session:
            for key in list(
                session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.ID: kek_id})
            ):
                key.destroy()

    # -- sessions --------------------------------------------------------------------------

    def _read_pin(self) -> str:
        try:
            pin = self.pin_file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as e:
            reason = getattr(e, "strerror", None) or type(e).__name__
            raise KeyProviderError(
                f"cannot read the PKCS#11 PIN file {self.pin_file}: {reason}"
            ) from None
        if not pin:
            raise KeyProviderError(f"the PKCS#11 PIN file {self.pin_file} is empty")
        return pin

    @contextlib.contextmanager
    def _session(self, what: str, kek_ref: str | None, *, rw: bool = False) -> Iterator[Any]:
        """A session logged in as the token's user, for one call, holding the module's lock.
        PKCS#11 errors, opening it or inside, become KeyProviderError (KekNotFound for a
        missing key); WrongKey and KeyProviderError raised inside pass through."""
        with self._lock:
            pin = self._read_pin()
            if self._refused_pin is not None and hmac.compare_digest(pin, self._refused_pin):
                raise KeyProviderError(
                    f"{self._where} refused the PIN in {self.pin_file} before; it is not tried "
                    "again (repeated wrong PINs lock the token): correct the file, or the "
                    "Secret it is mounted from"
                )
            try:
                if not self._lib.initialized:
                    self._lib.initialize()
                token = self._lib.get_token(token_label=self.token_label)
                session = token.open(rw=rw, user_pin=pin)
            except p11.PinIncorrect:
                self._refused_pin = pin
                self._reset()
                raise KeyProviderError(
                    f"{self._where} refused the PIN in {self.pin_file} (wrong PIN); it is not "
                    "tried again until the file changes (repeated wrong PINs lock the token)"
                ) from None
            except p11.PKCS11Error as e:
                self._reset()
                raise self._failure(e, "log in", None) from e
            self._refused_pin = None
            try:
                yield session
            except (KeyProviderError, WrongKey):
                raise
            except p11.PKCS11Error as e:
                if isinstance(e, _STALE):
                    self._reset()
                raise self._failure(e, what, kek_ref) from e
            finally:
                with contextlib.suppress(p11.PKCS11Error):
                    session.close()

    def _reset(self) -> None:
        """Finalise and initialise the module again (the lock held). That closes every session
        of this process on it: python-pkcs11 leaves open the session of a failed login, and
        a token has few sessions to give. It also makes the module look for its tokens afresh
        (an HSM restarted, a network HSM reconnected, a token plugged in). Only after a
        failure, and harmless then: no session outlives a call."""
        with contextlib.suppress(p11.PKCS11Error):
            self._lib.reinitialize()

    def _kek(self, session: Any, kek_ref: str) -> Any:
        try:
            return session.get_key(
                object_class=ObjectClass.SECRET_KEY, key_type=KeyType.AES, id=_kek_id(kek_ref)
            )
        except p11.NoSuchKey:
            raise KekNotFound(
                f"{self._where} has no KEK {kek_ref}: destroyed, or created on another token"
            ) from None
        except p11.MultipleObjectsReturned:
            raise KeyProviderError(
                f"{self._where} holds several keys with the id of KEK {kek_ref}: refusing to "
                "guess which one it is"
            ) from None

    def _failure(self, e: p11.PKCS11Error, what: str, kek_ref: str | None) -> KeyProviderError:
        """A PKCS#11 failure in words that say where to look. python-pkcs11's errors carry
        the return code's name and, at most, the token label or the module's path: never a
        PIN, which is not given to them."""
        where = self._where
        if isinstance(e, p11.NoSuchToken):
            return KeyProviderError(
                f"{where} is not present in the PKCS#11 module {self.module}: the HSM is not "
                "connected or not configured for this host, or the label is wrong"
            )
        if isinstance(e, p11.MultipleTokensReturned):
            return KeyProviderError(
                f"several tokens of the PKCS#11 module {self.module} are labelled "
                f"{self.token_label!r}: give the operator's token a label of its own"
            )
        if isinstance(e, p11.PinLocked):
            return KeyProviderError(
                f"{where} has locked its user PIN (too many wrong PINs): its security officer "
                "must unlock it"
            )
        if isinstance(e, p11.PinExpired | p11.UserPinNotInitialized):
            return KeyProviderError(
                f"{where} needs its user PIN set by its security officer ({type(e).__name__})"
            )
        if isinstance(e, p11.TokenNotPresent | p11.DeviceRemoved | p11.TokenNotRecognised):
            return KeyProviderError(f"{where} is unavailable ({type(e).__name__})")
        detail = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        key = f" {kek_ref}" if kek_ref else ""
        return KeyProviderError(f"{where}: could not {what}{key}: {detail}")


# -- the wrapped format --------------------------------------------------------------------


def _kek_id(kek_ref: str) -> bytes:
    try:
        kek_id = bytes.fromhex(kek_ref)
    except ValueError:
        kek_id = b""
    if len(kek_id) != KEK_ID_BYTES or kek_ref != kek_id.hex():
        raise KeyProviderError(f"{kek_ref!r} is not a KEK reference of the pkcs11 provider")
    return kek_id


def _header(kek_ref: str) -> bytes:
    ref = _kek_id(kek_ref).hex().encode("ascii")
    return _FORMAT + struct.pack(">H", len(ref)) + ref


def _parse(wrapped: bytes) -> tuple[str, bytes, bytes, bytes]:
    """(KEK reference, IV, tag, ciphertext); WrongKey for anything that is not format 1 with
    a 12-byte IV and a 16-byte tag: a foreign or truncated value is indistinguishable from
    tampering."""
    not_ours = WrongKey("not a data key wrapped by the pkcs11 provider (or altered)")
    try:
        if wrapped[:1] != _FORMAT:
            raise not_ours
        (ref_len,) = struct.unpack_from(">H", wrapped, 1)
        at = 3
        ref_bytes, at = wrapped[at : at + ref_len], at + ref_len
        iv_len = wrapped[at]
        iv, at = wrapped[at + 1 : at + 1 + iv_len], at + 1 + iv_len
        tag_len = wrapped[at]
        tag, ciphertext = wrapped[at + 1 : at + 1 + tag_len], wrapped[at + 1 + tag_len :]
        ref = ref_bytes.decode("ascii")
    except (struct.error, IndexError, UnicodeDecodeError):
        raise not_ours from None
    if (
        len(ref_bytes) != ref_len
        or iv_len != IV_BYTES
        or len(iv) != IV_BYTES
        or tag_len != TAG_BYTES
        or len(tag) != TAG_BYTES
        or len(ciphertext) != DATA_KEY_BYTES
    ):
        raise not_ours
    return ref, iv, tag, ciphertext
