"""Vauban installed the way users install it: `helm install` of helm/vauban, images built
from this checkout, restricted Pod Security enforced, two replicas with leader election."""

from __future__ import annotations

import time
from typing import Any

from support.kube import KubeCtl, eventually
from vauban.devcluster.install import RELEASE, VAUBAN_NAMESPACE

LEASE = "vauban-leader"


def _pods(kube: KubeCtl) -> list[dict[str, Any]]:
    return kube.get_list("pod", VAUBAN_NAMESPACE, f"-l=app.kubernetes.io/instance={RELEASE}")


def _ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


def _holder(kube: KubeCtl) -> str | None:
    lease = kube.get("lease", LEASE, VAUBAN_NAMESPACE)
    return lease["spec"].get("holderIdentity") or None


def test_two_replicas_run_restricted_with_the_charts_account(kube_e2e: KubeCtl) -> None:
    kube = kube_e2e
    namespace = kube.get("namespace", VAUBAN_NAMESPACE, "")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pods = _pods(kube)
    assert len(pods) == 2 and all(_ready(p) for p in pods), [p["status"] for p in pods]
    for pod in pods:
        assert pod["spec"]["serviceAccountName"] == RELEASE
        # Real containers on real nodes (not kwok's): a node address and a container id.
        assert pod["status"]["hostIP"].startswith("10.250.0.")
        assert all(
            s["containerID"].startswith("containerd://") for s in pod["status"]["containerStatuses"]
        )
        assert all(s["restartCount"] == 0 for s in pod["status"]["containerStatuses"])
    assert _holder(kube) in {p["metadata"]["name"] for p in pods}
    assert kube.get_list("networkpolicy", VAUBAN_NAMESPACE), "the chart's NetworkPolicy"


def test_killing_the_leader_hands_over_to_the_other_replica(kube_e2e: KubeCtl) -> None:
    kube = kube_e2e
    leader = eventually(lambda: _holder(kube), timeout=60, what="a leader")
    standby = next(p["metadata"]["name"] for p in _pods(kube) if p["metadata"]["name"] != leader)
    killed = time.monotonic()
    kube.run("delete", "pod", leader, "-n", VAUBAN_NAMESPACE, "--grace-period=0", "--force")
    # The killed leader never releases the Lease: it is taken once expired (15 s), by the
    # standby or by the pod the Deployment made meanwhile (it starts in seconds): whichever
    # candidate asks first.
    new = eventually(
        lambda: (holder := _holder(kube)) not in (None, leader) and holder,
        timeout=90,
        what="another replica leading",
    )
    took = time.monotonic() - killed
    who = "the standby" if new == standby else "the replacement pod"
    print(f"leader {leader} killed; {who} {new} took over in {took:.1f} s")
    assert took < 40
    # The Deployment replaces the killed pod: two replicas again, one leading.
    eventually(
        lambda: len(ready := [p for p in _pods(kube) if _ready(p)]) == 2 and ready,
        timeout=120,
        what="two ready replicas again",
    )
    assert _holder(kube) == new
