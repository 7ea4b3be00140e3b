"""PostgreSQL for the fleet benchmark: the project's PostgresServer with pg_stat_statements
and connection logging turned on (through ALTER SYSTEM and a restart: PostgresServer has no
hook for extra settings), the counts read back per role, and the raw-SQL reference."""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from vauban.devcluster.postgres import PostgresServer
from vauban.engines.postgres.plan import Catalog, Desired, Login, plan
from vauban.engines.postgres.scram import new_password, verifier

ADMIN_PASSWORD = "bench-admin-password"  # noqa: S105 - a throw-away loopback server

# What one more database takes on disk: a copy of template1, 7.5 MB on PostgreSQL 15
# (measured: pg_database_size of a fresh database); each server's WAL may reach max_wal_size
# (1 GB) on top. At N = 10,000 that is some 75 GB: a run that cannot fit is refused before
# it starts rather than failing half-way with a full disk.
DATABASE_BYTES = 7_600_000
SERVER_BYTES = 1_300_000_000


def start_server(max_connections: int) -> PostgresServer:
    """A fresh server (initdb), with the settings appended to its postgresql.conf before its
    first start: PostgresServer has no hook for extra settings."""
    server = PostgresServer()
    settings = {
        "shared_preload_libraries": "'pg_stat_statements'",
        # Every distinct CREATE ROLE/DATABASE is its own entry: room for all of them.
        "pg_stat_statements.max": "200000",
        "pg_stat_statements.track_utility": "on",
        "log_connections": "on",
        "max_connections": str(max_connections),
    }
    with (server.data / "postgresql.conf").open("a", encoding="utf-8") as f:
        f.write("\n# vauban fleet benchmark\n")
        f.writelines(f"{k} = {v}\n" for k, v in settings.items())
    server.start()
    with server.superuser() as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    return server


def check_disk(databases: int, servers: int) -> None:
    """Refuses a run whose databases cannot fit where the servers keep their data (TMPDIR,
    as PostgresServer uses tempfile)."""
    where = tempfile.gettempdir()
    needed = databases * DATABASE_BYTES + servers * SERVER_BYTES
    free = shutil.disk_usage(where).free
    if free < needed:
        raise RuntimeError(
            f"{databases} databases on {servers} server(s) need about {needed / 1e9:.0f} GB "
            f"in {where}, {free / 1e9:.0f} GB free: set TMPDIR to a larger filesystem"
        )


def create_admin(server: PostgresServer, name: str, superuser: bool = False) -> None:
    """An admin as the README asks of an adopted server: CREATEROLE, CREATEDB, and
    pg_signal_backend so retired logins' sessions can be ended. provider-sql's is a
    superuser, as in its examples: it runs CREATE DATABASE ... OWNER <role> without first
    making itself a member of the role, which PostgreSQL refuses to anyone else."""
    attributes = ("SUPERUSER",) if superuser else ("CREATEROLE", "CREATEDB")
    server.create_role(name, ADMIN_PASSWORD, *attributes)
    with server.superuser() as conn:
        conn.execute(sql.SQL("GRANT pg_signal_backend TO {}").format(sql.Identifier(name)))


def log_path(server: PostgresServer) -> Path:
    return server.root / "postgres.log"


def log_offset(server: PostgresServer) -> int:
    return log_path(server).stat().st_size


def reset_statements(server: PostgresServer) -> None:
    with server.superuser() as conn:
        conn.execute("SELECT pg_stat_statements_reset()")


def mark(servers: list[PostgresServer]) -> list[int]:
    """Starts a window on every server: statements reset, each log's offset returned (for
    `counts_over`)."""
    for server in servers:
        reset_statements(server)
    return [log_offset(server) for server in servers]


_CONNECTION = re.compile(rb"connection authorized: user=(\S+)")


@dataclass
class SqlCounts:
    statements: int
    by_kind: dict[str, int]
    connections: int
    connections_by_user: dict[str, int]
    exec_seconds: float
    exec_seconds_by_kind: dict[str, float]
    slowest: list[tuple[str, int, float]]
    """The statements (as pg_stat_statements normalises them) with the most time in all."""

    # Statements and connections of each server, when there are several: how evenly the
    # operator's work spread.
    per_server: list[tuple[int, int]] = field(default_factory=list)

    def summary(self, per: int = 1) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if len(self.per_server) > 1:
            extra["per_server"] = [
                {"statements": st, "connections": co} for st, co in self.per_server
            ]
        return {
            "statements": self.statements,
            "statements_per_object": round(self.statements / per, 2),
            "by_kind_per_object": {k: round(v / per, 2) for k, v in self.by_kind.items()},
            "connections": self.connections,
            "connections_per_object": round(self.connections / per, 2),
            "connections_by_user": self.connections_by_user,
            "server_exec_seconds": round(self.exec_seconds, 2),
            # Where the server's time goes (lock waits included), not only how many.
            "server_exec_seconds_by_kind": {
                k: round(v, 2) for k, v in self.exec_seconds_by_kind.items()
            },
            "server_slowest_statements": [
                {"query": q, "calls": c, "seconds": round(t, 2)} for q, c, t in self.slowest
            ],
            **extra,
        }


