"""Mode Managed for real: Vauban renders CloudNativePG's Cluster, CloudNativePG runs
PostgreSQL instances in containers, a ManagedDatabase's Secret logs in from a pod, and the
backup agent runs as a Job's pod and writes to the bucket."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from support.clients import (
    PSQL,
    client_pod,
    finished_pod,
    ready,
    secret_values,
    write_through,
)
from support.kube import KubeCtl, condition, eventually, managed_cluster
from vauban.devcluster.images import POSTGRES_IMAGE
from vauban.devcluster.s3 import S3Server

BUCKET = "backups"
INSTANCES = 2
QUERY = "select current_user, (select count(*) from pg_extension where extname = 'pgcrypto')"
"""Who the client is, and whether the database has its extension."""


@pytest.fixture(scope="module")
def tenant(kube_e2e: KubeCtl, object_store: S3Server, timings: dict[str, float]) -> Iterator[str]:
    """A namespace holding a 2-instance ManagedCluster backed up to the bucket, Ready."""
    kube = kube_e2e
    namespace = kube.unique_namespace("e2e-managed")
    object_store.create_bucket(BUCKET)
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "bucket", "namespace": namespace},
            "stringData": {
                "accessKeyId": object_store.access_key,
                "secretAccessKey": object_store.secret_key,
            },
        }
    )
    kube.apply(
        managed_cluster(
            namespace,
            "main",
            INSTANCES,
            compliance={"profile": "iso27001"},
            backup={
                "objectStore": {
                    "bucket": BUCKET,
                    "endpoint": object_store.endpoint,
                    "region": "us-east-1",
                    "prefix": namespace,
                    "credentialsSecretRef": {"name": "bucket"},
                }
            },
        )
    )
    started = time.monotonic()
    eventually(
        lambda: ready(kube, "managedcluster", "main", namespace),
        timeout=420,
        what="the ManagedCluster Ready",
    )
    timings[f"ManagedCluster Ready ({INSTANCES} instances)"] = time.monotonic() - started
    yield namespace
    kube.run("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.mark.timeout(600)
def test_managed_cluster_is_ready_with_real_instances(kube_e2e: KubeCtl, tenant: str) -> None:
    kube = kube_e2e
    status = kube.get("managedcluster", "main", tenant)["status"]
    assert status["readyInstances"] == INSTANCES, status
    primary = kube.get("pod", status["currentPrimary"], tenant)
    assert primary["status"]["phase"] == "Running"
    assert primary["spec"]["containers"][0]["image"] == POSTGRES_IMAGE
    pods = kube.get_list("pod", tenant, "-l=cnpg.io/cluster=main")
    assert len({p["spec"]["nodeName"] for p in pods}) == INSTANCES, "one instance per node"


def _run_client(
    kube: KubeCtl, namespace: str, name: str, secret: str, values: dict[str, str], sql: str
) -> str:
    """Runs `sql` in a client pod logged in with `secret`; its log, once it succeeded."""
    kube.apply(client_pod(name, namespace, secret, values, f'{PSQL} -c "$QUERY"', QUERY=sql))
    pod = eventually(lambda: finished_pod(kube, namespace, name), timeout=120, what=name)
    log = kube.run("logs", name, "-n", namespace).stdout
    assert pod["status"]["phase"] == "Succeeded", log
    return log


NOTE_WRITER = "create table notes (note text); insert into notes values ('kept')"
NOTE_READER = "select note from notes"


@pytest.mark.timeout(600)
def test_database_secret_logs_in_from_a_pod_with_verify_full(
    kube_e2e: KubeCtl, tenant: str
) -> None:
    kube = kube_e2e
    kube.apply(
        {
            "apiVersion": "vauban.dev/v1alpha1",
            "kind": "ManagedDatabase",
            "metadata": {"name": "orders", "namespace": tenant},
            "spec": {
                "clusterRef": {"name": "main"},
                "databaseName": "orders",
                "owner": "orders_owner",
                "extensions": ["pgcrypto"],
            },
        }
    )
    eventually(
        lambda: ready(kube, "manageddatabase", "orders", tenant),
        timeout=180,
        what="the ManagedDatabase Ready",
    )
    values = secret_values(kube, tenant, "orders-credentials")
    assert values["sslmode"] == "verify-full" and "ca.crt" in values
    assert values["host"].endswith(".svc"), values["host"]
    # A client pod: libpq with the Secret's values, the cluster's CA, and the Service's DNS
    # name (CoreDNS), checking the server's certificate and host name.
    script = f'{PSQL} -c "$QUERY" -c "\\\\conninfo" 2>&1'
    kube.apply(client_pod("client", tenant, "orders-credentials", values, script, QUERY=QUERY))
    pod = eventually(lambda: finished_pod(kube, tenant, "client"), timeout=120, what="psql")
    log = kube.run("logs", "client", "-n", tenant).stdout
    assert pod["status"]["phase"] == "Succeeded", log
    lines = log.splitlines()
    assert lines[0] == "orders_owner|1", log
    # psql's \conninfo: the Service's name, and TLS (verify-full allows nothing else).
    assert f'on host "{values["host"]}"' in lines[1], log
    assert lines[2].startswith("SSL connection (protocol: TLSv1."), log


@pytest.mark.timeout(600)
def test_backup_agent_runs_as_a_real_pod(
    kube_e2e: KubeCtl, tenant: str, object_store: S3Server, timings: dict[str, float]
) -> None:
    kube = kube_e2e
    eventually(
        lambda: ready(kube, "manageddatabase", "orders", tenant),
        timeout=180,
        what="the ManagedDatabase Ready",
    )
    # Something to find again in the restored copy.
    values = secret_values(kube, tenant, "orders-credentials")
    _run_client(kube, tenant, "seed", "orders-credentials", values, NOTE_WRITER)
    kube.apply(
        {
            "apiVersion": "vauban.dev/v1alpha1",
            "kind": "ManagedBackup",
            "metadata": {"name": "now", "namespace": tenant},
            "spec": {"databaseRef": {"name": "orders"}},
        }
    )
    started = time.monotonic()
    agents: dict[str, dict[str, Any]] = {}

    def finished() -> dict[str, Any] | None:
        # The agent's pods, seen while they exist (the operator may clean its Job up).
        for pod in kube.get_list("pod", "vauban-system", "-l=vauban.dev/agent"):
            agents[pod["metadata"]["name"]] = pod
        backup = kube.get("managedbackup", "now", tenant)
        done = (backup.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        return backup if done else None

    backup = eventually(finished, timeout=300, what="the backup finished")
    timings["on-demand backup (agent Job pod)"] = time.monotonic() - started
    assert backup["status"]["phase"] == "Succeeded", backup["status"]
    assert agents, "the agent ran as a pod of a Job"
    # A real container on a real node (not the loopback agent runner of the kwok mode).
    assert all(p["metadata"]["ownerReferences"][0]["kind"] == "Job" for p in agents.values())
    assert any(
        p["status"].get("hostIP", "").startswith("10.250.0.")
        and p["status"].get("containerStatuses")
        for p in agents.values()
    ), [p["status"] for p in agents.values()]
    keys = {str(o.object_name) for o in object_store.client().list_objects(BUCKET, recursive=True)}
    assert any("orders" in key for key in keys), keys


@pytest.mark.timeout(300)
def test_compliance_is_judged_on_what_runs(kube_e2e: KubeCtl, tenant: str) -> None:
    """iso27001's rules, each with evidence read from the running cluster: the primary's
    ssl and pg_hba, the NetworkPolicy as the API holds it, the backup that succeeded."""
    kube = kube_e2e

    seen: list[Any] = []

    def compliant() -> dict[str, Any] | None:
        obj = kube.get("managedcluster", "main", tenant)
        found = condition(obj, "Compliant")
        rules = {r["rule"]: r for r in obj["status"].get("compliance", {}).get("rules", [])}
        seen[:] = [found, rules]
        succeeding = rules.get("backups-succeeding", {}).get("evidence", "")
        done = found and found["reason"] == "RulesMet" and "ManagedBackup now" in succeeding
        return obj if done else None

    try:
        obj = eventually(compliant, timeout=180, what="Compliant, with the backup seen")
    except AssertionError as e:
        raise AssertionError(f"{e}: {seen}") from None
    rules = {r["rule"]: r for r in obj["status"]["compliance"]["rules"]}
    assert set(rules) == {
        "tls-required", "backups-configured", "backups-succeeding", "network-policy"
    }, rules  # fmt: skip
    assert all(r["met"] for r in rules.values()), rules
    tls = rules["tls-required"]["evidence"]
    assert tls.startswith("ssl is on; pg_hba: no rule accepts a connection without TLS"), tls
    policy = rules["network-policy"]["evidence"]
    assert policy.startswith("NetworkPolicy main-postgresql: Ingress, selects the instance pods")
    assert tenant in policy and "vauban-system" in policy, policy


@pytest.mark.timeout(900)
def test_failover_moves_the_primary_and_the_tenant_keeps_its_writes(
    kube_e2e: KubeCtl, tenant: str, timings: dict[str, float]
) -> None:
    """The primary's pod deleted: CloudNativePG promotes the replica, Vauban's status names
    the new primary and says it with an Event, and a client that reconnects with the same
    Secret finds every write acknowledged before the failover. The time writes were refused,
    as the client saw it, is measured."""
    kube = kube_e2e
    primary = kube.get("managedcluster", "main", tenant)["status"]["currentPrimary"]

    def moved() -> str | None:
        now = (kube.get("managedcluster", "main", tenant).get("status") or {}).get("currentPrimary")
        return now if now and now != primary else None

    def delete_the_primary() -> None:
        deleted_at = time.time()
        kube.run("delete", "pod", primary, "-n", tenant, "--wait=false")
        promoted = eventually(moved, timeout=180, what="a new primary in status")
        timings["failover: new primary in status"] = time.time() - deleted_at
        events = kube.run(
            "get", "events", "-n", tenant, "-o", "json",
            "--field-selector=involvedObject.name=main,reason=PrimaryChanged",
        ).stdout  # fmt: skip
        assert f"to {promoted}" in events, events

    refused = write_through(kube, tenant, "writer", delete_the_primary, instances=INSTANCES)
    timings["failover: writes refused (client view)"] = refused


@pytest.mark.timeout(900)
def test_killed_postgresql_comes_back_and_the_tenant_keeps_its_writes(
    kube_e2e: KubeCtl, tenant: str, timings: dict[str, float]
) -> None:
    """The primary's PostgreSQL killed (SIGKILL to the postmaster, its pod left alone):
    CloudNativePG restarts it or promotes a replica; either way Vauban's status names the
    primary CloudNativePG names, and the tenant's acknowledged writes are all there."""
    kube = kube_e2e
    primary = kube.get("managedcluster", "main", tenant)["status"]["currentPrimary"]
    postmaster = (
        'kill -9 "$(head -n 1 "${PGDATA:-/var/lib/postgresql/data/pgdata}/postmaster.pid")"'
    )

    def kill_postgresql() -> None:
        kube.run("exec", primary, "-n", tenant, "-c", "postgres", "--", "sh", "-c", postmaster)

    refused = write_through(kube, tenant, "writer-2", kill_postgresql, instances=INSTANCES)
    timings["PostgreSQL killed: writes refused"] = refused
    engine = kube.get("clusters.postgresql.cnpg.io", "main", tenant)["status"]["currentPrimary"]
    shown = kube.get("managedcluster", "main", tenant)["status"]["currentPrimary"]
    assert shown == engine, (shown, engine)
    print(f"PostgreSQL of {primary} killed: primary now {shown}; writes refused {refused:.1f} s")


