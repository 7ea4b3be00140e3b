"""Sessions on a server: the admin's, on Vauban's registry database, to read the catalog and
apply plans; the tenant's, in its own database, for what must run there."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import time
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


DEAD_PEER = (
    "keepalives=1 keepalives_idle=10 keepalives_interval=5 keepalives_count=3"
    " tcp_user_timeout=15000"
)
"""A server that vanishes without closing its sessions (its pod's address gone in a failover,
its node lost) fails a session within about 25 s, instead of leaving a reconcile waiting on
it for the kernel's default of hours: kept admin sessions (AdminSessions) outlive pods."""


async def open_connection(
    address: ServerAddress, username: str, password: str, dbname: str
) -> Connection:
    """A session whose search_path is pinned at connect time (see PINNED_SEARCH_PATH): the
    only way Vauban connects with a role of its own, admin or tenant. The caller closes it."""
    # libpq reads the CA file during the handshake only: it may go once connected.
    with ssl_root_cert(address.ca_pem) as root_cert:
        return await psycopg.AsyncConnection.connect(
            DEAD_PEER,
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


@contextlib.asynccontextmanager
async def connect(
    address: ServerAddress, username: str, password: str, dbname: str
) -> AsyncIterator[Connection]:
    """`open_connection`, closed on leaving."""
    async with await open_connection(address, username, password, dbname) as connection:
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
        whether superuser, its memberships) comes with the roles', in the same round trip.
        Memberships are read among `roles` only: the admin is a member of every owner role
        of the server, and reading them all made each reconcile's cost grow with the
        server's databases."""
        conn = self.connection
        rows: list[Any] = await (
            await conn.execute(
                """
                SELECT r.rolname = CURRENT_USER, r.rolname, r.rolcanlogin, r.rolconnlimit,
                       r.rolsuper,
                       ARRAY(SELECT o.rolname
                               FROM pg_catalog.pg_roles o
                               JOIN pg_catalog.pg_auth_members m ON m.roleid = o.oid
                              WHERE o.rolname = ANY(%(roles)s) AND m.member = r.oid),
                       (SELECT pg_catalog.substring(c, '^role=(.*)$')
                          FROM pg_catalog.unnest(r.rolconfig) AS c
                         WHERE c OPERATOR(pg_catalog.~~) 'role=%%')
                  FROM pg_catalog.pg_roles r
                 WHERE r.rolname = ANY(%(roles)s) OR r.rolname = CURRENT_USER
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


async def _open_admin(admin: AdminCredentials) -> Connection:
    """The admin's session on the registry database, which is created on first use."""
    address, user, password = admin.address, admin.username, admin.password
    try:
        conn = await open_connection(address, user, password, registry.DATABASE)
    except psycopg.OperationalError:
        # libpq tells "no such database" and "no CONNECT privilege" only in a (localised)
        # message: prepare the registry from `postgres`, which is idempotent, then connect
        # again. A server that does not answer fails here a second time, as it should.
        async with connect(address, user, password, "postgres") as maintenance:
            await registry.prepare(maintenance)
        conn = await open_connection(address, user, password, registry.DATABASE)
    try:
        await registry.ensure_schema(conn)
    except BaseException:
        await conn.close()
        raise
    return conn


@dataclass
class _Idle:
    connection: Connection
    since: float


class AdminSessions:
    """The admin's sessions, kept open a few seconds between reconciles of the same server.

    A reconcile's SQL costs less than its connection (a backend forked and its catalog
    caches filled, SCRAM on both sides, TLS): in a burst, the reconciles of a cluster follow
    one another on the sessions their predecessors leave. A session is given back only
    when the reconcile using it ended normally with no transaction open, and is taken again
    only if the server has not spoken since (an idle session the server closed, on a restart
    or a failover, has sent its goodbye); one idle longer than `keep_seconds` is closed, so
    a quiet operator holds no connection, and no more than `keep_per_server` wait per
    server and admin. Keyed by the credentials themselves: a new admin password opens new
    sessions, and the old ones age out."""

    def __init__(self, *, keep_seconds: float = 10.0, keep_per_server: int = 8) -> None:
        self._keep, self._limit = keep_seconds, keep_per_server
        self._idle: dict[AdminCredentials, list[_Idle]] = {}
        self._reaper: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def session(self, admin: AdminCredentials) -> AsyncIterator[Server]:
        conn = self._take(admin) or await _open_admin(admin)
        reusable = False
        try:
            yield Server(conn)
            reusable = True
        finally:
            if reusable and self._still_usable(conn):
                self._give_back(admin, conn)
            else:
                await conn.close()

    def _take(self, admin: AdminCredentials) -> Connection | None:
        idle = self._idle.get(admin, [])
        while idle:
            conn = idle.pop().connection
            if self._still_usable(conn) and not _has_spoken(conn):
                return conn
            self._close_soon(conn)
        return None

    @staticmethod
    def _still_usable(conn: Connection) -> bool:
        status = conn.info.transaction_status
        return not conn.closed and not conn.broken and status == psycopg.pq.TransactionStatus.IDLE

    def _give_back(self, admin: AdminCredentials, conn: Connection) -> None:
        idle = self._idle.setdefault(admin, [])
        if len(idle) >= self._limit:
            self._close_soon(conn)
            return
        idle.append(_Idle(conn, time.monotonic()))
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap(), name="vauban-admin-sessions")

    async def _reap(self) -> None:
        try:
            while self._idle:
                now = time.monotonic()
                oldest = min(i.since for idle in self._idle.values() for i in idle)
                if (wait := oldest + self._keep - now) > 0:
                    await asyncio.sleep(wait)
                    continue
                # Taken out with no await in between: a reconcile taking or giving back a
                # session meanwhile would otherwise find it both in use and idle.
                for admin, idle in list(self._idle.items()):
                    expired = [i for i in idle if now - i.since >= self._keep]
                    idle[:] = [i for i in idle if now - i.since < self._keep]
                    if not idle:
                        del self._idle[admin]
                    for i in expired:
                        self._close_soon(i.connection)
        finally:
            self._reaper = None

    def _close_soon(self, conn: Connection) -> None:
        task = asyncio.create_task(conn.close(), name="vauban-admin-session-close")
        _CLOSING.add(task)
        task.add_done_callback(_CLOSING.discard)

    async def close(self) -> None:
        """Close every idle session (the process is stopping)."""
        idle, self._idle = self._idle, {}
        for sessions in idle.values():
            for i in sessions:
                await i.connection.close()


_CLOSING: set[asyncio.Task[None]] = set()
"""Closes under way: asyncio keeps only weak references to tasks."""


def _has_spoken(conn: Connection) -> bool:
    """Whether the server sent anything to an idle session: on an idle session it only
    speaks to end it (a termination's error, then EOF)."""
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


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
