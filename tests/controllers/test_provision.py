"""A ManagedDatabase provisioned, left alone when nothing changed, repaired, refused: whole
reconciles, on fakes of the apiserver and the server."""

from __future__ import annotations

from controllers.world import NAMESPACE, World
from vauban.api.cluster import MANAGED_CLUSTER
from vauban.api.database import MANAGED_DATABASE


def test_a_database_is_provisioned_in_one_reconcile(world: World) -> None:
    world.external_cluster()
    body = world.database(extensions=["citext"], connectionLimit=20)
    status = world.reconcile_database()

    assert world.ready(MANAGED_DATABASE, "inventory")["reason"] == "Available"
    assert status["phase"] == "Ready"
    login = status["credentials"]["username"]
    # The server has what the spec asks, and nothing open to PUBLIC.
    database = world.server.databases["inventory"]
    assert database.owner == "inventory_owner"
    assert not database.public_can_connect
    assert database.extensions == {"citext"}
    role = world.server.roles[login]
    assert role.login and role.connection_limit == 20 and role.member_of == {"inventory_owner"}
    # The Secret names that login, owned by this very object; the record says it is published.
    secret = world.kube.secrets[(NAMESPACE, "inventory-credentials")]
    assert secret.values["username"] == login
    assert secret.owners == {body["metadata"]["uid"]}
    record = world.server.records[body["metadata"]["uid"]]
    assert record.extensions == {"citext"}
    assert [(x.role, x.published) for x in record.logins] == [(login, True)]
    assert status["credentials"]["accepted"] is True
    assert world.kube.events_of("inventory") == ["Available"]


def test_a_second_reconcile_changes_nothing(world: World) -> None:
    world.external_cluster()
    world.database()
    world.reconcile_database()
    statements, writes = len(world.server.statements), world.kube.status_writes

    world.reconcile_database()

    assert world.server.statements[statements:] == []
    assert world.kube.status_writes == writes


def test_a_login_disabled_by_hand_is_repaired_and_said(world: World) -> None:
    world.external_cluster()
    world.database()
    login = world.reconcile_database()["credentials"]["username"]
    world.server.roles[login].login = False

    world.reconcile_database()

    assert world.server.roles[login].login
    assert world.kube.events_of("inventory")[-1] == "Provisioned"


def test_an_extension_no_longer_listed_is_dropped(world: World) -> None:
    world.external_cluster()
    world.database(extensions=["citext", "hstore"])
    world.reconcile_database()
    world.database(extensions=["citext"])

    status = world.reconcile_database()

    assert world.server.databases["inventory"].extensions == {"citext"}
    assert status["extensions"] == ["citext"]
    assert status["observedGeneration"] == 2


def test_names_another_database_holds_are_refused_and_nothing_is_touched(world: World) -> None:
    world.external_cluster()
    world.database()
    world.reconcile_database()
    world.database("thief", databaseName="inventory", owner="inventory_owner")
    statements = len(world.server.statements)

    world.reconcile_database("thief")

    ready = world.ready(MANAGED_DATABASE, "thief")
    assert (ready["status"], ready["reason"]) == ("False", "NameConflict")
    assert world.server.statements[statements:] == []
    assert (NAMESPACE, "thief-credentials") not in world.kube.secrets


def test_a_secret_vauban_did_not_write_is_never_overwritten(world: World) -> None:
    world.external_cluster()
    world.database()
    world.kube.put_secret(NAMESPACE, "inventory-credentials", {"username": "someone"})

    world.reconcile_database()

    assert world.ready(MANAGED_DATABASE, "inventory")["status"] == "False"
    assert world.kube.secrets[(NAMESPACE, "inventory-credentials")].values == {
        "username": "someone"
    }
    assert world.server.records == {}


def test_a_server_that_does_not_answer_is_waited_for(world: World) -> None:
    world.external_cluster()
    world.database()
    world.server.down = True

    status = world.reconcile_database()

    ready = world.ready(MANAGED_DATABASE, "inventory")
    assert (ready["status"], ready["reason"]) == ("False", "Unreachable")
    assert status["phase"] != "Ready"
    # The cluster was told at once, not at its next probe.
    assert world.ready(MANAGED_CLUSTER, "legacy")["status"] == "False"
    world.server.down = False
    world.reconcile_cluster()
    world.reconcile_database()
    assert world.ready(MANAGED_DATABASE, "inventory")["status"] == "True"


def test_the_usage_probe_writes_a_size_that_moved_and_nothing_else(world: World) -> None:
    world.external_cluster()
    world.database()
    world.reconcile_database()
    events = list(world.kube.events)

    world.server.sizes["inventory"] = 64 << 20
    world.probe_usage()

    assert world.status(MANAGED_DATABASE, "inventory")["sizeBytes"] == 64 << 20
    assert world.kube.events == events
    writes = world.kube.status_writes
    world.server.sizes["inventory"] = (64 << 20) + 1000  # less than 1 MiB: not worth a write
    world.probe_usage()
    assert world.kube.status_writes == writes


def test_a_login_dropped_by_hand_makes_the_database_due_at_once(world: World) -> None:
    world.external_cluster()
    world.database()
    login = world.reconcile_database()["credentials"]["username"]
    key = ("ManagedDatabase", NAMESPACE, "inventory")
    assert key in world.ctx.reconciled
    del world.server.roles[login]

    world.probe_usage()

    assert key not in world.ctx.reconciled
    world.reconcile_database()
    assert world.server.roles[login].login
