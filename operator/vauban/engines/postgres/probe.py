"""Connect to a PostgreSQL server as the admin role and report what Vauban needs to know:
reachable, credentials accepted, version, privileges, and on request the server's load
(sessions against max_connections, replicas and their lag, WAL and database sizes) and what
it says of TLS (ssl, and pg_hba's rules where the admin role may read them).

Every statement runs under a statement timeout and the whole probe under a deadline, so a
server that hangs costs a reconcile seconds, not forever. Reading the load never fails the
probe: what the admin role may not read (pg_ls_waldir needs pg_monitor) or what times out
is left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from vauban.reconcile.cluster import (
    ProbeOutcome,
    ReplicaHealth,
    RunningSetting,
    ServerHealth,
    ServerProbe,
)
from vauban.reconcile.compliance import HbaRule, ServerAudit, ServerTls

logger = logging.getLogger(__name__)

STATEMENT_TIMEOUT_MS = 3000
"""Each statement of a probe; a server that takes longer is too busy to be asked more."""

HEALTH_DEADLINE_SECONDS = 10.0
"""All the load queries together; what was not read by then is left out."""

PINNED_SEARCH_PATH = "-c search_path=pg_catalog,pg_temp"
"""libpq `options` of every privileged session. Pinned in the startup packet, which takes
precedence over what a role or database may set (ALTER ROLE/DATABASE ... SET search_path): no
object a tenant creates can shadow a catalog name, function or operator the operator uses."""

# SQLSTATE class 28: invalid authorization (wrong password, no pg_hba entry for the role).
_AUTH_SQLSTATES = ("28000", "28P01")


@dataclass(frozen=True)
class ServerAddress:
    host: str
    port: int
    ssl_mode: str
    ca_pem: str | None = None


@contextlib.contextmanager
def ssl_root_cert(ca_pem: str | None) -> Iterator[str | None]:
    """libpq reads the CA from a file: write it to one that lives as long as the connection."""
    if ca_pem is None:
        yield None
        return
    with tempfile.NamedTemporaryFile("w", suffix=".crt", prefix="vauban-ca-") as f:
        f.write(ca_pem)
        f.flush()
        yield f.name


async def probe(
    address: ServerAddress,
    username: str,
    password: str,
    *,
    connect_timeout: int = 5,
    health: bool = False,
    tls: bool = False,
    parameters: Sequence[str] = (),
    audit: bool = False,
) -> ServerProbe:
    """Connect, check the admin role; with `health`, read the server's load too; with `tls`,
    what the server says of TLS; with `parameters`, how it runs them; with `audit`, whether
    it runs pgaudit."""
    # libpq may try twice (sslmode prefer/allow), each within connect_timeout.
    deadline = 2 * connect_timeout + STATEMENT_TIMEOUT_MS / 1000
    with ssl_root_cert(address.ca_pem) as root_cert:
        try:
            async with asyncio.timeout(deadline) as answer:
                connection = await psycopg.AsyncConnection.connect(
                    host=address.host,
                    port=address.port,
                    user=username,
                    password=password,
                    dbname="postgres",
                    sslmode=address.ssl_mode,
                    sslrootcert=root_cert,
                    connect_timeout=connect_timeout,
                    application_name="vauban",
                    options=PINNED_SEARCH_PATH,
                    autocommit=True,
                )
                async with connection:
                    await connection.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
                    cursor = await connection.execute(
                        "SELECT current_setting('server_version'), current_user,"
                        " rolsuper, rolcreaterole, rolcreatedb"
                        " FROM pg_roles WHERE rolname = current_user"
                    )
                    row = await cursor.fetchone()
                    # The server answered: the load has a deadline of its own, and running
                    # out of it leaves fields out, it does not make the server unreachable.
                    answer.reschedule(None)
                    server_health = await read_health(connection) if health else None
                    server_tls = await read_tls(connection) if tls else None
                    settings = await read_settings(connection, parameters) if parameters else None
                    server_audit = await read_audit(connection) if audit else None
        except psycopg.OperationalError as e:
            return _failure(e)
        except TimeoutError:
            return ServerProbe(
                ProbeOutcome.UNREACHABLE, detail=f"no answer within {deadline:g} seconds"
            )
    assert row is not None
    version, role, superuser, create_role, create_db = row
    return ServerProbe(
        outcome=ProbeOutcome.OK,
        version=str(version).split(" ", 1)[0],
        role=str(role),
        superuser=bool(superuser),
        create_role=bool(create_role),
        create_db=bool(create_db),
        health=server_health,
        tls=server_tls,
        settings=settings,
        audit=server_audit,
    )


async def check_login(
    address: ServerAddress,
    username: str,
    password: str,
    dbname: str,
    *,
    connect_timeout: int = 3,
) -> ServerProbe:
    """Whether a tenant's login works: connect to its database with the credentials its
    Secret holds and run SELECT 1. AUTHENTICATION_FAILED when the server refused them (wrong
    password, login disabled, no pg_hba entry for this role from here); UNREACHABLE when it
    could not be asked, including a login at its connection limit (that passes by itself)."""
    deadline = 2 * connect_timeout + STATEMENT_TIMEOUT_MS / 1000
    with ssl_root_cert(address.ca_pem) as root_cert:
        try:
            async with asyncio.timeout(deadline):
                connection = await psycopg.AsyncConnection.connect(
                    host=address.host,
                    port=address.port,
                    user=username,
                    password=password,
                    dbname=dbname,
                    sslmode=address.ssl_mode,
                    sslrootcert=root_cert,
                    connect_timeout=connect_timeout,
                    application_name="vauban-login-check",
                    autocommit=True,
                )
                async with connection:
                    await connection.execute("SELECT 1")
        except psycopg.OperationalError as e:
            return _failure(e)
        except TimeoutError:
            return ServerProbe(
                ProbeOutcome.UNREACHABLE, detail=f"no answer within {deadline:g} seconds"
            )
    return ServerProbe(ProbeOutcome.OK, role=username)


Connection = psycopg.AsyncConnection[tuple[Any, ...]]


async def read_health(connection: Connection) -> ServerHealth:
    """The server's load, one query per aspect: a query that fails or times out leaves its
    fields out, the others are still read. Bounded by HEALTH_DEADLINE_SECONDS in all."""
    found: dict[str, Any] = {}
    reads: Sequence[tuple[str, Callable[[Connection], Awaitable[dict[str, Any]]]]] = (
        ("sessions", _sessions),
        ("replication", _replication),
        ("database sizes", _databases_bytes),
        ("WAL size", _wal_bytes),
    )
    try:
        async with asyncio.timeout(HEALTH_DEADLINE_SECONDS):
            for what, read in reads:
                try:
                    found.update(await read(connection))
                except psycopg.Error as e:
                    logger.info("health probe: %s not read: %s", what, _one_line(e))
    except TimeoutError:
        logger.info("health probe: stopped after %g seconds", HEALTH_DEADLINE_SECONDS)
    return ServerHealth(**found)


# Client sessions. Sessions of roles the admin has no privileges of show a NULL
# backend_type (without pg_read_all_stats): those attached to a database are counted as
# client sessions too (which may count an autovacuum worker or two).
_SESSIONS = """
SELECT (SELECT count(*) FROM pg_stat_activity
         WHERE backend_type = 'client backend'
            OR (backend_type IS NULL AND datid IS NOT NULL)),
       current_setting('max_connections')::int,
       pg_is_in_recovery()
