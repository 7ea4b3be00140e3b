"""ManagedClusters as whole reconciles: an adopted server's probe, CloudNativePG's Cluster
rendered and its status mapped onto ours, a major upgrade refused, deletion waiting for the
cluster's databases."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from controllers.world import NAMESPACE, World
from vauban.api.cluster import MANAGED_CLUSTER
from vauban.api.database import MANAGED_DATABASE
from vauban.builders import cnpg
from vauban.handlers import cluster
from vauban.reconcile.keys import ROTATE_KEY_ANNOTATION


def _managed(world: World, **spec: Any) -> None:
    body = {"version": "17", "instances": 1, "storage": {"size": "1Gi"}, **spec}
    world.kube.put(
        MANAGED_CLUSTER, {"metadata": {"name": "main", "namespace": NAMESPACE}, "spec": body}
    )


def _engine(world: World) -> dict[str, Any]:
    return world.kube.objects[(cnpg.CNPG_PLURAL, NAMESPACE, "main")]


def test_an_adopted_server_that_answers_is_ready_and_described(world: World) -> None:
    world.external_cluster()
    status = world.status(MANAGED_CLUSTER, "legacy")
    assert world.ready(MANAGED_CLUSTER, "legacy")["status"] == "True"
    assert status["version"] == "17.6"


def test_an_adopted_server_with_a_wrong_password_is_stalled(world: World) -> None:
    world.server.password = "rotated-by-hand"
    world.external_cluster()
    ready = world.ready(MANAGED_CLUSTER, "legacy")
    assert (ready["status"], ready["reason"]) == ("False", "AuthenticationFailed")


def test_a_managed_cluster_renders_cloudnativepg_and_maps_its_status(world: World) -> None:
    _managed(world)

    world.reconcile_cluster("main")

    assert world.ready(MANAGED_CLUSTER, "main")["reason"] == "Provisioning"
    engine = _engine(world)
    assert engine["spec"]["instances"] == 1
    assert engine["spec"]["imageName"].endswith(":17")
    assert (NAMESPACE, cnpg.superuser_secret_name("main")) in world.kube.secrets

    engine["status"] = {
        "instances": 1,
        "readyInstances": 1,
        "currentPrimary": "main-1",
        "image": engine["spec"]["imageName"],
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    status = world.reconcile_cluster("main")

    assert world.ready(MANAGED_CLUSTER, "main")["status"] == "True"
    assert (status["readyInstances"], status["currentPrimary"]) == (1, "main-1")
    assert status["endpoints"]["readWrite"] == f"main-rw.{NAMESPACE}.svc:5432"


def test_a_major_upgrade_is_refused_before_anything_is_written(world: World) -> None:
    _managed(world)
    world.reconcile_cluster("main")
    before = dict(_engine(world)["spec"])
    _managed(world, version="18")

    world.reconcile_cluster("main")

    ready = world.ready(MANAGED_CLUSTER, "main")
    assert (ready["status"], ready["reason"]) == ("False", "MajorUpgradeUnsupported")
    assert _engine(world)["spec"] == before


def test_deletion_waits_for_the_clusters_databases(world: World) -> None:
    world.external_cluster()
    database = world.database()
    world.reconcile_database()
    body = world.kube.get(MANAGED_CLUSTER, NAMESPACE, "legacy")

    with pytest.raises(kopf.TemporaryError):
        world.run(cluster.finalize(world.ctx, body, [database]))

    assert world.ready(MANAGED_CLUSTER, "legacy")["reason"] == "DeletionBlocked"


def test_backups_get_a_key_encryption_key_from_the_provider(world: World) -> None:
    status = world.external_cluster(backup=True, compliance={"profile": "iso27001"})["status"]

    encryption = status["encryption"]
    assert (encryption["provider"], encryption["keyVersion"]) == ("kubernetes-secret", 1)
    assert len(world.keys.keks) == 1  # the KEK stays in the provider: only its id is kept
    rules = {r["rule"]: r["met"] for r in status["compliance"]["rules"]}
    assert rules["backups-configured"] is True


def test_a_key_rotation_rewraps_the_data_keys_and_keeps_the_old_version(world: World) -> None:
    world.external_cluster(backup=True)
    world.database(backup={})
    world.reconcile_database()
    uid = world.kube.get(MANAGED_DATABASE, NAMESPACE, "inventory")["metadata"]["uid"]
    dek = (world.settings.namespace, f"vauban-dek-{uid}")
    wrapped = dict(world.kube.secrets[dek].values)
    body = world.kube.get(MANAGED_CLUSTER, NAMESPACE, "legacy")
    body["metadata"]["annotations"] = {ROTATE_KEY_ANNOTATION: "2026-12"}
    world.kube.put(MANAGED_CLUSTER, body)

    status = world.reconcile_cluster()

    assert (status["encryption"]["keyVersion"], status["encryption"]["rotationToken"]) == (
        2,
        "2026-12",
    )
    assert len(world.keys.keks) == 2 and not world.keys.destroyed
    assert world.kube.secrets[dek].values != wrapped
    assert "KeyRotated" in world.kube.events_of("legacy")
    world.reconcile_cluster()  # the same token rotates once
    assert world.status(MANAGED_CLUSTER, "legacy")["encryption"]["keyVersion"] == 2
