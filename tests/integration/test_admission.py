"""Invalid YAML is refused by the apiserver at `kubectl apply`, with a message a person reads."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from support.kube import KubeCtl, eventually

pytestmark = pytest.mark.usefixtures("crds")


def cluster(namespace: str, **spec: Any) -> dict[str, Any]:
    base = {"version": "17", "storage": {"size": "10Gi"}}
    return {
        "apiVersion": "vauban.dev/v1alpha1",
        "kind": "ManagedCluster",
        "metadata": {"name": "main", "namespace": namespace},
        "spec": {**base, **spec},
    }


def backup(namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "vauban.dev/v1alpha1",
        "kind": "ManagedBackup",
        "metadata": {"name": "app-now", "namespace": namespace},
        "spec": {"databaseRef": {"name": "app"}, **spec},
    }


def database(namespace: str, **spec: Any) -> dict[str, Any]:
    base = {"clusterRef": {"name": "main"}, "databaseName": "app", "owner": "app_owner"}
    return {
        "apiVersion": "vauban.dev/v1alpha1",
        "kind": "ManagedDatabase",
        "metadata": {"name": "app", "namespace": namespace},
        "spec": {**base, **spec},
    }


def refused(kube: KubeCtl, manifest: dict[str, Any]) -> str:
    result = kube.apply(manifest, check=False)
    assert result.returncode != 0, f"accepted: {manifest}"
    return result.stderr


def test_valid_objects_are_accepted_and_defaulted(kube: KubeCtl, namespace: str) -> None:
    kube.apply(cluster(namespace))
    kube.apply(database(namespace))
    stored = kube.get("managedcluster", "main", namespace)["spec"]
    assert stored["engine"] == "postgresql"
    assert stored["mode"] == "Managed"
    assert stored["instances"] == 1
    assert stored["compliance"] == {"profile": "none"}
    assert stored["deletionPolicy"] == "Retain"
    db = kube.get("manageddatabase", "app", namespace)["spec"]
    assert db["deletionPolicy"] == "Retain"
    assert db["dataClassification"] == "internal"
    kube.apply(backup(namespace))
    # An on-demand backup declared in Git and pruned leaves the stored backup alone.
    assert kube.get("managedbackup", "app-now", namespace)["spec"] == {
        "databaseRef": {"name": "app"},
        "deletionPolicy": "Retain",
        "deletionProtection": False,
    }


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"deletionPolicy": "Maybe"}, 'Unsupported value: "Maybe"'),
        ({"storage": {"size": "-1Gi"}}, "spec.storage.size"),
        ({"storage": {"size": "500Mi"}}, "storage.size must be at least 1Gi"),
        ({"instances": 0}, "spec.instances"),
        ({"version": "12"}, "spec.version"),
        ({"mode": "External"}, "mode External needs spec.external"),
        ({"postgresql": {"parameters": {"archive_command": "curl evil"}}}, "only these parameters"),
        ({"postgresql": {"sharedPreloadLibraries": ["evil"]}}, 'Unsupported value: "evil"'),
        (
            {"resources": {"requests": {"memory": "4Gi"}, "limits": {"memory": "1Gi"}}},
            "limits.memory must be at least",
        ),
        ({"unknownField": True}, "unknown field"),
    ],
)
def test_invalid_cluster_is_refused(
    kube: KubeCtl, namespace: str, spec: dict[str, Any], expected: str
) -> None:
    assert expected in refused(kube, cluster(namespace, **spec))


def test_missing_storage_is_refused(kube: KubeCtl, namespace: str) -> None:
    manifest = cluster(namespace)
    del manifest["spec"]["storage"]
    assert "mode Managed needs spec.storage.size" in refused(kube, manifest)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"databaseName": "postgres"}, "databaseName must not be one of"),
        ({"databaseName": "Robert'); DROP TABLE students;--"}, "spec.databaseName"),
        ({"owner": "pg_monitor"}, "reserved by PostgreSQL"),
        ({"extensions": ["plpython3u"]}, "spec.extensions"),
        ({"connectionLimit": -5}, "spec.connectionLimit"),
        ({"dataClassification": "secret"}, "spec.dataClassification"),
        ({"restore": {}}, "set exactly one of restore.backupRef and restore.databaseRef"),
    ],
)
def test_invalid_database_is_refused(
    kube: KubeCtl, namespace: str, spec: dict[str, Any], expected: str
) -> None:
    assert expected in refused(kube, database(namespace, **spec))


def test_missing_required_field_is_refused(kube: KubeCtl, namespace: str) -> None:
    manifest = database(namespace)
    del manifest["spec"]["clusterRef"]
    assert "spec.clusterRef: Required value" in refused(kube, manifest)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("clusterRef", {"name": "elsewhere"}, "clusterRef is immutable"),
        ("databaseName", "renamed", "databaseName is immutable"),
    ],
)
def test_immutable_database_fields(
    kube: KubeCtl, namespace: str, field: str, value: Any, expected: str
) -> None:
    original = database(namespace)
    kube.apply(original)
    changed = copy.deepcopy(original)
    changed["spec"][field] = value
    assert expected in refused(kube, changed)


def test_immutable_cluster_fields_and_shrinking_storage(kube: KubeCtl, namespace: str) -> None:
    kube.apply(cluster(namespace, storage={"size": "10Gi", "storageClassName": "fast"}))
    assert "storage.size can grow but never shrink" in refused(
        kube, cluster(namespace, storage={"size": "5Gi", "storageClassName": "fast"})
    )
    assert "storageClassName is immutable" in refused(
        kube, cluster(namespace, storage={"size": "10Gi", "storageClassName": "slow"})
    )
    # Growing is fine.
    kube.apply(cluster(namespace, storage={"size": "20Gi", "storageClassName": "fast"}))


BACKUP = {
    "objectStore": {"bucket": "backups", "region": "fr-par", "credentialsSecretRef": {"name": "s3"}}
}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"restore": {"fromCluster": "orders"}}, "spec.restore needs mode Managed and spec.backup"),
        (
            {"backup": BACKUP, "restore": {"fromCluster": "orders", "targetTime": "yesterday"}},
            "spec.restore.targetTime",
        ),
        (
            {"backup": BACKUP, "restore": {"fromCluster": "main"}},
            "cannot be recovered from its own",
        ),
    ],
)
def test_invalid_restore_is_refused(
    kube: KubeCtl, namespace: str, spec: dict[str, Any], expected: str
) -> None:
    assert expected in refused(kube, cluster(namespace, **spec))


def test_restore_is_set_at_creation_only_and_never_changed(kube: KubeCtl, namespace: str) -> None:
    kube.apply(cluster(namespace, backup=BACKUP))
    assert "set when the cluster is created, never later" in refused(
        kube, cluster(namespace, backup=BACKUP, restore={"fromCluster": "orders"})
    )
    restored = cluster(namespace, backup=BACKUP, restore={"fromCluster": "orders"})
    restored["metadata"]["name"] = "copy"
    kube.apply(restored)
    moved = copy.deepcopy(restored)
    moved["spec"]["restore"]["targetTime"] = "2026-12-06T07:00:00Z"
    assert "spec.restore is immutable" in refused(kube, moved)
    dropped = copy.deepcopy(restored)
    del dropped["spec"]["restore"]
    assert "set when the cluster is created, never later" in refused(kube, dropped)


def test_long_cluster_name_is_refused(kube: KubeCtl, namespace: str) -> None:
    manifest = cluster(namespace)
    manifest["metadata"]["name"] = "c" * 51
    assert "at most 50 characters" in refused(kube, manifest)


@pytest.mark.parametrize("kind", ["managedcluster", "manageddatabase", "managedbackup"])
def test_deletion_protection_is_enforced_by_the_apiserver(
    kube: KubeCtl, namespace: str, kind: str
) -> None:
    """Refused at admission, so it holds while the operator is down and when the namespace
    itself is deleted."""
    manifest = {"managedcluster": cluster, "manageddatabase": database, "managedbackup": backup}[
        kind
    ](namespace)
    manifest["spec"]["deletionProtection"] = True
    kube.apply(manifest)
    name = manifest["metadata"]["name"]

    def refused_dry_run() -> str | None:
        result = kube.run("delete", kind, name, "-n", namespace, "--dry-run=server", check=False)
        return result.stderr if result.returncode != 0 else None

    # The policy takes a moment to be loaded after the CRDs are installed.
    message = eventually(refused_dry_run, what="the deletion-protection policy to be active")
    assert f"{namespace}/{name} has spec.deletionProtection: true" in message
    assert kube.run("delete", kind, name, "-n", namespace, check=False).returncode != 0

    manifest["spec"]["deletionProtection"] = False
    kube.apply(manifest)
    kube.run("delete", kind, name, "-n", namespace)
