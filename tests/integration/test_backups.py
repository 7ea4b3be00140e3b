"""Backups end to end: ManagedBackups on a real PostgreSQL and a real S3 server (versitygw),
through the operator's Jobs, whose pods the AgentRunner runs for real on loopback."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.backups import (
    backed_up_cluster,
    connect_tenant,
    finished,
    managed_backup,
    purged_after_retention,
    tenant_database,
)
from support.kube import (
    OPERATOR_NAMESPACE,
    KubeCtl,
    OperatorProcess,
    condition,
    eventually,
    ready,
)
from vauban.devcluster.agentrunner import AgentRunner
from vauban.devcluster.postgres import PostgresServer
from vauban.devcluster.s3 import S3Server

pytestmark = pytest.mark.usefixtures("operator", "agent_runner")


@pytest.fixture
def bucket(s3: S3Server) -> str:
    name = f"b-{secrets.token_hex(4)}"
    s3.create_bucket(name)
    return name


@pytest.fixture
def cluster(
    kube: KubeCtl, namespace: str, postgres: PostgresServer, s3: S3Server, bucket: str
) -> Iterator[str]:
    backed_up_cluster(kube, namespace, postgres, s3, bucket)
    eventually(lambda: ready(kube, "managedcluster", "pg", namespace), what="cluster Ready")
    yield "pg"


def _keys(s3: S3Server, bucket: str) -> set[str]:
    return {str(o.object_name) for o in s3.client().list_objects(bucket, recursive=True)}


def test_on_demand_backup_retention_and_restore(
    kube: KubeCtl,
    namespace: str,
    cluster: str,
    s3: S3Server,
    bucket: str,
    operator: OperatorProcess,
    agent_runner: AgentRunner,
) -> None:
    kube.apply(tenant_database(namespace, "orders", backup={"retention": {"keepLast": 1}}))
    db = eventually(lambda: ready(kube, "manageddatabase", "orders", namespace), what="Ready")
    assert condition(db, "BackupHealthy")["reason"] == "NoBackupYet"  # type: ignore[index]
    with connect_tenant(kube, namespace, "orders") as conn:
        conn.execute("CREATE TABLE item (id int PRIMARY KEY, label text)")
        conn.execute("INSERT INTO item SELECT g, 'étiquette ' || g FROM generate_series(1, 3000) g")

    kube.apply(managed_backup(namespace, "first", "orders"))
    first = eventually(lambda: finished(kube, namespace, "first"), timeout=90, what="first")
    status = first["status"]
    assert status["phase"] == "Succeeded", status
    assert condition(first, "Ready")["status"] == "True"  # type: ignore[index]
    assert status["trigger"] == "OnDemand" and status["tables"] == 1
    assert status["sizeBytes"] > 0 and len(status["sha256"]) == 64
    assert status["dataKeyId"].startswith("dek-")
    key = status["location"]["key"]
    assert {f"{key}/manifest.json", f"{key}/data"} <= _keys(s3, bucket)
    # The Job and its pod are gone once the result is recorded.
    eventually(
        lambda: not kube.get_list("jobs", OPERATOR_NAMESPACE, "-l", "vauban.dev/operation=backup"),
        what="Job deleted",
    )

    def healthy() -> dict[str, Any] | None:
        obj = kube.get("manageddatabase", "orders", namespace)
        c = condition(obj, "BackupHealthy")
        return obj if c and c["status"] == "True" else None

    db = eventually(healthy, what="BackupHealthy")
    assert db["status"]["backup"]["lastBackup"] == "first"
    metric = eventually(
        lambda: operator.metric(
            "vauban_database_last_backup_success_timestamp_seconds",
            namespace=namespace,
            database="orders",
        ),
        what="backup metric",
    )
    assert abs(metric - time.time()) < 600

    # A second backup: retention (keepLast 1) removes the first, object included.
    kube.apply(managed_backup(namespace, "second", "orders"))
    eventually(lambda: finished(kube, namespace, "second"), timeout=90, what="second")
    eventually(
        lambda: (
            kube.run("get", "managedbackup", "first", "-n", namespace, check=False).returncode != 0
        ),
        what="first backup removed by retention",
    )
    eventually(lambda: f"{key}/manifest.json" not in _keys(s3, bucket), what="objects deleted")

    # Restore into a new database, then compare from the database itself.
    # The latest backup of `orders` (second) is what a databaseRef restores.
    kube.apply(tenant_database(namespace, "copy", restore={"databaseRef": {"name": "orders"}}))
    copy = eventually(
        lambda: ready(kube, "manageddatabase", "copy", namespace), timeout=90, what="restored"
    )
    assert copy["status"]["restore"] == {
        **copy["status"]["restore"],
        "source": "second",
        "phase": "Succeeded",
    }
    with connect_tenant(kube, namespace, "copy") as conn:
        rows = conn.execute("SELECT count(*), max(label) FROM item").fetchone()
    assert rows == (3000, "étiquette 999")


def test_scheduled_backup_and_restore_test(
    kube: KubeCtl, namespace: str, cluster: str, s3: S3Server, bucket: str
) -> None:
    kube.apply(
        tenant_database(
            namespace,
            "ledger",
            backup={"schedule": "0 3 * * *", "verify": {"schedule": "0 4 * * 0"}},
        )
    )
    db = eventually(lambda: ready(kube, "manageddatabase", "ledger", namespace), what="Ready")
    uid = db["metadata"]["uid"]
    cronjob = eventually(
        lambda: (
            kube.run(
                "get",
                "cronjob",
                f"backup-{uid}",
                "-n",
                OPERATOR_NAMESPACE,
                "-o",
                "json",
                check=False,
            ).stdout
        ),
        what="backup CronJob",
    )
    assert '"schedule": "0 3 * * *"' in cronjob
    # Run the schedule now, as the CronJob controller would at 03:00.
    kube.run(
        "create",
        "job",
        f"backup-{uid[:8]}-1",
        f"--from=cronjob/backup-{uid}",
        "-n",
        OPERATOR_NAMESPACE,
    )
    name = "ledger-1"
    record = eventually(lambda: finished(kube, namespace, name), timeout=90, what="scheduled")
    assert record["status"]["phase"] == "Succeeded", record["status"]
    assert record["status"]["trigger"] == "Scheduled"

    # The restore test CronJob follows the latest backup; run it now.
    eventually(
        lambda: (
            kube.run(
                "get", "cronjob", f"verify-{uid}", "-n", OPERATOR_NAMESPACE, check=False
            ).returncode
            == 0
        ),
        what="verify CronJob",
    )
    kube.run(
        "create",
        "job",
        f"verify-{uid[:8]}-1",
        f"--from=cronjob/verify-{uid}",
        "-n",
        OPERATOR_NAMESPACE,
    )

    def verified() -> dict[str, Any] | None:
        obj = kube.get("managedbackup", name, namespace)
        return obj if (obj.get("status") or {}).get("verification") else None

    result = eventually(verified, timeout=90, what="restore test")["status"]["verification"]
    assert result["result"] == "Passed", result
    eventually(
        lambda: (
            (kube.get("manageddatabase", "ledger", namespace)["status"].get("backup") or {}).get(
                "lastVerifiedBackup"
            )
            == name
        ),
        what="lastVerifiedBackup",
    )


def test_wrong_bucket_credentials_fail_the_backup_clearly(
    kube: KubeCtl,
    namespace: str,
    postgres: PostgresServer,
    s3: S3Server,
    bucket: str,
    operator: OperatorProcess,
) -> None:
    backed_up_cluster(kube, namespace, postgres, s3, bucket, secret_key="not-the-key")
    eventually(lambda: ready(kube, "managedcluster", "pg", namespace), what="cluster Ready")
    kube.apply(tenant_database(namespace, "notes"))
    eventually(lambda: ready(kube, "manageddatabase", "notes", namespace), what="Ready")
    kube.apply(managed_backup(namespace, "doomed", "notes"))
    failed = eventually(lambda: finished(kube, namespace, "doomed"), timeout=90, what="failed")
    assert failed["status"]["phase"] == "Failed"
    stalled = condition(failed, "Stalled")
    assert stalled is not None and stalled["reason"] == "BackupFailed"
    assert "AccessDenied" in stalled["message"]
    assert "not-the-key" not in str(failed)
    assert not _keys(s3, bucket)
    failures = eventually(
        lambda: operator.metric(
            "vauban_database_backup_failures_total", namespace=namespace, database="notes"
        ),
        what="failure counted",
    )
    assert failures == 1
    kube.apply(tenant_database(namespace, "from-doomed", restore={"backupRef": {"name": "doomed"}}))

    def stalled_on_source() -> dict[str, Any] | None:
        stalled = condition(kube.get("manageddatabase", "from-doomed", namespace), "Stalled")
        return stalled if stalled and stalled["reason"] == "RestoreSourceFailed" else None

    said = eventually(stalled_on_source, what="restore from a failed backup refused")
    assert "holds nothing to restore" in said["message"], said


def _backed_up(
    kube: KubeCtl,
    namespace: str,
    database: str,
    name: str,
    backup_spec: dict[str, Any] | None = None,
    **spec: Any,
) -> None:
    """A Ready database with a table, and one successful backup of it (`backup_spec`: the
    ManagedBackup's spec)."""
    kube.apply(tenant_database(namespace, database, **spec))
    eventually(lambda: ready(kube, "manageddatabase", database, namespace), what="Ready")
    with connect_tenant(kube, namespace, database) as conn:
        conn.execute("CREATE TABLE fact (id int)")
        conn.execute("INSERT INTO fact SELECT generate_series(1, 42)")
    kube.apply(managed_backup(namespace, name, database, **(backup_spec or {})))
    done = eventually(lambda: finished(kube, namespace, name), timeout=90, what=name)
    assert done["status"]["phase"] == "Succeeded", done["status"]


def test_a_backup_leaves_the_bucket_only_when_asked(
    kube: KubeCtl, namespace: str, cluster: str, s3: S3Server, bucket: str
) -> None:
    """The default (Retain) is what an Argo CD prune of a backup declared in Git meets."""
    _backed_up(kube, namespace, "books", "pruned")
    key = kube.get("managedbackup", "pruned", namespace)["status"]["location"]["key"]
    kube.run("delete", "managedbackup", "pruned", "-n", namespace, "--wait=true", "--timeout=60s")
    assert {f"{key}/manifest.json", f"{key}/data"} <= _keys(s3, bucket)

    kube.apply(managed_backup(namespace, "asked", "books", deletionPolicy="Delete"))
    done = eventually(lambda: finished(kube, namespace, "asked"), timeout=90, what="asked")
    key = done["status"]["location"]["key"]
    assert f"{key}/manifest.json" in _keys(s3, bucket)
    kube.run("delete", "managedbackup", "asked", "-n", namespace, "--wait=true", "--timeout=60s")
    assert not {k for k in _keys(s3, bucket) if k.startswith(f"{key}/")}


def test_key_rotation_keeps_old_backups_restorable(
    kube: KubeCtl, namespace: str, cluster: str, operator: OperatorProcess
) -> None:
    _backed_up(kube, namespace, "before", "old")
    first = kube.get("managedcluster", cluster, namespace)["status"]["encryption"]
    assert first["keyVersion"] == 1 and first["provider"] == "kubernetes-secret"
    assert "keyCreated" in first
    kube.run("annotate", "managedcluster", cluster, "-n", namespace, "vauban.dev/rotate-key=r1")

    def rotated() -> dict[str, Any] | None:
        status = kube.get("managedcluster", cluster, namespace)["status"]
        encryption = status.get("encryption") or {}
        return encryption if encryption.get("keyVersion") == 2 else None

    encryption = eventually(rotated, what="key rotated")
    age = operator.metric("vauban_key_age_seconds", namespace=namespace, cluster=cluster)
    assert age is not None and age < 60  # the new version's age
    assert encryption["rotationToken"] == "r1" and encryption["lastRotation"]
    kek = kube.get("secret", encryption["keyId"], OPERATOR_NAMESPACE)
    assert {"v1", "v2"} <= kek["data"].keys()  # the old version stays
    # The backup taken under version 1 restores: only its data key was re-wrapped.
    kube.apply(tenant_database(namespace, "after", restore={"backupRef": {"name": "old"}}))
    eventually(
        lambda: ready(kube, "manageddatabase", "after", namespace), timeout=90, what="restored"
    )
    with connect_tenant(kube, namespace, "after") as conn:
        assert conn.execute("SELECT count(*) FROM fact").fetchone() == (42,)


def test_deleting_a_database_shreds_its_key(kube: KubeCtl, namespace: str, cluster: str) -> None:
    _backed_up(
        kube,
        namespace,
        "gone",
        "last",
        deletionPolicy="Delete",
        backup={"retainAfterDeletionDays": 0},
    )
    key_id = kube.get("managedbackup", "last", namespace)["status"]["dataKeyId"]
    kube.run("delete", "manageddatabase", "gone", "-n", namespace, "--wait=true", "--timeout=60s")
    secret = f"vauban-{key_id}"  # the key's id names its Secret
    assert kube.run("get", "secret", secret, "-n", OPERATOR_NAMESPACE, check=False).returncode
    # The ManagedBackup is kept (its object too), but nothing can read it any more.
    assert kube.get("managedbackup", "last", namespace)["status"]["phase"] == "Succeeded"
    kube.apply(tenant_database(namespace, "revived", restore={"backupRef": {"name": "last"}}))

    def refused() -> dict[str, Any] | None:
        obj = kube.get("manageddatabase", "revived", namespace)
        stalled = condition(obj, "Stalled")
        return obj if stalled and stalled["reason"] == "RestoreFailed" else None

    obj = eventually(refused, timeout=60, what="restore refused")
    message = condition(obj, "Stalled")["message"]  # type: ignore[index]
    assert "crypto-shredding" in message, message


def test_final_backup_before_deletion(kube: KubeCtl, namespace: str, cluster: str) -> None:
    kube.apply(tenant_database(namespace, "closing", backup={"finalBackup": True}))
    eventually(lambda: ready(kube, "manageddatabase", "closing", namespace), what="Ready")
    kube.run(
        "delete", "manageddatabase", "closing", "-n", namespace, "--wait=true", "--timeout=90s"
    )
    final = kube.get("managedbackup", "closing-final", namespace)
    assert final["status"]["phase"] == "Succeeded", final["status"]
    assert final["status"]["trigger"] == "Final"


def test_object_lock_keeps_backups_undeletable(
    kube: KubeCtl, namespace: str, postgres: PostgresServer, s3: S3Server
) -> None:
    locked = f"l-{secrets.token_hex(4)}"
    s3.create_bucket(locked, object_lock=True)
    backed_up_cluster(kube, namespace, postgres, s3, locked, objectLockDays=1)
    eventually(lambda: ready(kube, "managedcluster", "pg", namespace), what="cluster Ready")
    _backed_up(kube, namespace, "vault", "sealed", backup_spec={"deletionPolicy": "Delete"})
    status = kube.get("managedbackup", "sealed", namespace)["status"]
    assert status["retainUntil"] > status["finishedAt"]
    key = status["location"]["key"]
    kube.run("delete", "managedbackup", "sealed", "-n", namespace, "--wait=true", "--timeout=60s")
    # The record is gone; the object is not, and an Event says why.
    assert f"{key}/manifest.json" in _keys(s3, locked)
    events = kube.run(
        "get", "events", "-n", namespace, "--field-selector", "reason=BackupLocked", "-o", "name"
    ).stdout
    assert events.strip()


@pytest.mark.parametrize("provider", ["kmip", "pkcs11"])
def test_hsm_key_provider(
    kube: KubeCtl,
    namespace: str,
    postgres: PostgresServer,
    s3: S3Server,
    bucket: str,
    provider: str,
) -> None:
    """The cluster's key-encryption key lives in a real key manager (PyKMIP's server) or HSM
    token (SoftHSM2): Vauban records only its id; backups, rotation and restore work
    through it."""
    backed_up_cluster(kube, namespace, postgres, s3, bucket, encryption={"provider": provider})
    eventually(lambda: ready(kube, "managedcluster", "pg", namespace), what="cluster Ready")
    _backed_up(kube, namespace, "hsm", "first")

    def recorded() -> dict[str, Any] | None:
        encryption = kube.get("managedcluster", "pg", namespace)["status"].get("encryption")
        return encryption if encryption and encryption.get("provider") == provider else None

    encryption = recorded() or eventually(recorded, what=f"{provider} key in status")
    kek = kube.get("secret", encryption["keyId"], OPERATOR_NAMESPACE)["data"]
    reference = base64.b64decode(kek["v1"]).decode()
    assert len(reference) < 64 and not reference.endswith("=")  # an id, not key material
    kube.run("annotate", "managedcluster", "pg", "-n", namespace, "vauban.dev/rotate-key=k2")
    eventually(lambda: (recorded() or {}).get("keyVersion") == 2, what=f"{provider} key rotated")
    kube.apply(tenant_database(namespace, "hsm2", restore={"backupRef": {"name": "first"}}))
    eventually(
        lambda: ready(kube, "manageddatabase", "hsm2", namespace), timeout=90, what="restored"
    )


def test_compliance_report(
    kube: KubeCtl, namespace: str, cluster: str, kubeconfig: Path, tmp_path: Path
) -> None:
    _backed_up(kube, namespace, "audited", "proof")
    eventually(
        lambda: (
            kube.get("manageddatabase", "audited", namespace)["status"].get("backup") or {}
        ).get("lastBackup"),
        what="last backup in status",
    )
    env = {**os.environ, "VAUBAN_KUBECONFIG": str(kubeconfig)}
    command = [sys.executable, "-m", "vauban", "compliance", "report"]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    built = json.loads(out)
    mine = next(c for c in built["clusters"] if c["namespace"] == namespace)
    assert mine["keyProvider"] == "kubernetes-secret" and mine["keyVersion"] == 1
    database = next(d for d in built["databases"] if d["namespace"] == namespace)
    assert database["lastBackup"] == "proof" and database["dataKeyId"].startswith("dek-")
    page = tmp_path / "report.md"
    subprocess.run([*command, "--format", "markdown", "--output", str(page)], env=env, check=True)
    assert f"| {namespace}/audited | {namespace}/pg |" in page.read_text(encoding="utf-8")


def test_health_data_needs_a_certified_cluster(
    kube: KubeCtl, namespace: str, cluster: str, postgres: PostgresServer
) -> None:
    kube.apply(tenant_database(namespace, "records", dataClassification="health"))

    def refused() -> dict[str, Any] | None:
        obj = kube.get("manageddatabase", "records", namespace)
        stalled = condition(obj, "Stalled")
        return obj if stalled and stalled["reason"] == "ClusterNotCertified" else None

    obj = eventually(refused, what="ClusterNotCertified")
    compliant = condition(obj, "Compliant")
    assert compliant is not None and compliant["status"] == "False"
    with postgres.superuser() as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname = %s",
            (obj["spec"]["databaseName"],),
        ).fetchone()
    assert found == (0,)  # nothing was created


def test_backups_of_a_deleted_database_are_purged_after_their_days(
    kube: KubeCtl, namespace: str, cluster: str, s3: S3Server, bucket: str
) -> None:
    _backed_up(
        kube,
        namespace,
        "retired",
        "kept",
        deletionPolicy="Delete",
        backup={"retainAfterDeletionDays": 7},
    )
    status = kube.get("managedbackup", "kept", namespace)["status"]
    secret, key = f"vauban-{status['dataKeyId']}", status["location"]["key"]
    kube.run(
        "delete", "manageddatabase", "retired", "-n", namespace, "--wait=true", "--timeout=60s"
    )
    # Within the days: the backup, its object and its key stay, so it can still be restored.
    marks = kube.get("secret", secret, OPERATOR_NAMESPACE)["metadata"]["annotations"]
    assert marks["vauban.dev/purge-after"] > status["finishedAt"]
    assert f"{key}/manifest.json" in _keys(s3, bucket)
    # The days pass (the deadline is moved, as time would).
    purged_after_retention(kube, secret, timeout=60)
    assert f"{key}/manifest.json" not in _keys(s3, bucket)
    assert kube.run("get", "managedbackup", "kept", "-n", namespace, check=False).returncode
