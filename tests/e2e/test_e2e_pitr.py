"""Continuous archiving and point-in-time recovery on running CloudNativePG, through its
barman-cloud plugin (CNPG-I): a cluster archives its WAL and a base backup to the bucket; rows
are written, the time noted, more rows written; a new ManagedCluster recovered from that
archive to the noted time holds only the first rows."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from support.kube import KubeCtl, condition, eventually, managed_cluster
from vauban.devcluster.install import RELEASE, VAUBAN_NAMESPACE
from vauban.devcluster.s3 import S3Server

BUCKET = "archives"
SOURCE = "ledger"
COPY = "ledger-then"


@pytest.fixture(scope="module")
def namespace(kube_e2e: KubeCtl, object_store: S3Server) -> Iterator[str]:
    name = kube_e2e.unique_namespace("e2e-pitr")
    object_store.create_bucket(BUCKET)
    kube_e2e.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "bucket", "namespace": name},
            "stringData": {
                "accessKeyId": object_store.access_key,
                "secretAccessKey": object_store.secret_key,
            },
        }
    )
    yield name
    kube_e2e.run("delete", "namespace", name, "--wait=false", check=False)


def _backup(object_store: S3Server, namespace: str) -> dict[str, Any]:
    return {
        "objectStore": {
            "bucket": BUCKET,
            "endpoint": object_store.endpoint,
            "region": "us-east-1",
            "prefix": namespace,
            "credentialsSecretRef": {"name": "bucket"},
        }
    }


def _ready(kube: KubeCtl, name: str, namespace: str) -> dict[str, Any] | None:
    obj = kube.get("managedcluster", name, namespace)
    ready = condition(obj, "Ready")
    return obj if ready and ready["status"] == "True" else None


def _sql(kube: KubeCtl, namespace: str, cluster: str, sql: str) -> str:
    """`sql` run by the superuser on the cluster's primary (kubectl exec)."""
    primary = kube.get("managedcluster", cluster, namespace)["status"]["currentPrimary"]
    command = ("exec", primary, "-n", namespace, "-c", "postgres", "--", "psql", "-Atc", sql)
    return kube.run(*command).stdout.strip()


def _base_backup_done(kube: KubeCtl, namespace: str) -> list[dict[str, Any]] | None:
    backups = kube.get_list("backups.postgresql.cnpg.io", namespace)
    failed = [b for b in backups if (b.get("status") or {}).get("phase") == "failed"]
    assert not failed, failed[0]["status"]
    done = [b for b in backups if (b.get("status") or {}).get("phase") == "completed"]
    return done or None


