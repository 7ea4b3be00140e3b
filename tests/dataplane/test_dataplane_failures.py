"""Every way the data path can fail gives its exit code and reason, and leaves no partial
result: nothing uploaded without a key, no manifest after an interrupted upload, nothing
applied to the target of a restore from a damaged backup."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import signal
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from dataplane.harness import (
    BUCKET,
    Agent,
    database_exists,
    multipart_uploads,
    pause_pg_dump_mid_upload,
    user_tables,
)
from vauban.backup import agent as agent_module
from vauban.backup import postgres as backup_postgres
from vauban.backup.manifest import Manifest, ObjectLock, data_key, manifest_key
from vauban.devcluster.s3 import S3Server


def objects_under(agent: Agent, location: str) -> list[str]:
    return [
        str(o.object_name)
        for o in agent.s3.client().list_objects(BUCKET, prefix=f"{location}/", recursive=True)
    ]


@pytest.fixture
def backed_up(agent: Agent, location: str, monkeypatch: pytest.MonkeyPatch) -> Manifest:
    outcome = agent.call(monkeypatch, "backup", "--location", location)
    assert outcome.code == 0, outcome
    return Manifest.model_validate(outcome.manifest)


def rewrite_manifest(agent: Agent, manifest: Manifest) -> None:
    path = agent.s3.object_path(BUCKET, manifest_key(manifest.location))
    path.write_bytes(manifest.to_json())


# -- configuration --------------------------------------------------------------------------


def test_no_key_no_upload(agent: Agent, location: str) -> None:
    outcome = agent.run("backup", "--location", location, VAUBAN_DATA_KEY=None)
    assert (outcome.code, outcome.reason) == (2, "KeyMissing"), outcome
    assert outcome.result["result"] == "Failed"
    assert outcome.result["manifest"] is None
    assert objects_under(agent, location) == []


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("c2hvcnQ=", "KeyInvalid"),
        ("%%%not-base64%%%", "KeyInvalid"),
    ],
)
def test_malformed_key_no_upload(
    agent: Agent, location: str, monkeypatch: pytest.MonkeyPatch, value: str, reason: str
) -> None:
    outcome = agent.call(monkeypatch, "backup", "--location", location, VAUBAN_DATA_KEY=value)
    assert (outcome.code, outcome.reason) == (2, reason), outcome
    assert value not in json.dumps(outcome.result)
    assert objects_under(agent, location) == []


def test_missing_settings(agent: Agent, location: str, monkeypatch: pytest.MonkeyPatch) -> None:
    outcome = agent.call(monkeypatch, "backup", "--location", location, VAUBAN_S3_BUCKET=None)
    assert (outcome.code, outcome.reason) == (2, "ConfigurationInvalid"), outcome
    assert "VAUBAN_S3_BUCKET" in outcome.result["message"]


# -- storage --------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_bucket_unreachable_fails_fast(
    agent: Agent, location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.monotonic()
    outcome = agent.call(
        monkeypatch,
        "backup",
        "--location",
        location,
        VAUBAN_S3_ENDPOINT=f"http://127.0.0.1:{closed_port()}",
    )
    assert (outcome.code, outcome.reason) == (3, "BucketUnreachable"), outcome
    assert "connection refused" in outcome.result["message"]
    assert time.monotonic() - started < 10


def test_wrong_credentials(agent: Agent, location: str, monkeypatch: pytest.MonkeyPatch) -> None:
    outcome = agent.call(
        monkeypatch, "backup", "--location", location, AWS_SECRET_ACCESS_KEY="not-the-secret"
    )
    assert (outcome.code, outcome.reason) == (3, "AccessDenied"), outcome
    assert "not-the-secret" not in json.dumps(outcome.result)
    assert agent.s3.secret_key not in json.dumps(outcome.result)


def test_tls_needs_the_store_ca(
    agent: Agent, tls_s3: S3Server, location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = {
        "VAUBAN_S3_ENDPOINT": tls_s3.endpoint,
        "AWS_ACCESS_KEY_ID": tls_s3.access_key,
        "AWS_SECRET_ACCESS_KEY": tls_s3.secret_key,
    }
    untrusted = agent.call(monkeypatch, "backup", "--location", location, **store)
    assert (untrusted.code, untrusted.reason) == (3, "BucketUnreachable"), untrusted
    assert "TLS failed" in untrusted.result["message"]

    trusted = {**store, "AWS_CA_BUNDLE": str(tls_s3.ca_file)}
    backup = agent.call(monkeypatch, "backup", "--location", location, **trusted)
    assert backup.code == 0, backup
    verify = agent.call(
        monkeypatch, "verify", "--location", location, "--scratch-database", "dp_tls", **trusted
    )
    assert (verify.code, verify.reason) == (0, "VerificationPassed"), verify


def test_no_such_bucket(agent: Agent, location: str, monkeypatch: pytest.MonkeyPatch) -> None:
    outcome = agent.call(
        monkeypatch, "backup", "--location", location, VAUBAN_S3_BUCKET="dp-no-such-bucket"
    )
    assert (outcome.code, outcome.reason) == (3, "NoSuchBucket"), outcome


# -- database -------------------------------------------------------------------------------


def test_database_unreachable_uploads_nothing(
    agent: Agent, location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome = agent.call(monkeypatch, "backup", "--location", location, PGPORT=str(closed_port()))
    assert (outcome.code, outcome.reason) == (5, "DatabaseUnreachable"), outcome
    assert agent.env["PGPASSWORD"] not in json.dumps(outcome.result)
    assert objects_under(agent, location) == []


def test_a_failed_row_count_fails_the_backup_and_uploads_nothing(
    agent: Agent, location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row counts run beside pg_dump: a dump that ends well must not complete the upload
    when the counts a restore is checked against are missing."""

    def cancelled(conn: object) -> dict[str, int]:
        raise psycopg.errors.QueryCanceled("canceling statement due to statement timeout")

    monkeypatch.setattr(backup_postgres, "table_counts", cancelled)
    outcome = agent.call(monkeypatch, "backup", "--location", location)
    assert (outcome.code, outcome.reason) == (agent_module.EXIT_DATABASE, "DatabaseError"), outcome
    assert not multipart_uploads(agent.s3, BUCKET)
    assert objects_under(agent, location) == []


