"""Runs `vauban agent` against the session's PostgreSQL and versitygw, with the environment
the operator gives it: as a process (the real CLI and env contract) or in this process
(faster, for the many failure cases)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from vauban import cli
from vauban.backup.storage import ObjectStore
from vauban.devcluster.postgres import PostgresServer
from vauban.devcluster.s3 import S3Server

ROLE = "dp_agent"
PASSWORD = "dp-agent-password"
BUCKET = "dp-backups"
LOCKED_BUCKET = "dp-locked"


@dataclass(frozen=True)
class Outcome:
    code: int
    result: dict[str, Any]
    stderr: str

    @property
    def reason(self) -> str:
        return str(self.result["reason"])

    @property
    def manifest(self) -> dict[str, Any]:
        manifest = self.result["manifest"]
        assert isinstance(manifest, dict), self.result
        return manifest


class Agent:
    def __init__(self, postgres: PostgresServer, s3: S3Server, key: bytes) -> None:
        self.postgres = postgres
        self.s3 = s3
        self.key = key
        self.env: dict[str, str] = {
            "PGHOST": "127.0.0.1",
            "PGPORT": str(postgres.port),
            "PGUSER": ROLE,
            "PGPASSWORD": PASSWORD,
            "PGSSLMODE": "disable",
            "VAUBAN_S3_ENDPOINT": s3.endpoint,
            "VAUBAN_S3_REGION": s3.region,
            "VAUBAN_S3_BUCKET": BUCKET,
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "VAUBAN_DATA_KEY": base64.b64encode(key).decode(),
            "VAUBAN_DATA_KEY_ID": "dp/shop/1",
            "VAUBAN_DATABASE_NAMESPACE": "dataplane",
            "VAUBAN_DATABASE_NAME": "shop",
            "VAUBAN_DATABASE_UID": "dp-shop-uid",
        }

    def store(self, bucket: str = BUCKET) -> ObjectStore:
        return ObjectStore(
            self.s3.endpoint, self.s3.region, bucket, self.s3.access_key, self.s3.secret_key
        )

    def environment(self, overrides: dict[str, str | None]) -> dict[str, str]:
        env = {**self.env, **overrides}
        return {k: v for k, v in env.items() if v is not None}

    def process_env(self, overrides: dict[str, str | None]) -> dict[str, str]:
        inherited = {
            k: v for k, v in os.environ.items() if not k.startswith(("PG", "AWS_", "VAUBAN_"))
        }
        return {**inherited, **self.environment(overrides)}

    def popen(self, *args: str, **overrides: str | None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "vauban", "agent", *args],
            env=self.process_env(overrides),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, *args: str, **overrides: str | None) -> Outcome:
        """`vauban agent ...` as a process of its own."""
        process = self.popen(*args, **overrides)
        stdout, stderr = process.communicate(timeout=120)
        return _outcome(process.returncode, stdout, stderr)

    def call(self, monkeypatch: pytest.MonkeyPatch, *args: str, **overrides: str | None) -> Outcome:
        """`vauban agent ...` in this process, with the same environment."""
        for name in list(os.environ):
            if name.startswith(("PG", "AWS_", "VAUBAN_")):
                monkeypatch.delenv(name)
        for name, value in self.environment(overrides).items():
            monkeypatch.setenv(name, value)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.main(["agent", *args])
        return _outcome(code, out.getvalue(), "")


def _outcome(code: int, stdout: str, stderr: str) -> Outcome:
    lines = stdout.strip().splitlines()
    assert len(lines) == 1, f"one JSON line expected on stdout, got {stdout!r}\n{stderr}"
    return Outcome(code, json.loads(lines[0]), stderr)


# -- PostgreSQL -------------------------------------------------------------------------------


@contextlib.contextmanager
def connect(server: PostgresServer, dbname: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    with psycopg.connect(
        host="127.0.0.1",
        port=server.port,
        user=ROLE,
        password=PASSWORD,
        dbname=dbname,
        autocommit=True,
    ) as conn:
        yield conn


def create_database(server: PostgresServer, name: str) -> None:
    with server.superuser() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(ROLE)
            )
        )


def database_exists(server: PostgresServer, name: str) -> bool:
    with server.superuser() as conn:
        return (
            conn.execute("SELECT FROM pg_database WHERE datname = %s", (name,)).fetchone()
            is not None
        )


def user_tables(server: PostgresServer, dbname: str) -> list[str]:
    with connect(server, dbname) as conn:
        rows = conn.execute(
            "SELECT schemaname || '.' || tablename FROM pg_tables"
            " WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
        ).fetchall()
    return [str(r[0]) for r in rows]


def fingerprint(server: PostgresServer, dbname: str) -> dict[str, tuple[int, str]]:
    """Per table, its row count and a digest of its rows: equal fingerprints, equal data."""
    result = {}
    with connect(server, dbname) as conn:
        for table in user_tables(server, dbname):
            schema, name = table.split(".", 1)
            query = sql.SQL(
                "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '')"
                " FROM {}.{} t"
            ).format(sql.Identifier(schema), sql.Identifier(name))
            row = conn.execute(query).fetchone()
            assert row is not None
            result[table] = (int(row[0]), str(row[1]))
    return result


# -- versitygw --------------------------------------------------------------------------------


def multipart_uploads(s3: S3Server, bucket: str) -> list[Path]:
    """Multipart uploads in progress: versitygw keeps each in a folder until completed or
    aborted."""
    root = s3.data / bucket / ".sgwtmp" / "multipart"
    return (
        [upload for folder in root.glob("*") for upload in folder.iterdir()]
        if root.is_dir()
        else []
    )


def descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                found += [int(child), *descendants(int(child))]
    return found


def _is_dump(pid: int) -> bool:
    """pg_dump dumping (not `pg_dump --version`, which the agent runs first)."""
    try:
        return b"--snapshot=" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def pause_pg_dump_mid_upload(agent: subprocess.Popen[str] | int, s3: S3Server, bucket: str) -> int:
    """Hold the agent's pg_dump stopped once a multipart upload of its output is under way:
    the agent then waits, mid-upload, for data that does not come. pg_dump cannot finish
    before the upload starts: the agent buffers at most two parts ahead of it, and the test
    data is larger. It is throttled anyway (stopped half the time) so that a loaded machine
    that is slow to notice the upload does not let it finish. `agent` is the agent's process,
    or the pid of a process it runs under (the first dumping pg_dump there is the one).
    Returns pg_dump's pid."""

    def agent_alive() -> None:
        if not isinstance(agent, int):
            assert agent.poll() is None, agent.communicate()

    root = agent if isinstance(agent, int) else agent.pid
    deadline = time.monotonic() + 60
    dump = None
    while dump is None:
        agent_alive()
        assert time.monotonic() < deadline, "the agent did not start pg_dump"
        dump = next((c for c in descendants(root) if _is_dump(c)), None)
    try:
        while not multipart_uploads(s3, bucket):
            agent_alive()
            assert time.monotonic() < deadline, "no multipart upload started"
            os.kill(dump, signal.SIGCONT)
            time.sleep(0.01)
            os.kill(dump, signal.SIGSTOP)
            time.sleep(0.01)
    except ProcessLookupError:
        pytest.fail("pg_dump finished before the multipart upload started: dump more data")
    return dump
