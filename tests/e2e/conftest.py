"""The end-to-end tier: a real-node cluster (`vauban dev up --node real`) where pods run for
real, CloudNativePG installed from its release manifest and Vauban by its Helm chart, both
with images built from this checkout. Skipped, with the reason, where the machine cannot run
the real node (not root, no network namespaces, missing packages)."""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator

import pytest

from support.kube import KubeCtl
from vauban.devcluster.build import ensure_binaries
from vauban.devcluster.install import VAUBAN_NAMESPACE
from vauban.devcluster.realnode import API_IP, RealCluster, unavailable_reason
from vauban.devcluster.s3 import S3Server

S3_PORT = 9000
"""versitygw's port inside the cluster's namespace (10.250.0.1), where pods reach it."""

TIMINGS: dict[str, float] = {}
"""Seconds each step of the session took, printed at its end (docs/development.md)."""

KUBE: list[KubeCtl] = []
"""The session's kubectl, once the stack is up: a failed test reports what the cluster saw."""

WHAT_THE_CLUSTER_SAW = (
    ("objects", ("get", "managedclusters,manageddatabases,managedbackups,pods", "-A",
                 "-o", "wide")),
    ("conditions", ("get", "managedclusters,manageddatabases", "-A", "-o",
                    "custom-columns=NS:.metadata.namespace,NAME:.metadata.name,"
                    "CONDITIONS:.status.conditions[*].reason,MESSAGES:.status.conditions[*].message")),
    ("events", ("get", "events", "-A", "--sort-by=.lastTimestamp")),
    ("operator log", ("logs", "-n", VAUBAN_NAMESPACE, "-l", "app.kubernetes.io/name=vauban",
                      "--tail=150", "--prefix", "--all-containers")),
)  # fmt: skip
"""Read after a failed e2e test (a tail of each): a CI run's output says why, where the
cluster it ran on is gone."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e" in str(item.path):
            item.add_marker(pytest.mark.e2e)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.section("real node timings (s)")
        for step, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{step:40} {seconds:7.1f}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and call.when == "call" and KUBE and "tests/e2e" in str(item.path):
        for title, argv in WHAT_THE_CLUSTER_SAW:
            result = KUBE[0].run(*argv, check=False)
            lines = (result.stdout + result.stderr).splitlines()[-150:]
            report.sections.append((f"cluster: {title}", "\n".join(lines)))
    return report


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
    kube = KubeCtl(str(ensure_binaries().kubectl), stack.kubeconfig)
    KUBE[:] = [kube]
    return kube
