"""Vauban's record, on each server, of what it created there and for which ManagedDatabase.

Status is observation; this record is the authority. Which roles and databases a
ManagedDatabase (by UID) owns, which of its logins are current or retiring and until when,
which extensions Vauban created, when the credentials were last rotated: every decision to
create, grant, rotate or drop is taken from here, and a status wiped or forged changes
nothing of it.

The record lives on the server itself, so it is shared by every ManagedCluster object that
adopts the same server (ownership is server-wide, whichever object asks), in a database of its
own (`vauban`) that only members of the NOLOGIN role `vauban_registry` may connect to: the
operator's admin role is one, no tenant role ever is. That database is also the operator's
maintenance database: its sessions never enter a database a tenant controls.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors, sql

from vauban.reconcile.records import DatabaseRecord, LoginRecord, Rotation

logger = logging.getLogger(__name__)

DATABASE = "vauban"
ROLE = "vauban_registry"

Connection = psycopg.AsyncConnection[tuple[object, ...]]


class RegistryUnusable(Exception):
    """The server's registry cannot be created or used by this admin role: said to the user
    as is (the message names what to do), never worked around."""


# -- bootstrap -------------------------------------------------------------------------------


PREPARE_LOCK = 0x7661_7562_7072
"""The advisory lock (in the maintenance database) under which the registry is prepared."""


async def prepare(maintenance: Connection) -> None:
    """Create the registry's role and database if the server has none, and make the current
    (admin) role a member. Runs on a session of another database (`postgres`).

    The first reconciles of a burst on a new server all find no registry and prepare it
    side by side: the same REVOKE on the new database, or GRANT of its role, from two
    sessions at once fails one of them ("tuple concurrently updated", or a duplicate key in
    pg_auth_members), and its database would show a false ProvisioningFailed. They take
    turns under a session lock (CREATE DATABASE cannot run in a transaction, so not a
    transaction's lock), and those after the first find it done. Each step still tolerates
    another session having done it, for one that did not take the lock."""
    await maintenance.execute("SELECT pg_catalog.pg_advisory_lock(%s)", (PREPARE_LOCK,))
    try:
        await _prepare(maintenance)
    finally:
        if not maintenance.broken:  # a lost session's locks went with it
            await maintenance.execute("SELECT pg_catalog.pg_advisory_unlock(%s)", (PREPARE_LOCK,))


async def _prepare(maintenance: Connection) -> None:
    row = await (
        await maintenance.execute(
            "SELECT r.rolsuper,"
            " (SELECT pg_catalog.pg_get_userbyid(d.datdba) FROM pg_catalog.pg_database d"
            "   WHERE d.datname = %(db)s),"
            " EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %(role)s)"
            " FROM pg_catalog.pg_roles r WHERE r.rolname = CURRENT_USER",
            {"db": DATABASE, "role": ROLE},
        )
    ).fetchone()
    assert row is not None
    superuser, db_owner, role_exists = bool(row[0]), row[1], bool(row[2])
    if db_owner is not None and db_owner != ROLE:
        raise RegistryUnusable(
            f"the server has a database {DATABASE} owned by {db_owner}, not by {ROLE}: it is "
            f"not Vauban's registry. Rename or drop it (Vauban reserves the name)."
        )
    try:
        if not role_exists:
            await _tolerating(
                maintenance,
                sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(ROLE)),
                errors.DuplicateObject,
                errors.UniqueViolation,
            )
        if not superuser:
            await maintenance.execute(
                sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(ROLE))
            )
        if db_owner is None:
            await _tolerating(
                maintenance,
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(DATABASE), sql.Identifier(ROLE)
                ),
                errors.DuplicateDatabase,
                errors.UniqueViolation,
            )
            await maintenance.execute(
                sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(DATABASE))
            )
    except errors.InsufficientPrivilege as e:
        raise RegistryUnusable(
            f"the admin role may not join {ROLE}, the role that owns Vauban's registry on this "
            f"server ({e.diag.message_primary}). Every ManagedCluster adopting one server must "
            f"use admin roles that are members of {ROLE}: GRANT {ROLE} TO <admin role>."
        ) from e


async def _tolerating(
    conn: Connection, statement: sql.Composed, *tolerated: type[psycopg.Error]
) -> None:
    try:
        await conn.execute(statement)
    except tolerated:
        logger.info("registry: another session created it first")


_SCHEMA = [
    "CREATE SCHEMA IF NOT EXISTS vauban",
    """CREATE TABLE IF NOT EXISTS vauban.databases (
        uid text PRIMARY KEY,
        namespace text NOT NULL,
        name text NOT NULL,
        database text NOT NULL UNIQUE,
        owner text NOT NULL UNIQUE,
        retained boolean NOT NULL DEFAULT false,
        extensions text[] NOT NULL DEFAULT '{}',
        rotation_token text,
        last_rotation timestamptz,
        created timestamptz NOT NULL DEFAULT pg_catalog.now())""",
    """CREATE TABLE IF NOT EXISTS vauban.logins (
        role text PRIMARY KEY,
        database_uid text NOT NULL REFERENCES vauban.databases (uid) ON DELETE CASCADE,
        generation integer NOT NULL,
        published boolean NOT NULL DEFAULT false,
        retire_after timestamptz,
        UNIQUE (database_uid, generation))""",
]


SCHEMA_LOCK = 0x7661_7562_616E
"""The advisory lock (in the registry's database) under which its tables are created."""


async def ensure_schema(conn: Connection) -> None:
    """The registry's tables, owned by the registry role (so any admin member may use them),
    created on first use. The first reconciles on a new server run side by side, and
    `IF NOT EXISTS` does not hold against a concurrent creation (the loser fails on
    pg_namespace's unique index, and its database would show a false ProvisioningFailed):
    they take turns, and those after the first find the tables there."""
    row = await (
        await conn.execute("SELECT pg_catalog.to_regclass('vauban.logins') IS NOT NULL")
    ).fetchone()
    if row is not None and row[0]:
        return
    async with conn.transaction():
        await conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        await conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(ROLE)))
        for statement in _SCHEMA:
            await conn.execute(statement)


