"""Mode Managed for real: Vauban renders CloudNativePG's Cluster, CloudNativePG runs
PostgreSQL instances in containers, a ManagedDatabase's Secret logs in from a pod, and the
backup agent runs as a Job's pod and writes to the bucket."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import pytest

from support.kube import KubeCtl, condition, eventually
from vauban.devcluster.images import POSTGRES_IMAGE
from vauban.devcluster.s3 import S3Server

BUCKET = "backups"
INSTANCES = 2
QUERY = "select current_user, (select count(*) from pg_extension where extname = 'pgcrypto')"
"""Who the client is, and whether the database has its extension."""


def _ready(kube: KubeCtl, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    obj = kube.get(kind, name, namespace)
    ready = condition(obj, "Ready")
    return obj if ready and ready["status"] == "True" else None


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
        {
            "apiVersion": "vauban.dev/v1alpha1",
            "kind": "ManagedCluster",
            "metadata": {"name": "main", "namespace": namespace},
            "spec": {
                "version": "17",
                "instances": INSTANCES,
                "storage": {"size": "1Gi"},
                "resources": {
                    "requests": {"cpu": "100m", "memory": "256Mi"},
                    "limits": {"memory": "512Mi"},
                },
                "backup": {
                    "objectStore": {
                        "bucket": BUCKET,
                        "endpoint": object_store.endpoint,
                        "region": "us-east-1",
                        "prefix": namespace,
                        "credentialsSecretRef": {"name": "bucket"},
                    }
                },
            },
        }
    )
    started = time.monotonic()
    eventually(
        lambda: _ready(kube, "managedcluster", "main", namespace),
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


def _secret(kube: KubeCtl, namespace: str, name: str) -> dict[str, str]:
    data = kube.get("secret", name, namespace)["data"]
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def _finished_pod(kube: KubeCtl, namespace: str, name: str) -> dict[str, Any] | None:
    pod = kube.get("pod", name, namespace)
    return pod if pod["status"].get("phase") in ("Succeeded", "Failed") else None


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
        lambda: _ready(kube, "manageddatabase", "orders", tenant),
        timeout=180,
        what="the ManagedDatabase Ready",
    )
    values = _secret(kube, tenant, "orders-credentials")
    assert values["sslmode"] == "verify-full" and "ca.crt" in values
    assert values["host"].endswith(".svc"), values["host"]
    # A client pod: libpq with the Secret's values, the cluster's CA, and the Service's DNS
    # name (CoreDNS), checking the server's certificate and host name.
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "client", "namespace": tenant},
            "spec": {
                "restartPolicy": "Never",
                "securityContext": {"runAsUser": 26, "runAsNonRoot": True},
                "containers": [
                    {
                        "name": "psql",
                        "image": POSTGRES_IMAGE,
                        "command": [
                            "sh",
                            "-c",
                            'psql "host=$PGHOST port=$PGPORT dbname=$PGDATABASE user=$PGUSER '
                            'sslmode=verify-full sslrootcert=/credentials/ca.crt" '
                            '-v ON_ERROR_STOP=1 -At -c "$QUERY" -c "\\\\conninfo" 2>&1',
                        ],
                        "env": [
                            {"name": "QUERY", "value": QUERY},
                            {"name": "PGHOST", "value": values["host"]},
                            {"name": "PGPORT", "value": values["port"]},
                            {"name": "PGDATABASE", "value": values["dbname"]},
                            *(
                                {
                                    "name": env,
                                    "valueFrom": {
                                        "secretKeyRef": {"name": "orders-credentials", "key": key}
                                    },
                                }
                                for env, key in (("PGUSER", "username"), ("PGPASSWORD", "password"))
                            ),
                        ],
                        "volumeMounts": [{"name": "credentials", "mountPath": "/credentials"}],
                    }
                ],
                "volumes": [
                    {"name": "credentials", "secret": {"secretName": "orders-credentials"}}
                ],
            },
        }
    )
    pod = eventually(lambda: _finished_pod(kube, tenant, "client"), timeout=120, what="psql")
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
        lambda: _ready(kube, "manageddatabase", "orders", tenant),
        timeout=180,
        what="the ManagedDatabase Ready",
    )
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
