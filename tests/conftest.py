"""Session fixtures: a real control plane (built and started by the suite, or an existing
cluster named by VAUBAN_TEST_KUBECONFIG), Vauban's CRDs, and the operator as a process."""

from __future__ import annotations

import os
import shutil
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from support.kube import (
    OPERATOR_NAMESPACE,
    KubeCtl,
    OperatorProcess,
    install_crds,
    operator_namespace,
)
from support.session import LOCAL_SERVERS
from support.vauban_process import running_operator
from vauban.devcluster.agentrunner import AgentRunner
from vauban.devcluster.kmip import KmipServer
from vauban.devcluster.postgres import PostgresServer
from vauban.devcluster.s3 import S3Server
from vauban.devcluster.softhsm import SoftHsm

SOFTHSM_TOKENS = ("vauban", "vauban-other", "vauban-operator")
"""Tokens of the `softhsm` fixture: the unit tests use the first two, the integration tests'
operator (a process of its own) the last, so no two processes share a token."""


TIER_ORDER = ("unit", "controllers", "dataplane", "integration", "security", "faults", "e2e")
"""Fast feedback first; the real node last, so that its cluster (session-scoped, about
2 GB with its pods) is not up while the other tiers run."""


def _tier(item: pytest.Item) -> int:
    parts = item.path.parts
    tier = parts[parts.index("tests") + 1] if "tests" in parts else ""
    return TIER_ORDER.index(tier) if tier in TIER_ORDER else len(TIER_ORDER)


E2E = TIER_ORDER.index("e2e")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, None, None]:
    yield
    if nextitem is not None and _tier(nextitem) == E2E and _tier(item) != E2E:
        LOCAL_SERVERS.close()


def pytest_sessionfinish() -> None:
    LOCAL_SERVERS.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        # The security and fault tiers drive the operator on a control plane too.
        if any(f"tests/{tier}" in str(item.path) for tier in ("integration", "security", "faults")):
            item.add_marker(pytest.mark.integration)
    items.sort(key=_tier)  # stable: each tier keeps its own order


@pytest.fixture(scope="session")
def kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The suite's own cluster. Never the developer's current context: an existing cluster is
    used only when named explicitly by VAUBAN_TEST_KUBECONFIG, as envtest does."""
    existing = os.environ.get("VAUBAN_TEST_KUBECONFIG")
    if existing:
        return Path(existing)
    from vauban.devcluster import LocalControlPlane

    plane = LOCAL_SERVERS.enter_context(
        LocalControlPlane(data_dir=tmp_path_factory.mktemp("controlplane"))
    )
    return plane.kubeconfig


@pytest.fixture(scope="session")
def kubectl_binary() -> str:
    if os.environ.get("VAUBAN_TEST_KUBECONFIG"):
        found = shutil.which("kubectl")
        assert found, "kubectl must be on PATH to test against VAUBAN_TEST_KUBECONFIG"
        return found
    from vauban.devcluster import ensure_binaries

    return str(ensure_binaries().kubectl)


@pytest.fixture(scope="session")
def kube(kubeconfig: Path, kubectl_binary: str) -> KubeCtl:
    return KubeCtl(kubectl_binary, kubeconfig)


@pytest.fixture(scope="session")
def crds(kube: KubeCtl) -> None:
    install_crds(kube)


@pytest.fixture
def namespace(kube: KubeCtl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting for it to go)."""
    name = kube.unique_namespace(request.node.name)
    yield name
    kube.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def postgres() -> PostgresServer:
    """One real PostgreSQL server for the session, on 127.0.0.1."""
    server = PostgresServer()
    LOCAL_SERVERS.callback(server.destroy)
    server.start()
    return server


@pytest.fixture(scope="session")
def s3() -> S3Server:
    """One real S3 object store (versitygw) for the session, on 127.0.0.1."""
    return LOCAL_SERVERS.enter_context(S3Server())


@pytest.fixture(scope="session")
def softhsm() -> SoftHsm:
    """SoftHSM2 tokens for the `pkcs11` key provider (labels SOFTHSM_TOKENS), in a temporary
    folder, with SOFTHSM2_CONF pointing there for this process. One for the whole session:
    SoftHSM2 reads its configuration and tokens once per process, when first loaded. With
    the other servers (LOCAL_SERVERS), so that its tokens outlive the operator using one."""
    hsm = LOCAL_SERVERS.enter_context(SoftHsm(SOFTHSM_TOKENS))
    patch = LOCAL_SERVERS.enter_context(pytest.MonkeyPatch.context())
    for name, value in hsm.environ.items():
        patch.setenv(name, value)
    return hsm


@pytest.fixture(scope="session")
def kmip() -> KmipServer:
    """A real KMIP key manager (PyKMIP's server) on 127.0.0.1, for the `kmip` key provider."""
    server = KmipServer()
    LOCAL_SERVERS.callback(server.destroy)
    server.start()
    return server


@pytest.fixture(scope="session")
def operator(
    kube: KubeCtl,
    kubeconfig: Path,
    crds: None,
    kmip: KmipServer,
    softhsm: SoftHsm,
    tmp_path_factory: pytest.TempPathFactory,
) -> OperatorProcess:
    # Keys and the backup agent's Jobs live in the operator's namespace.
    kube.apply(operator_namespace())
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    return LOCAL_SERVERS.enter_context(
        running_operator(
            kubeconfig,
            log,
            VAUBAN_NAMESPACE=OPERATOR_NAMESPACE,
            VAUBAN_KMIP_HOST=kmip.host,
            VAUBAN_KMIP_PORT=str(kmip.port),
            VAUBAN_KMIP_CERT_FILE=str(kmip.cert_file),
            VAUBAN_KMIP_KEY_FILE=str(kmip.key_file),
            VAUBAN_KMIP_CA_FILE=str(kmip.ca_file),
            # The pkcs11 provider, on a SoftHSM2 token of its own.
            **softhsm.environ,
            VAUBAN_PKCS11_MODULE=str(softhsm.module),
            VAUBAN_PKCS11_TOKEN_LABEL="vauban-operator",
            VAUBAN_PKCS11_PIN_FILE=str(softhsm.pin_file("vauban-operator")),
        )
    )


@pytest.fixture(scope="session")
def agent_runner(kube: KubeCtl, kubeconfig: Path) -> AgentRunner:
    """Runs the backup agent's pods for real (kwok fakes every other pod)."""
    runner = AgentRunner(kube.binary, kubeconfig, OPERATOR_NAMESPACE).start()
    LOCAL_SERVERS.callback(runner.stop)
    return runner