def _recovery_state(kube: KubeCtl, namespace: str) -> str:
    """What a failed recovery left to read: the clusters' phases, the pods, the end of each
    recovery pod's containers' logs, the namespace's Events, and the operator's warnings and
    tracebacks (a refused write says which rule refused it)."""
    lines = []
    for cluster in kube.get_list("clusters.postgresql.cnpg.io", namespace):
        status = cluster.get("status") or {}
        lines.append(
            f"Cluster {cluster['metadata']['name']}: {status.get('phase')} "
            f"({status.get('phaseReason')}); conditions {status.get('conditions')}"
        )
    for pod in kube.get_list("pods", namespace):
        name = pod["metadata"]["name"]
        states = {
            c["name"]: c.get("state")
            for c in [
                *(pod.get("status") or {}).get("initContainerStatuses", []),
                *(pod.get("status") or {}).get("containerStatuses", []),
            ]
        }
        lines.append(f"pod {name}: {pod['status'].get('phase')} {states}")
        if name.startswith(COPY):
            log = kube.run(
                "logs", name, "-n", namespace, "--all-containers", "--tail=30", check=False
            )
            lines.append(log.stdout + log.stderr)
    events = kube.run("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False)
    lines.append(events.stdout[-6000:])
    operator = kube.run(
        "logs",
        "-n",
        VAUBAN_NAMESPACE,
        f"-l=app.kubernetes.io/instance={RELEASE}",
        "--tail=200",
        "--prefix",
        check=False,
    )
    # Tracebacks and warnings: the INFO lines of every other object say nothing here.
    lines.extend(line for line in operator.stdout.splitlines() if "[INFO" not in line)
    return "\n".join(lines)


@pytest.mark.timeout(900)
def test_a_cluster_recovers_another_clusters_archive_to_a_point_in_time(
    kube_e2e: KubeCtl, namespace: str, object_store: S3Server, timings: dict[str, float]
) -> None:
    kube = kube_e2e
    backup = _backup(object_store, namespace)
    # A schedule: CloudNativePG's ScheduledBackup takes a first base backup at once.
    kube.apply(managed_cluster(namespace, SOURCE, 1, backup={**backup, "schedule": "0 3 * * *"}))
    eventually(lambda: _ready(kube, SOURCE, namespace), timeout=420, what=f"{SOURCE} Ready")
    started = time.monotonic()
    (base,) = eventually(
        lambda: _base_backup_done(kube, namespace), timeout=300, what="a completed base backup"
    )
    timings["base backup through the plugin"] = time.monotonic() - started
    assert base["spec"]["method"] == "plugin"

    _sql(
        kube,
        namespace,
        SOURCE,
        "create table entries (note text); insert into entries values ('kept')",
    )
    noted = _sql(
        kube,
        namespace,
        SOURCE,
        "select to_char(now() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
    time.sleep(2)  # what follows commits strictly after the noted instant
    _sql(kube, namespace, SOURCE, "insert into entries values ('too late')")
    # The WAL of both writes in the archive: the segment is switched and its archiving seen.
    segment = _sql(kube, namespace, SOURCE, "select pg_walfile_name(pg_switch_wal())")
    eventually(
        lambda: (
            _sql(kube, namespace, SOURCE, "select last_archived_wal from pg_stat_archiver")
            >= segment
        ),
        timeout=120,
        what=f"WAL segment {segment} archived",
    )
    status = eventually(
        lambda: (
            (
                kube.get("managedcluster", SOURCE, namespace)["status"].get("continuousArchiving")
                or {}
            ).get("firstRecoverabilityPoint")
            and kube.get("managedcluster", SOURCE, namespace)["status"]
        ),
        timeout=240,
        what="the recovery window in the source's status",
    )
    archiving = status["continuousArchiving"]
    assert archiving["archiving"] is True, archiving
    assert archiving["firstRecoverabilityPoint"] <= noted, archiving

    started = time.monotonic()
    kube.apply(
        managed_cluster(
            namespace,
            COPY,
            1,
            backup=backup,
            restore={"fromCluster": SOURCE, "targetTime": noted},
        )
    )
    seen: set[str] = set()

    def recovered() -> dict[str, Any] | None:
        obj = kube.get("managedcluster", COPY, namespace)
        ready = condition(obj, "Ready")
        if ready is not None:
            seen.add(ready["reason"])
        return obj if ready and ready["status"] == "True" else None

    try:
        copy = eventually(recovered, timeout=600, what=f"{COPY} recovered and Ready")
    except AssertionError as error:
        state = _recovery_state(kube, namespace)
        raise AssertionError(f"{error}\nreasons seen: {seen}\n{state}") from error
    timings["point-in-time recovery to Ready (1 instance)"] = time.monotonic() - started
    assert "Recovering" in seen, seen
    assert copy["status"]["recovery"] == {
        "fromCluster": SOURCE,
        "archive": f"s3://{BUCKET}/{namespace}/{namespace}/{SOURCE}/wal-archive",
        "targetTime": noted,
        "recovered": True,
    }
    assert _sql(kube, namespace, COPY, "select note from entries order by note") == "kept"
    # The source still holds both: recovery read its archive, it did not touch it.
    assert _sql(kube, namespace, SOURCE, "select count(*) from entries") == "2"
    # Neither cluster cost a failed reconcile: every write the operator made was allowed
    # (its RBAC, its admission policy after CloudNativePG's defaulting webhook).
    failed = [
        e["message"] for e in kube.get_list("events", namespace) if e["reason"] == "ReconcileFailed"
    ]
    assert failed == [], failed
