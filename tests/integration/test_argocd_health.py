"""docs/argocd/health.lua, run (with lupa) against status the operator really wrote."""

from __future__ import annotations

import copy
import secrets
from pathlib import Path
from typing import Any

import pytest
from lupa import LuaRuntime

from support.kube import KubeCtl, eventually, external_cluster, with_reason
from vauban.devcluster.postgres import PostgresServer

pytestmark = pytest.mark.usefixtures("operator")

SCRIPT = (Path(__file__).resolve().parents[2] / "docs" / "argocd" / "health.lua").read_text()


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """What Argo CD would show: it runs the script with the object as the global `obj`."""
    lua = LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPT)
    return str(result.status), str(result.message)


def test_waiting_on_a_dependency_is_progressing_not_degraded(kube: KubeCtl, namespace: str) -> None:
    kube.apply(
        {
            "apiVersion": "vauban.dev/v1alpha1",
            "kind": "ManagedDatabase",
            "metadata": {"name": "app", "namespace": namespace},
            "spec": {"clusterRef": {"name": "later"}, "databaseName": "app", "owner": "app_o"},
        }
    )
    obj = eventually(
        lambda: with_reason(kube, "manageddatabase", "app", namespace, "ClusterNotFound")
    )
    status, message = health(obj)
    assert status == "Progressing"
    assert message.startswith("ClusterNotFound: ManagedCluster")

    unobserved = copy.deepcopy(obj)
    del unobserved["status"]
    assert health(unobserved)[0] == "Progressing"
    behind = copy.deepcopy(obj)
    behind["metadata"]["generation"] += 1
    assert health(behind) == ("Progressing", "Waiting for Vauban to observe the latest spec")


def test_a_backup_waiting_for_its_database_is_progressing(kube: KubeCtl, namespace: str) -> None:
    kube.apply(
        {
            "apiVersion": "vauban.dev/v1alpha1",
            "kind": "ManagedBackup",
            "metadata": {"name": "app-now", "namespace": namespace},
            "spec": {"databaseRef": {"name": "app"}},
        }
    )
    obj = eventually(
        lambda: with_reason(kube, "managedbackup", "app-now", namespace, "DatabaseNotFound")
    )
    assert health(obj) == ("Progressing", "DatabaseNotFound: ManagedDatabase app does not exist.")


def test_a_person_must_act_is_degraded(kube: KubeCtl, namespace: str) -> None:
    kube.apply(
        {
            "apiVersion": "vauban.dev/v1alpha1",
            "kind": "ManagedCluster",
            "metadata": {"name": "main", "namespace": namespace},
            "spec": {"version": "17", "storage": {"size": "1Gi"}},
        }
    )
    obj = eventually(
        lambda: with_reason(kube, "managedcluster", "main", namespace, "EngineNotInstalled")
    )
    status, message = health(obj)
    assert status == "Degraded"
    assert "CloudNativePG is not installed" in message


def test_ready_is_healthy(kube: KubeCtl, namespace: str, postgres: PostgresServer) -> None:
    admin, password = f"argo_{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    postgres.create_role(admin, password, "CREATEROLE", "CREATEDB")
    kube.run(
        "create",
        "secret",
        "generic",
        "admin",
        "-n",
        namespace,
        f"--from-literal=username={admin}",
        f"--from-literal=password={password}",
    )
    kube.apply(external_cluster(namespace, "pg", postgres.port))
    obj = eventually(lambda: with_reason(kube, "managedcluster", "pg", namespace, "Available"))
    assert health(obj)[0] == "Healthy"
