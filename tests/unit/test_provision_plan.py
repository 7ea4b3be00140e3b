"""The provisioning decision (vauban.reconcile.provision): one view in, one plan out."""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from vauban.api.database import ManagedDatabaseSpec
from vauban.builders.credentials import Endpoint, credentials_secret
from vauban.conditions import Reason, State
from vauban.reconcile.database import Holder
from vauban.reconcile.provision import (
    Provision,
    ProvisionView,
    Refused,
    SecretFound,
    claim_lost,
    foreign_secret,
    plan_provision,
    roles_to_read,
)
from vauban.reconcile.records import DatabaseRecord, LoginRecord, Rotation

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
UID = "uid-1"
ENDPOINT = Endpoint("main-rw.data.svc", 5432, "app", "verify-full", "CA")
LOGIN1, LOGIN2, LOGIN3 = "app_owner_login1", "app_owner_login2", "app_owner_login3"


def spec(**overrides: Any) -> ManagedDatabaseSpec:
    raw = {"clusterRef": {"name": "main"}, "databaseName": "app", "owner": "app_owner"}
    return ManagedDatabaseSpec.model_validate({**raw, **overrides})


def secret_data(username: str, password: str, endpoint: Endpoint = ENDPOINT) -> dict[str, str]:
    """The values of the Secret Vauban writes, as the Secret's reader decodes them."""
    rendered = credentials_secret(
        name="app",
        namespace="team",
        owner_uid=UID,
        username=username,
        password=password,
        endpoint=endpoint,
    )
    return {k: base64.b64decode(v).decode() for k, v in rendered["data"].items()}


def record(*logins: LoginRecord, **overrides: Any) -> DatabaseRecord:
    return DatabaseRecord(UID, "team", "app", "app", "app_owner", logins=logins, **overrides)


def record_of_login1() -> DatabaseRecord:
    """login1, published, rotated a day ago."""
    return record(LoginRecord(LOGIN1, 1, published=True), last_rotation=NOW - timedelta(1))


def view(**overrides: Any) -> ProvisionView:
    """A fresh database: no Secret, no record, nothing on the server."""
    base = ProvisionView(
        namespace="team",
        name="app",
        uid=UID,
        spec=spec(),
        cluster_ref="data/main",
        connection_limit=20,
        endpoint=ENDPOINT,
        secret=None,
        record=None,
        holder=None,
        roles=frozenset(),
        database_exists=False,
        rotate_token=None,
        now=NOW,
        provisioned=False,
        new_password="fresh-password",
    )
    return replace(base, **overrides)


def provisioned_view(**overrides: Any) -> ProvisionView:
    """A database provisioned before: login1 recorded, published, on the server and named by
    the Secret, with the Secret's password."""
    base = view(
        secret=SecretFound(ours=True, data=secret_data(LOGIN1, "secret-password")),
        record=record_of_login1(),
        roles=frozenset({"app_owner", LOGIN1}),
        database_exists=True,
        provisioned=True,
    )
    return replace(base, **overrides)


def steps(v: ProvisionView) -> Provision:
    decided = plan_provision(v)
    assert isinstance(decided, Provision), decided
    return decided


def refused(v: ProvisionView) -> Refused:
    decided = plan_provision(v)
    assert isinstance(decided, Refused), decided
    return decided


def test_fresh_database_claims_its_names_and_creates_the_first_login() -> None:
    plan = steps(view())
    assert plan.claim == DatabaseRecord(UID, "team", "app", "app", "app_owner")
    assert (plan.credentials.login, plan.credentials.generation) == (LOGIN1, 1)
    assert plan.credentials.new_login and plan.password == "fresh-password"
    assert plan.server.create_login and plan.server.login == LOGIN1
    assert (plan.server.database, plan.server.owner) == ("app", "app_owner")
    assert plan.server.connection_limit == 20 and plan.server.retire == frozenset()
    assert plan.secret is not None
    written = {k: base64.b64decode(v).decode() for k, v in plan.secret["data"].items()}
    assert written == secret_data(LOGIN1, "fresh-password")
    assert plan.rotation == Rotation(None, NOW)
    assert plan.extensions is None
    # A first provisioning is told by the transition to Ready, not by Events of its own.
    assert plan.events == () and not plan.announce
    assert plan.status.to_wire() == {
        "credentials": {
            "secretName": "app-credentials",
            "username": LOGIN1,
            "lastRotation": "2026-05-01T12:00:00Z",
            "retiring": [],
        },
        # servicebinding.io's Provisioned Service: binders find the Secret here.
        "binding": {"name": "app-credentials"},
        "extensions": [],
    }
    assert plan.ready.state is State.READY
    assert plan.ready.message == (
        "Database app (owner app_owner) is ready on ManagedCluster data/main; credentials in "
        "Secret app-credentials."
    )