"""


async def _sessions(connection: Connection) -> dict[str, Any]:
    row = await (await connection.execute(_SESSIONS)).fetchone()
    assert row is not None
    return {"connections": int(row[0]), "max_connections": int(row[1]), "in_recovery": row[2]}


# replay_lag is NULL once an idle standby has replayed everything (and for a role without
# pg_read_all_stats, which sees only application_name): caught up counts as 0. At most
# MAX_REPLICAS (9) rows, as status.health.replicas.
_REPLICATION = """
SELECT application_name, client_addr::text, pid, state,
       CASE WHEN replay_lag IS NOT NULL THEN extract(epoch FROM replay_lag)::float8
            WHEN state = 'streaming' AND replay_lsn >= sent_lsn THEN 0 END
  FROM pg_stat_replication
 ORDER BY application_name, client_addr, pid
 LIMIT 9
"""


async def _replication(connection: Connection) -> dict[str, Any]:
    rows = await (await connection.execute(_REPLICATION)).fetchall()
    return {"replicas": replicas_of(rows)}


def replicas_of(rows: Sequence[tuple[Any, ...]]) -> tuple[ReplicaHealth, ...]:
    """Rows of pg_stat_replication (application_name, client_addr, pid, state, lag), named
    by application_name; standbys that share one (the default is walreceiver) are told apart
    by their address, or their pid when the address is hidden."""
    names = [str(row[0] or "walreceiver") for row in rows]
    replicas = []
    for name, (_, address, pid, state, lag) in zip(names, rows, strict=True):
        if names.count(name) > 1:
            name = f"{name}@{address or pid}"
        replicas.append(
            ReplicaHealth(
                name=name[:253],
                state=None if state is None else str(state)[:32],
                lag_seconds=None if lag is None else max(0.0, float(lag)),
            )
        )
    return tuple(replicas)


# pg_database_size needs CONNECT on the database (or pg_read_all_stats): the total is
# reported only when every database is readable, never a partial sum.
_DATABASES = """
SELECT sum(CASE WHEN readable THEN pg_database_size(oid) END), bool_and(readable)
  FROM (SELECT oid, has_database_privilege(oid, 'CONNECT')
                    OR pg_has_role('pg_read_all_stats', 'USAGE') AS readable
          FROM pg_database) d
