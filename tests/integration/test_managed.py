"""Mode Managed: Vauban renders CloudNativePG's Cluster and maps its status back.

No CloudNativePG operator runs here (no PostgreSQL pods under kwok): the real apiserver holds
CloudNativePG's CRDs, taken from its Go module at the tested version, so every rendered
Cluster is checked against CloudNativePG's own schema, and the tests write status the way
CloudNativePG's operator does. These tests have their own control plane: the session's has
no CloudNativePG, which other tests rely on.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from support.kube import (
    KubeCtl,
    OperatorProcess,
    condition,
    eventually,
    own_control_plane,
    with_reason,
)
from support.vauban_process import running_operator

CLOUDNATIVEPG_VERSION = "v1.30.1"

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("VAUBAN_TEST_KUBECONFIG")),
    reason="needs a control plane of its own with CloudNativePG's CRDs",
)


@pytest.fixture(scope="module")
def managed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KubeCtl, OperatorProcess]]:
    from vauban.devcluster.build import module_source
    from vauban.devcluster.install import barman_cloud_crd

    root = tmp_path_factory.mktemp("managed")
    with own_control_plane(root) as kube:
        bases = module_source("github.com/cloudnative-pg/cloudnative-pg", CLOUDNATIVEPG_VERSION)
        kube.run("apply", "--server-side", "-f", str(bases / "config" / "crd" / "bases"))
        kube.run("apply", "--server-side", "-f", str(barman_cloud_crd()))
        kube.run("wait", "--for=condition=Established", "crd/clusters.postgresql.cnpg.io")
        kube.run("wait", "--for=condition=Established", "crd/objectstores.barmancloud.cnpg.io")
        with running_operator(kube.kubeconfig, root / "operator.log") as operator:
            yield kube, operator


@pytest.fixture
def kube(managed: tuple[KubeCtl, OperatorProcess]) -> KubeCtl:
    return managed[0]


@pytest.fixture
def ns(kube: KubeCtl, request: pytest.FixtureRequest) -> str:
    return kube.unique_namespace(request.node.name)


def cluster(namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "vauban.dev/v1alpha1",
        "kind": "ManagedCluster",
        "metadata": {"name": "main", "namespace": namespace},
        "spec": {
            "version": "17",
            "instances": 3,
            "storage": {"size": "10Gi", "storageClassName": "standard"},
            **spec,
        },
    }


def engine(kube: KubeCtl, namespace: str) -> dict[str, Any] | None:
    result = kube.run(
        "get", "clusters.postgresql.cnpg.io", "main", "-n", namespace, "-o", "json", check=False
    )
    return json.loads(result.stdout) if result.returncode == 0 else None


def report_healthy(kube: KubeCtl, namespace: str, instances: int) -> None:
    """Write status the way CloudNativePG's operator does once its instances are up."""
    current = engine(kube, namespace)
    assert current is not None
    status = {
        "instances": instances,
        "readyInstances": instances,
        "currentPrimary": "main-1",
        "phase": "Cluster in healthy state",
        "image": "ghcr.io/cloudnative-pg/postgresql:17.6",
        "writeService": "main-rw",
        "readService": "main-r",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "ClusterIsReady",
                "message": "Cluster is Ready",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "observedGeneration": current["metadata"]["generation"],
            }
        ],
    }
    kube.run(
        "patch",
        "clusters.postgresql.cnpg.io",
        "main",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def superuser_password(kube: KubeCtl, namespace: str) -> str:
    secret = kube.get("secret", "main-superuser", namespace)
    return base64.b64decode(secret["data"]["password"]).decode()


def test_renders_cloudnativepg_cluster_and_maps_its_status(
    kube: KubeCtl, ns: str, managed: tuple[KubeCtl, OperatorProcess]
) -> None:
    kube.apply(
        cluster(
            ns,
            resources={"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "2Gi"}},
            postgresql={"parameters": {"max_connections": "200"}},
            allowedNamespaces={"names": ["shop"]},
        )
    )
    rendered = eventually(lambda: engine(kube, ns), what="the CloudNativePG Cluster")
    owner = kube.get("managedcluster", "main", ns)
    assert rendered["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
    spec = rendered["spec"]
    assert spec["instances"] == 3
    assert spec["imageName"] == "ghcr.io/cloudnative-pg/postgresql:17"
    # CloudNativePG's schema defaults the rest (resizeInUseVolumes...).
    assert spec["storage"]["size"] == "10Gi" and spec["storage"]["storageClass"] == "standard"
    assert spec["resources"]["limits"] == {"memory": "2Gi"}
    assert spec["postgresql"]["parameters"]["max_connections"] == "200"
    assert spec["postgresql"]["pg_hba"][0] == "hostnossl all all all reject"
    assert spec["superuserSecret"] == {"name": "main-superuser"}

    policy = kube.get("networkpolicy", "main-postgresql", ns)
    tenants = policy["spec"]["ingress"][1]["from"][0]["namespaceSelector"]
    assert tenants["matchExpressions"][0]["values"] == sorted([ns, "shop"])
    assert kube.get("secret", "main-superuser", ns)["type"] == "kubernetes.io/basic-auth"

    provisioning = eventually(
        lambda: with_reason(kube, "managedcluster", "main", ns, "Provisioning")
    )
    assert provisioning["status"]["phase"] == "Provisioning"
    assert provisioning["status"]["endpoints"] == {
        "readWrite": f"main-rw.{ns}.svc:5432",
        "readOnly": f"main-ro.{ns}.svc:5432",
    }

    report_healthy(kube, ns, 3)
    ready = eventually(
        lambda: with_reason(kube, "managedcluster", "main", ns, "Available"),
        what="Ready from CloudNativePG",
    )
    status = ready["status"]
    assert (status["readyInstances"], status["currentPrimary"], status["version"]) == (
        3,
        "main-1",
        "17.6",
    )
    assert status["phase"] == "Ready"

    password = superuser_password(kube, ns)
    events = kube.run("get", "events", "-n", ns, "-o", "json").stdout
    assert password not in json.dumps(status) and password not in events
    assert password not in managed[1].log_text()


def test_updates_pass_through_and_drift_is_repaired(kube: KubeCtl, ns: str) -> None:
    kube.apply(cluster(ns))
    eventually(lambda: engine(kube, ns))
    password = superuser_password(kube, ns)

    kube.apply(cluster(ns, instances=5, postgresql={"parameters": {"work_mem": "64MB"}}))
    eventually(
        lambda: (
            (e := engine(kube, ns))
            and e["spec"]["instances"] == 5
            and e["spec"]["postgresql"]["parameters"] == {"work_mem": "64MB"}
        ),
        what="the scale-up to reach CloudNativePG",
    )

    # Someone edits the rendered Cluster by hand: Vauban puts its fields back.
    kube.run(
        "patch",
        "clusters.postgresql.cnpg.io",
        "main",
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"instances": 1}}),
    )
    eventually(
        lambda: (e := engine(kube, ns)) and e["spec"]["instances"] == 5,
        what="the drift to be repaired",
    )
    kube.run(
        "patch",
        "networkpolicy",
        "main-postgresql",
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"ingress": [{}]}}),
    )
    eventually(
        lambda: len(kube.get("networkpolicy", "main-postgresql", ns)["spec"]["ingress"]) == 3,
        what="the NetworkPolicy to be repaired",
    )
    # The generated superuser password is never regenerated.
    assert superuser_password(kube, ns) == password


