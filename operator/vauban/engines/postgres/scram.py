"""SCRAM-SHA-256 password verifiers, computed client-side.

`CREATE ROLE ... PASSWORD 'SCRAM-SHA-256$...'` stores the verifier as is, so the clear
password never reaches the server: not its statement log, not pg_stat_statements, not a
network capture of a non-TLS link.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

ITERATIONS = 4096  # PostgreSQL's scram_iterations default


def verifier(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """The verifier PostgreSQL would store for `password` (RFC 5802 / RFC 7677)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def new_password() -> str:
    """A password for a tenant's login role: 256 bits, URL- and shell-safe."""
    return secrets.token_urlsafe(32)