"""


async def _databases_bytes(connection: Connection) -> dict[str, Any]:
    row = await (await connection.execute(_DATABASES)).fetchone()
    if row is None or not row[1] or row[0] is None:
        return {}
    return {"databases_bytes": int(row[0])}


async def _wal_bytes(connection: Connection) -> dict[str, Any]:
    """pg_ls_waldir is for superusers and pg_monitor: asked first, so a role without it
    leaves no permission error in the server's log at every probe."""
    allowed = await (
        await connection.execute("SELECT has_function_privilege('pg_ls_waldir()', 'EXECUTE')")
    ).fetchone()
    if not (allowed and allowed[0]):
        return {}
    row = await (
        await connection.execute("SELECT coalesce(sum(size), 0) FROM pg_ls_waldir()")
    ).fetchone()
    return {} if row is None else {"wal_bytes": int(row[0])}


# pg_hba_file_rules is the file as on disk, in the order rules are tried (WITH ORDINALITY:
# line numbers repeat across included files). Superusers only, unless granted.
_HBA_READABLE = (
    "SELECT pg_catalog.current_setting('ssl'),"
    " pg_catalog.has_function_privilege('pg_catalog.pg_hba_file_rules()', 'EXECUTE')"
)
_HBA = """
SELECT r.line_number, r.type, r.database, r.user_name, r.address, r.netmask, r.auth_method,
       r.error
  FROM pg_catalog.pg_hba_file_rules() WITH ORDINALITY AS r
 ORDER BY r.ordinality
"""


async def read_tls(connection: Connection) -> ServerTls:
    """ssl and pg_hba's rules, within TLS_DEADLINE_SECONDS. pg_hba_file_rules is asked for
    only when the admin role may read it (as pg_ls_waldir above): what it may not, what
    fails or times out, is said, not raised."""
    ssl: bool | None = None
    try:
        async with asyncio.timeout(TLS_DEADLINE_SECONDS):
            row = await (await connection.execute(_HBA_READABLE)).fetchone()
            assert row is not None
            ssl, readable = row[0] == "on", bool(row[1])
            if not readable:
                return ServerTls(ssl, None, _HBA_NOT_GRANTED)
            rows = await (await connection.execute(_HBA)).fetchall()
    except (psycopg.Error, TimeoutError) as e:
        why = _one_line(e) if isinstance(e, psycopg.Error) else "no answer in time"
        logger.info("TLS probe: not read: %s", why)
        return ServerTls(ssl, None, why)
    return hba_of(ssl, rows)


_SETTINGS = """
SELECT s.name, f.setting, coalesce(f.applied, false), s.pending_restart
  FROM pg_catalog.pg_settings AS s
  LEFT JOIN LATERAL (
        SELECT x.setting, x.applied
          FROM pg_catalog.pg_file_settings AS x
         WHERE x.name OPERATOR(pg_catalog.=) s.name
         ORDER BY x.seqno DESC
         LIMIT 1
       ) AS f ON true
 WHERE s.name OPERATOR(pg_catalog.=) ANY (%s)
"""


