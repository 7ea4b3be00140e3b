"""What a person asks of a running managed cluster, on running CloudNativePG: a switchover
(annotation vauban.dev/switchover-to), carried out once and followed in status while a client
writes; a request that cannot be carried out, refused; and a storage growth the real node's
local volumes cannot take, said instead of pretended."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from support.clients import ready, write_through
from support.kube import KubeCtl, condition, eventually, managed_cluster

INSTANCES = 2
REQUEST = "vauban.dev/switchover-to"
RECORD = "vauban.dev/switchover-handled"


@pytest.fixture(scope="module")
def tenant(kube_e2e: KubeCtl, timings: dict[str, float]) -> Iterator[str]:
    """A 2-instance ManagedCluster `main` and its ManagedDatabase `orders`, Ready."""
    kube = kube_e2e
    namespace = kube.unique_namespace("e2e-operations")
    kube.apply(managed_cluster(namespace, "main", INSTANCES))
    kube.apply(
        {
            "apiVersion": "vauban.dev/v1alpha1",
            "kind": "ManagedDatabase",
            "metadata": {"name": "orders", "namespace": namespace},
            "spec": {
                "clusterRef": {"name": "main"},
                "databaseName": "orders",
                "owner": "orders_owner",
            },
        }
    )
    started = time.monotonic()
    eventually(
        lambda: ready(kube, "manageddatabase", "orders", namespace),
        timeout=420,
        what="the cluster and its database Ready",
    )
    timings["operations: cluster and database Ready"] = time.monotonic() - started
    yield namespace
    kube.run("delete", "namespace", namespace, "--wait=false", check=False)


def _cluster(kube: KubeCtl, namespace: str) -> dict[str, Any]:
    return kube.get("managedcluster", "main", namespace)


def _in_recovery(kube: KubeCtl, namespace: str, pod: str) -> str:
    """What the server in `pod` says of itself: t for a standby, f for a primary."""
    command = ("exec", pod, "-n", namespace, "-c", "postgres", "--", "psql", "-Atc")
    return kube.run(*command, "select pg_is_in_recovery()").stdout.strip()


def _events(kube: KubeCtl, namespace: str, reason: str) -> list[str]:
    listed = kube.run(
        "get", "events", "-n", namespace, "-o", "json",
        f"--field-selector=involvedObject.name=main,involvedObject.kind=ManagedCluster,reason={reason}",
    ).stdout  # fmt: skip
    return [e["message"] for e in json.loads(listed)["items"]]


@pytest.mark.timeout(900)
def test_switchover_on_request_moves_the_primary_once(
    kube_e2e: KubeCtl, tenant: str, timings: dict[str, float]
) -> None:
    """The replica asked for becomes the primary: the servers say so (pg_is_in_recovery),
    Vauban's status follows (Reconciling with CloudNativePG's phase, then Ready with the new
    currentPrimary, SwitchedOver True), a client writing meanwhile loses nothing, and the
    time its writes were refused is measured."""
    kube = kube_e2e
    status = _cluster(kube, tenant)["status"]
    primary = status["currentPrimary"]
    pods = [
        p["metadata"]["name"]
        for p in kube.get_list("pod", tenant, "-l=cnpg.io/cluster=main,cnpg.io/podRole=instance")
    ]
    (replica,) = [p for p in pods if p != primary]
    assert _in_recovery(kube, tenant, replica) == "t"

    def switch_over() -> None:
        asked_at = time.time()
        kube.run("annotate", "managedcluster", "main", "-n", tenant, f"{REQUEST}={replica}")
        eventually(
            lambda: (_cluster(kube, tenant).get("status") or {}).get("currentPrimary") == replica,
            timeout=180,
            what=f"{replica} the primary in Vauban's status",
        )
        timings["switchover: new primary in status"] = time.time() - asked_at

    refused = write_through(kube, tenant, "writer", switch_over, instances=INSTANCES)
    timings["switchover: writes refused (client view)"] = refused
    print(f"switchover {primary} -> {replica}: writes refused {refused:.1f} s")

    assert _in_recovery(kube, tenant, replica) == "f", "the target is the primary"
    eventually(
        lambda: _in_recovery(kube, tenant, primary) == "t",
        timeout=120,
        what="the former primary a standby",
    )
    obj = _cluster(kube, tenant)
    assert obj["status"]["currentPrimary"] == replica
    assert condition(obj, "Ready")["status"] == "True"  # type: ignore[index]
    switched = condition(obj, "SwitchedOver")
    assert switched and (switched["status"], switched["reason"]) == ("True", "SwitchoverCompleted")
    # While it ran: Reconciling, with CloudNativePG's phase (each Ready transition is an Event).
    progressing = _events(kube, tenant, "Provisioning")
    assert any("Switchover in progress" in m for m in progressing), progressing
    assert any(f"to {replica}" in m for m in _events(kube, tenant, "SwitchoverRequested"))
    assert any(f"to {replica}" in m for m in _events(kube, tenant, "PrimaryChanged"))
    engine = kube.get("clusters.postgresql.cnpg.io", "main", tenant)
    assert engine["metadata"]["annotations"][RECORD] == replica, "recorded by the operator"
    assert obj["metadata"]["annotations"][REQUEST] == replica, "the request is left as written"

    # Carried out once: the annotation left in place asks for nothing more.
    time.sleep(10)
    assert len(_events(kube, tenant, "SwitchoverRequested")) == 1
    assert engine["status"]["targetPrimary"] == replica


@pytest.mark.timeout(300)
def test_a_switchover_to_no_instance_is_refused(kube_e2e: KubeCtl, tenant: str) -> None:
    kube = kube_e2e
    primary = _cluster(kube, tenant)["status"]["currentPrimary"]
    kube.run(
        "annotate", "managedcluster", "main", "-n", tenant, f"{REQUEST}=main-9", "--overwrite"
    )  # fmt: skip

    def refused() -> dict[str, Any] | None:
        obj = _cluster(kube, tenant)
        found = condition(obj, "SwitchedOver")
        return obj if found and found["reason"] == "SwitchoverRefused" else None

    obj = eventually(refused, timeout=60, what="SwitchoverRefused")
    message = condition(obj, "SwitchedOver")["message"]  # type: ignore[index]
    assert "main-9 is not an instance of cluster main" in message, message
    assert any("main-9" in m for m in _events(kube, tenant, "SwitchoverRefused"))
    assert condition(obj, "Ready")["status"] == "True"  # type: ignore[index]
    assert obj["status"]["currentPrimary"] == primary, "nothing was done"
    kube.run("annotate", "managedcluster", "main", "-n", tenant, f"{REQUEST}-")
    eventually(
        lambda: condition(_cluster(kube, tenant), "SwitchedOver") is None,
        timeout=60,
        what="no SwitchedOver without a request",
    )
    eventually(
        lambda: (
            RECORD
            not in kube.get("clusters.postgresql.cnpg.io", "main", tenant)["metadata"].get(
                "annotations", {}
            )
        ),
        timeout=60,
        what="the record gone with the request",
    )


@pytest.mark.timeout(300)
def test_storage_growth_local_volumes_cannot_take_is_said(kube_e2e: KubeCtl, tenant: str) -> None:
    """The real node's volumes are static local ones (StorageClass `standard`, no
    expansion): the growth is held back from CloudNativePG, whose reconcile would stop at
    the refused claim, and Vauban says so while PostgreSQL and its database serve on."""
    kube = kube_e2e
    kube.run("patch", "managedcluster", "main", "-n", tenant, "--type=merge",
             "-p", '{"spec":{"storage":{"size":"2Gi"}}}')  # fmt: skip

    def stalled() -> dict[str, Any] | None:
        obj = _cluster(kube, tenant)
        found = condition(obj, "Stalled")
        current = obj["status"].get("observedGeneration") == obj["metadata"]["generation"]
        return obj if current and found and found["reason"] == "StorageResizeUnsupported" else None

    obj = eventually(stalled, timeout=60, what="StorageResizeUnsupported")
    message = condition(obj, "Stalled")["message"]  # type: ignore[index]
    assert "StorageClass (the default class) does not allow volume expansion" in message, message
    engine = kube.get("clusters.postgresql.cnpg.io", "main", tenant)
    assert engine["spec"]["storage"]["size"] == "1Gi", "held back from CloudNativePG"
    assert engine["status"]["phase"] == "Cluster in healthy state"
    claims = kube.get_list("pvc", tenant, "-l=cnpg.io/cluster=main")
    assert {c["spec"]["resources"]["requests"]["storage"] for c in claims} == {"1Gi"}
    # Its database still counts on it.
    time.sleep(5)
    database = kube.get("manageddatabase", "orders", tenant)
    assert condition(database, "Ready")["status"] == "True", database["status"]  # type: ignore[index]
