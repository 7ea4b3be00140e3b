"""Backup, restore and verify for real: the agent as a process against PostgreSQL and
versitygw, and the object store API the operator calls."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest

from dataplane.harness import (
    LOCKED_BUCKET,
    PASSWORD,
    Agent,
    connect,
    database_exists,
    fingerprint,
    multipart_uploads,
)
from vauban.backup.manifest import Manifest, data_key, manifest_key
from vauban.backup.storage_errors import ObjectLocked


def test_backup_restore_verify(agent: Agent, location: str, empty_database: str) -> None:
    backup = agent.run("backup", "--location", location)
    assert backup.code == 0, backup
    assert backup.result["result"] == "Succeeded"
    assert backup.reason == "BackupCompleted"
    assert backup.result["objectLock"] == "NotRequested"

    stored = agent.store().read_manifest(location)
    assert stored is not None
    assert stored == Manifest.model_validate(backup.manifest)
    assert stored.location == location
    assert stored.database == "dp_shop"
    assert stored.data_key_id == "dp/shop/1"
    assert stored.server_version == agent.postgres.version
    assert stored.tables == {
        "billing.invoices": 200,
        "public.customers": 2000,
        "public.orders": 3000,
    }
    assert stored.finished_at >= stored.started_at
    # Compressed and encrypted: neither pg_dump's signature nor any text of the database.
    raw = agent.s3.object_path("dp-backups", data_key(location)).read_bytes()
    assert len(raw) == stored.stored_bytes < stored.dump_bytes
    assert b"PGDMP" not in raw
    assert "Zoë".encode() not in raw
    assert b"example.org" not in raw

    restore = agent.run("restore", "--location", location, PGDATABASE=empty_database)
    assert restore.code == 0, restore
    assert restore.reason == "RestoreCompleted"
    assert fingerprint(agent.postgres, empty_database) == fingerprint(agent.postgres, "dp_shop")
    with connect(agent.postgres, empty_database) as conn:
        row = conn.execute("SELECT name FROM customers WHERE id = 1").fetchone()
        assert row == ("Zoë Ørsted 0",)
        row = conn.execute("SELECT length(pdf) FROM billing.invoices WHERE id = 200").fetchone()
        assert row == (3 << 20,)
        # Sequences and views come back too: the application can go on inserting.
        conn.execute("INSERT INTO customers (name) VALUES ('after restore')")
        assert conn.execute("SELECT count(*) FROM big_spenders").fetchone() is not None

    verify = agent.run("verify", "--location", location, "--scratch-database", "dp_verify_scratch")
    assert verify.code == 0, verify
    assert verify.reason == "VerificationPassed"
    assert verify.result["tablesChecked"] == 3
    assert not database_exists(agent.postgres, "dp_verify_scratch")

    # Neither the logs nor the results carry a password or a key.
    for outcome in (backup, restore, verify):
        said = outcome.stderr + json.dumps(outcome.result)
        for secret in (PASSWORD, agent.env["VAUBAN_DATA_KEY"], agent.s3.secret_key):
            assert secret not in said


def test_a_retried_backup_job_finds_its_backup_done(
    agent: Agent, location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = agent.call(monkeypatch, "backup", "--location", location)
    again = agent.call(monkeypatch, "backup", "--location", location)
    assert (again.code, again.reason) == (0, "BackupExists")
    assert again.manifest["backupId"] == first.manifest["backupId"]


def test_object_lock(agent: Agent, location: str, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = agent.store(LOCKED_BUCKET)
    assert locked.object_lock_supported()
    assert not agent.store().object_lock_supported()

    outcome = agent.call(
        monkeypatch,
        "backup",
        "--location",
        location,
        VAUBAN_S3_BUCKET=LOCKED_BUCKET,
        VAUBAN_OBJECT_LOCK_DAYS="2",
    )
    assert (outcome.code, outcome.result["objectLock"]) == (0, "Applied"), outcome
    manifest = locked.read_manifest(location)
    assert manifest is not None and manifest.object_lock is not None
    assert manifest.object_lock.mode == "COMPLIANCE"
    days = (manifest.object_lock.retain_until - datetime.now(UTC)).total_seconds() / 86400
    assert 1.99 < days <= 2
    client = agent.s3.client()
    for key in (data_key(location), manifest_key(location)):
        retention = client.get_object_retention(LOCKED_BUCKET, key)
        assert retention is not None and retention.mode == "COMPLIANCE"

    # Retention is never bypassed: the operator is told until when, nothing is deleted.
    with pytest.raises(ObjectLocked, match="until 20"):
        locked.delete_backup(location)
    assert locked.read_manifest(location) == manifest

    # A bucket without Object Lock: stored without retention, and said so.
    plain = agent.call(
        monkeypatch, "backup", "--location", f"{location}-plain", VAUBAN_OBJECT_LOCK_DAYS="2"
    )
    assert (plain.code, plain.result["objectLock"]) == (0, "Unsupported"), plain
    assert "does not support it" in plain.result["message"]
    assert plain.manifest["objectLock"] is None


def test_listing_and_deleting_backups(
    agent: Agent, location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = agent.store()
    assert store.read_manifest(location) is None
    for name in ("a", "b"):
        outcome = agent.call(monkeypatch, "backup", "--location", f"{location}/{name}")
        assert outcome.code == 0, outcome
    # A stray object is not a backup, and a data object without manifest is not one either.
    client = agent.s3.client()
    client.put_object("dp-backups", f"{location}/c/data", io.BytesIO(b"orphan"), 6)
    client.put_object("dp-backups", f"{location}/notes.txt", io.BytesIO(b"hello"), 5)
    # Nor is a manifest this code cannot read: skipped, and it hides no other backup.
    client.put_object("dp-backups", f"{location}/d/manifest.json", io.BytesIO(b"{}"), 2)

    listed = store.list_manifests(f"{location}/")
    assert [m.location for m in listed] == [f"{location}/a", f"{location}/b"]

    store.delete_backup(f"{location}/a")
    assert [m.location for m in store.list_manifests(f"{location}/")] == [f"{location}/b"]
    assert not agent.s3.object_path("dp-backups", data_key(f"{location}/a")).exists()
    store.delete_backup(f"{location}/a")  # idempotent
    store.delete_backup(f"{location}/c")  # data without manifest: removed too
    assert not agent.s3.object_path("dp-backups", data_key(f"{location}/c")).exists()
    store.delete_backup(f"{location}/d")  # an invalid manifest: removed too
    assert not agent.s3.object_path("dp-backups", manifest_key(f"{location}/d")).exists()
    assert not multipart_uploads(agent.s3, "dp-backups")
