"""Credential rotation: a new login in the Secret, the previous one working through its
grace period, then dropped; a password changed by hand said, not hidden."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from controllers.world import NAMESPACE, World
from vauban.api.database import MANAGED_DATABASE
from vauban.reconcile.database import ROTATE_ANNOTATION


def _rotated(world: World, token: str) -> dict[str, Any]:
    world.database(annotations={ROTATE_ANNOTATION: token}, credentials={"gracePeriod": "1h"})
    return world.reconcile_database()


def test_a_rotation_publishes_a_new_login_and_keeps_the_old_one_for_its_grace(
    world: World,
) -> None:
    world.external_cluster()
    uid = world.database()["metadata"]["uid"]
    first = world.reconcile_database()["credentials"]["username"]

    status = _rotated(world, "now")

    second = status["credentials"]["username"]
    assert second != first
    assert world.kube.secrets[(NAMESPACE, "inventory-credentials")].values["username"] == second
    assert world.server.roles[first].login and world.server.roles[second].login
    logins = world.server.logins_of(uid)
    deadline = logins[first].retire_after
    assert deadline is not None
    assert timedelta(minutes=59) < deadline - datetime.now(UTC) <= timedelta(hours=1)
    assert logins[second].published and logins[second].retire_after is None
    assert status["credentials"]["retiring"] == [first]
    assert world.server.records[uid].rotation_token == "now"


def test_the_same_token_rotates_once(world: World) -> None:
    world.external_cluster()
    world.database()
    world.reconcile_database()
    login = _rotated(world, "once")["credentials"]["username"]

    again = _rotated(world, "once")["credentials"]["username"]

    assert again == login


def test_the_previous_login_is_dropped_once_its_grace_period_is_over(world: World) -> None:
    world.external_cluster()
    uid = world.database()["metadata"]["uid"]
    first = world.reconcile_database()["credentials"]["username"]
    second = _rotated(world, "now")["credentials"]["username"]
    past = datetime.now(UTC) - timedelta(seconds=1)
    record = world.server.records[uid]
    world.server.update(
        uid,
        logins=tuple(
            replace(x, retire_after=past) if x.role == first else x for x in record.logins
        ),
    )

    status = world.reconcile_database()

    assert first not in world.server.roles
    assert set(world.server.logins_of(uid)) == {second}
    assert status["credentials"]["retiring"] == []


def test_a_password_changed_by_hand_is_said_once(world: World) -> None:
    world.external_cluster()
    world.database()
    login = world.reconcile_database()["credentials"]["username"]
    world.server.refused_logins.add(login)
    world.database(connectionLimit=5)  # a change of spec: a full reconcile

    status = world.reconcile_database()
    world.database(connectionLimit=6)
    world.reconcile_database()

    assert status["credentials"]["accepted"] is False
    # Still Ready: the operator may reach the server another way than applications do.
    assert world.ready(MANAGED_DATABASE, "inventory")["status"] == "True"
    assert world.kube.events_of("inventory").count("CredentialsRejected") == 1
