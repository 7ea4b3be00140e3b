from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.kube import OPERATOR_NAMESPACE, KubeCtl, OperatorProcess, operator_namespace
from support.vauban_process import running_operator
from vauban.devcluster.agentrunner import AgentRunner
from vauban.devcluster.kmip import KmipServer
from vauban.devcluster.softhsm import SoftHsm


@pytest.fixture(scope="session")
def kmip() -> Iterator[KmipServer]:
    """A real KMIP key manager (PyKMIP's server) on 127.0.0.1, for the `kmip` key provider."""
    server = KmipServer()
    server.start()
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def operator(
    kube: KubeCtl,
    kubeconfig: Path,
    crds: None,
    kmip: KmipServer,
    softhsm: SoftHsm,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    # Keys and the backup agent's Jobs live in the operator's namespace.
    kube.apply(operator_namespace())
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with running_operator(
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
    ) as process:
        yield process


@pytest.fixture(scope="session")
def agent_runner(kube: KubeCtl, kubeconfig: Path) -> Iterator[AgentRunner]:
    """Runs the backup agent's pods for real (kwok fakes every other pod)."""
    runner = AgentRunner(kube.binary, kubeconfig, OPERATOR_NAMESPACE).start()
    yield runner
    runner.stop()