@pytest.mark.timeout(600)
def test_a_backup_restores_into_a_new_database_of_the_managed_cluster(
    kube_e2e: KubeCtl, tenant: str, timings: dict[str, float]
) -> None:
    """The on-demand backup, restored by an agent pod into a new ManagedDatabase: the copy's
    own login reads what was written before the backup."""
    kube = kube_e2e
    backup = kube.get("managedbackup", "now", tenant)
    assert (backup.get("status") or {}).get("phase") == "Succeeded", backup.get("status")
    kube.apply(
        {
            "apiVersion": "vauban.dev/v1alpha1",
            "kind": "ManagedDatabase",
            "metadata": {"name": "orders-copy", "namespace": tenant},
            "spec": {
                "clusterRef": {"name": "main"},
                "databaseName": "orders_copy",
                "owner": "orders_copy_owner",
                "restore": {"backupRef": {"name": "now"}},
            },
        }
    )
    started = time.monotonic()
    copy = eventually(
        lambda: ready(kube, "manageddatabase", "orders-copy", tenant),
        timeout=300,
        what="the restored ManagedDatabase Ready",
    )
    timings["restore into a new database (agent pod)"] = time.monotonic() - started
    assert copy["status"]["restore"]["phase"] == "Succeeded", copy["status"]
    assert copy["status"]["restore"]["source"] == "now", copy["status"]
    values = secret_values(kube, tenant, "orders-copy-credentials")
    log = _run_client(kube, tenant, "reader", "orders-copy-credentials", values, NOTE_READER)
    assert log.splitlines() == ["kept"], log


