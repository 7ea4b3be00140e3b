"""Two replicas with leader election: only the holder of the Lease reconciles; when it is
killed, the standby takes over within the Lease's duration."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.kube import KubeCtl, eventually, own_control_plane, with_reason
from support.vauban_process import running_operator

LEASE_SECONDS = 6

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("VAUBAN_TEST_KUBECONFIG")),
    reason="needs a control plane of its own (the session's runs an operator already)",
)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KubeCtl, Path]]:
    root = tmp_path_factory.mktemp("election")
    with own_control_plane(root) as kube:  # with the operator's namespace, for the Lease
        yield kube, root


def holder(kube: KubeCtl) -> str | None:
    result = kube.run(
        "get", "lease", "vauban-leader", "-n", "vauban-system", "-o", "json", check=False
    )
    return (
        json.loads(result.stdout)["spec"].get("holderIdentity") if result.returncode == 0 else None
    )


def database(kube: KubeCtl, namespace: str, name: str) -> None:
    kube.apply(
        {
            "apiVersion": "vauban.dev/v1alpha1",
            "kind": "ManagedDatabase",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterRef": {"name": "none"}, "databaseName": name, "owner": f"{name}_o"},
        }
    )


def test_one_leader_acts_and_the_standby_takes_over(plane: tuple[KubeCtl, Path]) -> None:
    kube, root = plane
    env = {"VAUBAN_LEADER_ELECTION": "true", "VAUBAN_LEASE_DURATION_SECONDS": str(LEASE_SECONDS)}
    namespace = kube.unique_namespace("election")
    with running_operator(kube.kubeconfig, root / "a.log", VAUBAN_POD_NAME="a", **env) as a:
        eventually(lambda: holder(kube) == "a", what="a to lead")
        with running_operator(kube.kubeconfig, root / "b.log", VAUBAN_POD_NAME="b", **env) as b:
            database(kube, namespace, "first")
            eventually(
                lambda: with_reason(kube, "manageddatabase", "first", namespace, "ClusterNotFound")
            )
            time.sleep(2)
            assert holder(kube) == "a"
            assert "first" in a.log_text() and "first" not in b.log_text()

            a.process.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            eventually(lambda: holder(kube) == "b", timeout=LEASE_SECONDS * 3, what="b to lead")
            database(kube, namespace, "second")
            eventually(
                lambda: with_reason(kube, "manageddatabase", "second", namespace, "ClusterNotFound")
            )
            takeover = time.monotonic() - killed
            print(f"takeover after SIGKILL of the leader: {takeover:.1f} s")
            # The Lease expires LEASE_SECONDS after the last renewal; the standby retries
            # every third of that and then needs its watches to start.
            assert takeover < LEASE_SECONDS + LEASE_SECONDS / 3 + 10

        # B stopped cleanly: it released the Lease for a successor.
        assert holder(kube) in (None, "")
