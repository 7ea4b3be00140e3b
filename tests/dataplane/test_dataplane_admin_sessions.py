"""The admin's sessions kept between reconciles, on a real server: taken again while they
are fresh and sound, never after a failure, an open transaction or the server ending them,
and closed once idle for a while."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from vauban.devcluster.postgres import PostgresServer
from vauban.engines.postgres.catalog import AdminCredentials, AdminSessions, Server
from vauban.engines.postgres.probe import ServerAddress

PASSWORD = "admin-password-for-sessions"


@pytest.fixture
def admin(postgres: PostgresServer) -> AdminCredentials:
    name = f"sessions_{uuid.uuid4().hex[:8]}"
    postgres.create_role(name, PASSWORD, "CREATEROLE", "CREATEDB")
    return AdminCredentials(ServerAddress("127.0.0.1", postgres.port, "disable"), name, PASSWORD)


async def backend(server: Server) -> int:
    row = await (await server.connection.execute("SELECT pg_catalog.pg_backend_pid()")).fetchone()
    assert row is not None
    return int(str(row[0]))


def sessions_of(postgres: PostgresServer, admin: AdminCredentials) -> int:
    with postgres.superuser() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (admin.username,)
        ).fetchone()
    assert row is not None
    return int(str(row[0]))


def test_a_session_is_taken_again_while_fresh_and_closed_once_idle(
    postgres: PostgresServer, admin: AdminCredentials
) -> None:
    async def scenario() -> tuple[int, int, int]:
        sessions = AdminSessions(keep_seconds=0.5)
        async with sessions.session(admin) as server:
            first = await backend(server)
        async with sessions.session(admin) as server:
            again = await backend(server)
        idle = sessions_of(postgres, admin)
        await asyncio.sleep(1.5)
        return first, again, idle

    first, again, idle = asyncio.run(scenario())
    assert first == again and idle == 1
    assert sessions_of(postgres, admin) == 0


def test_a_session_is_not_taken_again_after_a_failure_or_with_a_transaction_open(
    admin: AdminCredentials,
) -> None:
    async def scenario() -> list[int]:
        sessions = AdminSessions()
        pids = []
        with pytest.raises(RuntimeError):
            async with sessions.session(admin) as server:
                pids.append(await backend(server))
                raise RuntimeError("the reconcile failed")
        async with sessions.session(admin) as server:
            pids.append(await backend(server))
            await server.connection.execute("BEGIN")
        async with sessions.session(admin) as server:
            pids.append(await backend(server))
        await sessions.close()
        return pids

    pids = asyncio.run(scenario())
    assert len(set(pids)) == 3


def test_a_session_the_server_ended_while_idle_is_not_taken_again(
    postgres: PostgresServer, admin: AdminCredentials
) -> None:
    async def scenario() -> tuple[int, int]:
        sessions = AdminSessions()
        async with sessions.session(admin) as server:
            first = await backend(server)
        with postgres.superuser() as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (first,))
        await asyncio.sleep(0.2)
        async with sessions.session(admin) as server:
            second = await backend(server)
        await sessions.close()
        return first, second

    first, second = asyncio.run(scenario())
    assert first != second


def test_a_session_gives_up_on_a_server_that_vanished_within_seconds(
    admin: AdminCredentials,
) -> None:
    """A kept session may outlive its server's address (a failover's deleted pod): libpq
    asks the kernel to give up on an unanswering peer in seconds, not the default hours."""

    async def scenario() -> dict[str, str]:
        sessions = AdminSessions()
        async with sessions.session(admin) as server:
            parameters = server.connection.info.get_parameters()
        await sessions.close()
        return parameters

    parameters = asyncio.run(scenario())
    assert parameters["keepalives"] == "1"
    assert (
        int(parameters["keepalives_idle"])
        + int(parameters["keepalives_interval"]) * int(parameters["keepalives_count"])
        <= 30
    )
    assert int(parameters["tcp_user_timeout"]) <= 30_000
