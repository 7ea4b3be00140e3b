"""The agent's pure parts: its settings fail closed, its result fits a termination message,
its part sizes fit S3's limits, and pg_restore's output is cleaned of data."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest

from vauban.backup import postgres
from vauban.backup.agent import TERMINATION_LIMIT, termination_message
from vauban.backup.dump import MAX_PARTS, part_size_for
from vauban.backup.postgres import errors_only
from vauban.backup.settings import AgentSettings, ConfigurationError

BASE_ENV = {
    "VAUBAN_S3_REGION": "eu-west-3",
    "VAUBAN_S3_BUCKET": "backups",
    "AWS_ACCESS_KEY_ID": "id",
    "AWS_SECRET_ACCESS_KEY": "secret",
    "VAUBAN_DATA_KEY_ID": "shop/orders/1",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (*BASE_ENV, "VAUBAN_DATA_KEY", "VAUBAN_S3_ENDPOINT", "VAUBAN_OBJECT_LOCK_DAYS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in BASE_ENV.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def test_a_valid_key(env: pytest.MonkeyPatch) -> None:
    key = bytes(range(32))
    env.setenv("VAUBAN_DATA_KEY", base64.b64encode(key).decode())
    assert AgentSettings.load().key() == (key, "shop/orders/1")


@pytest.mark.parametrize(
    ("value", "reason", "message"),
    [
        (None, "KeyMissing", "VAUBAN_DATA_KEY is not set"),
        ("", "KeyMissing", "VAUBAN_DATA_KEY is not set"),
        ("not base64 at all!", "KeyInvalid", "not valid base64"),
        (base64.b64encode(b"k" * 16).decode(), "KeyInvalid", "32 bytes, not 16 bytes"),
    ],
)
def test_keys_fail_closed(
    env: pytest.MonkeyPatch, value: str | None, reason: str, message: str
) -> None:
    if value is not None:
        env.setenv("VAUBAN_DATA_KEY", value)
    with pytest.raises(ConfigurationError, match=message) as caught:
        AgentSettings.load().key()
    assert caught.value.reason == reason
    assert caught.value.exit_code == 2
    if value:
        assert value not in str(caught.value)


def test_missing_settings_are_named_without_values(env: pytest.MonkeyPatch) -> None:
    env.delenv("VAUBAN_S3_BUCKET")
    env.setenv("VAUBAN_OBJECT_LOCK_DAYS", "0")
    with pytest.raises(ConfigurationError) as caught:
        AgentSettings.load()
    assert caught.value.reason == "ConfigurationInvalid"
    assert "VAUBAN_S3_BUCKET" in str(caught.value)
    assert "VAUBAN_OBJECT_LOCK_DAYS" in str(caught.value)
    assert "secret" not in str(caught.value)


def test_termination_message_fits_in_4_kib() -> None:
    manifest = {"backupId": "ab" * 16, "tables": {f"public.t{i}": i for i in range(500)}}
    result = {
        "result": "Failed",
        "reason": "VerificationMismatch",
        "message": "x" * 5000,
        "manifest": manifest,
        "differences": {f"public.t{i}": {"manifest": i, "restored": 0} for i in range(500)},
    }
    text = termination_message(result)
    assert len(text.encode()) <= TERMINATION_LIMIT
    assert json.loads(text)["reason"] == "VerificationMismatch"

    small = {**result, "message": "short", "differences": {}}
    compact = json.loads(termination_message(small))
    assert compact["manifest"]["backupId"] == "ab" * 16
    assert compact["manifest"]["tables"] == {}
    assert compact["tablesOmitted"] is True


@pytest.mark.parametrize("size", [0, 10 << 20, 100 << 30, 5 << 40])
def test_part_sizes_keep_within_s3_limits(size: int) -> None:
    part = part_size_for(size)
    assert part >= 8 << 20
    assert part % (1 << 20) == 0
    assert part * MAX_PARTS >= size


def test_errors_only_drops_lines_that_quote_data() -> None:
    output = io.BytesIO(
        b"pg_restore: while PROCESSING TOC:\n"
        b"pg_restore: error: could not execute query: ERROR:  duplicate key value\n"
        b"DETAIL:  Key (email)=(alice@example.org) already exists.\n"
        b'CONTEXT:  COPY users, line 1: "1\talice@example.org"\n'
        b"Command was: COPY public.users (id, email) FROM stdin;\n"
    )
    text = errors_only(output)
    assert "duplicate key value" in text
    assert "alice" not in text


def fake_client(folder: Path, name: str, major: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\necho '{name} (PostgreSQL) {major}.3 (Debian {major}.3-1)'\n")
    path.chmod(0o755)
    return path


def test_the_client_matching_the_server_is_chosen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packaged = tmp_path / "usr-lib-postgresql"
    v15 = fake_client(packaged / "15" / "bin", "pg_dump", 15)
    v17 = fake_client(packaged / "17" / "bin", "pg_dump", 17)
    on_path = fake_client(tmp_path / "bin", "pg_dump", 16)
    monkeypatch.setattr(postgres, "PACKAGED_CLIENTS", packaged)
    monkeypatch.setenv("PATH", str(on_path.parent))

    assert postgres.find_client("pg_dump", 15, None) == v15
    assert postgres.find_client("pg_dump", 16, None) == on_path
    assert postgres.find_client("pg_dump", 17, None) == v17
    # No client of the server's major: the newest, which reads older servers.
    assert postgres.find_client("pg_dump", 14, None) == v17
    with pytest.raises(ConfigurationError, match="pg_dump 17 cannot handle PostgreSQL 18") as e:
        postgres.find_client("pg_dump", 18, None)
    assert e.value.reason == "ClientTooOld"
    # VAUBAN_PG_BIN_DIR is the only place looked at when set.
    assert postgres.find_client("pg_dump", 15, str(on_path.parent)) == on_path
    with pytest.raises(ConfigurationError, match="no working pg_restore") as e:
        postgres.find_client("pg_restore", 17, str(on_path.parent))
    assert e.value.reason == "ClientNotFound"


def test_the_packaged_client_of_the_servers_major_goes_before_the_one_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PATH's pg_dump on Debian is pg_wrapper: it would run the packaged one, later.
    packaged = tmp_path / "usr-lib-postgresql"
    v16 = fake_client(packaged / "16" / "bin", "pg_dump", 16)
    on_path = fake_client(tmp_path / "bin", "pg_dump", 16)
    asked: list[Path] = []
    major = postgres._major

    def asking(path: Path) -> int | None:
        asked.append(path)
        return major(path)

    monkeypatch.setattr(postgres, "_major", asking)
    monkeypatch.setattr(postgres, "PACKAGED_CLIENTS", packaged)
    monkeypatch.setenv("PATH", str(on_path.parent))

    assert postgres.find_client("pg_dump", 16, None) == v16
    assert asked == [v16]