# -- reads -----------------------------------------------------------------------------------


async def record_of(conn: Connection, uid: str) -> DatabaseRecord | None:
    row = await (
        await conn.execute(
            "SELECT uid, namespace, name, database, owner, retained, extensions,"
            " rotation_token, last_rotation FROM vauban.databases WHERE uid = %s",
            (uid,),
        )
    ).fetchone()
    if row is None:
        return None
    logins = await (
        await conn.execute(
            "SELECT role, generation, published, retire_after FROM vauban.logins"
            " WHERE database_uid = %s ORDER BY generation",
            (uid,),
        )
    ).fetchall()
    return _record(row, logins)


def _record(row: Any, logins: Iterable[Any]) -> DatabaseRecord:
    uid, namespace, name, database, owner, retained, extensions, token, last = row
    return DatabaseRecord(
        uid=str(uid),
        namespace=str(namespace),
        name=str(name),
        database=str(database),
        owner=str(owner),
        retained=bool(retained),
        extensions=frozenset(extensions or ()),
        rotation_token=token,
        last_rotation=last,
        logins=tuple(LoginRecord(str(r), int(g), bool(p), after) for r, g, p, after in logins),
    )


async def holder_of(conn: Connection, database: str, owner: str) -> tuple[str, str, str] | None:
    """(UID, namespace, name) of the ManagedDatabase whose record holds this database or
    owner name (as a database, an owner or a login), if any."""
    row = await (
        await conn.execute(
            "SELECT d.uid, d.namespace, d.name FROM vauban.databases d"
            " WHERE d.database = %(db)s OR d.owner = %(owner)s"
            "    OR EXISTS (SELECT 1 FROM vauban.logins l WHERE l.database_uid = d.uid"
            "                AND l.role = %(owner)s)"
            " LIMIT 1",
            {"db": database, "owner": owner},
        )
    ).fetchone()
    return None if row is None else (str(row[0]), str(row[1]), str(row[2]))


