"""Connect to a PostgreSQL server as the admin role and report what Vauban needs to know:
reachable, credentials accepted, version, privileges."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg

from vauban.reconcile.cluster import ProbeOutcome, ServerProbe

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
    address: ServerAddress, username: str, password: str, *, connect_timeout: int = 5
) -> ServerProbe:
    with ssl_root_cert(address.ca_pem) as root_cert:
        try:
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
                autocommit=True,
            )
        except psycopg.OperationalError as e:
            return _failure(e)
        async with connection:
            cursor = await connection.execute(
                "SELECT current_setting('server_version'), current_user,"
                " rolsuper, rolcreaterole, rolcreatedb"
                " FROM pg_roles WHERE rolname = current_user"
            )
            row = await cursor.fetchone()
    assert row is not None
    version, role, superuser, create_role, create_db = row
    return ServerProbe(
        outcome=ProbeOutcome.OK,
        version=str(version).split(" ", 1)[0],
        role=str(role),
        superuser=bool(superuser),
        create_role=bool(create_role),
        create_db=bool(create_db),
    )


# What libpq says when the server refused the login (psycopg has no SQLSTATE for errors
# raised while connecting).
_AUTH_MESSAGES = (
    "password authentication failed",
    "no pg_hba.conf entry",
    'role "',
    "SCRAM authentication",
)


def _failure(error: psycopg.OperationalError) -> ServerProbe:
    """Classify a failed connection. The detail is libpq's own message, which names the server
    and the problem but never the password."""
    text = " ".join(str(error).split()) or type(error).__name__
    if error.sqlstate in _AUTH_SQLSTATES or any(m in text for m in _AUTH_MESSAGES):
        return ServerProbe(ProbeOutcome.AUTHENTICATION_FAILED, detail=text[:500])
    return ServerProbe(ProbeOutcome.UNREACHABLE, detail=text[:500])
