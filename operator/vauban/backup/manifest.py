"""The manifest of a backup: what it holds and how to open it, stored beside its data.

A backup lives under a *location* (a key prefix chosen by the operator):
`<location>/data` is the encrypted stream, `<location>/manifest.json` this document, written
last: a backup without its manifest does not exist.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    field_validator,
)
from pydantic.alias_generators import to_camel

DATA = "data"
MANIFEST = "manifest.json"


def _utc(value: object) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError("a timestamp must be RFC 3339 with a time zone")
    # The manifest keeps seconds: what it writes is exactly what it reads back.
    return value.astimezone(UTC).replace(microsecond=0)


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _base64(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise ValueError("expected base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as e:
        raise ValueError("not valid base64") from e


Timestamp = Annotated[datetime, PlainValidator(_utc), PlainSerializer(_rfc3339, return_type=str)]
"""A UTC instant, written as RFC 3339 to the second (`2026-01-31T02:00:00Z`)."""

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
    format_version: Literal[1] = 1
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
