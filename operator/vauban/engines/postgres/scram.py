"""SCRAM-SHA-256 password verifiers, computed client-side by libpq.

`CREATE ROLE ... PASSWORD 'SCRAM-SHA-256$...'` stores the verifier as is, so the clear
password never reaches the server: not its statement log, not pg_stat_statements, not a
network capture of a non-TLS link.
"""

from __future__ import annotations

import secrets

from psycopg import pq


def verifier(pgconn: pq.abc.PGconn, role: str, password: str) -> str:
    """The verifier of `password` for `role`, by libpq's PQencryptPasswordConn on the
    server's connection: its iteration count is the server's `scram_iterations` (PostgreSQL
    16+, reported at connection; 4096 before), its salt random. SCRAM whatever the server's
    password_encryption says: an md5 hash would not log in through a scram-sha-256 pg_hba
    line, while a SCRAM verifier logs in through an md5 one too. No statement is sent."""
    encrypted = pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
    return encrypted.decode("ascii")


def new_password() -> str:
    """A password for a tenant's login role: 256 bits, URL- and shell-safe."""
    return secrets.token_urlsafe(32)