def test_major_version_change_is_refused(kube: KubeCtl, ns: str) -> None:
    kube.apply(cluster(ns))
    eventually(lambda: engine(kube, ns))
    kube.apply(cluster(ns, version="18"))
    obj = eventually(
        lambda: with_reason(kube, "managedcluster", "main", ns, "MajorUpgradeUnsupported")
    )
    stalled = condition(obj, "Stalled")
    assert stalled and stalled["status"] == "True"
    current = engine(kube, ns)
    assert current and current["spec"]["imageName"].endswith(":17")


def test_switchover_request_is_written_as_cnpg_promote_writes_it(kube: KubeCtl, ns: str) -> None:
    """The annotation makes the operator patch CloudNativePG's status (what `kubectl cnpg
    promote` writes) once, and record the request on the Cluster; a refused one says why."""
    kube.apply(cluster(ns, instances=2))
    eventually(lambda: engine(kube, ns))
    report_healthy(kube, ns, 2)
    replicas = {
        "targetPrimary": "main-1",
        "instancesStatus": {"healthy": ["main-1", "main-2"]},
        "instancesReportedState": {"main-1": {"isPrimary": True}, "main-2": {"isPrimary": False}},
    }
    kube.run("patch", "clusters.postgresql.cnpg.io", "main", "-n", ns, "--subresource=status",
             "--type=merge", "-p", json.dumps({"status": replicas}))  # fmt: skip
    eventually(lambda: with_reason(kube, "managedcluster", "main", ns, "Available"))

    kube.run("annotate", "managedcluster", "main", "-n", ns, "vauban.dev/switchover-to=main-3")
    obj = eventually(
        lambda: (
            (o := kube.get("managedcluster", "main", ns))
            and (c := condition(o, "SwitchedOver"))
            and c["reason"] == "SwitchoverRefused"
            and o
        )
    )
    assert condition(obj, "Ready")["status"] == "True"  # type: ignore[index]

    kube.run("annotate", "managedcluster", "main", "-n", ns, "vauban.dev/switchover-to=main-2",
             "--overwrite")  # fmt: skip
    # The promotion (status) and its record (an annotation) are two writes, in that order:
    # the test may read the Cluster between them.
    promoted = eventually(
        lambda: (
            (e := engine(kube, ns))
            and e["status"].get("targetPrimary") == "main-2"
            and (e["metadata"].get("annotations") or {}).get("vauban.dev/switchover-handled")
            and e
        ),
        what="the promotion written, and recorded",
    )
    assert promoted["status"]["phase"] == "Switchover in progress"
    assert promoted["metadata"]["annotations"]["vauban.dev/switchover-handled"] == "main-2"
    obj = eventually(lambda: with_reason(kube, "managedcluster", "main", ns, "Provisioning"))
    assert "Switchover in progress" in condition(obj, "Ready")["message"]  # type: ignore[index]
    switched = condition(obj, "SwitchedOver")
    assert switched and switched["reason"] == "SwitchoverInProgress"


