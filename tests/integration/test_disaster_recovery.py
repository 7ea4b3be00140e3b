"""The loss of the whole Kubernetes cluster: a control plane of its own with databases and
backups, destroyed with its etcd; then a brand-new control plane and operator given only the
bucket and the recovery key adopt the backups (spec.backup.import) and restore them with
restore.databaseRef. A wrong recovery key first: refused with a clear reason, nothing
adopted. The PostgreSQL server and the bucket are the only things that outlive the cluster;
the restored databases get new names, and the source databases are dropped first, so what
the new cluster shows comes from the backups alone."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from support.backups import connect_tenant, finished, managed_backup, object_store
from support.kube import (
    OPERATOR_NAMESPACE,
    KubeCtl,
    condition,
    eventually,
    external_cluster,
    install_crds,
    operator_namespace,
    ready,
    string_secret,
)
from support.vauban_process import running_operator
from vauban.crypto import recovery
from vauban.devcluster import LocalControlPlane
from vauban.devcluster.agentrunner import AgentRunner
from vauban.devcluster.postgres import PostgresServer
from vauban.devcluster.s3 import S3Server
from vauban.devcluster.softhsm import SoftHsm

TENANTS = {"shop": ("team-a", 1200), "crm": ("team-b", 345)}
"""Database name: (its namespace, its rows)."""


@contextlib.contextmanager
def kubernetes_cluster(
    folder: Path, kubectl: str, **operator_env: str
) -> Iterator[tuple[KubeCtl, AgentRunner]]:
    """A whole Kubernetes cluster of our own: control plane (etcd included), CRDs, the
    operator and the agent's pod runner. Everything of it is gone on exit, etcd's data too."""
    folder.mkdir(parents=True, exist_ok=True)
    with LocalControlPlane() as plane:
        kube = KubeCtl(kubectl, plane.kubeconfig)
        install_crds(kube)
        kube.apply(operator_namespace())
        with running_operator(
            plane.kubeconfig,
            folder / "operator.log",
            VAUBAN_NAMESPACE=OPERATOR_NAMESPACE,
            **operator_env,
        ):
            runner = AgentRunner(kube.binary, plane.kubeconfig, OPERATOR_NAMESPACE).start()
            try:
                yield kube, runner
            finally:
                runner.stop()


def _cluster(
    kube: KubeCtl,
    postgres: PostgresServer,
    s3: S3Server,
    bucket: str,
    provider: str = "kubernetes-secret",
    *,
    adopt: bool = False,
) -> None:
    """The ManagedCluster `platform/pg`; with `adopt`, importing what the bucket holds."""
    backup: dict[str, Any] = {"import": {"prefix": ""}} if adopt else {}
    kube.run("create", "namespace", "platform")
    admin, password = f"admin_{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    postgres.create_role(admin, password, "CREATEROLE", "CREATEDB")
    kube.apply(string_secret("platform", "admin", username=admin, password=password))
    kube.apply(
        string_secret(
            "platform", "bucket", accessKeyId=s3.access_key, secretAccessKey=s3.secret_key
        )
    )
    kube.apply(
        external_cluster(
            "platform",
            "pg",
            postgres.port,
            allowedNamespaces={"names": [namespace for namespace, _ in TENANTS.values()]},
            encryption={"provider": provider},
            backup={"objectStore": object_store(s3, bucket), **backup},
        )
    )
    eventually(lambda: ready(kube, "managedcluster", "pg", "platform"), what="cluster Ready")


def _database(namespace: str, name: str, suffix: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "vauban.dev/v1alpha1",
        "kind": "ManagedDatabase",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "clusterRef": {"name": "pg", "namespace": "platform"},
            "databaseName": f"dr_{name}_{suffix}".replace("-", "_"),
            "owner": f"dr_own_{name}_{suffix}".replace("-", "_"),
            **spec,
        },
    }


def _rows(kube: KubeCtl, namespace: str, database: str) -> list[tuple[Any, ...]]:
    with connect_tenant(kube, namespace, database) as conn:
        return conn.execute("SELECT id, label FROM item ORDER BY id").fetchall()


def _lost_cluster(
    folder: Path,
    kubectl: str,
    postgres: PostgresServer,
    s3: S3Server,
    bucket: str,
    provider: str,
    **custody: str,
) -> dict[str, list[tuple[Any, ...]]]:
    """Databases of two tenants with rows and a backup each, on a cluster then destroyed with
    its etcd; their databases dropped from the server. Returns each one's rows."""
    suffix = secrets.token_hex(3)
    rows = {}
    with kubernetes_cluster(folder, kubectl, **custody) as (kube, _):
        _cluster(kube, postgres, s3, bucket, provider)
        cluster = kube.get("managedcluster", "pg", "platform")
        assert cluster["status"]["encryption"]["survivesClusterLoss"] is True
        for name, (namespace, count) in TENANTS.items():
            kube.run("create", "namespace", namespace)
            kube.apply(_database(namespace, name, suffix))
            eventually(partial(ready, kube, "manageddatabase", name, namespace), what=name)
            with connect_tenant(kube, namespace, name) as conn:
                conn.execute("CREATE TABLE item (id int PRIMARY KEY, label text)")
                conn.execute(
                    "INSERT INTO item SELECT g, %s || ' ' || g FROM generate_series(1, %s) g",
                    (f"{namespace} é", count),
                )
            rows[name] = _rows(kube, namespace, name)
            kube.apply(managed_backup(namespace, f"{name}-backup", name))
            done = eventually(
                partial(finished, kube, namespace, f"{name}-backup"),
                timeout=120,
                what="backup",
            )
            assert done["status"]["phase"] == "Succeeded", done["status"]
    names = {o.object_name for o in s3.client().list_objects(bucket, recursive=True)}
    assert sum(str(n).endswith("/key.json") for n in names) == len(TENANTS)
    # Escrow only where the KEK was in a Secret: an HSM's key never leaves it.
    assert any("/_recovery/" in str(n) for n in names) == (provider == "kubernetes-secret")
    with postgres.superuser() as conn:
        for name in TENANTS:
            conn.execute(
                sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
                    sql.Identifier(f"dr_{name}_{suffix}")
                )
            )
    return rows


