from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.kube import OperatorProcess
from support.vauban_process import running_operator
from vauban.devcluster.postgres import PostgresServer


@pytest.fixture(scope="session")
def operator(
    kubeconfig: Path, crds: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with running_operator(kubeconfig, log) as process:
        yield process


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session, on 127.0.0.1."""
    server = PostgresServer()
    server.start()
    yield server
    server.destroy()