def _claim(kube: KubeCtl, ns: str, name: str, storage_class: str, size: str) -> None:
    """An instance's claim as CloudNativePG makes one, bound to a volume of `size`: its
    status written by hand (no storage driver runs here)."""
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": ns, "labels": {"cnpg.io/cluster": "main"}},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": storage_class,
                "resources": {"requests": {"storage": size}},
            },
        }
    )
    status = {"phase": "Bound", "capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"]}
    kube.run("patch", "pvc", name, "-n", ns, "--subresource=status", "--type=merge",
             "-p", json.dumps({"status": status}))  # fmt: skip


def test_storage_grows_only_where_the_class_can_expand(kube: KubeCtl, ns: str) -> None:
    """On a class without volume expansion the growth is held back from CloudNativePG and
    said (Stalled, StorageResizeUnsupported); on one with it, CloudNativePG gets the new size
    and the cluster is Reconciling until every volume has grown."""
    kube.apply(cluster(ns, instances=1))
    eventually(lambda: engine(kube, ns))
    report_healthy(kube, ns, 1)
    eventually(lambda: with_reason(kube, "managedcluster", "main", ns, "Available"))
    kube.apply(cluster(ns, instances=1, storage={"size": "20Gi", "storageClassName": "standard"}))
    obj = eventually(
        lambda: with_reason(kube, "managedcluster", "main", ns, "StorageResizeUnsupported")
    )
    stalled = condition(obj, "Stalled")
    assert stalled and stalled["status"] == "True"
    assert "StorageClass standard does not allow volume expansion" in stalled["message"]
    current = engine(kube, ns)
    assert current and current["spec"]["storage"]["size"] == "10Gi", "held back"

    other = kube.unique_namespace("storage-growable")
    kube.apply(
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": "growable"},
            "provisioner": "kwok.x-k8s.io/volume",
            "allowVolumeExpansion": True,
        }
    )
    growable = {"size": "10Gi", "storageClassName": "growable"}
    kube.apply(cluster(other, instances=1, storage=growable))
    eventually(lambda: engine(kube, other))
    _claim(kube, other, "main-1", "growable", "10Gi")
    report_healthy(kube, other, 1)
    eventually(lambda: with_reason(kube, "managedcluster", "main", other, "Available"))
    kube.apply(cluster(other, instances=1, storage={**growable, "size": "20Gi"}))
    eventually(
        lambda: (e := engine(kube, other)) and e["spec"]["storage"]["size"] == "20Gi",
        what="the new size given to CloudNativePG",
    )
    report_healthy(kube, other, 1)  # CloudNativePG Ready for its new generation
    obj = eventually(lambda: with_reason(kube, "managedcluster", "main", other, "StorageResizing"))
    assert "main-1 has 10Gi" in condition(obj, "Ready")["message"]  # type: ignore[index]
    _claim(kube, other, "main-1", "growable", "20Gi")  # what the storage driver does
    # Claims are not watched: the next re-check, or any event of the cluster, reads them.
    kube.run("annotate", "managedcluster", "main", "-n", other, "example.com/nudge=1")
    eventually(lambda: with_reason(kube, "managedcluster", "main", other, "Available"))


