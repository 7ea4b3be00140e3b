"""What the agent asks PostgreSQL, and how it finds and runs pg_dump and pg_restore.

Connections take libpq's standard variables from the environment (PGHOST, PGUSER,
PGPASSWORD...), exactly as pg_dump and pg_restore do, so all three reach the same server.

Every session the agent opens pins `search_path` to `pg_catalog, pg_temp` in its startup
packet, and every query names its catalogs with their schema: a database's owner controls
its `search_path` (ALTER DATABASE/ROLE ... SET) and may create schemas, functions and
operators that shadow PostgreSQL's, and a setting sent at connection time outranks theirs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeAlias

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from vauban.backup.errors import DatabaseFailure
from vauban.backup.settings import ConfigurationError

Connection: TypeAlias = psycopg.Connection[tuple[object, ...]]

CONNECT_TIMEOUT_SECONDS = "10"
PACKAGED_CLIENTS = Path("/usr/lib/postgresql")
"""Where Debian and Ubuntu install each major version's programs, side by side."""

# Schemas that are PostgreSQL's own, and objects that belong to an extension (pg_dump
# creates the extension, not its members).
_USER_OBJECT = """
    {ns}.nspname NOT IN ('pg_catalog', 'information_schema')
    AND {ns}.nspname NOT LIKE 'pg\\_toast%'
    AND {ns}.nspname NOT LIKE 'pg\\_temp\\_%'
    AND NOT EXISTS (
        SELECT FROM pg_catalog.pg_depend d
        WHERE d.classid = {catalog}::pg_catalog.regclass AND d.objid = {obj}.oid
          AND d.deptype = 'e'
    )
"""


def _user(ns: str, catalog: str, obj: str) -> sql.Composed:
    return sql.SQL(_USER_OBJECT).format(
        ns=sql.Identifier(ns), catalog=sql.Literal(f"pg_catalog.{catalog}"), obj=sql.Identifier(obj)
    )


_TABLES = sql.SQL("""
SELECT n.nspname, c.relname
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND {tables}
ORDER BY 1, 2
""").format(tables=_user("n", "pg_class", "c"))
_USER_OBJECTS = sql.SQL("""
SELECT 'schema ' || pg_catalog.quote_ident(n.nspname)
FROM pg_catalog.pg_namespace n
WHERE n.nspname <> 'public' AND {schemas}
UNION ALL
SELECT 'relation ' || pg_catalog.quote_ident(n.nspname) || '.'
    || pg_catalog.quote_ident(c.relname)
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE {relations}
UNION ALL
SELECT 'function ' || pg_catalog.quote_ident(n.nspname) || '.'
    || pg_catalog.quote_ident(p.proname)
FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE {functions}
UNION ALL
SELECT 'type ' || pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(t.typname)
FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
WHERE t.typrelid = 0 AND t.typcategory <> 'A' AND {types}
UNION ALL
SELECT 'large objects' FROM pg_catalog.pg_largeobject_metadata HAVING pg_catalog.count(*) > 0
LIMIT 5
""").format(
    schemas=_user("n", "pg_namespace", "n"),
    relations=_user("n", "pg_class", "c"),
    functions=_user("n", "pg_proc", "p"),
    types=_user("n", "pg_type", "t"),
)


