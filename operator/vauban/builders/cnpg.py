"""Desired objects of a managed ManagedCluster: CloudNativePG's `Cluster`, the superuser
Secret, the NetworkPolicy, and the barman-cloud plugin's `ObjectStore`s of its continuous
archive. Pure: spec in, manifests out."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vauban.api.cluster import (
    ClusterBackupPolicy,
    ClusterRestore,
    ManagedClusterSpec,
    ObjectStore,
)
from vauban.api.common import API_VERSION, duration_seconds

CNPG_GROUP = "postgresql.cnpg.io"
CNPG_VERSION = "v1"
CNPG_API_VERSION = f"{CNPG_GROUP}/{CNPG_VERSION}"
CNPG_PLURAL = "clusters"
CNPG_CLUSTER_LABEL = "cnpg.io/cluster"
POSTGRES_PORT = 5432
CNPG_STATUS_PORT = 8000
CNPG_METRICS_PORT = 9187
"""CloudNativePG's instance exporter (its `metrics` port), over TLS with the instance's
certificate: monitoring.tls.enabled in the Cluster."""

# CloudNativePG's WAL archiving and base backups through its barman-cloud plugin (CNPG-I): the
# in-tree `barmanObjectStore` is deprecated upstream and goes with CloudNativePG 1.30's
# successors.
BARMAN_PLUGIN = "barman-cloud.cloudnative-pg.io"
BARMAN_GROUP = "barmancloud.cnpg.io"
BARMAN_VERSION = "v1"
BARMAN_PLURAL = "objectstores"
RECOVERY_SOURCE = "origin"
"""The externalClusters entry a recovery reads from."""

MANAGED_BY = {"app.kubernetes.io/managed-by": "vauban"}
CLUSTER_LABEL = "vauban.dev/cluster"
RETAINED_LABEL = "vauban.dev/retained-from"

# Every connection is TLS with SCRAM: plain-text connections are refused before CloudNativePG's
# own rules (which would accept them) are reached.
PG_HBA = (
    "hostnossl all all all reject",
    "hostssl all all all scram-sha-256",
)


@dataclass(frozen=True)
class Owner:
    """The ManagedCluster the objects belong to."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": "ManagedCluster",
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def labels(self) -> dict[str, str]:
        return {
            **MANAGED_BY,
            "app.kubernetes.io/name": "postgresql",
            "app.kubernetes.io/instance": self.name,
            CLUSTER_LABEL: self.name,
        }


def superuser_secret_name(cluster: str) -> str:
    return f"{cluster}-superuser"


def ca_secret_name(cluster: str) -> str:
    """CloudNativePG's Secret holding the CA (`ca.crt`) that signs the server's certificate."""
    return f"{cluster}-ca"


def primary_host(cluster: str, namespace: str) -> str:
    """CloudNativePG's `-rw` Service: the primary, under the name its certificate carries."""
    return f"{cluster}-rw.{namespace}.svc"


def image(repository: str, version: str) -> str:
    """The PostgreSQL image for a version: a major tag (`17`) follows CloudNativePG's latest
    minor; `17.6` pins one."""
    return f"{repository}:{version}"


def major(version_or_image: str) -> str:
    """The major version in `17`, `17.6` or `repo/postgresql:17.6-bookworm`."""
    tag = version_or_image.rsplit(":", 1)[-1]
    return tag.split(".", 1)[0].split("-", 1)[0]


