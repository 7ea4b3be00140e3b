"""The end-to-end tier: a real-node cluster (`vauban dev up --node real`) where pods run for
real, CloudNativePG installed from its release manifest and Vauban by its Helm chart, both
with images built from this checkout. Skipped, with the reason, where the machine cannot run
the real node (not root, no network namespaces, missing packages)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from support.kube import KubeCtl
from vauban.devcluster.build import ensure_binaries
from vauban.devcluster.realnode import API_IP, RealCluster, unavailable_reason
from vauban.devcluster.s3 import S3Server

S3_PORT = 9000
"""versitygw's port inside the cluster's namespace (10.250.0.1), where pods reach it."""

TIMINGS: dict[str, float] = {}
"""Seconds each step of the session took, printed at its end (docs/development.md)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e" in str(item.path):
            item.add_marker(pytest.mark.e2e)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.section("real node timings (s)")
        for step, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{step:40} {seconds:7.1f}")


@pytest.fixture(scope="session")
def timings() -> dict[str, float]:
    return TIMINGS


@pytest.fixture(scope="session")
def real_cluster() -> Iterator[RealCluster]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"the real node cannot run on this machine: {reason}")
    cluster = RealCluster(nodes=3)
    started = time.monotonic()
    cluster.start()
    TIMINGS["real node start (3 nodes)"] = time.monotonic() - started
    try:
        yield cluster
    finally:
        started = time.monotonic()
        cluster.stop()
        TIMINGS["real node stop"] = time.monotonic() - started


@pytest.fixture(scope="session")
def object_store(real_cluster: RealCluster) -> Iterator[S3Server]:
    """versitygw inside the cluster's namespace: backups go there from real pods."""
    server = S3Server(netns=real_cluster.netns_path, host=API_IP, port=S3_PORT)
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def stack(real_cluster: RealCluster, object_store: S3Server) -> RealCluster:
    """CloudNativePG, then Vauban by its chart (2 replicas, leader election)."""
    # A ready cluster's probe (its health, compliance evidence) every minute, not the
    # chart's five: the tests see a backup reflected in the cluster's compliance in time.
    took = real_cluster.install_stack(
        object_storage_ports=[S3_PORT], values={"operator": {"probeIntervalSeconds": 60}}
    )
    TIMINGS["CloudNativePG available"] = took["cloudnative-pg"]
    TIMINGS["plugin-barman-cloud available"] = took["plugin-barman-cloud"]
    TIMINGS["helm install of Vauban, 2 replicas ready"] = took["vauban"]
    return real_cluster


@pytest.fixture(scope="session")
def kube_e2e(stack: RealCluster) -> KubeCtl:
    """kubectl on the real-node cluster. Not the root conftest's `kube` (session-scoped: the
    other tiers' control plane)."""
    return KubeCtl(str(ensure_binaries().kubectl), stack.kubeconfig)