def child_environment(login: Login | None = None) -> dict[str, str]:
    """The environment of pg_dump and pg_restore: ours without the object store's
    credentials and the data key, which they have no use for; as `login` if given (without
    the environment's own password, service or password file, which are not its)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VAUBAN_"))}
    env.setdefault("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT_SECONDS)
    env.setdefault("PGAPPNAME", "vauban-agent")
    if login is not None:
        for name in ("PGPASSFILE", "PGSERVICE", "PGSERVICEFILE"):
            env.pop(name, None)
        env["PGUSER"], env["PGPASSWORD"] = login.user, login.password
    return env


PINNED_SEARCH_PATH = "-c search_path=pg_catalog,pg_temp"
"""libpq `options`: the session's search_path, fixed before any setting of the database or
role applies (a client's startup options outrank ALTER DATABASE/ROLE ... SET)."""


@dataclass(frozen=True)
class Login:
    """Another role than the environment's (the verify's throw-away role)."""

    user: str
    password: str = field(repr=False)


@contextlib.contextmanager
def connect(
    dbname: str | None = None, *, autocommit: bool = False, login: Login | None = None
) -> Iterator[Connection]:
    """A connection from libpq's environment (to `dbname` instead of PGDATABASE if given, as
    `login` instead of PGUSER if given), its search_path pinned; DatabaseFailure
    (DatabaseUnreachable) when it cannot be opened."""
    params: dict[str, str] = {
        "application_name": os.environ.get("PGAPPNAME", "vauban-agent"),
        "options": PINNED_SEARCH_PATH,
    }
    if "PGCONNECT_TIMEOUT" not in os.environ:
        params["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
    if dbname is not None:
        params["dbname"] = dbname
    if login is not None:
        params["user"] = login.user
        params["password"] = login.password
    try:
        conn = psycopg.connect(make_conninfo("", **params), autocommit=autocommit)
    except psycopg.OperationalError as e:
        # libpq's message names the host, port, user and cause; never the password.
        raise DatabaseFailure("DatabaseUnreachable", f"cannot connect to PostgreSQL: {e}") from None
    with conn:
        yield conn


def server_version(conn: Connection) -> tuple[str, int]:
    """("15.18", 15)."""
    row = conn.execute(
        "SELECT pg_catalog.current_setting('server_version'),"
        " pg_catalog.current_setting('server_version_num')::pg_catalog.int4"
    ).fetchone()
    assert row is not None
    return str(row[0]).split(" ", 1)[0], int(str(row[1])) // 10000


def database_size(conn: Connection) -> int:
    row = conn.execute(
        "SELECT pg_catalog.pg_database_size(pg_catalog.current_database())"
    ).fetchone()
    assert row is not None
    return int(str(row[0]))


def table_counts(conn: Connection) -> dict[str, int]:
    """Rows per `schema.table` of every table whose data pg_dump dumps, in the connection's
    current snapshot."""
    counts = {}
    for schema, table in conn.execute(_TABLES).fetchall():
        query = sql.SQL("SELECT pg_catalog.count(*) FROM {}.{}").format(
            sql.Identifier(str(schema)), sql.Identifier(str(table))
        )
        row = conn.execute(query).fetchone()
        assert row is not None
        counts[f"{schema}.{table}"] = int(str(row[0]))
    return counts


def user_objects(conn: Connection) -> list[str]:
    """Up to five objects a restore would collide with: anything besides the public schema,
    extensions and PostgreSQL's own catalogs."""
    return [str(row[0]) for row in conn.execute(_USER_OBJECTS).fetchall()]


# -- the client programs ----------------------------------------------------------------------

_VERSION = re.compile(rb"\(PostgreSQL\) (\d+)")


def _major(binary: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, check=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION.search(out)
    return int(match.group(1)) if match else None


def find_client(name: str, server_major: int, bin_dir: str | None) -> Path:
    """pg_dump or pg_restore for a server of `server_major`: VAUBAN_PG_BIN_DIR's if set,
    else the one of the same major among /usr/lib/postgresql/<major>/bin and PATH's, else
    the newest (a newer client reads older servers; an older one refuses newer servers)."""
    if bin_dir:
        candidates = [Path(bin_dir) / name]
    else:
        # The packaged client of the server's major before PATH's: on Debian, PATH's is
        # pg_wrapper, a Perl script that would exec that same client after ~50 ms of its
        # own start-up, once to be asked its version and once more to dump.
        on_path = shutil.which(name)
        candidates = [
            PACKAGED_CLIENTS / str(server_major) / "bin" / name,
            *([Path(on_path)] if on_path else []),
            *sorted(PACKAGED_CLIENTS.glob(f"*/bin/{name}")),
        ]
    versions: dict[Path, int] = {}
    for candidate in dict.fromkeys(candidates):
        major = _major(candidate)
        if major == server_major:
            return candidate
        if major is not None:
            versions[candidate] = major
    if not versions:
        where = bin_dir or "PATH or /usr/lib/postgresql/*/bin"
        raise ConfigurationError("ClientNotFound", f"no working {name} found in {where}")
    newest = max(versions, key=lambda c: versions[c])
    if versions[newest] < server_major:
        raise ConfigurationError(
            "ClientTooOld",
            f"{name} {versions[newest]} cannot handle PostgreSQL {server_major}: install "
            f"the client of version {server_major} or newer",
        )
    return newest


def errors_only(stderr: IO[bytes], limit: int = 1500) -> str:
    """The error lines of pg_dump's or pg_restore's output, without the DETAIL, CONTEXT and
    'Command was' lines, which can quote rows of the database (never into logs or status)."""
    stderr.seek(0)
    lines = []
    for raw in stderr.read().decode("utf-8", errors="replace").splitlines():
        line = raw.strip()
        if not line or line.startswith(("DETAIL:", "CONTEXT:", "HINT:", "LINE ", "Command was:")):
            continue
        if "error" in line.lower() or "fatal" in line.lower():
            lines.append(line)
    text = " | ".join(lines) or "no error message"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def terminate(process: subprocess.Popen[bytes]) -> None:
    """Stop a child for good (it may be stopped, blocked on a pipe, or already gone)."""
    if process.poll() is None:
        process.kill()
    process.wait()
