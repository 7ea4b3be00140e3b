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


def test_replicas_with_skewed_clocks_never_lead_together(plane: tuple[KubeCtl, Path]) -> None:
    """B's wall clock runs an hour ahead: A's renewTime looks an hour old to it. B must still
    wait until A stops renewing, and then take over within the Lease's duration."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    from vauban.kube.client import connect
    from vauban.kube.lease import LeaderElection

    kube, _ = plane

    async def scenario() -> float:
        api = await connect(kube.kubeconfig)
        try:
            common = {"namespace": "vauban-system", "name": "skew", "duration_seconds": 3}
            a = LeaderElection(api, identity="a", renew_seconds=1.0, **common)  # type: ignore[arg-type]
            b = LeaderElection(
                api,
                identity="b",
                renew_seconds=1.0,
                wall_clock=lambda: datetime.now(UTC) + timedelta(hours=1),
                **common,  # type: ignore[arg-type]
            )
            await a.acquire()
            keeping = asyncio.create_task(a.keep())
            for _ in range(12):  # four Lease durations while A renews
                assert not await b._try_hold(), "B took a Lease A keeps renewing"
                await asyncio.sleep(0.5)
            keeping.cancel()  # A dies without releasing
            stopped = time.monotonic()
            for _ in range(40):
                if await b._try_hold():
                    return time.monotonic() - stopped
                await asyncio.sleep(0.25)
            raise AssertionError("B never took over the abandoned Lease")
        finally:
            await api.close()  # type: ignore[no-untyped-call]

    takeover = asyncio.run(scenario())
    print(f"takeover by the skewed replica: {takeover:.1f} s")
    assert takeover < 3 + 2