def test_restore_refuses_a_database_that_is_not_empty(
    agent: Agent, backed_up: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = user_tables(agent.postgres, "dp_shop")
    outcome = agent.call(monkeypatch, "restore", "--location", backed_up.location)
    assert (outcome.code, outcome.reason) == (5, "TargetNotEmpty"), outcome
    assert "public.customers" in outcome.result["message"]
    assert user_tables(agent.postgres, "dp_shop") == before


# -- integrity: nothing reaches the target --------------------------------------------------


def test_backup_not_found(
    agent: Agent, location: str, empty_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome = agent.call(monkeypatch, "restore", "--location", location, PGDATABASE=empty_database)
    assert (outcome.code, outcome.reason) == (4, "BackupNotFound"), outcome


def test_an_invalid_manifest_is_an_integrity_failure(
    agent: Agent, backed_up: Manifest, empty_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = agent.s3.object_path(BUCKET, manifest_key(backed_up.location))
    path.write_bytes(path.read_bytes().replace(b'"formatVersion": 2', b'"formatVersion": 9'))
    outcome = agent.call(
        monkeypatch, "restore", "--location", backed_up.location, PGDATABASE=empty_database
    )
    assert (outcome.code, outcome.reason) == (4, "IntegrityCheckFailed"), outcome
    assert "not a valid manifest (formatVersion)" in outcome.result["message"]


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip-start", "flip-end", "truncate", "append", "delete"])
def test_damaged_data_is_refused_before_restoring(
    agent: Agent,
    backed_up: Manifest,
    empty_database: str,
    monkeypatch: pytest.MonkeyPatch,
    damage: str,
) -> None:
    path = agent.s3.object_path(BUCKET, data_key(backed_up.location))
    if damage == "flip-start":
        flip_byte(path, 40)
    elif damage == "flip-end":
        flip_byte(path, path.stat().st_size - 3)
    elif damage == "truncate":
        os.truncate(path, path.stat().st_size - 1000)
    elif damage == "append":
        path.write_bytes(path.read_bytes() + b"\0")
    else:
        path.unlink()
    outcome = agent.call(
        monkeypatch, "restore", "--location", backed_up.location, PGDATABASE=empty_database
    )
    assert (outcome.code, outcome.reason) == (4, "IntegrityCheckFailed"), outcome
    assert user_tables(agent.postgres, empty_database) == []


@pytest.mark.parametrize("downgrade", [False, True])
def test_consistent_forgery_still_fails_authentication(
    agent: Agent,
    backed_up: Manifest,
    empty_database: str,
    monkeypatch: pytest.MonkeyPatch,
    downgrade: bool,
) -> None:
    """Someone with write access to the bucket alters the data and fixes the manifest's
    SHA-256 to match: the manifest's MAC refuses it; rewritten as a format 1 manifest (which
    has no MAC), the chunks' authentication still does."""
    path = agent.s3.object_path(BUCKET, data_key(backed_up.location))
    flip_byte(path, path.stat().st_size // 2)
    changes: dict[str, object] = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    if downgrade:
        changes.update(format_version=1, mac=None)
    rewrite_manifest(agent, backed_up.model_copy(update=changes))
    outcome = agent.call(
        monkeypatch, "restore", "--location", backed_up.location, PGDATABASE=empty_database
    )
    if downgrade:
        assert (outcome.code, outcome.reason) == (4, "IntegrityCheckFailed"), outcome
        assert "failed authentication" in outcome.result["message"]
    else:
        assert (outcome.code, outcome.reason) == (4, "ManifestNotAuthentic"), outcome
    assert user_tables(agent.postgres, empty_database) == []


@pytest.mark.parametrize(
    "changes",
    [
        {"tables": {"public.customers": 1}},
        {
            "object_lock": ObjectLock(
                mode="COMPLIANCE", retain_until=datetime(2001, 1, 1, tzinfo=UTC)
            )
        },
        {"namespace": "another-tenant"},
        {"finished_at": datetime(2001, 1, 1, tzinfo=UTC)},
    ],
)
def test_a_manifest_edited_in_the_bucket_is_refused(
    agent: Agent,
    backed_up: Manifest,
    empty_database: str,
    monkeypatch: pytest.MonkeyPatch,
    changes: dict[str, object],
) -> None:
    """Format 2 authenticates every field, not only the key binding: row counts, dates, the
    object lock and the namespace cannot be altered by whoever can write the bucket."""
    rewrite_manifest(agent, backed_up.model_copy(update=changes))
    outcome = agent.call(
        monkeypatch, "restore", "--location", backed_up.location, PGDATABASE=empty_database
    )
    assert (outcome.code, outcome.reason) == (4, "ManifestNotAuthentic"), outcome
    assert user_tables(agent.postgres, empty_database) == []


def test_a_backup_of_another_namespace_is_not_restored(
    agent: Agent, backed_up: Manifest, empty_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome = agent.call(
        monkeypatch,
        "restore",
        "--location",
        backed_up.location,
        PGDATABASE=empty_database,
        VAUBAN_DATABASE_NAMESPACE="attacker",
    )
    assert (outcome.code, outcome.reason) == (4, "WrongNamespace"), outcome
    assert user_tables(agent.postgres, empty_database) == []


def test_wrong_key(
    agent: Agent, backed_up: Manifest, empty_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = base64.b64encode(os.urandom(32)).decode()
    outcome = agent.call(
        monkeypatch,
        "restore",
        "--location",
        backed_up.location,
        PGDATABASE=empty_database,
        VAUBAN_DATA_KEY=other,
    )
    assert (outcome.code, outcome.reason) == (4, "WrongKey"), outcome
    assert "wrong or rotated-away data key" in outcome.result["message"]
    assert other not in json.dumps(outcome.result)

    outcome = agent.call(
        monkeypatch,
        "restore",
        "--location",
        backed_up.location,
        PGDATABASE=empty_database,
        VAUBAN_DATA_KEY_ID="dp/shop/2",
    )
    assert (outcome.code, outcome.reason) == (4, "WrongKey"), outcome
    assert user_tables(agent.postgres, empty_database) == []


def test_a_backup_moved_elsewhere_does_not_open(
    agent: Agent, backed_up: Manifest, empty_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wrapped key is bound to its location: a backup copied under another database's
    prefix (with its manifest edited to match) cannot be restored there."""
    moved = f"{backed_up.location}-moved"
    source = agent.s3.object_path(BUCKET, data_key(backed_up.location))
    target = agent.s3.object_path(BUCKET, data_key(moved))
    agent.s3.client().put_object(BUCKET, data_key(moved), source.open("rb"), source.stat().st_size)
    assert target.exists()
    edited = backed_up.model_copy(update={"location": moved}).to_json()
    agent.s3.client().put_object(BUCKET, manifest_key(moved), io.BytesIO(edited), len(edited))
    outcome = agent.call(monkeypatch, "restore", "--location", moved, PGDATABASE=empty_database)
    assert (outcome.code, outcome.reason) == (4, "WrongKey"), outcome
    assert user_tables(agent.postgres, empty_database) == []


def test_verification_mismatch_drops_the_scratch_database(
    agent: Agent, backed_up: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    tables = {**backed_up.tables, "public.orders": backed_up.tables["public.orders"] + 1}
    # Made with the data key: a manifest that authenticates, yet disagrees with the data.
    rewrite_manifest(agent, backed_up.model_copy(update={"tables": tables}).sealed(agent.key))
    outcome = agent.call(
        monkeypatch,
        "verify",
        "--location",
        backed_up.location,
        "--scratch-database",
        "dp_verify_mismatch",
    )
    assert (outcome.code, outcome.reason) == (6, "VerificationMismatch"), outcome
    assert outcome.result["differences"] == {"public.orders": {"manifest": 3001, "restored": 3000}}
    assert not database_exists(agent.postgres, "dp_verify_mismatch")


def test_verify_never_drops_a_database_it_did_not_create(
    agent: Agent, backed_up: Manifest, empty_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome = agent.call(
        monkeypatch,
        "verify",
        "--location",
        backed_up.location,
        "--scratch-database",
        empty_database,
    )
    assert (outcome.code, outcome.reason) == (5, "ScratchDatabaseExists"), outcome
    assert database_exists(agent.postgres, empty_database)


def test_the_result_is_the_termination_message(
    agent: Agent,
    location: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    log = tmp_path / "termination-log"
    log.touch()
    monkeypatch.setattr(agent_module, "TERMINATION_LOG", log)
    outcome = agent.call(monkeypatch, "backup", "--location", location)
    assert outcome.code == 0
    assert json.loads(log.read_text()) == outcome.result


# -- interrupted uploads leave nothing ------------------------------------------------------


@pytest.mark.parametrize("stop", ["sigterm-agent", "kill-pg-dump"])
def test_an_interrupted_upload_leaves_nothing(
    agent: Agent, big_database: str, location: str, stop: str
) -> None:
    process = agent.popen("backup", "--location", location, PGDATABASE=big_database)
    try:
        dump = pause_pg_dump_mid_upload(process, agent.s3, BUCKET)
        assert multipart_uploads(agent.s3, BUCKET)
        if stop == "sigterm-agent":
            process.send_signal(signal.SIGTERM)
        else:
            os.kill(dump, signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    result = json.loads(stdout)
    expected = (1, "Interrupted") if stop == "sigterm-agent" else (5, "DumpFailed")
    assert (process.returncode, result["reason"]) == expected, (result, stderr)
    assert not multipart_uploads(agent.s3, BUCKET)
    assert objects_under(agent, location) == []
    assert agent.store().read_manifest(location) is None
    assert location not in [m.location for m in agent.store().list_manifests("vauban/")]


def test_an_upload_no_agent_could_abort_is_swept(
    agent: Agent, big_database: str, location: str
) -> None:
    """An agent killed (SIGKILL, a node lost) mid-upload, or whose abort could not reach the
    store, leaves its multipart upload behind: the operator's sweep aborts it once older
    than the bound, and only then; uploads that are not a backup's data are not touched."""
    process = agent.popen("backup", "--location", location, PGDATABASE=big_database)
    dump = None
    try:
        dump = pause_pg_dump_mid_upload(process, agent.s3, BUCKET)
    finally:
        process.kill()  # the agent never gets to abort
        process.wait()
        # An orphan pg_dump left stopped would hold its snapshot and locks for the session.
        if dump is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(dump, signal.SIGKILL)
    other = agent.s3.client()._create_multipart_upload(BUCKET, "someone/else/file", {})
    store = agent.store()
    before = len(multipart_uploads(agent.s3, BUCKET))
    assert before == 2
    assert store.abort_stale_uploads("", datetime.now(UTC) - timedelta(hours=1)) == []
    aborted = store.abort_stale_uploads("", datetime.now(UTC) + timedelta(seconds=5))
    assert aborted == [data_key(location)]
    assert len(multipart_uploads(agent.s3, BUCKET)) == 1
    agent.s3.client()._abort_multipart_upload(BUCKET, "someone/else/file", other)
