"""Vauban's registry on a new server: the first reconciles, side by side, create its tables
once, and none of them fails for it."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
from psycopg import sql

from vauban.devcluster.postgres import PostgresServer
from vauban.engines.postgres import registry


def test_concurrent_first_uses_create_the_schema_once(postgres: PostgresServer) -> None:
    # A database of its own, as a new server's registry is: the session's is already set up.
    scratch = f"registry_{uuid.uuid4().hex[:8]}"
    with postgres.superuser() as conn:
        if not conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", (registry.ROLE,)
        ).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(registry.ROLE)))
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(scratch), sql.Identifier(registry.ROLE)
            )
        )

    async def first_use() -> None:
        async with await psycopg.AsyncConnection.connect(
            host=str(postgres.root), port=postgres.port, user="postgres", dbname=scratch,
            autocommit=True,
        ) as conn:  # fmt: skip
            await registry.ensure_schema(conn)

    async def burst() -> list[BaseException | None]:
        return await asyncio.gather(*(first_use() for _ in range(12)), return_exceptions=True)

    try:
        assert asyncio.run(burst()) == [None] * 12
        with postgres.superuser(scratch) as conn:
            tables = conn.execute(
                "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'vauban' ORDER BY 1"
            ).fetchall()
        assert tables == [("databases", registry.ROLE), ("logins", registry.ROLE)]
    finally:
        with postgres.superuser() as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(scratch)))