# -- writes ----------------------------------------------------------------------------------


class NamesTaken(Exception):
    """Another record took the names first (a race the unique constraints settle)."""


async def claim(conn: Connection, record: DatabaseRecord) -> None:
    """Record the names before anything is created with them."""
    try:
        await conn.execute(
            "INSERT INTO vauban.databases (uid, namespace, name, database, owner)"
            " VALUES (%s, %s, %s, %s, %s)",
            (record.uid, record.namespace, record.name, record.database, record.owner),
        )
    except errors.UniqueViolation as e:
        raise NamesTaken from e


async def add_login(conn: Connection, uid: str, role: str, generation: int) -> None:
    """Record a login before it is created: a crash in between leaves a record of a role
    that does not exist, which the next reconcile drops, never a role no record knows."""
    try:
        await conn.execute(
            "INSERT INTO vauban.logins (role, database_uid, generation) VALUES (%s, %s, %s)",
            (role, uid, generation),
        )
    except errors.UniqueViolation as e:
        raise NamesTaken from e


async def published(
    conn: Connection,
    uid: str,
    login: str,
    retiring: Mapping[str, datetime],
    rotation: Rotation | None = None,
) -> None:
    """The Secret now names `login`; the logins it replaced work until their deadline; and
    the rotation that made `login`, if one did, is done. One statement, so one commit: an
    operator killed between a published login and its rotation's record would rotate again
    on restart. (Its parts touch different rows: `login` is never among those retiring.)"""
    roles = [role for role in retiring if role != login]
    await conn.execute(
        """
        WITH rotated AS (
            UPDATE vauban.databases SET rotation_token = %(token)s, last_rotation = %(at)s
             WHERE uid = %(uid)s AND %(rotated)s
        ), retiring AS (
            UPDATE vauban.logins l SET retire_after = r.deadline
              FROM ROWS FROM (pg_catalog.unnest(%(roles)s::text[]),
                              pg_catalog.unnest(%(deadlines)s::timestamptz[]))
                   AS r(role, deadline)
             WHERE l.database_uid = %(uid)s AND l.role = r.role
        )
        UPDATE vauban.logins SET published = true, retire_after = NULL
         WHERE database_uid = %(uid)s AND role = %(login)s
        """,
        {
            "uid": uid,
            "login": login,
            "rotated": rotation is not None,
            "token": rotation.token if rotation else None,
            "at": rotation.at if rotation else None,
            "roles": roles,
            "deadlines": [retiring[role] for role in roles],
        },
    )


async def forget_logins(conn: Connection, uid: str, roles: Collection[str]) -> None:
    if not roles:
        return
    await conn.execute(
        "DELETE FROM vauban.logins WHERE database_uid = %s AND role = ANY(%s)", (uid, list(roles))
    )


async def set_extensions(conn: Connection, uid: str, extensions: Collection[str]) -> None:
    await conn.execute(
        "UPDATE vauban.databases SET extensions = %s WHERE uid = %s",
        (sorted(extensions), uid),
    )


async def retain(conn: Connection, uid: str) -> None:
    """The ManagedDatabase left and its database stays: its logins are gone, its names stay
    taken."""
    async with conn.transaction():
        await conn.execute("DELETE FROM vauban.logins WHERE database_uid = %s", (uid,))
        await conn.execute("UPDATE vauban.databases SET retained = true WHERE uid = %s", (uid,))


async def forget(conn: Connection, uid: str) -> None:
    """Everything of the record was dropped from the server."""
    await conn.execute("DELETE FROM vauban.databases WHERE uid = %s", (uid,))
