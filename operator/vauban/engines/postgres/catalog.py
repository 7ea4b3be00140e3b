"""Sessions on a server: the admin's, on Vauban's registry database, to read the catalog and
apply plans; the tenant's, in its own database, for what must run there."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from vauban.engines.postgres import registry
from vauban.engines.postgres.plan import Catalog, RoleState
from vauban.engines.postgres.probe import PINNED_SEARCH_PATH, ServerAddress, ssl_root_cert
from vauban.engines.postgres.scram import verifier
from vauban.reconcile.records import DatabaseRecord, Rotation

logger = logging.getLogger(__name__)


Connection = psycopg.AsyncConnection[tuple[object, ...]]


@dataclass(frozen=True)
class AdminCredentials:
    address: ServerAddress
    username: str
    password: str


@contextlib.asynccontextmanager
async def connect(
    address: ServerAddress, username: str, password: str, dbname: str
) -> AsyncIterator[Connection]:
    """A session whose search_path is pinned at connect time (see PINNED_SEARCH_PATH): the
    only way Vauban connects with a role of its own, admin or tenant."""
    with ssl_root_cert(address.ca_pem) as root_cert:
        connection = await psycopg.AsyncConnection.connect(
            host=address.host,
            port=address.port,
            user=username,
            password=password,
            dbname=dbname,
            sslmode=address.ssl_mode,
            sslrootcert=root_cert,
            connect_timeout=5,
            application_name="vauban",
            options=PINNED_SEARCH_PATH,
            autocommit=True,
        )
        async with connection:
            yield connection


class Server:
    """One admin session on the server's registry database, for everything a reconcile reads
    and changes there: connecting costs more than the statements (TLS, SCRAM), so a reconcile
    connects once. The admin never connects into a tenant's database."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        """On the registry database: engines.postgres.registry reads and writes through it."""

    async def password_verifier(self, role: str, password: str) -> str:
        """The SCRAM verifier of a new login's password, by libpq on this session
        (engines.postgres.scram). PBKDF2 at the server's iteration count is CPU work: off the
        event loop; nothing else uses the session meanwhile, and libpq sends nothing."""
        return await asyncio.to_thread(verifier, self.connection.pgconn, role, password)

    async def catalog(self, database: str, roles: Collection[str]) -> Catalog:
        """The state of `roles` (the owner, the logins) and of `database`, from the shared
        catalogs: no session inside the database is needed. The admin's own row (who it is,
        whether superuser, its memberships) comes with the roles', in the same round trip."""
        conn = self.connection
        rows: list[Any] = await (
            await conn.execute(
                """
                SELECT r.rolname = CURRENT_USER, r.rolname, r.rolcanlogin, r.rolconnlimit,
                       r.rolsuper,
                       COALESCE(pg_catalog.array_agg(o.rolname)
                                FILTER (WHERE o.rolname IS NOT NULL), '{}'),
                       (SELECT pg_catalog.substring(c, '^role=(.*)$')
                          FROM pg_catalog.unnest(s.setconfig) AS c
                         WHERE c OPERATOR(pg_catalog.~~) 'role=%%')
                  FROM pg_catalog.pg_roles r
                  LEFT JOIN pg_catalog.pg_auth_members m ON m.member = r.oid
                  LEFT JOIN pg_catalog.pg_roles o ON o.oid = m.roleid
                  LEFT JOIN pg_catalog.pg_db_role_setting s
                         ON s.setrole = r.oid AND s.setdatabase = 0
                 WHERE r.rolname = ANY(%(roles)s) OR r.rolname = CURRENT_USER
                 GROUP BY r.rolname, r.rolcanlogin, r.rolconnlimit, r.rolsuper, s.setconfig
                """,
                {"roles": list(roles)},
            )
        ).fetchall()
        found = {
            str(name): RoleState(
                can_login=bool(login),
                connection_limit=int(limit),
                member_of=frozenset(members),
                default_role=default_role,
                superuser=bool(superuser),
            )
            for _, name, login, limit, superuser, members, default_role in rows
        }
        admin_name = next(str(row[1]) for row in rows if row[0])
        superuser = found[admin_name].superuser
        db_row = await (
            await conn.execute(
                """
                SELECT pg_catalog.pg_get_userbyid(d.datdba),
                       EXISTS (SELECT 1 FROM pg_catalog.aclexplode(COALESCE(d.datacl,
                                   pg_catalog.acldefault('d', d.datdba))) a
                                WHERE a.grantee = 0 AND a.privilege_type = 'CONNECT')
                  FROM pg_catalog.pg_database d WHERE d.datname = %s
                """,
                (database,),
            )
        ).fetchone()
        admin_roles = found.get(admin_name)
        return Catalog(
            roles={k: v for k, v in found.items() if k != admin_name or k in roles},
            database_owner=None if db_row is None else str(db_row[0]),
            public_can_connect=bool(db_row[1]) if db_row else False,
            admin=admin_name,
            admin_is_superuser=superuser,
            admin_member_of=admin_roles.member_of if admin_roles else frozenset(),
        )

    async def run(self, statements: Sequence[sql.Composed]) -> None:
        """Statements are never logged: one may carry a password verifier."""
        await _run(self.connection, statements)

    async def usage(self, databases: Collection[str], logins: Collection[str] = ()) -> Usage:
        """Size and sessions of many databases, and which of `logins` may still log in: at
        most two statements, however many databases the server holds."""
        rows = await (await self.connection.execute(_USAGE, (list(databases),))).fetchall()
        found: frozenset[str] = frozenset()
        if logins:
            roles = await (
                await self.connection.execute(
                    "SELECT rolname FROM pg_catalog.pg_roles"
                    " WHERE rolcanlogin AND rolname = ANY(%s)",
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

    # The registry, on this same session: a reconcile reads and writes both at once.

    async def record_of(self, uid: str) -> DatabaseRecord | None:
        return await registry.record_of(self.connection, uid)

    async def holder_of(self, database: str, owner: str) -> tuple[str, str, str] | None:
        return await registry.holder_of(self.connection, database, owner)

    async def claim(self, record: DatabaseRecord) -> None:
        await registry.claim(self.connection, record)

    async def add_login(self, uid: str, role: str, generation: int) -> None:
        await registry.add_login(self.connection, uid, role, generation)

    async def published(
        self,
        uid: str,
        login: str,
        retiring: Mapping[str, datetime],
        rotation: Rotation | None = None,
    ) -> None:
        await registry.published(self.connection, uid, login, retiring, rotation)

    async def forget_logins(self, uid: str, roles: Collection[str]) -> None:
        await registry.forget_logins(self.connection, uid, roles)

    async def set_extensions(self, uid: str, extensions: Collection[str]) -> None:
        await registry.set_extensions(self.connection, uid, extensions)

    async def retain(self, uid: str) -> None:
        await registry.retain(self.connection, uid)

    async def forget(self, uid: str) -> None:
        await registry.forget(self.connection, uid)


@contextlib.asynccontextmanager
async def session(admin: AdminCredentials) -> AsyncIterator[Server]:
    """The admin's session on the registry database, which is created on first use."""
    address, user, password = admin.address, admin.username, admin.password
    async with contextlib.AsyncExitStack() as stack:
        try:
            conn = await stack.enter_async_context(
                connect(address, user, password, registry.DATABASE)
            )
        except psycopg.OperationalError:
            # libpq tells "no such database" and "no CONNECT privilege" only in a (localised)
            # message: prepare the registry from `postgres`, which is idempotent, then connect
            # again. A server that does not answer fails here a second time, as it should.
            async with connect(address, user, password, "postgres") as maintenance:
                await registry.prepare(maintenance)
            conn = await stack.enter_async_context(
                connect(address, user, password, registry.DATABASE)
            )
        await registry.ensure_schema(conn)
        yield Server(conn)


class TenantSession:
    """A session of the tenant's own login in its own database: what must run there runs
    with the tenant's privileges and nothing more."""

    def __init__(self, connection: Connection) -> None:
        self._conn = connection

    async def extensions(self) -> frozenset[str]:
        rows = await (
            await self._conn.execute("SELECT extname FROM pg_catalog.pg_extension")
        ).fetchall()
        return frozenset(str(name) for (name,) in rows)

    async def run(self, statements: Sequence[sql.Composed]) -> None:
        await _run(self._conn, statements)


@contextlib.asynccontextmanager
async def tenant_session(
    address: ServerAddress, username: str, password: str, database: str
) -> AsyncIterator[TenantSession]:
    async with connect(address, username, password, database) as conn:
        yield TenantSession(conn)


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
       CASE WHEN pg_catalog.has_database_privilege(d.oid, 'CONNECT')
                 OR pg_catalog.pg_has_role('pg_read_all_stats', 'USAGE')
            THEN pg_catalog.pg_database_size(d.oid) END,
       (SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity a WHERE a.datid = d.oid)
  FROM pg_catalog.pg_database d
 WHERE d.datname = ANY(%s)
"""
