"""A ManagedDatabase's deletion: its deletion policy carried out on what the server's
record says this very object owns; a server that cannot be reached waits, unless the
platform admin said to abandon."""

from __future__ import annotations

import kopf
import pytest

from controllers.world import NAMESPACE, World
from vauban.api.cluster import MANAGED_CLUSTER
from vauban.api.database import MANAGED_DATABASE
from vauban.reconcile.database import ABANDON_ANNOTATION


def test_delete_drops_the_database_its_roles_and_its_record(world: World) -> None:
    world.external_cluster()
    uid = world.database(deletionPolicy="Delete")["metadata"]["uid"]
    login = world.reconcile_database()["credentials"]["username"]

    world.delete_database()

    assert "inventory" not in world.server.databases
    assert login not in world.server.roles and "inventory_owner" not in world.server.roles
    assert uid not in world.server.records


def test_retain_revokes_the_logins_and_keeps_the_names_taken(world: World) -> None:
    world.external_cluster()
    uid = world.database()["metadata"]["uid"]
    login = world.reconcile_database()["credentials"]["username"]

    world.delete_database()

    assert world.server.databases["inventory"].owner == "inventory_owner"
    assert login not in world.server.roles
    assert world.server.records[uid].retained and world.server.records[uid].logins == ()
    # A new object of the same name is another owner: the kept data is not handed over.
    world.database()
    world.reconcile_database()
    assert world.ready(MANAGED_DATABASE, "inventory")["reason"] == "NameConflict"


def test_an_object_that_never_provisioned_touches_nothing(world: World) -> None:
    world.external_cluster()
    world.database()
    world.reconcile_database()
    world.database(
        "thief", databaseName="inventory", owner="inventory_owner", deletionPolicy="Delete"
    )
    world.reconcile_database("thief")

    world.delete_database("thief")

    assert "inventory" in world.server.databases


def test_deletion_waits_for_a_server_that_does_not_answer(world: World) -> None:
    world.external_cluster()
    world.database(deletionPolicy="Delete")
    world.reconcile_database()
    world.server.down = True

    with pytest.raises(kopf.TemporaryError):
        world.delete_database()

    assert world.ready(MANAGED_DATABASE, "inventory")["reason"] == "DeletionBlocked"


def test_the_platform_admin_may_abandon_what_the_server_holds(world: World) -> None:
    world.external_cluster()
    world.database(deletionPolicy="Delete")
    world.reconcile_database()
    world.server.down = True
    cluster = world.kube.get(MANAGED_CLUSTER, NAMESPACE, "legacy")
    cluster["metadata"]["annotations"] = {ABANDON_ANNOTATION: "true"}
    world.kube.put(MANAGED_CLUSTER, cluster)

    world.delete_database()

    assert world.kube.events_of("inventory")[-1] == "CleanupSkipped"
    assert "inventory" in world.server.databases
