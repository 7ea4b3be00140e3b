"""Read what a server has of one ManagedDatabase, and apply a plan to it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from vauban.engines.postgres.plan import Catalog, Plan, RoleState
from vauban.engines.postgres.probe import ServerAddress, ssl_root_cert

logger = logging.getLogger(__name__)


Connection = psycopg.AsyncConnection[tuple[object, ...]]


@dataclass(frozen=True)
class AdminCredentials:
    address: ServerAddress
    username: str
    password: str


@contextlib.asynccontextmanager
async def connect(admin: AdminCredentials, dbname: str = "postgres") -> AsyncIterator[Connection]:
    with ssl_root_cert(admin.address.ca_pem) as root_cert:
        connection = await psycopg.AsyncConnection.connect(
            host=admin.address.host,
            port=admin.address.port,
            user=admin.username,
            password=admin.password,
            dbname=dbname,
            sslmode=admin.address.ssl_mode,
            sslrootcert=root_cert,
            connect_timeout=5,
            application_name="vauban",
            autocommit=True,
        )
        async with connection:
            yield connection


class Server:
    """One admin session on a server's `postgres` database, for everything a reconcile
    reads and changes there: connecting costs more than the statements (TLS, SCRAM), so a
    reconcile connects once, plus once into the database itself when a step must run there
    (extensions)."""

    def __init__(self, admin: AdminCredentials, connection: Connection) -> None:
        self._admin = admin
        self._conn = connection

    async def catalog(self, database: str, owner: str) -> Catalog:
        conn = self._conn
        rows: list[Any] = await (
            await conn.execute(
                """
                SELECT r.rolname, r.rolcanlogin, r.rolconnlimit, r.rolsuper,
                       COALESCE(array_agg(o.rolname) FILTER (WHERE o.rolname IS NOT NULL), '{}'),
                       (SELECT substring(c FROM '^role=(.*)$')
                          FROM unnest(s.setconfig) AS c WHERE c LIKE 'role=%%')
                  FROM pg_roles r
                  LEFT JOIN pg_auth_members m ON m.member = r.oid
                  LEFT JOIN pg_roles o ON o.oid = m.roleid
                  LEFT JOIN pg_db_role_setting s ON s.setrole = r.oid AND s.setdatabase = 0
                 WHERE r.rolname = %(owner)s OR r.rolname = current_user
                    OR r.oid IN (SELECT member FROM pg_auth_members
                                  WHERE roleid = (SELECT oid FROM pg_roles
                                                   WHERE rolname = %(owner)s))
                 GROUP BY r.rolname, r.rolcanlogin, r.rolconnlimit, r.rolsuper, s.setconfig
                """,
                {"owner": owner},
            )
        ).fetchall()
        roles = {
            str(name): RoleState(
                can_login=bool(login),
                connection_limit=int(limit),
                member_of=frozenset(members),
                default_role=default_role,
                superuser=bool(superuser),
            )
            for name, login, limit, superuser, members, default_role in rows
        }
        admin_row = await (
            await conn.execute(
                "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user"
            )
        ).fetchone()
        assert admin_row is not None
        admin_name, superuser = str(admin_row[0]), bool(admin_row[1])
        db_row = await (
            await conn.execute(
                """
                SELECT pg_get_userbyid(d.datdba),
                       EXISTS (SELECT 1 FROM aclexplode(COALESCE(d.datacl,
                                   acldefault('d', d.datdba))) a
                                WHERE a.grantee = 0 AND a.privilege_type = 'CONNECT')
                  FROM pg_database d WHERE d.datname = %s
                """,
                (database,),
            )
        ).fetchone()
        extensions: frozenset[str] = frozenset()
        if db_row is not None:
            async with connect(self._admin, database) as db:
                names = await (await db.execute("SELECT extname FROM pg_extension")).fetchall()
                extensions = frozenset(str(n) for (n,) in names)
        admin_roles = roles.get(admin_name)
        return Catalog(
            roles={k: v for k, v in roles.items() if k != admin_name or k == owner},
            database_owner=None if db_row is None else str(db_row[0]),
            public_can_connect=bool(db_row[1]) if db_row else False,
            extensions=extensions,
            admin=admin_name,
            admin_is_superuser=superuser,
            admin_member_of=admin_roles.member_of if admin_roles else frozenset(),
        )

    async def apply(self, database: str, owner: str, plan: Plan) -> None:
        """Run a plan, phase by phase. Statements are never logged: one may carry a password
        verifier."""
        await self.run(plan.server)
        if plan.database:
            async with connect(self._admin, database) as conn:
                catalog_admin = await (
                    await conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
                ).fetchone()
                if not (catalog_admin and catalog_admin[0]):
                    await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
                await _run(conn, plan.database)
        await self.run(plan.retire)

    async def run(self, statements: Sequence[sql.Composed]) -> None:
        await _run(self._conn, statements)

    async def usage(self, databases: Collection[str], logins: Collection[str] = ()) -> Usage:
        """Size and sessions of many databases, and which of `logins` may still log in: at
        most two statements, however many databases the server holds."""
        rows = await (await self._conn.execute(_USAGE, (list(databases),))).fetchall()
        found: frozenset[str] = frozenset()
        if logins:
            roles = await (
                await self._conn.execute(
                    "SELECT rolname FROM pg_roles WHERE rolcanlogin AND rolname = ANY(%s)",
                    (list(logins),),
                )
            ).fetchall()
            found = frozenset(str(name) for (name,) in roles)
        return Usage(
            databases={
                str(name): DatabaseUsage(None if size is None else int(str(size)), int(str(n)))
                for name, size, n in rows
            },
            logins=found,
        )


@contextlib.asynccontextmanager
async def session(admin: AdminCredentials) -> AsyncIterator[Server]:
    async with connect(admin) as connection:
        yield Server(admin, connection)


async def _run(conn: Connection, statements: Sequence[sql.Composed]) -> None:
    for statement in statements:
        await conn.execute(statement)


@dataclass(frozen=True)
class DatabaseUsage:
    size_bytes: int | None
    """None when the admin role may not read it (neither CONNECT nor pg_read_all_stats)."""

    connections: int


@dataclass(frozen=True)
class Usage:
    databases: Mapping[str, DatabaseUsage]
    """By name; a database asked for and absent from the server is absent here."""

    logins: frozenset[str]
    """Of the roles asked for, those that exist and may log in."""


# pg_database_size needs CONNECT on the database (or pg_read_all_stats): without either, the
# size is left out rather than failing the query for every database of the server.
_USAGE = """
SELECT d.datname,
       CASE WHEN has_database_privilege(d.oid, 'CONNECT')
                 OR pg_has_role('pg_read_all_stats', 'USAGE')
            THEN pg_database_size(d.oid) END,
       (SELECT count(*) FROM pg_stat_activity a WHERE a.datid = d.oid)
  FROM pg_database d
 WHERE d.datname = ANY(%s)
"""
