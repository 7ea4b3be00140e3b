from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

from vauban.api.common import duration_seconds
from vauban.api.database import CredentialsStatus
from vauban.builders.credentials import Endpoint, credentials_secret
from vauban.reconcile.database import (
    Holder,
    login_name,
    ownership,
    plan_credentials,
    timers_wake_at,
)
from vauban.reconcile.records import DatabaseRecord, LoginRecord

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def login(n: int, *, published: bool = True, retire_after: datetime | None = None) -> LoginRecord:
    return LoginRecord(f"app_login{n}", n, published, retire_after)


def decide(**overrides: Any) -> Any:
    values: dict[str, Any] = {
        "owner": "app",
        "secret_username": "app_login1",
        "logins": [login(1)],
        "last_rotation": NOW - timedelta(days=1),
        "rotate_token": None,
        "acted_token": None,
        "rotation_period": None,
        "grace_period": "1h",
        "now": NOW,
    }
    return plan_credentials(**{**values, **overrides})


def test_first_credentials() -> None:
    got = decide(secret_username=None, logins=[], last_rotation=None)
    assert (got.login, got.generation, got.new_login) == ("app_login1", 1, True)
    assert got.retiring == {} and got.retire_now == ()


def test_steady_state_uses_the_secret_as_it_is() -> None:
    got = decide()
    assert (got.login, got.new_login, got.rotated) == ("app_login1", False, False)


def test_rotation_by_token_keeps_the_old_login_for_the_grace_period() -> None:
    got = decide(rotate_token="t1")
    assert (got.login, got.new_login) == ("app_login2", True)
    assert got.retiring == {"app_login1": NOW + timedelta(hours=1)}
    assert got.retire_after == NOW + timedelta(hours=1)
    assert decide(rotate_token="t1", acted_token="t1").rotated is False


def test_retirement_after_the_grace_period() -> None:
    waiting = decide(
        secret_username="app_login2",
        logins=[login(1, retire_after=NOW + timedelta(minutes=5)), login(2)],
    )
    assert waiting.retire_now == () and set(waiting.retiring) == {"app_login1"}
    due = decide(
        secret_username="app_login2",
        logins=[login(1, retire_after=NOW - timedelta(seconds=1)), login(2)],
    )
    assert due.retire_now == ("app_login1",) and due.retiring == {}


def test_a_replaced_login_gets_a_full_grace_period() -> None:
    """A rotation interrupted after the Secret was written: the login still in use elsewhere
    is not cut off at once."""
    got = decide(secret_username="app_login2", logins=[login(1), login(2, published=False)])
    assert got.retiring == {"app_login1": NOW + timedelta(hours=1)}


def test_a_login_no_secret_ever_named_is_dropped_at_once() -> None:
    """A reconcile that failed after creating a login: no one knows its password, and
    keeping it would leave one more role behind at each failure."""
    got = decide(secret_username=None, logins=[login(1, published=False)], last_rotation=None)
    assert (got.login, got.retire_now) == ("app_login2", ("app_login1",))


def test_a_secret_naming_a_login_not_recorded_is_not_trusted() -> None:
    got = decide(secret_username="someone_else", logins=[login(1)])
    assert got.new_login and got.login == "app_login2"


def test_rotation_by_period() -> None:
    assert decide(rotation_period="30d").rotated is False
    assert decide(rotation_period="30d", last_rotation=NOW - timedelta(days=31)).rotated


def test_login_names_fit_postgres_and_never_collide() -> None:
    long_a, long_b = "o" * 60 + "a", "o" * 60 + "b"
    assert login_name("app", 3) == "app_login3"
    assert all(len(login_name(o, 12345)) <= 63 for o in (long_a, "o" * 63, "p" * 52))
    assert login_name(long_a, 1) != login_name(long_b, 1)
    assert duration_seconds("90s") == 90 and duration_seconds("2w") == 14 * 86400


def timers_due(credentials: CredentialsStatus | None, period: str | None, now: datetime) -> bool:
    wake_at = timers_wake_at(credentials, period)
    return wake_at is not None and now >= wake_at