def test_a_foreign_secret_is_refused_before_anything_is_claimed() -> None:
    foreign = SecretFound(ours=False, data={"username": "x", "password": "y"})
    plan = refused(view(secret=foreign))
    assert plan.claim is None
    assert (plan.verdict.state, plan.verdict.reason) == (State.STALLED, Reason.NAME_CONFLICT)
    assert "Secret app-credentials already exists" in plan.verdict.message
    # Even for an object that has a record: the Secret is someone else's all the same.
    assert isinstance(plan_provision(provisioned_view(secret=foreign)), Refused)
    # The Secret alone decides it, so the handler asks before reading the server.
    assert foreign_secret("app", foreign) == plan
    assert foreign_secret("app", None) is None
    assert foreign_secret("app", replace(foreign, ours=True)) is None


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        ({"holder": Holder("uid-2", "team", "other")}, "held by ManagedDatabase team/other"),
        ({"database_exists": True}, "database app already exists on the server"),
        ({"roles": frozenset({"app_owner"})}, "role app_owner already exists on the server"),
        (
            {"record": replace(record(), database="elsewhere")},
            "holds database elsewhere and owner app_owner",
        ),
    ],
)
def test_names_vauban_did_not_create_for_this_object_are_refused(
    overrides: dict[str, Any], said: str
) -> None:
    plan = refused(view(**overrides))
    assert plan.claim is None
    assert plan.verdict.reason is Reason.NAME_CONFLICT
    assert said in plan.verdict.message


def test_a_login_name_taken_by_chance_is_refused_after_the_names_are_claimed() -> None:
    plan = refused(view(roles=frozenset({LOGIN1})))
    assert plan.claim == DatabaseRecord(UID, "team", "app", "app", "app_owner")
    assert f"role {LOGIN1} already exists" in plan.verdict.message


def test_rotation_by_annotation_token() -> None:
    plan = steps(provisioned_view(rotate_token="2026-05-01"))
    assert (plan.credentials.login, plan.credentials.generation) == (LOGIN2, 2)
    assert plan.claim is None and plan.password == "fresh-password"
    assert plan.server.create_login and plan.server.retire == frozenset()
    # The former login keeps working for the grace period (1h by default).
    assert plan.credentials.retiring == {LOGIN1: NOW + timedelta(hours=1)}
    assert plan.secret is not None
    assert plan.rotation == Rotation("2026-05-01", NOW)
    assert [(e.type, e.reason) for e in plan.events] == [("Normal", "CredentialsRotated")]
    assert plan.status.to_wire()["credentials"] == {
        "secretName": "app-credentials",
        "username": LOGIN2,
        "lastRotation": "2026-05-01T12:00:00Z",
        "rotationToken": "2026-05-01",
        "retiring": [LOGIN1],
        "retireAfter": "2026-05-01T13:00:00Z",
    }
    # A token already acted on rotates nothing.
    acted = provisioned_view(
        rotate_token="t", record=replace(record_of_login1(), rotation_token="t")
    )
    assert not steps(acted).credentials.new_login


def test_rotation_by_period() -> None:
    due = spec(credentials={"rotationPeriod": "1d"})
    plan = steps(provisioned_view(spec=due))
    assert plan.credentials.login == LOGIN2 and plan.server.create_login
    assert plan.rotation == Rotation(None, NOW)
    assert [e.reason for e in plan.events] == ["CredentialsRotated"]
    # Not yet due a moment earlier.
    early = provisioned_view(spec=spec(credentials={"rotationPeriod": "2d"}))
    assert not steps(early).credentials.new_login