def cluster(owner: Owner, spec: ManagedClusterSpec, *, image_repository: str) -> dict[str, Any]:
    """CloudNativePG's Cluster for a managed ManagedCluster (mode Managed: version and storage
    are set, the CRD guarantees it)."""
    assert spec.version is not None and spec.storage is not None
    storage: dict[str, Any] = {"size": spec.storage.size}
    if spec.storage.storage_class_name:
        storage["storageClass"] = spec.storage.storage_class_name
    body: dict[str, Any] = {
        "apiVersion": CNPG_API_VERSION,
        "kind": "Cluster",
        "metadata": {
            "name": owner.name,
            "namespace": owner.namespace,
            "labels": owner.labels(),
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            "instances": spec.instances,
            "imageName": image(image_repository, spec.version),
            "storage": storage,
            "enableSuperuserAccess": True,
            "superuserSecret": {"name": superuser_secret_name(owner.name)},
            "postgresql": {
                "parameters": dict(spec.postgresql.parameters) if spec.postgresql else {},
                "pg_hba": list(PG_HBA),
            },
            "affinity": {
                "enablePodAntiAffinity": True,
                "topologyKey": "kubernetes.io/hostname",
                # Replicas on one node are no HA; with fewer nodes than instances the extra
                # instances wait, visibly, rather than share a node.
                "podAntiAffinityType": "required",
            },
            "monitoring": {"tls": {"enabled": True}},
            "enablePDB": spec.instances > 1,
            "inheritedMetadata": {"labels": owner.labels()},
        },
    }
    if spec.resources is not None:
        body["spec"]["resources"] = spec.resources.to_wire()
    if spec.backup is not None:
        body["spec"]["plugins"] = [
            {
                "name": BARMAN_PLUGIN,
                "isWALArchiver": True,
                "parameters": {"barmanObjectName": archive_store_name(owner.name)},
            }
        ]
    if spec.restore is not None:
        recovery: dict[str, Any] = {"source": RECOVERY_SOURCE}
        if spec.restore.target_time is not None:
            recovery["recoveryTarget"] = {"targetTime": spec.restore.target_time}
        body["spec"]["bootstrap"] = {"recovery": recovery}
        body["spec"]["externalClusters"] = [
            {
                "name": RECOVERY_SOURCE,
                "plugin": {
                    "name": BARMAN_PLUGIN,
                    "parameters": {
                        "barmanObjectName": recovery_store_name(owner.name),
                        "serverName": spec.restore.from_cluster,
                    },
                },
            }
        ]
    if spec.postgresql and spec.postgresql.shared_preload_libraries:
        # The API's allow-list: libraries the instance image ships (pgaudit), nothing a
        # tenant could load code from.
        body["spec"]["postgresql"]["shared_preload_libraries"] = sorted(
            spec.postgresql.shared_preload_libraries
        )
    return body


def archive_path(namespace: str, cluster: str, store: ObjectStore) -> str:
    """Where a cluster's WAL and base backups are archived: beside the logical backups, under
    the cluster's own prefix (barman-cloud adds a folder named after the server)."""
    parts = [store.prefix.strip("/"), namespace, cluster, "wal-archive"]
    return f"s3://{store.bucket}/" + "/".join(p for p in parts if p)


def archive_store_name(cluster: str) -> str:
    """The ObjectStore a cluster archives to."""
    return f"{cluster}-archive"


def recovery_store_name(cluster: str) -> str:
    """The ObjectStore a cluster made by spec.restore reads the other cluster's archive from."""
    return f"{cluster}-recovery"


def _object_store(
    owner: Owner, name: str, path: str, store: ObjectStore, retention: str | None
) -> dict[str, Any]:
    credentials = store.credentials_secret_ref.name
    configuration: dict[str, Any] = {
        "destinationPath": path,
        "s3Credentials": {
            "accessKeyId": {"name": credentials, "key": "accessKeyId"},
            "secretAccessKey": {"name": credentials, "key": "secretAccessKey"},
        },
        "wal": {"compression": "gzip"},
        "data": {"compression": "gzip"},
    }
    if store.endpoint:
        configuration["endpointURL"] = store.endpoint
    spec: dict[str, Any] = {"configuration": configuration}
    if retention is not None:
        spec["retentionPolicy"] = retention
    return {
        "apiVersion": f"{BARMAN_GROUP}/{BARMAN_VERSION}",
        "kind": "ObjectStore",
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": owner.labels(),
            "ownerReferences": [owner.reference()],
        },
        "spec": spec,
    }