def _kind(query: str) -> str:
    words = query.upper().split()
    if not words:
        return "?"
    if words[0] in ("CREATE", "ALTER", "DROP") and len(words) > 1:
        return f"{words[0]} {words[1]}"
    return "SELECT" if words[0] == "WITH" else words[0]


def counts_over(servers: list[PostgresServer], admin: str, log_from: list[int]) -> SqlCounts:
    """`counts` of every server (`log_from` from `mark`), summed."""
    each = [counts(server, admin, offset) for server, offset in zip(servers, log_from, strict=True)]
    by_kind: Counter[str] = Counter()
    by_user: Counter[str] = Counter()
    seconds_by_kind: Counter[str] = Counter()
    for c in each:
        by_kind.update(c.by_kind)
        by_user.update(c.connections_by_user)
        seconds_by_kind.update(c.exec_seconds_by_kind)
    return SqlCounts(
        statements=sum(c.statements for c in each),
        by_kind=dict(by_kind.most_common()),
        connections=sum(c.connections for c in each),
        connections_by_user=dict(by_user),
        exec_seconds=sum(c.exec_seconds for c in each),
        exec_seconds_by_kind=dict(seconds_by_kind.most_common()),
        slowest=sorted((s for c in each for s in c.slowest), key=lambda s: -s[2])[:10],
        per_server=[(c.statements, c.connections) for c in each],
    )


def counts(server: PostgresServer, admin: str, log_from: int) -> SqlCounts:
    """Statements run since the last reset (pg_stat_statements) and connections opened since
    `log_from` (the server's log) by every role but the benchmark's own superuser: the admin
    the subject connects as, and the tenants' logins (which the operator uses to check that
    a tenant's credentials work)."""
    with server.superuser() as conn:
        rows = conn.execute(
            """
            SELECT r.rolname, s.query, s.calls, s.total_exec_time
              FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid
             WHERE r.rolname <> 'postgres'
            """
        ).fetchall()
    by_kind: Counter[str] = Counter()
    ms_by_kind: Counter[str] = Counter()
    total, exec_ms = 0, 0.0
    for _, query, calls, ms in rows:
        total += calls
        exec_ms += ms
        by_kind[_kind(query)] += calls
        ms_by_kind[_kind(query)] += ms
    connections: Counter[str] = Counter()
    with log_path(server).open("rb") as f:
        f.seek(log_from)
        for line in f:
            m = _CONNECTION.search(line)
            if m:
                user = m.group(1).decode()
                if user != "postgres":
                    connections[user if user == admin else "tenant logins"] += 1
    return SqlCounts(
        statements=total,
        by_kind=dict(by_kind.most_common()),
        connections=sum(connections.values()),
        connections_by_user=dict(connections),
        exec_seconds=exec_ms / 1000,
        exec_seconds_by_kind={k: ms / 1000 for k, ms in ms_by_kind.most_common()},
        slowest=[
            (" ".join(str(q).split())[:160], int(c), ms / 1000)
            for _, q, c, ms in sorted(rows, key=lambda r: -r[3])[:10]
        ],
    )


# -- the raw-SQL reference ------------------------------------------------------------------


def raw_sql(
    servers: list[PostgresServer],
    admin: str,
    names: list[tuple[int, str, str, str]],
    workers: int,
) -> dict[str, Any]:
    """The statements Vauban's planner emits for a new database (the same pure `plan`, on an
    empty catalog), issued directly with psycopg over `workers` long-lived connections as the
    admin: the floor for the SQL side. `names`: (server index, database, owner, login). With
    several servers, each worker keeps one connection to each server it has work for."""
    catalog = Catalog(roles={}, database_owner=None, admin=admin)

    def connect(server: PostgresServer) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(
            host="127.0.0.1",
            port=server.port,
            user=admin,
            password=ADMIN_PASSWORD,
            dbname="postgres",
            autocommit=True,
        )

    # Verifiers are made by libpq on a server connection (the server's iteration count, the
    # same on every server here), as Vauban makes them; before the clock starts, as the
    # planner's inputs.
    with connect(servers[0]) as first:
        plans = [
            (
                k,
                plan(
                    Desired(
                        database=d,
                        owner=o,
                        login=Login(login, verifier(first.pgconn, login, new_password())),
                    ),
                    catalog,
                ),
            )
            for k, d, o, login in names
        ]
    queue = list(reversed(plans))
    lock = threading.Lock()
    errors: list[BaseException] = []
    statements = 0
    opened = 0

    def work() -> None:
        nonlocal statements, opened
        conns: dict[int, psycopg.Connection[tuple[Any, ...]]] = {}
        try:
            while True:
                with lock:
                    if not queue or errors:
                        return
                    k, p = queue.pop()
                try:
                    if k not in conns:
                        conns[k] = connect(servers[k])
                        with lock:
                            opened += 1
                    for statement in p.server:
                        conns[k].execute(statement)
                    with lock:
                        statements += len(p.server)
                except BaseException as e:
                    with lock:
                        errors.append(e)
        finally:
            for conn in conns.values():
                conn.close()

    started = time.monotonic()
    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    if errors:
        raise errors[0]
    return {
        "seconds": round(elapsed, 3),
        "statements": statements,
        "statements_per_object": round(statements / len(names), 2),
        "connections": opened,
        "workers": workers,
        "servers": len(servers),
    }
