"""The operator, running against the real apiserver, writes honest status and Events."""

from __future__ import annotations

import json
from typing import Any

import pytest

from support.kube import (
    KubeCtl,
    OperatorProcess,
    condition,
    eventually,
    external_cluster,
    with_reason,
)

pytestmark = pytest.mark.usefixtures("operator")


def database(
    namespace: str, cluster: str = "main", cluster_namespace: str | None = None
) -> dict[str, Any]:
    ref = {"name": cluster} | ({"namespace": cluster_namespace} if cluster_namespace else {})
    return {
        "apiVersion": "vauban.dev/v1alpha1",
        "kind": "ManagedDatabase",
        "metadata": {"name": "app", "namespace": namespace},
        "spec": {"clusterRef": ref, "databaseName": "app", "owner": "app_owner"},
    }


def test_database_without_cluster_waits_with_reason_and_event(
    kube: KubeCtl, namespace: str
) -> None:
    kube.apply(database(namespace))
    obj = eventually(
        lambda: with_reason(kube, "manageddatabase", "app", namespace, "ClusterNotFound"),
        what="Ready=False/ClusterNotFound",
    )
    status = obj["status"]
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["phase"] == "Pending"
    assert status["cluster"] == f"{namespace}/main"
    ready, reconciling, stalled = (condition(obj, t) for t in ("Ready", "Reconciling", "Stalled"))
    assert ready and ready["status"] == "False"
    assert f"ManagedCluster {namespace}/main does not exist" in ready["message"]
    assert reconciling and reconciling["status"] == "True"
    assert stalled and stalled["status"] == "False"
    for c in (ready, reconciling, stalled):
        assert c["observedGeneration"] == obj["metadata"]["generation"]
        assert c["lastTransitionTime"]

    events = eventually(
        lambda: [
            e
            for e in kube.get_list("events", namespace)
            if e["involvedObject"]["name"] == "app" and e["reason"] == "ClusterNotFound"
        ],
        what="a ClusterNotFound event",
    )
    assert len(events) == 1
    assert events[0]["involvedObject"]["kind"] == "ManagedDatabase"
    assert events[0]["type"] == "Normal"


def test_database_follows_its_cluster(
    kube: KubeCtl, namespace: str, operator: OperatorProcess
) -> None:
    kube.apply(database(namespace))
    eventually(lambda: with_reason(kube, "manageddatabase", "app", namespace, "ClusterNotFound"))

    # The cluster appears, waiting for its admin Secret: the database now waits on readiness.
    kube.apply(external_cluster(namespace, "main", 1))
    cluster = eventually(
        lambda: with_reason(kube, "managedcluster", "main", namespace, "SecretMissing"),
        what="cluster waiting for its Secret",
    )
    assert cluster["status"]["phase"] == "Pending"
    assert (
        "Secret admin (spec.external.adminSecretRef) does not exist"
        in (condition(cluster, "Ready") or {})["message"]
    )
    eventually(lambda: with_reason(kube, "manageddatabase", "app", namespace, "ClusterNotReady"))

    # The Secret appears: the periodic re-check notices without any change to the cluster
    # (nothing listens at the cluster's port, so it is then unreachable).
    kube.run(
        "create",
        "secret",
        "generic",
        "admin",
        "-n",
        namespace,
        "--from-literal=username=admin",
        "--from-literal=password=s3cr3t-never-logged",
    )
    eventually(lambda: with_reason(kube, "managedcluster", "main", namespace, "Unreachable"))
    assert "s3cr3t-never-logged" not in operator.log_text()

    # Deleting the cluster waits for its databases: it says so, and goes once they are gone.
    kube.run("delete", "managedcluster", "main", "-n", namespace, "--wait=false")
    blocked = eventually(
        lambda: with_reason(kube, "managedcluster", "main", namespace, "DeletionBlocked")
    )
    assert f"{namespace}/app" in (condition(blocked, "Stalled") or {})["message"]
    kube.run("delete", "manageddatabase", "app", "-n", namespace)
    eventually(
        lambda: (
            kube.run("get", "managedcluster", "main", "-n", namespace, check=False).returncode != 0
        ),
        what="the cluster to be gone",
    )


