"""The manifest of a backup: what it holds and how to open it, stored beside its data.

A backup lives under a *location* (a key prefix chosen by the operator):
`<location>/data` is the encrypted stream, `<location>/manifest.json` this document, written
last: a backup without its manifest does not exist.

Who can trust what. Whoever can write the bucket can write a manifest. Format 2 carries a MAC
over every field (HMAC-SHA256, keyed by HKDF from the database's data key and the backup's
id), so only a holder of the data key can write one that `authenticate` accepts. Format 1
bound only the wrapped key to the location, the data key's id and the backup's id; its other
fields (tables, dates, object lock) are read, but never trusted for a decision.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Annotated, Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    field_validator,
)
from pydantic.alias_generators import to_camel

from vauban.crypto import envelope
from vauban.timefmt import parse_rfc3339, rfc3339_exact

DATA = "data"
MANIFEST = "manifest.json"
FORMAT_VERSION: Literal[2] = 2
MAC_BYTES = 32


class ManifestNotAuthentic(Exception):
    """The manifest was not written by a holder of the data key, or was changed since."""


def _utc(value: object) -> datetime:
    if isinstance(value, str):
        value = parse_rfc3339(value)
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError("a timestamp must be RFC 3339 with a time zone")
    # Kept to the microsecond: `rfc3339_exact` writes back exactly what was read (a manifest
    # of a whole second, as every one written before, keeps its bytes and so its MAC).
    return value.astimezone(UTC)


def _base64(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise ValueError("expected base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as e:
        raise ValueError("not valid base64") from e


Timestamp = Annotated[
    datetime, PlainValidator(_utc), PlainSerializer(rfc3339_exact, return_type=str)
]
"""A UTC instant in RFC 3339 (`2026-01-31T02:00:00.250000Z`, or `…:00Z` on a whole second)."""

Base64Bytes = Annotated[
    bytes,
    PlainValidator(_base64),
    PlainSerializer(lambda v: base64.b64encode(v).decode("ascii"), return_type=str),
]


class _Model(BaseModel):
    # Unknown fields are ignored, not refused: a later agent may add information without
    # making older operators unable to list its backups. Incompatible changes bump
    # formatVersion instead.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore"
    )


class ObjectLock(_Model):
    mode: Literal["COMPLIANCE", "GOVERNANCE"]
    retain_until: Timestamp


class Manifest(_Model):
    format_version: Literal[1, 2] = FORMAT_VERSION
    backup_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    """Random, 128 bits in hex; also in the encrypted stream's authenticated header."""

    location: str
    database: str
    server_version: str
    started_at: Timestamp
    finished_at: Timestamp
    dump_bytes: int = Field(ge=0)
    """Bytes pg_dump wrote (custom format, uncompressed)."""

    stored_bytes: int = Field(ge=0)
    """Bytes of the stored (compressed, encrypted) object."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Of the stored object: checked before anything is decrypted."""

    chunk_size: int = Field(gt=0)
    cipher: Literal["AES-256-GCM"] = "AES-256-GCM"
    compression: Literal["zstd"] = "zstd"
    data_key_id: str
    wrapped_key: Base64Bytes
    """The backup's own key, wrapped by the database's data key (see `key_context`)."""

    tables: dict[str, int] = Field(default_factory=dict)
    """Row count per `schema.table`, read in the snapshot pg_dump dumped."""

    object_lock: ObjectLock | None = None

    namespace: str | None = None
    """Format 2: the namespace of the ManagedDatabase backed up (restores stay in it)."""

    managed_database: str | None = None
    """Format 2: that ManagedDatabase's name."""

    database_uid: str | None = None
    """Format 2: its uid, which its data key is bound to."""

    mac: Base64Bytes | None = None
    """Format 2: HMAC-SHA256 of every other field (see `authenticate`)."""

    @field_validator("location")
    @classmethod
    def _valid_location(cls, value: str) -> str:
        return normalize_location(value)

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, indent=2).encode("utf-8") + b"\n"

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        return cls.model_validate_json(data)

    def key_context(self) -> bytes:
        return key_context(self.location, self.data_key_id, self.backup_id)

    def _mac_input(self) -> bytes:
        # Every field this code reads, by name, in a canonical JSON: a field changed, added
        # to this model later, or moved changes the bytes. Fields this code does not know
        # are ignored when read, so they cannot change a decision.
        fields = self.model_dump(mode="json", by_alias=True, exclude={"mac"})
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return b"vauban/manifest/2\0" + canonical.encode("utf-8")

    def _mac(self, data_key_material: bytes) -> bytes:
        envelope.check_key(data_key_material, "data key")
        key = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=None,
            info=b"vauban/manifest-mac/2:" + self.backup_id.encode("ascii"),
        ).derive(data_key_material)
        return hmac.new(key, self._mac_input(), hashlib.sha256).digest()

    def sealed(self, data_key_material: bytes) -> Manifest:
        """This manifest in format 2, with its MAC under `data_key_material`."""
        unsealed = self.model_copy(update={"format_version": FORMAT_VERSION, "mac": None})
        return unsealed.model_copy(update={"mac": unsealed._mac(data_key_material)})

    def authenticate(self, data_key_material: bytes) -> bool:
        """Prove the manifest was written with this data key: True when every field is
        authenticated (format 2), False when only the wrapped key, the location, the data
        key's id and the backup's id are (format 1). ManifestNotAuthentic otherwise."""
        if self.format_version == 1:
            try:
                envelope.unwrap_key(data_key_material, self.wrapped_key, self.key_context())
            except envelope.WrongKey:
                raise ManifestNotAuthentic(
                    f"the manifest at {self.location} does not open with this data key"
                ) from None
            return False
        if self.mac is None or not hmac.compare_digest(self.mac, self._mac(data_key_material)):
            raise ManifestNotAuthentic(
                f"the manifest at {self.location} fails its authentication: it was altered, "
                "or not written with this database's data key"
            )
        return True


def normalize_location(location: str) -> str:
    """A location without leading or trailing slashes; ValueError for one that could name
    another backup's objects or is not a plain key prefix."""
    stripped = location.strip("/")
    parts = stripped.split("/")
    if not stripped or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid backup location {location!r}")
    if any(ord(c) < 0x20 or c == "\x7f" for c in stripped) or len(stripped) > 900:
        raise ValueError("a backup location must be printable and at most 900 characters")
    return stripped


def data_key(location: str) -> str:
    return f"{normalize_location(location)}/{DATA}"


def manifest_key(location: str) -> str:
    return f"{normalize_location(location)}/{MANIFEST}"


def key_context(location: str, data_key_id: str, backup_id: str) -> bytes:
    """The associated data of a backup key's wrapping: the key opens only for this backup,
    at this location, under this data key. JSON keeps the fields unambiguous."""
    fields = [normalize_location(location), data_key_id, backup_id]
    return b"vauban/backup-key/1:" + json.dumps(fields, separators=(",", ":")).encode("utf-8")