def _volume(kube: KubeCtl, ns: str) -> None:
    """A claim as CloudNativePG creates one for an instance: owned by its Cluster."""
    current = engine(kube, ns)
    assert current is not None
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": "main-1",
                "namespace": ns,
                "labels": {"cnpg.io/cluster": "main"},
                "ownerReferences": [
                    {
                        "apiVersion": "postgresql.cnpg.io/v1",
                        "kind": "Cluster",
                        "name": "main",
                        "uid": current["metadata"]["uid"],
                        "controller": True,
                    }
                ],
            },
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "10Gi"}},
            },
        }
    )


def _gone(kube: KubeCtl, *args: str) -> bool:
    return kube.run("get", *args, check=False).returncode != 0


def test_deletion_retains_volumes_and_credentials_by_default(kube: KubeCtl, ns: str) -> None:
    kube.apply(cluster(ns))
    eventually(lambda: engine(kube, ns))
    _volume(kube, ns)
    kube.run("delete", "managedcluster", "main", "-n", ns)
    eventually(lambda: engine(kube, ns) is None, what="the CloudNativePG Cluster to go")

    claim = kube.get("pvc", "main-1", ns)
    assert not claim["metadata"].get("ownerReferences")
    assert claim["metadata"]["labels"]["vauban.dev/retained-from"] == "main"
    secret = kube.get("secret", "main-superuser", ns)
    assert not secret["metadata"].get("ownerReferences")
    assert secret["metadata"]["labels"]["vauban.dev/retained-from"] == "main"


def test_deletion_policy_delete_removes_them(kube: KubeCtl, ns: str) -> None:
    kube.apply(cluster(ns, deletionPolicy="Delete"))
    eventually(lambda: engine(kube, ns))
    _volume(kube, ns)
    kube.run("delete", "managedcluster", "main", "-n", ns)
    eventually(lambda: _gone(kube, "pvc", "main-1", "-n", ns), what="the claim to be collected")
    eventually(lambda: _gone(kube, "secret", "main-superuser", "-n", ns))
    eventually(lambda: _gone(kube, "networkpolicy", "main-postgresql", "-n", ns))


def encrypted_class(kube: KubeCtl) -> str:
    """A StorageClass the platform declares encrypting (a LUKS-backed CSI driver, say)."""
    kube.apply(
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": "luks", "annotations": {"vauban.dev/encrypted": "true"}},
            "provisioner": "kwok.x-k8s.io/volume",
        }
    )
    return "luks"


