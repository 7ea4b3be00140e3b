from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.kube import OperatorProcess
from support.vauban_process import running_operator


@pytest.fixture(scope="session")
def operator(
    kubeconfig: Path, crds: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with running_operator(kubeconfig, log) as process:
        yield process
