"""The SQL plan of a ManagedDatabase: a pure function from (desired state, observed catalog) to
statements, with identifiers quoted by psycopg's sql module — never string formatting.

An empty plan means the server already matches: applying twice changes nothing.
The plan runs in two phases on the operator's own maintenance database (the registry's, which
no tenant may enter), because CREATE DATABASE cannot run in a transaction block:
  server   roles, the database, its privileges
  retire   logins being retired
Extensions live inside the tenant's database: their statements (`extensions_plan`) run in a
session of the tenant's own login, never the admin's, so nothing a tenant planted there
(functions, operators, event-less triggers, a search_path) ever runs with more than the
tenant's privileges.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from psycopg import sql


@dataclass(frozen=True)
class RoleState:
    can_login: bool
    connection_limit: int
    """-1: no limit."""

    member_of: frozenset[str] = frozenset()
    """The roles it is a member of, among those the catalog was asked about."""

    default_role: str | None = None
    """The role a login switches to (ALTER ROLE ... SET role)."""

    superuser: bool = False


@dataclass(frozen=True)
class Catalog:
    """What the server has, of what concerns one ManagedDatabase."""

    roles: Mapping[str, RoleState]
    """The owner role and login roles (members of the owner), by name."""

    database_owner: str | None
    """None when the database does not exist."""

    public_can_connect: bool = False
    admin: str = ""
    admin_is_superuser: bool = False
    admin_member_of: frozenset[str] = frozenset()
    """Among `roles`' names: the admin's other memberships are not read."""


@dataclass(frozen=True)
class Login:
    """The login role whose credentials are in the tenant's Secret."""

    name: str
    password_verifier: str
    """Used only to create the role (callers may leave it empty for a role the catalog
    has): an existing role's password is never re-applied."""


@dataclass(frozen=True)
class Desired:
    database: str
    owner: str
    login: Login
    connection_limit: int = -1
    retire: frozenset[str] = frozenset()
    """Former login roles whose grace period is over."""


@dataclass(frozen=True)
class Plan:
    server: list[sql.Composed] = field(default_factory=list)
    retire: list[sql.Composed] = field(default_factory=list)
    database: list[sql.Composed] = field(default_factory=list)
    """Run as the tenant, in its database: see extensions_plan."""

    def __bool__(self) -> bool:
        return bool(self.server or self.retire or self.database)

    def summary(self) -> list[str]:
        """One line per statement for Events and logs: the verb and object, never a value."""
        lines = []
        for statement in [*self.server, *self.retire, *self.database]:
            lines.append(statement.as_string().split(" PASSWORD ", 1)[0])
        return lines


def _id(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def plan(desired: Desired, catalog: Catalog) -> Plan:
    result = Plan()
    owner, login, database = desired.owner, desired.login.name, desired.database
    limit = sql.Literal(desired.connection_limit)

    if owner not in catalog.roles:
        result.server.append(sql.SQL("CREATE ROLE {} NOLOGIN").format(_id(owner)))
    if not catalog.admin_is_superuser and owner not in catalog.admin_member_of:
        # A non-superuser admin may create a database owned by the owner role, and drop it
        # (deletionPolicy Delete), only as one of its members. It never enters the tenant's
        # database, so the membership lends it nothing a tenant could turn against it.
        result.server.append(sql.SQL("GRANT {} TO {}").format(_id(owner), _id(catalog.admin)))

    current = catalog.roles.get(login)
    if current is None:
        result.server.extend(
            [
                sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT {} IN ROLE {} PASSWORD {}").format(
                    _id(login), limit, _id(owner), sql.Literal(desired.login.password_verifier)
                ),
                # Whatever the login creates is owned by the owner role, so a retired login can
                # be dropped without losing the tenant's objects.
                sql.SQL("ALTER ROLE {} SET role TO {}").format(_id(login), sql.Literal(owner)),
            ]
        )
    else:
        if not current.can_login:
            result.server.append(sql.SQL("ALTER ROLE {} LOGIN").format(_id(login)))
        if current.connection_limit != desired.connection_limit:
            result.server.append(
                sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(_id(login), limit)
            )
        if owner not in current.member_of:
            result.server.append(sql.SQL("GRANT {} TO {}").format(_id(owner), _id(login)))
        if current.default_role != owner:
            result.server.append(
                sql.SQL("ALTER ROLE {} SET role TO {}").format(_id(login), sql.Literal(owner))
            )

    if catalog.database_owner is None:
        result.server.append(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(_id(database), _id(owner))
        )
    elif catalog.database_owner != owner:
        result.server.append(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(_id(database), _id(owner))
        )
    if catalog.database_owner is None or catalog.public_can_connect:
        result.server.append(
            sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(_id(database))
        )

    for role in sorted(desired.retire - {login, owner}):
        if role in catalog.roles:
            result.retire.extend(retire_login(role))
    return result


def extensions_plan(
    wanted: frozenset[str], managed: frozenset[str], present: frozenset[str]
) -> list[sql.Composed]:
    """Create what the spec lists and the database lacks; drop what Vauban created (`managed`)
    and the spec no longer lists. Only trusted extensions are allowed by the API: the tenant's
    owner role may create them itself."""
    statements = [
        # Into public, named: the session's search_path holds only pg_catalog and pg_temp.
        sql.SQL("CREATE EXTENSION IF NOT EXISTS {} SCHEMA public").format(_id(extension))
        for extension in sorted(wanted - present)
    ]
    # No CASCADE: if tenant objects use it, the drop fails and says so.
    statements += [
        sql.SQL("DROP EXTENSION {}").format(_id(extension))
        for extension in sorted((managed - wanted) & present)
    ]
    return statements


def suspend_login(role: str) -> list[sql.Composed]:
    """Refuse new sessions of a login and end the open ones; the role stays."""
    return [
        sql.SQL("ALTER ROLE {} NOLOGIN").format(_id(role)),
        sql.SQL(
            "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity"
            " WHERE usename = {}"
        ).format(sql.Literal(role)),
    ]


def retire_login(role: str) -> list[sql.Composed]:
    """Revoke a login: refuse new sessions, end the open ones, drop the role."""
    return [*suspend_login(role), sql.SQL("DROP ROLE IF EXISTS {}").format(_id(role))]


def drop_database(database: str, roles: list[str]) -> list[sql.Composed]:
    """deletionPolicy Delete: the database (its sessions ended first) and every role of it."""
    statements: list[sql.Composed] = [
        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(_id(database))
    ]
    statements += [sql.SQL("DROP ROLE IF EXISTS {}").format(_id(role)) for role in roles]
    return statements