@pytest.fixture
def bucket(s3: S3Server) -> str:
    name = f"dr-{secrets.token_hex(4)}"
    s3.create_bucket(name)
    return name


def test_restore_on_a_new_cluster_from_the_bucket_and_the_recovery_key(
    tmp_path: Path, kubectl_binary: str, postgres: PostgresServer, s3: S3Server, bucket: str
) -> None:
    private, public = recovery.generate()
    wrong, _ = recovery.generate()
    rows = _lost_cluster(
        tmp_path / "lost",
        kubectl_binary,
        postgres,
        s3,
        bucket,
        "kubernetes-secret",
        VAUBAN_RECOVERY_PUBLIC_KEY=public,
    )

    with kubernetes_cluster(tmp_path / "new", kubectl_binary) as (kube, _):
        for namespace, _count in TENANTS.values():
            kube.run("create", "namespace", namespace)
        # The officers bring the wrong key first: every database refused, nothing adopted.
        kube.apply(string_secret(OPERATOR_NAMESPACE, "vauban-recovery-key", privateKey=wrong))
        _cluster(kube, postgres, s3, bucket, adopt=True)
        refused = eventually(partial(_imported, kube), timeout=60, what="import refused")
        assert refused["databases"] == 0 and refused["backups"] == 0
        assert {r["reason"] for r in refused["refused"]} == {"WrongRecoveryKey"}
        assert all("sealed to recovery key" in r["message"] for r in refused["refused"])
        for namespace, _count in TENANTS.values():
            assert kube.get_list("managedbackup", namespace) == []
        assert kube.get_list("secret", OPERATOR_NAMESPACE, "-l", "vauban.dev/key=dek") == []

        # The right key: both databases' backups adopted, each in its own namespace.
        kube.apply(string_secret(OPERATOR_NAMESPACE, "vauban-recovery-key", privateKey=private))
        adopted = eventually(
            lambda: (found := _imported(kube)) and found["databases"] == len(TENANTS) and found,
            timeout=60,
            what="import adopted",
        )
        assert adopted["backups"] == len(TENANTS) and adopted["refused"] == []
        _restore_each(kube, rows)

        # The tenant boundary holds across the recovery: team-b cannot restore team-a's shop.
        kube.apply(_database("team-b", "stolen", "x", restore={"databaseRef": {"name": "shop"}}))

        def waiting() -> dict[str, Any] | None:
            found = condition(kube.get("manageddatabase", "stolen", "team-b"), "Ready")
            return found if found and found["reason"] == "Restoring" else None

        said = eventually(waiting, timeout=60, what="stolen waits")
        assert "Waiting for a successful backup of ManagedDatabase shop" in said["message"]
        assert kube.get_list("managedbackup", "team-b", "-l", "vauban.dev/database=shop") == []


def test_restore_on_a_new_cluster_with_the_same_pkcs11_token(
    tmp_path: Path, kubectl_binary: str, postgres: PostgresServer, s3: S3Server, bucket: str
) -> None:
    """The KEK on an HSM token is outside Kubernetes already: the new cluster's operator,
    given the same token, adopts and restores with no recovery key at all."""
    with SoftHsm(("vauban-dr",)) as hsm:
        token = {
            **hsm.environ,
            "VAUBAN_PKCS11_MODULE": str(hsm.module),
            "VAUBAN_PKCS11_TOKEN_LABEL": "vauban-dr",
            "VAUBAN_PKCS11_PIN_FILE": str(hsm.pin_file("vauban-dr")),
        }
        rows = _lost_cluster(
            tmp_path / "lost", kubectl_binary, postgres, s3, bucket, "pkcs11", **token
        )
        with kubernetes_cluster(tmp_path / "new", kubectl_binary, **token) as (kube, _):
            for namespace, _count in TENANTS.values():
                kube.run("create", "namespace", namespace)
            _cluster(kube, postgres, s3, bucket, "pkcs11", adopt=True)
            adopted = eventually(partial(_imported, kube), timeout=60, what="import")
            assert adopted == {"databases": len(TENANTS), "backups": len(TENANTS), "refused": []}
            _restore_each(kube, rows)


def _imported(kube: KubeCtl) -> dict[str, Any] | None:
    status = kube.get("managedcluster", "pg", "platform").get("status") or {}
    found: dict[str, Any] | None = status.get("backupImport")
    return found if found and (found["databases"] or found["refused"]) else None


def _restore_each(kube: KubeCtl, rows: dict[str, list[tuple[Any, ...]]]) -> None:
    """Each adopted database restored with restore.databaseRef into a new one of its own
    namespace, and its rows compared with the lost one's."""
    suffix = secrets.token_hex(3)
    for name, (namespace, _count) in TENANTS.items():
        (backup,) = kube.get_list("managedbackup", namespace)
        assert backup["spec"] == {
            "databaseRef": {"name": name},
            "deletionPolicy": "Retain",
            "deletionProtection": False,
        }
        assert backup["status"]["trigger"] == "Imported"
        restored = f"{name}-restored"
        kube.apply(_database(namespace, restored, suffix, restore={"databaseRef": {"name": name}}))
        eventually(
            partial(ready, kube, "manageddatabase", restored, namespace),
            timeout=120,
            what=f"{restored} restored",
        )
        assert _rows(kube, namespace, restored) == rows[name]
