"""A managed cluster's life on running CloudNativePG: created with one instance, scaled
1→3→2, a server parameter changed (a rolling restart), then deleted with deletionPolicy
Delete. Vauban reports each transition as it happens (Reconciling with CloudNativePG's phase,
then Ready for the new generation), and Delete leaves no volume or Secret behind."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from support.kube import KubeCtl, condition, eventually, managed_cluster

NAME = "life"


@pytest.fixture(scope="module")
def namespace(kube_e2e: KubeCtl) -> Iterator[str]:
    name = kube_e2e.unique_namespace("e2e-lifecycle")
    yield name
    kube_e2e.run("delete", "namespace", name, "--wait=false", check=False)


def _settle(kube: KubeCtl, namespace: str, instances: int, timeout: float) -> list[str]:
    """Waits for Ready at the object's current generation with `instances` ready; returns
    the distinct (Ready, reason, message) Vauban showed on the way."""
    seen: list[str] = []

    def settled() -> dict[str, Any] | None:
        obj = kube.get("managedcluster", NAME, namespace)
        status = obj.get("status") or {}
        ready = condition(obj, "Ready")
        if ready is None:
            return None
        shown = f"{ready['status']} {ready['reason']}: {ready['message']}"
        if not seen or seen[-1] != shown:
            seen.append(shown)
        current = status.get("observedGeneration") == obj["metadata"]["generation"]
        done = ready["status"] == "True" and status.get("readyInstances") == instances
        return obj if current and done else None

    eventually(settled, timeout=timeout, what=f"{NAME} Ready with {instances} instance(s)")
    return seen


def _engine(kube: KubeCtl, namespace: str) -> dict[str, Any]:
    return kube.get("clusters.postgresql.cnpg.io", NAME, namespace)


def _healthy(engine: dict[str, Any], instances: int) -> bool:
    status = engine.get("status") or {}
    return status.get("phase") == "Cluster in healthy state" and status.get("readyInstances") == (
        instances
    )


def _show(kube: KubeCtl, namespace: str, parameter: str) -> str:
    primary = kube.get("managedcluster", NAME, namespace)["status"]["currentPrimary"]
    command = ("exec", primary, "-n", namespace, "-c", "postgres", "--", "psql", "-Atc")
    return kube.run(*command, f"show {parameter}").stdout.strip()


@pytest.mark.timeout(1200)
def test_create_scale_reconfigure_and_delete(
    kube_e2e: KubeCtl, namespace: str, timings: dict[str, float]
) -> None:
    kube = kube_e2e
    manifest = "-n", namespace

    def apply(instances: int, parameters: dict[str, str] | None = None) -> None:
        postgresql = {"parameters": parameters or {}}
        kube.apply(
            managed_cluster(
                namespace, NAME, instances, postgresql=postgresql, deletionPolicy="Delete"
            )
        )

    started = time.monotonic()
    apply(1)
    seen = _settle(kube, namespace, 1, timeout=300)
    timings["lifecycle: 1 instance Ready"] = time.monotonic() - started
    assert any(s.startswith("False Provisioning: CloudNativePG:") for s in seen), seen
    assert _healthy(_engine(kube, namespace), 1)

    started = time.monotonic()
    apply(3)
    seen = _settle(kube, namespace, 3, timeout=420)
    timings["lifecycle: scaled 1→3"] = time.monotonic() - started
    # Reconciling, with CloudNativePG's own words, until the replicas joined.
    assert any(s.startswith("False Provisioning: CloudNativePG:") for s in seen), seen
    assert _healthy(_engine(kube, namespace), 3)
    pods = kube.get_list("pod", namespace, f"-l=cnpg.io/cluster={NAME}")
    assert len({p["spec"]["nodeName"] for p in pods}) == 3, "one instance per node"

    started = time.monotonic()
    apply(2)
    _settle(kube, namespace, 2, timeout=300)
    eventually(lambda: _healthy(_engine(kube, namespace), 2), timeout=120, what="2 instances")
    timings["lifecycle: scaled 3→2"] = time.monotonic() - started

    # max_connections needs a restart: CloudNativePG restarts the instances one by one.
    started = time.monotonic()
    apply(2, {"max_connections": "150"})
    seen = _settle(kube, namespace, 2, timeout=420)
    timings["lifecycle: parameter with a rolling restart"] = time.monotonic() - started
    assert _show(kube, namespace, "max_connections") == "150"
    assert _healthy(_engine(kube, namespace), 2), seen
    # Ready for the new generation came only once the primary ran the new value (above):
    # until then, CloudNativePG's phase (Provisioning) or, when its Ready still spoke of the
    # old configuration, what the primary runs (ConfigurationPending).
    assert any(s.startswith(("False Provisioning:", "False ConfigurationPending:")) for s in seen)

    claims = kube.get_list("pvc", namespace, f"-l=cnpg.io/cluster={NAME}")
    assert claims
    kube.run("delete", "managedcluster", NAME, *manifest, "--timeout=180s")
    eventually(
        lambda: (
            not kube.get_list("pvc", namespace, f"-l=cnpg.io/cluster={NAME}")
            and not kube.get_list("pod", namespace, f"-l=cnpg.io/cluster={NAME}")
        ),
        timeout=180,
        what="the volumes and pods gone",
    )
    secrets = [s["metadata"]["name"] for s in kube.get_list("secret", namespace)]
    assert not [s for s in secrets if s.startswith(f"{NAME}-")], secrets
