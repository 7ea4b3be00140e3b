"""A tenant namespace the cluster no longer admits keeps no way in: its logins are
suspended at once, its data kept, and admitting it again restores them."""

from __future__ import annotations

from controllers.world import World
from vauban.api.database import MANAGED_DATABASE

TENANT = "team-a"
ADMITTED = {"vauban.dev/tenant": "true"}


def _admitted_database(world: World) -> str:
    world.external_cluster(allowedNamespaces={"selector": {"matchLabels": ADMITTED}})
    world.kube.namespaces[TENANT] = dict(ADMITTED)
    world.database(namespace=TENANT)
    status = world.reconcile_database(namespace=TENANT)
    assert world.ready(MANAGED_DATABASE, "inventory", TENANT)["status"] == "True"
    return str(status["credentials"]["username"])


def test_a_namespace_not_labelled_is_refused_and_nothing_is_created(world: World) -> None:
    world.external_cluster(allowedNamespaces={"selector": {"matchLabels": ADMITTED}})
    world.kube.namespaces[TENANT] = {}
    world.database(namespace=TENANT)

    world.reconcile_database(namespace=TENANT)

    ready = world.ready(MANAGED_DATABASE, "inventory", TENANT)
    assert (ready["status"], ready["reason"]) == ("False", "NamespaceNotAllowed")
    assert world.server.statements == []


def test_a_namespace_no_longer_admitted_has_its_logins_suspended(world: World) -> None:
    login = _admitted_database(world)
    world.kube.namespaces[TENANT] = {}

    world.reconcile_database(namespace=TENANT)

    ready = world.ready(MANAGED_DATABASE, "inventory", TENANT)
    assert ready["reason"] == "NamespaceNotAllowed"
    assert "suspended" in ready["message"]
    assert not world.server.roles[login].login
    assert "inventory" in world.server.databases  # the data stays
    assert "LoginsSuspended" in world.kube.events_of("inventory")


def test_admitting_the_namespace_again_restores_the_logins(world: World) -> None:
    login = _admitted_database(world)
    world.kube.namespaces[TENANT] = {}
    world.reconcile_database(namespace=TENANT)
    world.kube.namespaces[TENANT] = dict(ADMITTED)

    world.reconcile_database(namespace=TENANT)

    assert world.ready(MANAGED_DATABASE, "inventory", TENANT)["status"] == "True"
    assert world.server.roles[login].login
