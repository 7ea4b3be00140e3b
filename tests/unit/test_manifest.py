"""The manifest's JSON: its exact field names, round trips, what it refuses, and its
authentication (format 2's MAC over every field; format 1's key binding only)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from vauban.backup.manifest import (
    Manifest,
    ManifestNotAuthentic,
    ObjectLock,
    data_key,
    key_context,
    manifest_key,
    normalize_location,
)
from vauban.crypto import envelope

STARTED = datetime(2026, 1, 31, 2, 0, 0, 123456, tzinfo=UTC)


def manifest(**overrides: object) -> Manifest:
    values: dict[str, object] = {
        "backup_id": "0123456789abcdef0123456789abcdef",
        "location": "vauban/shop/orders/nightly-1a2b3c4d",
        "database": "orders",
        "server_version": "17.2",
        "started_at": STARTED,
        "finished_at": STARTED + timedelta(minutes=3),
        "dump_bytes": 1000,
        "stored_bytes": 400,
        "sha256": "ab" * 32,
        "chunk_size": 1 << 20,
        "data_key_id": "shop/orders/1",
        "wrapped_key": b"\x01" + bytes(60),
        "tables": {"public.orders": 12, "billing.invoices": 0, "public.café": 1},
        "object_lock": ObjectLock(mode="COMPLIANCE", retain_until=STARTED + timedelta(days=30)),
    }
    values.update(overrides)
    return Manifest.model_validate(values)


def test_json_uses_the_contract_names() -> None:
    document = json.loads(manifest().to_json())
    assert list(document) == [
        "formatVersion",
        "backupId",
        "location",
        "database",
        "serverVersion",
        "startedAt",
        "finishedAt",
        "dumpBytes",
        "storedBytes",
        "sha256",
        "chunkSize",
        "cipher",
        "compression",
        "dataKeyId",
        "wrappedKey",
        "tables",
        "objectLock",
        "namespace",
        "managedDatabase",
        "databaseUid",
        "mac",
    ]
    assert document["formatVersion"] == 2
    assert document["cipher"] == "AES-256-GCM"
    assert document["compression"] == "zstd"
    assert document["startedAt"] == "2026-01-31T02:00:00.123456Z"
    assert document["objectLock"] == {
        "mode": "COMPLIANCE",
        "retainUntil": "2026-03-02T02:00:00.123456Z",
    }
    assert base64.b64decode(document["wrappedKey"]) == b"\x01" + bytes(60)
    assert document["tables"]["public.café"] == 1


@pytest.mark.parametrize("lock", [None, ObjectLock(mode="COMPLIANCE", retain_until=STARTED)])
def test_round_trip(lock: ObjectLock | None) -> None:
    original = manifest(object_lock=lock)
    again = Manifest.from_json(original.to_json())
    assert again == original
    assert again.started_at == STARTED
    assert again.object_lock == lock


def test_timestamps_are_utc_whatever_they_were_given_in() -> None:
    paris = timezone(timedelta(hours=1))
    m = manifest(started_at=datetime(2026, 1, 31, 3, 0, tzinfo=paris))
    assert json.loads(m.to_json())["startedAt"] == "2026-01-31T02:00:00Z"
    with pytest.raises(ValidationError, match="time zone"):
        manifest(started_at=datetime(2026, 1, 31, 3, 0))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("formatVersion", 3),
        ("cipher", "AES-128-CBC"),
        ("compression", "gzip"),
        ("sha256", "not-hex"),
        ("wrappedKey", "***"),
        ("backupId", "../../x"),
        ("location", "a/../b"),
    ],
)
def test_what_a_reader_refuses(field: str, value: object) -> None:
    document = json.loads(manifest().to_json())
    document[field] = value
    with pytest.raises(ValidationError):
        Manifest.from_json(json.dumps(document))


def test_unknown_fields_from_a_later_agent_are_ignored() -> None:
    document = json.loads(manifest().to_json())
    document["compressionLevel"] = 3
    assert Manifest.from_json(json.dumps(document)) == manifest()


def test_locations_and_keys() -> None:
    assert normalize_location("/vauban/shop/b-1/") == "vauban/shop/b-1"
    assert data_key("vauban/shop/b-1") == "vauban/shop/b-1/data"
    assert manifest_key("vauban/shop/b-1/") == "vauban/shop/b-1/manifest.json"
    for bad in ("", "/", "a//b", "a/./b", "../a", "a/\nb"):
        with pytest.raises(ValueError, match="location"):
            normalize_location(bad)


def test_key_context_binds_location_key_and_backup() -> None:
    base = key_context("vauban/a", "key-1", "00" * 16)
    assert (
        base
        == manifest(location="vauban/a", data_key_id="key-1", backup_id="00" * 16).key_context()
    )
    assert key_context("vauban/b", "key-1", "00" * 16) != base
    assert key_context("vauban/a", "key-2", "00" * 16) != base
    assert key_context("vauban/a", "key-1", "11" * 16) != base
    # No ambiguity from separators inside the fields.
    assert key_context("a", "b,c", "00" * 16) != key_context("a,b", "c", "00" * 16)


DATA_KEY = bytes(range(32))


def sealed(**overrides: object) -> Manifest:
    key = envelope.generate_key()
    values: dict[str, object] = {
        "location": "vauban/shop/orders/uid-1/backup-1",
        "data_key_id": "dek-uid-1",
        "namespace": "shop",
        "managed_database": "orders",
        "database_uid": "uid-1",
        **overrides,
    }
    m = manifest(**values)
    wrapped = envelope.wrap_key(DATA_KEY, key, m.key_context())
    return m.model_copy(update={"wrapped_key": wrapped}).sealed(DATA_KEY)


def test_a_sealed_manifest_authenticates_after_a_round_trip() -> None:
    m = sealed()
    assert m.format_version == 2 and m.mac is not None and len(m.mac) == 32
    again = Manifest.from_json(m.to_json())
    assert again.authenticate(DATA_KEY) is True


def test_a_manifest_written_to_the_second_keeps_its_bytes_and_its_mac() -> None:
    """Manifests written before fractions were kept say `…:00Z`: read and written back they
    are the same bytes, so their MAC still holds."""
    whole = STARTED.replace(microsecond=0)
    m = sealed(started_at=whole, finished_at=whole + timedelta(minutes=3))
    text = m.to_json()
    assert b'"startedAt": "2026-01-31T02:00:00Z"' in text
    again = Manifest.from_json(text)
    assert again.to_json() == text and again.authenticate(DATA_KEY) is True


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tables", {"public.orders": 13, "billing.invoices": 0, "public.café": 1}),
        ("tables", {}),
        ("objectLock", None),
        ("objectLock", {"mode": "COMPLIANCE", "retainUntil": "2026-01-31T02:00:01Z"}),
        ("startedAt", "2026-01-31T01:00:00Z"),
        ("finishedAt", "2027-01-31T01:00:00Z"),
        ("namespace", "bank"),
        ("managedDatabase", "accounts"),
        ("databaseUid", "uid-2"),
        ("database", "other"),
        ("storedBytes", 401),
        ("dumpBytes", 1),
        ("sha256", "cd" * 32),
        ("serverVersion", "16.1"),
        ("chunkSize", 4096),
        ("backupId", "f" * 32),
        ("dataKeyId", "dek-uid-2"),
        ("location", "vauban/bank/accounts/uid-2/backup-1"),
        ("mac", None),
        ("mac", base64.b64encode(bytes(32)).decode()),
    ],
)
def test_any_field_changed_in_the_bucket_fails_authentication(field: str, value: object) -> None:
    document = json.loads(sealed().to_json())
    document[field] = value
    with pytest.raises(ManifestNotAuthentic):
        Manifest.from_json(json.dumps(document)).authenticate(DATA_KEY)


def test_another_data_key_fails_authentication() -> None:
    with pytest.raises(ManifestNotAuthentic):
        sealed().authenticate(bytes(32))


def test_a_field_unknown_to_this_reader_changes_nothing_it_reads() -> None:
    document = json.loads(sealed().to_json())
    document["tablesV3"] = {"x": 1}
    assert Manifest.from_json(json.dumps(document)).authenticate(DATA_KEY) is True


def test_format_1_authenticates_its_key_binding_only() -> None:
    document = json.loads(sealed().to_json())
    for field in ("namespace", "managedDatabase", "databaseUid", "mac"):
        del document[field]
    document["formatVersion"] = 1
    # Format 1 never bound the row counts or dates: reading one says so (False)...
    document["tables"] = {"public.orders": 99}
    assert Manifest.from_json(json.dumps(document)).authenticate(DATA_KEY) is False
    # ...and still refuses a key moved to another location.
    document["location"] = "vauban/shop/orders/uid-1/backup-2"
    with pytest.raises(ManifestNotAuthentic):
        Manifest.from_json(json.dumps(document)).authenticate(DATA_KEY)