def archive_store(owner: Owner, policy: ClusterBackupPolicy) -> dict[str, Any]:
    """The barman-cloud plugin's ObjectStore of the cluster's continuous archive (WAL and base
    backups: point-in-time recovery of the whole cluster), in the cluster's object store.
    Encrypted at rest by the bucket: barman-cloud has no client-side encryption, unlike
    Vauban's logical backups."""
    retention = None
    if policy.retention is not None and policy.retention.max_age is not None:
        # barman-cloud counts in days, weeks or months; ours may be in hours: round up.
        days = max(1, -(-duration_seconds(policy.retention.max_age) // 86400))
        retention = f"{days}d"
    return _object_store(
        owner,
        archive_store_name(owner.name),
        archive_path(owner.namespace, owner.name, policy.object_store),
        policy.object_store,
        retention,
    )


def recovery_store(
    owner: Owner, restore: ClusterRestore, policy: ClusterBackupPolicy
) -> dict[str, Any]:
    """The ObjectStore holding the archive spec.restore recovers: the other cluster's, found
    where that cluster of the same namespace archived in this cluster's object store (with
    this cluster's credentials: a tenant recovers only what its own credentials read)."""
    return _object_store(
        owner,
        recovery_store_name(owner.name),
        archive_path(owner.namespace, restore.from_cluster, policy.object_store),
        policy.object_store,
        None,
    )


def scheduled_backup_name(owner: Owner) -> str:
    return f"{owner.name}-base"


def scheduled_backup(owner: Owner, schedule: str) -> dict[str, Any]:
    """CloudNativePG's ScheduledBackup of base backups, on the cluster's backup schedule."""
    return {
        "apiVersion": CNPG_API_VERSION,
        "kind": "ScheduledBackup",
        "metadata": {
            "name": scheduled_backup_name(owner),
            "namespace": owner.namespace,
            "labels": owner.labels(),
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            # CloudNativePG's cron has a leading seconds field.
            "schedule": schedule if schedule.startswith("@") else f"0 {schedule}",
            "cluster": {"name": owner.name},
            "method": "plugin",
            "pluginConfiguration": {"name": BARMAN_PLUGIN},
            "backupOwnerReference": "self",
            "immediate": True,
        },
    }


def superuser_secret(owner: Owner) -> dict[str, Any]:
    """The superuser credentials, created once and never rewritten: a new password here would
    lock CloudNativePG out of its own server."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/basic-auth",
        "metadata": {
            "name": superuser_secret_name(owner.name),
            "namespace": owner.namespace,
            "labels": owner.labels(),
            "ownerReferences": [owner.reference()],
        },
        "stringData": {"username": "postgres", "password": secrets.token_urlsafe(32)},
    }


def network_policy_name(cluster: str) -> str:
    return f"{cluster}-postgresql"


def instance_labels(owner: Owner) -> dict[str, str]:
    """Labels every instance pod carries: CloudNativePG's, and the inherited metadata."""
    return {**owner.labels(), CNPG_CLUSTER_LABEL: owner.name}


def network_policy(
    owner: Owner,
    spec: ManagedClusterSpec,
    *,
    operator_namespaces: tuple[str, ...],
    metrics_from: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Ingress to the instances: from each other (replication), from the namespaces allowed to
    use the cluster (PostgreSQL only), from the operators (PostgreSQL and CloudNativePG's
    instance manager), and from `metrics_from` (NetworkPolicyPeers: the platform's
    Prometheus) to the exporter only."""
    pods = {"matchLabels": {CNPG_CLUSTER_LABEL: owner.name}}
    names = sorted(
        {owner.namespace, *(spec.allowed_namespaces.names if spec.allowed_namespaces else [])}
    )
    postgres = [{"protocol": "TCP", "port": POSTGRES_PORT}]
    tenants: list[dict[str, Any]] = [
        {
            "namespaceSelector": {
                "matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "In", "values": names}
                ]
            }
        }
    ]
    selector = spec.allowed_namespaces.selector if spec.allowed_namespaces else None
    if selector is not None:
        tenants.append({"namespaceSelector": selector.to_wire()})
    operators = {
        "namespaceSelector": {
            "matchExpressions": [
                {
                    "key": "kubernetes.io/metadata.name",
                    "operator": "In",
                    "values": sorted(set(operator_namespaces)),
                }
            ]
        }
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": network_policy_name(owner.name),
            "namespace": owner.namespace,
            "labels": owner.labels(),
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            "podSelector": pods,
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": pods}]},
                {"from": tenants, "ports": postgres},
                {
                    "from": [operators],
                    "ports": [*postgres, {"protocol": "TCP", "port": CNPG_STATUS_PORT}],
                },
                *(
                    [
                        {
                            "from": [dict(peer) for peer in metrics_from],
                            "ports": [{"protocol": "TCP", "port": CNPG_METRICS_PORT}],
                        }
                    ]
                    if metrics_from
                    else []
                ),
            ],
        },
    }
