"""The SQL plan: pure, idempotent, and immune to hostile names."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import pq, sql

from vauban.engines.postgres import scram
from vauban.engines.postgres.plan import (
    Catalog,
    Desired,
    Login,
    RoleState,
    drop_database,
    extensions_plan,
    plan,
    retire_login,
    suspend_login,
)

VERIFIER = "SCRAM-SHA-256$4096:c2FsdA==$a2V5:a2V5"


def desired(**overrides: object) -> Desired:
    values: dict[str, object] = {
        "database": "shop",
        "owner": "shop_owner",
        "login": Login("shop_owner_login1", VERIFIER),
        "connection_limit": 5,
    }
    return Desired(**{**values, **overrides})  # type: ignore[arg-type]


def text(statements: list[sql.Composed]) -> list[str]:
    return [s.as_string() for s in statements]


EMPTY = Catalog(roles={}, database_owner=None, admin="admin", admin_is_superuser=True)


def converged(d: Desired) -> Catalog:
    return Catalog(
        roles={
            d.owner: RoleState(can_login=False, connection_limit=-1),
            d.login.name: RoleState(
                can_login=True,
                connection_limit=d.connection_limit,
                member_of=frozenset({d.owner}),
                default_role=d.owner,
            ),
        },
        database_owner=d.owner,
        admin="admin",
        admin_is_superuser=True,
    )


def test_everything_is_created_on_an_empty_server() -> None:
    p = plan(desired(), EMPTY)
    assert text(p.server) == [
        'CREATE ROLE "shop_owner" NOLOGIN',
        'CREATE ROLE "shop_owner_login1" LOGIN CONNECTION LIMIT 5 IN ROLE "shop_owner" '
        f"PASSWORD '{VERIFIER}'",
        "ALTER ROLE \"shop_owner_login1\" SET role TO 'shop_owner'",
        'CREATE DATABASE "shop" OWNER "shop_owner"',
        'REVOKE CONNECT, TEMPORARY ON DATABASE "shop" FROM PUBLIC',
    ]
    assert not p.retire and not p.database


def test_a_converged_server_needs_nothing() -> None:
    d = desired()
    assert not plan(d, converged(d))


def test_summary_never_shows_a_password() -> None:
    summary = plan(desired(), EMPTY).summary()
    assert not any(VERIFIER in line for line in summary)
    assert any(line.startswith('CREATE ROLE "shop_owner_login1"') for line in summary)


def test_changes_are_planned_not_recreated() -> None:
    p = plan(desired(connection_limit=10), converged(desired()))
    assert text(p.server) == ['ALTER ROLE "shop_owner_login1" CONNECTION LIMIT 10']


def test_extensions_follow_the_spec_into_public() -> None:
    present = frozenset({"plpgsql", "pgcrypto"})
    assert text(extensions_plan(frozenset({"citext"}), frozenset({"pgcrypto"}), present)) == [
        'CREATE EXTENSION IF NOT EXISTS "citext" SCHEMA public',
        'DROP EXTENSION "pgcrypto"',
    ]


def test_only_extensions_vauban_created_are_dropped() -> None:
    present = frozenset({"plpgsql", "pgcrypto"})
    assert not extensions_plan(frozenset(), frozenset(), present)


def test_non_superuser_admin_joins_the_owner_role() -> None:
    catalog = Catalog(roles={}, database_owner=None, admin="admin")
    assert 'GRANT "shop_owner" TO "admin"' in text(plan(desired(), catalog).server)


def test_retiring_a_login() -> None:
    d = desired(retire=frozenset({"shop_owner_login0"}))
    catalog = converged(desired())
    catalog.roles["shop_owner_login0"] = RoleState(can_login=True, connection_limit=5)  # type: ignore[index]
    assert text(plan(d, catalog).retire) == text(retire_login("shop_owner_login0"))
    assert text(retire_login("x"))[0] == 'ALTER ROLE "x" NOLOGIN'
    assert text(retire_login("x"))[-1] == 'DROP ROLE IF EXISTS "x"'


def test_drop_database_ends_sessions_first() -> None:
    assert text(drop_database("shop", ["a", "b"])) == [
        'DROP DATABASE IF EXISTS "shop" WITH (FORCE)',
        'DROP ROLE IF EXISTS "a"',
        'DROP ROLE IF EXISTS "b"',
    ]


def test_suspending_keeps_the_role() -> None:
    assert text(suspend_login("x")) == text(retire_login("x"))[:-1]


HOSTILE = [
    'Robert"); DROP DATABASE postgres;--',
    'x" SUPERUSER --',
    "a'b",
    "é",
    "\\",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_quoted_identifiers(name: str) -> None:
    """The API refuses such names; the plan must be safe even if one got through."""
    p = plan(desired(database=name, owner=name, login=Login(name + "_l", VERIFIER)), EMPTY)
    identifier = sql.Identifier(name).as_string()
    login = sql.Identifier(name + "_l").as_string()
    literal = sql.Literal(name).as_string()
    for statement in text(p.server):
        assert identifier in statement or literal in statement
        bare = statement.replace(login, "").replace(identifier, "").replace(literal, "")
        assert "DROP DATABASE postgres" not in bare and "SUPERUSER" not in bare


@given(st.text(min_size=1, max_size=63).filter(lambda s: "\x00" not in s))
def test_any_identifier_stays_one_identifier(name: str) -> None:
    statement = plan(desired(owner=name), EMPTY).server[0].as_string()
    assert statement == f'CREATE ROLE "{name.replace(chr(34), chr(34) * 2)}" NOLOGIN'


def test_scram_verifier_is_libpqs_and_matches_rfc_7677() -> None:
    # libpq computes it without a round trip: a connection that never completes will do,
    # with libpq's default iteration count (a live one carries the server's).
    pgconn = pq.PGconn.connect_start(b"host=127.0.0.1 port=1 connect_timeout=1")
    got = scram.verifier(pgconn, "app_login1", "pencil")
    method, rest = got.split("$", 1)
    iterations_salt, keys = rest.split("$")
    iterations, salt_b64 = iterations_salt.split(":")
    assert method == "SCRAM-SHA-256" and iterations == "4096"
    stored_b64, server_b64 = keys.split(":")
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", base64.b64decode(salt_b64), 4096)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    assert base64.b64decode(stored_b64) == hashlib.sha256(client_key).digest()
    assert base64.b64decode(server_b64) == hmac.new(salted, b"Server Key", "sha256").digest()
    # A fresh salt each time.
    assert scram.verifier(pgconn, "app_login1", "pencil") != got
    pgconn.finish()
