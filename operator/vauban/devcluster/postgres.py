"""A real PostgreSQL server on 127.0.0.1, from the machine's binaries (Debian's postgresql
package; `.ci/run` installs it): what the tests adopt in mode External, and what `make run`
starts for the external sample."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql

from vauban.devcluster.process import free_port, stop_process_group


def _bindir() -> Path:
    explicit = os.environ.get("VAUBAN_TEST_PG_BINDIR")
    if explicit:
        return Path(explicit)
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name),
    )
    if not candidates:
        raise RuntimeError("no PostgreSQL server found: install Debian's postgresql package")
    return candidates[-1].parent


class PostgresServer:
    """initdb, then postgres listening on 127.0.0.1 only, with SCRAM passwords over TCP and
    trust on its private Unix socket (for the suite's own setup)."""

    def __init__(
        self, port: int | None = None, *, netns: Path | None = None, host: str = "127.0.0.1"
    ) -> None:
        """With `netns` (the real node's namespace), it listens on `host` there, for pods;
        this machine still reaches it through its Unix socket."""
        self.netns = netns
        self.host = host
        self.bindir = _bindir()
        self.root = Path(tempfile.mkdtemp(prefix="vauban-pg-"))
        self.data = self.root / "data"
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        # initdb and postgres refuse to run as root: use the package's own user.
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            self._as_user = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
            shutil.chown(self.root, "postgres", "postgres")
        self._initdb()

    @property
    def version(self) -> str:
        with self.superuser() as conn:
            row = conn.execute("SHOW server_version").fetchone()
        assert row is not None
        return str(row[0]).split(" ", 1)[0]

    def _initdb(self) -> None:
        subprocess.run(
            [
                *self._as_user,
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
        )
        (self.data / "pg_hba.conf").write_text(
            # In the real node's namespace, its clients are pods (10.244.0.0/16): the namespace
            # has no route out, so no other client exists.
            "local all all trust\n"
            f"host all all {'0.0.0.0/0' if self.netns else '127.0.0.1/32'} scram-sha-256\n",
            encoding="utf-8",
        )

    def start(self) -> None:
        log = (self.root / "postgres.log").open("ab")
        self.process = subprocess.Popen(
            [
                *(["nsenter", f"--net={self.netns}", "--"] if self.netns else []),
                *self._as_user,
                str(self.bindir / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.root),
                "-c",
                f"listen_addresses={self.host}",
                "-c",
                "fsync=off",
                "-c",
                "password_encryption=scram-sha-256",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(psycopg.OperationalError), self.superuser():
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = (self.root / "postgres.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"PostgreSQL did not start:\n{tail}")
            time.sleep(0.1)

    def stop(self) -> None:
        stop_process_group(self.process, 20, first=signal.SIGINT)  # SIGINT: fast shutdown

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    @contextlib.contextmanager
    def superuser(
        self, dbname: str = "postgres"
    ) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
        with psycopg.connect(
            host=str(self.root), port=self.port, user="postgres", dbname=dbname, autocommit=True
        ) as conn:
            yield conn

    def create_role(self, name: str, password: str, *attributes: str) -> None:
        """A LOGIN role with a password and, e.g., CREATEROLE or CREATEDB."""
        allowed = {"CREATEROLE", "CREATEDB", "SUPERUSER"}
        assert set(attributes) <= allowed
        with self.superuser() as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} {}").format(
                    sql.Identifier(name),
                    sql.Literal(password),
                    sql.SQL(" ").join(sql.SQL(a) for a in attributes),
                )
            )
