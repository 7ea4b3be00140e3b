"""The local control plane is a real one: controllers run, kwok plays the nodes, and only
loopback addresses are ever handed out."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

import pytest

from support.kube import KubeCtl, eventually

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")

local_only = pytest.mark.skipif(
    bool(os.environ.get("VAUBAN_TEST_KUBECONFIG")),
    reason="checks the suite's own control plane, not an existing cluster",
)


@local_only
def test_version_is_the_pinned_one(kube: KubeCtl) -> None:
    from vauban.devcluster.build import KUBERNETES_VERSION

    version = json.loads(kube.run("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == KUBERNETES_VERSION


@local_only
def test_nodes_and_pods_get_loopback_addresses(kube: KubeCtl, namespace: str) -> None:
    for node in kube.get_list("nodes", "default"):
        for address in node["status"]["addresses"]:
            if address["type"] == "InternalIP":
                assert ipaddress.ip_address(address["address"]) in LOOPBACK

    kube.run(
        "create",
        "deployment",
        "web",
        "--image=registry.invalid/web:1",
        "--replicas=3",
        "-n",
        namespace,
    )
    pods = eventually(
        lambda: (
            [
                p
                for p in kube.get_list("pods", namespace, "-l", "app=web")
                if p["status"].get("phase") == "Running"
                and any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in p["status"].get("conditions", [])
                )
            ]
            if len(kube.get_list("pods", namespace, "-l", "app=web")) == 3
            else None
        ),
        what="three Running and Ready pods",
    )
    assert len(pods) == 3
    for pod in pods:
        assert ipaddress.ip_address(pod["status"]["podIP"]) in LOOPBACK


@local_only
def test_jobs_complete(kube: KubeCtl, namespace: str) -> None:
    kube.run("create", "job", "once", "--image=registry.invalid/tool:1", "-n", namespace)
    eventually(
        lambda: kube.get("job", "once", namespace)["status"].get("succeeded") == 1,
        what="the Job to succeed",
    )


@local_only
def test_garbage_collector_removes_dependents(kube: KubeCtl, namespace: str) -> None:
    kube.run("create", "configmap", "owner", "-n", namespace)
    owner = kube.get("configmap", "owner", namespace)
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "dependent",
                "namespace": namespace,
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "owner",
                        "uid": owner["metadata"]["uid"],
                    }
                ],
            },
        }
    )
    kube.run("delete", "configmap", "owner", "-n", namespace)
    eventually(
        lambda: (
            kube.run("get", "configmap", "dependent", "-n", namespace, check=False).returncode != 0
        ),
        what="the dependent to be collected",
    )


@local_only
def test_claims_of_the_default_class_are_bound(kube: KubeCtl, namespace: str) -> None:
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        }
    )
    eventually(
        lambda: kube.get("pvc", "data", namespace)["status"].get("phase") == "Bound",
        what="the claim to be bound",
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.split(") ", 1)[1][0] != "Z"


def test_stop_leaves_no_process_behind(tmp_path: Path) -> None:
    from vauban.devcluster import LocalControlPlane

    plane = LocalControlPlane(tmp_path / "plane")
    plane.start()
    pids = list(plane.pids.values())
    assert sorted(plane.pids) == sorted(
        ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"]
    )
    assert all(_alive(pid) for pid in pids)
    plane.stop()
    assert not [pid for pid in pids if _alive(pid)]
