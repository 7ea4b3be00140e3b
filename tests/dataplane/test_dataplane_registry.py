"""Vauban's registry on a real server: the first reconciles, side by side, create its role,
database and tables once, and none of them fails for it; what a publication records, in one
statement."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import psycopg
import pytest
from psycopg import sql

from vauban.devcluster.postgres import PostgresServer
from vauban.engines.postgres import registry
from vauban.reconcile.records import DatabaseRecord, Rotation

T = TypeVar("T")


@pytest.fixture
def scratch(postgres: PostgresServer) -> Iterator[str]:
    """A database of its own, as a new server's registry is."""
    name = f"registry_{uuid.uuid4().hex[:8]}"
    with postgres.superuser() as conn:
        if not conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", (registry.ROLE,)
        ).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(registry.ROLE)))
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(registry.ROLE)
            )
        )
    yield name
    with postgres.superuser() as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


async def first_use(
    postgres: PostgresServer, database: str, use: Callable[[registry.Connection], Awaitable[T]]
) -> T:
    """A session on the registry database, its tables ensured, then `use`d."""
    async with await psycopg.AsyncConnection.connect(
        host=str(postgres.root), port=postgres.port, user="postgres", dbname=database,
        autocommit=True,
    ) as conn:  # fmt: skip
        await registry.ensure_schema(conn)
        return await use(conn)


async def _nothing(conn: registry.Connection) -> None:
    return None


def on_registry(
    postgres: PostgresServer, database: str, use: Callable[[registry.Connection], Awaitable[T]]
) -> T:
    return asyncio.run(first_use(postgres, database, use))


def test_concurrent_first_uses_create_the_schema_once(
    postgres: PostgresServer, scratch: str
) -> None:
    async def burst() -> list[BaseException | None]:
        uses = (first_use(postgres, scratch, _nothing) for _ in range(12))
        return await asyncio.gather(*uses, return_exceptions=True)

    assert asyncio.run(burst()) == [None] * 12
    with postgres.superuser(scratch) as conn:
        tables = conn.execute(
            "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'vauban' ORDER BY 1"
        ).fetchall()
    assert tables == [("databases", registry.ROLE), ("logins", registry.ROLE)]


def test_concurrent_first_uses_on_a_new_server_prepare_the_registry_once() -> None:
    """The first reconciles of a burst on a server Vauban never used all find no registry
    database and prepare it side by side: none fails for it. Without their taking turns, a
    concurrent REVOKE on the new database or GRANT of its role failed some ("tuple
    concurrently updated", a duplicate key in pg_auth_members): 7 of 300 here, in rounds of
    30, and their databases showed a false ProvisioningFailed."""
    server = PostgresServer()
    server.start()
    try:
        server.create_role("admin", "secret", "CREATEROLE", "CREATEDB")

        async def burst() -> list[BaseException | None]:
            # Connected first, then all at once: the race is in the preparation itself.
            sessions = [
                await psycopg.AsyncConnection.connect(
                    host="127.0.0.1",
                    port=server.port,
                    user="admin",
                    password="secret",
                    dbname="postgres",
                    autocommit=True,
                )
                for _ in range(30)
            ]
            try:
                uses = (registry.prepare(conn) for conn in sessions)
                return await asyncio.gather(*uses, return_exceptions=True)
            finally:
                for conn in sessions:
                    await conn.close()

        for _ in range(5):
            with server.superuser() as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(registry.DATABASE))
                )
                conn.execute(
                    sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(registry.ROLE))
                )
            assert asyncio.run(burst()) == [None] * 30
            with server.superuser() as conn:
                row = conn.execute(
                    "SELECT pg_get_userbyid(datdba),"
                    " has_database_privilege('public', oid, 'CONNECT'),"
                    " pg_has_role('admin', %s, 'MEMBER') FROM pg_database WHERE datname = %s",
                    (registry.ROLE, registry.DATABASE),
                ).fetchone()
            assert row == (registry.ROLE, False, True)
    finally:
        server.destroy()


def test_a_publication_records_the_login_the_retiring_ones_and_the_rotation(
    postgres: PostgresServer, scratch: str
) -> None:
    uid = "uid-1"
    at = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    deadline = at + timedelta(hours=1)

    async def publish(conn: registry.Connection) -> DatabaseRecord | None:
        await registry.claim(conn, DatabaseRecord(uid, "team-a", "shop", "shop", "shop_owner"))
        await registry.claim(conn, DatabaseRecord("uid-2", "team-b", "crm", "crm", "crm_owner"))
        for uid_, role, generation in [
            (uid, "shop_login1", 1),
            (uid, "shop_login2", 2),
            ("uid-2", "crm_login1", 1),
        ]:
            await registry.add_login(conn, uid_, role, generation)
        await registry.published(conn, uid, "shop_login1", {})
        await registry.published(conn, "uid-2", "crm_login1", {})
        # A rotation: login2 published, login1 retiring; another database's login named
        # among the retiring is not touched (the record is this database's only).
        await registry.published(
            conn,
            uid,
            "shop_login2",
            {"shop_login1": deadline, "crm_login1": deadline, "shop_login2": deadline},
            Rotation("token-7", at),
        )
        return await registry.record_of(conn, uid)

    record = on_registry(postgres, scratch, publish)
    assert record is not None
    assert (record.rotation_token, record.last_rotation) == ("token-7", at)
    assert [(x.role, x.published, x.retire_after) for x in record.logins] == [
        ("shop_login1", True, deadline),
        ("shop_login2", True, None),
    ]

    async def other(conn: registry.Connection) -> DatabaseRecord | None:
        return await registry.record_of(conn, "uid-2")

    untouched = on_registry(postgres, scratch, other)
    assert untouched is not None and untouched.rotation_token is None
    assert [(x.role, x.retire_after) for x in untouched.logins] == [("crm_login1", None)]