def test_managed_cluster_without_cloudnativepg_is_stalled(kube: KubeCtl, namespace: str) -> None:
    kube.apply(
        {
            "apiVersion": "vauban.dev/v1alpha1",
            "kind": "ManagedCluster",
            "metadata": {"name": "main", "namespace": namespace},
            "spec": {"version": "17", "instances": 3, "storage": {"size": "10Gi"}},
        }
    )
    obj = eventually(
        lambda: with_reason(kube, "managedcluster", "main", namespace, "EngineNotInstalled")
    )
    assert obj["status"]["phase"] == "Failed"
    stalled = condition(obj, "Stalled")
    assert stalled and stalled["status"] == "True"
    assert "Install CloudNativePG" in stalled["message"]
    events = eventually(
        lambda: [
            e for e in kube.get_list("events", namespace) if e["reason"] == "EngineNotInstalled"
        ]
    )
    assert events[0]["type"] == "Warning"


def test_namespace_not_allowed(kube: KubeCtl, namespace: str) -> None:
    kube.apply(external_cluster(namespace, "main", 1))
    other = kube.unique_namespace("tenant")
    try:
        kube.apply(database(other, cluster_namespace=namespace))
        obj = eventually(
            lambda: with_reason(kube, "manageddatabase", "app", other, "NamespaceNotAllowed")
        )
        stalled = condition(obj, "Stalled")
        assert stalled and stalled["status"] == "True"

        # Admitting the namespace by label unblocks it (it then waits for the cluster).
        kube.apply(
            external_cluster(
                namespace, "main", 1, allowedNamespaces={"selector": {"matchLabels": {"team": "x"}}}
            )
        )
        kube.run("label", "namespace", other, "team=x")
        eventually(lambda: with_reason(kube, "manageddatabase", "app", other, "ClusterNotReady"))
    finally:
        kube.run("delete", "namespace", other, "--wait=false", check=False)


def test_operator_writes_only_status(kube: KubeCtl, namespace: str) -> None:
    """GitOps tools own spec and labels; the operator owns status, plus kopf's finalizer and
    its own vauban.dev/ bookkeeping annotations, which no manifest sets."""
    kube.apply(database(namespace))
    obj = eventually(
        lambda: with_reason(kube, "manageddatabase", "app", namespace, "ClusterNotFound")
    )
    generation = obj["metadata"]["generation"]
    managers = kube.run(
        "get", "manageddatabase", "app", "-n", namespace, "-o", "json", "--show-managed-fields"
    )
    fields = json.loads(managers.stdout)["metadata"]["managedFields"]
    ours = [f for f in fields if f["manager"] != "kubectl-client-side-apply"]
    assert ours, fields
    for entry in ours:
        if entry["manager"] == "kopf":
            # kopf's finalizer, so deletion can revoke logins or drop the database.
            touched = entry["fieldsV1"]
            assert set(touched) == {"f:metadata"}, entry
            assert touched["f:metadata"]["f:finalizers"] == {
                ".": {},
                'v:"vauban.dev/finalizer"': {},
            }
            annotations = touched["f:metadata"].get("f:annotations", {})
            assert all(a.startswith("f:vauban.dev/") for a in annotations), entry
            continue
        assert entry["manager"] == "vauban", entry
        assert entry.get("subresource") == "status", entry
        assert entry["operation"] == "Apply", entry
    assert all(
        key == "kubectl.kubernetes.io/last-applied-configuration" or key.startswith("vauban.dev/")
        for key in obj["metadata"].get("annotations", {})
    )
    assert kube.get("manageddatabase", "app", namespace)["metadata"]["generation"] == generation