def test_hds_profile_refuses_a_class_that_does_not_encrypt(kube: KubeCtl, ns: str) -> None:
    kube.apply(cluster(ns, compliance={"profile": "hds"}))
    obj = eventually(
        lambda: with_reason(kube, "managedcluster", "main", ns, "StorageClassNotEncrypted"),
        what="StorageClassNotEncrypted",
    )
    encrypted = condition(obj, "Encrypted")
    assert encrypted is not None and encrypted["status"] == "False"
    assert encrypted["reason"] == "StorageClassNotEncrypted"
    assert obj["status"]["compliance"]["storageClass"] == "standard"
    assert engine(kube, ns) is None  # no workload on unencrypted volumes


def test_hds_profile_on_an_encrypting_class_with_archiving(kube: KubeCtl, ns: str) -> None:
    store = {"bucket": "wal", "region": "eu-west-3", "credentialsSecretRef": {"name": "bucket"}}
    kube.apply(
        cluster(
            ns,
            storage={"size": "10Gi", "storageClassName": encrypted_class(kube)},
            compliance={"profile": "hds"},
            backup={"objectStore": store, "schedule": "0 2 * * *"},
            # hds requires audit logging.
            postgresql={
                "sharedPreloadLibraries": ["pgaudit"],
                "parameters": {"pgaudit.log": "ddl,role"},
            },
        )
    )
    rendered = eventually(lambda: engine(kube, ns), what="the CloudNativePG Cluster")
    assert rendered["spec"]["postgresql"]["shared_preload_libraries"] == ["pgaudit"]
    (plugin,) = rendered["spec"]["plugins"]
    assert plugin["parameters"] == {"barmanObjectName": "main-archive"}
    store = json.loads(
        kube.run(
            "get", "objectstores.barmancloud.cnpg.io", "main-archive", "-n", ns, "-o", "json"
        ).stdout
    )
    assert store["spec"]["configuration"]["destinationPath"] == f"s3://wal/{ns}/main/wal-archive"
    scheduled = kube.run(
        "get", "scheduledbackups.postgresql.cnpg.io", "main-base", "-n", ns, "-o", "json"
    ).stdout
    assert json.loads(scheduled)["spec"]["schedule"] == "0 0 2 * * *"

    # The NetworkPolicy is read back once applied: the status of the reconcile that applied
    # it says so.
    def judged_on_the_policy() -> dict[str, Any] | None:
        found = kube.get("managedcluster", "main", ns)
        rules = (found.get("status") or {}).get("compliance", {}).get("rules", [])
        met = {r["rule"]: r["met"] for r in rules}
        return found if met.get("network-policy") else None

    obj = eventually(judged_on_the_policy, what="the NetworkPolicy seen by the compliance report")
    encrypted = condition(obj, "Encrypted")
    assert encrypted is not None and encrypted["status"] == "True"
    # Every rule is met but one: the suite's operator has no recovery key and the key is in a
    # Secret, so hds says plainly that these backups would not survive losing the cluster.
    rules = {r["rule"]: r["met"] for r in obj["status"]["compliance"]["rules"]}
    assert [rule for rule, met in rules.items() if not met] == ["backups-survive-cluster-loss"]
    compliant = condition(obj, "Compliant")
    assert compliant is not None and compliant["status"] == "False", compliant
    assert "backups-survive-cluster-loss" in compliant["message"], compliant
    # Observed, not assumed: the NetworkPolicy as the apiserver has it; the server, not
    # running here, is said not observable rather than failed.
    evidence = {r["rule"]: r["evidence"] for r in obj["status"]["compliance"]["rules"]}
    assert evidence["network-policy"].startswith(
        "NetworkPolicy main-postgresql: Ingress, selects the instance pods; admits from namespaces "
    )
    assert ns in evidence["network-policy"]
    assert evidence["tls-required"] == "server not observable: the cluster is not ready"
    # Not running either: judged on the spec, which turns pgaudit on.
    assert evidence["audit-logging"] == (
        "pgaudit not observable (the cluster is not ready); spec: pgaudit preloaded, "
        "pgaudit.log = ddl,role"
    )
    assert evidence["backups-succeeding"] == "no databases yet"