def test_timers() -> None:
    retiring = CredentialsStatus(retiring=["a"], retire_after="2026-11-29T11:00:00Z")
    assert timers_due(retiring, None, NOW)
    later = CredentialsStatus(retiring=["a"], retire_after="2026-11-29T13:00:00Z")
    assert not timers_due(later, None, NOW)
    rotating = CredentialsStatus(last_rotation="2026-10-01T00:00:00Z")
    assert timers_due(rotating, "30d", NOW)
    assert not timers_due(rotating, None, NOW)
    assert not timers_due(None, "30d", NOW)


def owns(**overrides: Any) -> str | None:
    values: dict[str, Any] = {
        "namespace": "ns",
        "database": "db",
        "owner": "own",
        "record": None,
        "holder": None,
        "database_exists": False,
        "owner_exists": False,
    }
    return ownership(**{**values, **overrides})


def test_only_the_record_gives_ownership() -> None:
    mine = DatabaseRecord("uid", "ns", "a", "db", "own")
    assert owns() is None
    assert owns(record=mine, database_exists=True, owner_exists=True) is None
    assert "not db and other" in (owns(record=mine, owner="other") or "")
    # Whatever exists without a record for this object is someone else's: a NOLOGIN group
    # role, a retained database of a departed tenant, another application's database.
    assert "role own already exists" in (owns(owner_exists=True) or "")
    assert "database db already exists" in (owns(database_exists=True) or "")
    neighbour = Holder("other-uid", "ns", "first")
    assert "ManagedDatabase ns/first" in (owns(holder=neighbour) or "")
    stranger = Holder("other-uid", "elsewhere", "x")
    message = owns(holder=stranger) or ""
    assert "another namespace" in message and "elsewhere" not in message


def test_secret_has_every_key_applications_expect() -> None:
    secret = credentials_secret(
        name="shop",
        namespace="team",
        owner_uid="u",
        username="app_login1",
        password="p@ss:w/rd",
        endpoint=Endpoint("db.example", 5432, "shop", "verify-full", "PEM"),
    )
    values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert secret["type"] == "kubernetes.io/basic-auth"
    assert values["uri"] == (
        "postgresql://app_login1:p%40ss%3Aw%2Frd@db.example:5432/shop?sslmode=verify-full"
    )
    assert values["jdbc-uri"].startswith("jdbc:postgresql://db.example:5432/shop?user=app_login1")
    assert values["pgpass"] == "db.example:5432:shop:app_login1:p@ss\\:w/rd\n"
    assert values["ca.crt"] == "PEM"
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "ManagedDatabase"
    # CloudNativePG's other names, and servicebinding.io's.
    assert values["user"] == values["username"] == "app_login1"
    assert values["database"] == values["dbname"] == "shop"
    assert (values["type"], values["provider"], values["sslrootcert"]) == (
        "postgresql",
        "vauban",
        "ca.crt",
    )
    # No FQDN known (an external host): the same URIs.
    assert values["fqdn-uri"] == values["uri"]
    assert values["fqdn-jdbc-uri"] == values["jdbc-uri"]


def test_a_service_host_gets_its_fully_qualified_uris() -> None:
    host = "main-rw.data.svc"
    endpoint = Endpoint(host, 5432, "shop", "verify-full", None, f"{host}.cluster.local")
    secret = credentials_secret(
        name="shop", namespace="team", owner_uid="u", username="u1", password="p", endpoint=endpoint
    )
    values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert values["host"] == host
    assert values["fqdn-uri"] == (
        "postgresql://u1:p@main-rw.data.svc.cluster.local:5432/shop?sslmode=verify-full"
    )
    assert values["fqdn-jdbc-uri"] == (
        "jdbc:postgresql://main-rw.data.svc.cluster.local:5432/shop?user=u1&password=p"
        "&sslmode=verify-full"
    )
    assert "sslrootcert" not in values and "ca.crt" not in values