def _server(kube: KubeCtl, namespace: str, sql: str) -> str:
    """`sql` run by the superuser on the primary, inside its container (kubectl exec)."""
    primary = kube.get("managedcluster", "main", namespace)["status"]["currentPrimary"]
    command = ("exec", primary, "-n", namespace, "-c", "postgres", "--", "psql", "-Atc", sql)
    return kube.run(*command).stdout.strip()


def _gone(kube: KubeCtl, kind: str, name: str, namespace: str) -> bool:
    return kube.run("get", kind, name, "-n", namespace, check=False).returncode != 0


@pytest.mark.timeout(600)
def test_deletion_policies_on_the_managed_cluster(kube_e2e: KubeCtl, tenant: str) -> None:
    """Delete drops a database and its roles; Retain keeps a database (its logins revoked),
    and a ManagedCluster deleted with Retain keeps its volumes and superuser Secret."""
    kube = kube_e2e
    kube.run("patch", "manageddatabase", "orders-copy", "-n", tenant, "--type=merge",
             "-p", '{"spec":{"deletionPolicy":"Delete"}}')  # fmt: skip
    kube.run("delete", "manageddatabase", "orders-copy", "-n", tenant, "--timeout=120s")
    kube.run("delete", "manageddatabase", "orders", "-n", tenant, "--timeout=120s")
    databases = _server(kube, tenant, "select string_agg(datname, ',') from pg_database")
    assert "orders_copy" not in databases.split(","), databases
    assert "orders" in databases.split(","), databases
    roles = _server(
        kube, tenant, "select string_agg(rolname || ':' || rolcanlogin, ',' order by rolname) "
        "from pg_roles where rolname like 'orders%'",
    )  # fmt: skip
    assert "orders_copy" not in roles and ":true" not in roles, roles

    claims = {
        c["metadata"]["name"] for c in kube.get_list("pvc", tenant, "-l=cnpg.io/cluster=main")
    }
    assert len(claims) == INSTANCES, claims
    kube.run("delete", "managedcluster", "main", "-n", tenant, "--timeout=180s")
    eventually(
        lambda: (
            _gone(kube, "clusters.postgresql.cnpg.io", "main", tenant)
            and not kube.get_list("pod", tenant, "-l=cnpg.io/cluster=main")
        ),
        timeout=180,
        what="CloudNativePG's Cluster and its pods gone",
    )
    time.sleep(5)  # the garbage collector had its chance at what it no longer owns
    kept = kube.get_list("pvc", tenant, "-l=vauban.dev/retained-from=main")
    assert {c["metadata"]["name"] for c in kept} == claims, kept
    assert all(not c["metadata"].get("ownerReferences") for c in kept), kept
    secret = kube.get("secret", "main-superuser", tenant)
    assert not secret["metadata"].get("ownerReferences"), secret["metadata"]