def test_a_retiring_login_is_revoked_once_its_grace_period_is_over() -> None:
    logins = (
        LoginRecord(LOGIN1, 1, published=True, retire_after=NOW - timedelta(minutes=1)),
        LoginRecord(LOGIN2, 2, published=True),
        LoginRecord(LOGIN3, 3, published=True, retire_after=NOW + timedelta(minutes=5)),
    )
    plan = steps(
        provisioned_view(
            secret=SecretFound(ours=True, data=secret_data(LOGIN2, "secret-password")),
            record=record(*logins),
            roles=frozenset({"app_owner", LOGIN1, LOGIN2, LOGIN3}),
        )
    )
    assert plan.credentials.login == LOGIN2 and not plan.credentials.new_login
    assert plan.server.retire == frozenset({LOGIN1})
    assert plan.credentials.retire_now == (LOGIN1,)
    assert plan.credentials.retiring == {LOGIN3: NOW + timedelta(minutes=5)}
    assert plan.secret is None and plan.rotation is None and plan.events == ()
    assert plan.status.to_wire()["credentials"]["retiring"] == [LOGIN3]


def test_nothing_to_do_when_everything_matches() -> None:
    plan = steps(provisioned_view())
    assert plan.claim is None
    assert plan.credentials.login == LOGIN1 and not plan.credentials.new_login
    assert plan.password == "secret-password"  # the Secret's: never a new one unasked
    assert not plan.server.create_login and plan.server.retire == frozenset()
    assert plan.secret is None and plan.rotation is None and plan.extensions is None
    assert plan.events == ()
    assert plan.announce  # provisioned before: whatever SQL still runs is an Event
    assert plan.status.to_wire()["credentials"]["lastRotation"] == "2026-04-30T12:00:00Z"


def test_a_secret_that_says_something_else_is_rewritten_with_the_same_password() -> None:
    moved = SecretFound(
        ours=True, data=secret_data(LOGIN1, "secret-password", Endpoint("old", 5432, "app", "x"))
    )
    plan = steps(provisioned_view(secret=moved))
    assert not plan.credentials.new_login and plan.secret is not None
    written = {k: base64.b64decode(v).decode() for k, v in plan.secret["data"].items()}
    assert written == secret_data(LOGIN1, "secret-password")


def test_a_recorded_login_dropped_by_hand_is_created_again_with_the_secrets_password() -> None:
    plan = steps(provisioned_view(roles=frozenset({"app_owner"})))
    assert not plan.credentials.new_login and plan.server.create_login
    assert plan.password == "secret-password"


@pytest.mark.parametrize("data", [None, {"username": LOGIN1}])
def test_a_secret_without_password_is_recreated_with_a_new_login_and_said(
    data: dict[str, str] | None,
) -> None:
    secret = None if data is None else SecretFound(ours=True, data=data)
    plan = steps(provisioned_view(secret=secret))
    assert plan.credentials.login == LOGIN2 and plan.password == "fresh-password"
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "CredentialsRecreated")]
    assert "was missing its password" in plan.events[0].message
    assert "until 2026-05-01T13:00:00Z" in plan.events[0].message
    assert plan.ready.message.endswith(plan.events[0].message)


def test_extensions_are_managed_when_listed_or_created_before() -> None:
    listed = steps(provisioned_view(spec=spec(extensions=["pg_trgm"])))
    assert listed.extensions is not None
    assert listed.extensions.wanted == frozenset({"pg_trgm"}) and listed.extensions.changed
    assert listed.status.to_wire()["extensions"] == ["pg_trgm"]
    unlisted = steps(
        provisioned_view(record=replace(record_of_login1(), extensions=frozenset({"pg_trgm"})))
    )
    assert unlisted.extensions is not None
    assert unlisted.extensions.wanted == frozenset() and unlisted.extensions.changed
    same = steps(
        provisioned_view(
            spec=spec(extensions=["pg_trgm"]),
            record=replace(record_of_login1(), extensions=frozenset({"pg_trgm"})),
        )
    )
    assert same.extensions is not None and not same.extensions.changed


def test_the_roles_read_include_whichever_login_the_plan_picks() -> None:
    assert roles_to_read("app_owner", None) == ["app_owner", LOGIN1]
    assert roles_to_read("app_owner", record_of_login1()) == ["app_owner", LOGIN1, LOGIN2]
    for v in (view(), provisioned_view(), provisioned_view(rotate_token="now")):
        assert steps(v).credentials.login in roles_to_read("app_owner", v.record)


def test_passwords_stay_out_of_reprs() -> None:
    v = provisioned_view(rotate_token="now")
    plan = steps(v)
    for shown in (repr(v), repr(plan)):
        assert "fresh-password" not in shown and "secret-password" not in shown


def test_a_claim_lost_to_a_race_is_a_name_conflict() -> None:
    verdict = claim_lost(spec())
    assert verdict.reason is Reason.NAME_CONFLICT
    assert "just claimed by another ManagedDatabase" in verdict.message
