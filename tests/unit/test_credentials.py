from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

from vauban.api.common import duration_seconds
from vauban.builders.credentials import Endpoint, credentials_secret
from vauban.reconcile.database import (
    Claim,
    login_generation,
    login_name,
    name_conflict,
    plan_credentials,
    timers_due,
)

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def decide(**overrides: Any) -> Any:
    values: dict[str, Any] = {
        "owner": "app",
        "secret_username": "app_login1",
        "existing_logins": ["app_login1"],
        "retiring": [],
        "retire_after": None,
        "last_rotation": NOW - timedelta(days=1),
        "rotate_token": None,
        "acted_token": None,
        "rotation_period": None,
        "grace_period": "1h",
        "now": NOW,
    }
    return plan_credentials(**{**values, **overrides})


def test_first_credentials() -> None:
    got = decide(secret_username=None, existing_logins=[], last_rotation=None)
    assert (got.login, got.new_password, got.rotated) == ("app_login1", True, True)
    assert got.retiring == () and got.retire_now == ()


def test_steady_state_uses_the_secret_as_it_is() -> None:
    got = decide()
    assert (got.login, got.new_password, got.rotated) == ("app_login1", False, False)


def test_rotation_by_token_keeps_the_old_login_for_the_grace_period() -> None:
    got = decide(rotate_token="t1")
    assert (got.login, got.new_password) == ("app_login2", True)
    assert got.retiring == ("app_login1",)
    assert got.retire_after == NOW + timedelta(hours=1)
    assert decide(rotate_token="t1", acted_token="t1").rotated is False


def test_retirement_after_the_grace_period() -> None:
    waiting = decide(
        secret_username="app_login2",
        existing_logins=["app_login1", "app_login2"],
        retiring=["app_login1"],
        retire_after=NOW + timedelta(minutes=5),
    )
    assert waiting.retire_now == () and waiting.retiring == ("app_login1",)
    due = decide(
        secret_username="app_login2",
        existing_logins=["app_login1", "app_login2"],
        retiring=["app_login1"],
        retire_after=NOW - timedelta(seconds=1),
    )
    assert due.retire_now == ("app_login1",) and due.retiring == ()


def test_an_unknown_extra_login_gets_a_full_grace_period() -> None:
    """A rotation interrupted after the Secret was written: the login still in use elsewhere
    is not cut off at once."""
    got = decide(secret_username="app_login2", existing_logins=["app_login1", "app_login2"])
    assert got.retiring == ("app_login1",) and got.retire_after == NOW + timedelta(hours=1)


def test_rotation_by_period() -> None:
    assert decide(rotation_period="30d").rotated is False
    assert decide(rotation_period="30d", last_rotation=NOW - timedelta(days=31)).rotated


def test_login_names_fit_postgres_and_parse_back() -> None:
    owner = "o" * 63
    name = login_name(owner, 12)
    assert len(name) <= 63 and login_generation(owner, name) == 12
    assert login_generation("app", "app") is None
    assert login_generation("app", "app_login") is None
    assert duration_seconds("90s") == 90 and duration_seconds("2w") == 14 * 86400


def test_timers() -> None:
    status = {"credentials": {"retiring": ["a"], "retireAfter": "2026-11-29T11:00:00Z"}}
    assert timers_due(status, {}, NOW)
    assert not timers_due(
        {"credentials": {"retiring": ["a"], "retireAfter": "2026-11-29T13:00:00Z"}}, {}, NOW
    )
    rotating = {"credentials": {"lastRotation": "2026-10-01T00:00:00Z"}}
    assert timers_due(rotating, {"credentials": {"rotationPeriod": "30d"}}, NOW)
    assert not timers_due(rotating, {}, NOW)


def claim(
    name: str, created: str, *, provisioned: bool = False, database: str = "db", owner: str = "own"
) -> Claim:
    return Claim("ns", name, created, database, owner, provisioned)


def test_name_conflicts() -> None:
    older, newer = claim("a", "2026-01-01T00:00:00Z"), claim("b", "2026-01-02T00:00:00Z")
    assert name_conflict(older, [older, newer]) is None
    verdict = name_conflict(newer, [older, newer])
    assert verdict is not None and "ns/a" in verdict.message
    # Whoever provisioned the names keeps them, even if younger.
    young_owner = claim("b", "2026-01-02T00:00:00Z", provisioned=True)
    assert name_conflict(young_owner, [older, young_owner]) is None
    assert (
        name_conflict(claim("c", "2026-01-03T00:00:00Z", database="x", owner="y"), [older]) is None
    )
    assert (
        "owner role own"
        in (
            name_conflict(claim("d", "2026-01-03T00:00:00Z", database="x"), [older]) or verdict
        ).message
    )


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