async def read_settings(
    connection: Connection, names: Sequence[str]
) -> tuple[RunningSetting, ...] | None:
    """`names` as the server runs them, or None where pg_file_settings may not be read (it
    is for superusers) or does not answer in time: said, not raised."""
    try:
        async with asyncio.timeout(TLS_DEADLINE_SECONDS):
            rows = await (await connection.execute(_SETTINGS, (list(names),))).fetchall()
    except (psycopg.Error, TimeoutError) as e:
        why = _one_line(e) if isinstance(e, psycopg.Error) else "no answer in time"
        logger.info("settings probe: not read: %s", why)
        return None
    return tuple(
        RunningSetting(
            str(name), None if value is None else str(value), bool(applied), bool(pending)
        )
        for name, value, applied, pending in rows
    )


# pgaudit defines pgaudit.log (context superuser) when it is loaded; a mere placeholder (an
# ALTER SYSTEM of a library never loaded) has context user. Readable by any role, unlike
# shared_preload_libraries.
_AUDIT = """
SELECT s.setting
  FROM pg_catalog.pg_settings AS s
 WHERE s.name OPERATOR(pg_catalog.=) 'pgaudit.log'
   AND s.context OPERATOR(pg_catalog.=) 'superuser'
"""


async def read_audit(connection: Connection) -> ServerAudit:
    """Whether pgaudit runs, and what it logs: what fails or times out is said, not raised."""
    try:
        async with asyncio.timeout(TLS_DEADLINE_SECONDS):
            row = await (await connection.execute(_AUDIT)).fetchone()
    except (psycopg.Error, TimeoutError) as e:
        why = _one_line(e) if isinstance(e, psycopg.Error) else "no answer in time"
        logger.info("audit probe: not read: %s", why)
        return ServerAudit.not_observed(why)
    return ServerAudit(loaded=row is not None, log=None if row is None else str(row[0]))


TLS_DEADLINE_SECONDS = 5.0
_HBA_NOT_GRANTED = "the admin role may not read pg_hba_file_rules (superusers, or a GRANT)"


def hba_of(ssl: bool, rows: Sequence[tuple[Any, ...]]) -> ServerTls:
    """Rows of pg_hba_file_rules (line, type, databases, users, address, netmask, method,
    error). A line that does not parse (an error, no type) means the file is not what the
    server runs: a reload keeps the rules it had, which no view shows. A rule with a warning
    (`hostssl` while ssl is off) is loaded, and judged."""
    broken = [(line, error) for line, type_, *_, error in rows if error and type_ is None]
    if broken:
        line, error = broken[0]
        return ServerTls(
            ssl,
            None,
            f"pg_hba.conf has an error at line {line} ({error}): the server keeps the rules "
            "it loaded before",
        )
    return ServerTls(
        ssl,
        tuple(
            HbaRule(
                line=int(line),
                type=str(type_),
                databases=tuple(databases or ()),
                users=tuple(users or ()),
                address=address,
                netmask=netmask,
                method=str(method),
            )
            for line, type_, databases, users, address, netmask, method, _ in rows
        ),
    )


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__


# What libpq says when the server refused the login (psycopg has no SQLSTATE for errors
# raised while connecting).
_AUTH_MESSAGES = (
    "password authentication failed",
    "no pg_hba.conf entry",
    'role "',
    "SCRAM authentication",
)


# Refusals that pass by themselves: a login at its connection limit, a full server.
_BUSY_MESSAGES = ("too many connections", "too many clients", "the database system is")


def _failure(error: psycopg.OperationalError) -> ServerProbe:
    """Classify a failed connection. The detail is libpq's own message, which names the server
    and the problem but never the password."""
    text = " ".join(str(error).split()) or type(error).__name__
    if any(m in text for m in _BUSY_MESSAGES):
        return ServerProbe(ProbeOutcome.UNREACHABLE, detail=text[:500])
    if error.sqlstate in _AUTH_SQLSTATES or any(m in text for m in _AUTH_MESSAGES):
        return ServerProbe(ProbeOutcome.AUTHENTICATION_FAILED, detail=text[:500])
    return ServerProbe(ProbeOutcome.UNREACHABLE, detail=text[:500])
