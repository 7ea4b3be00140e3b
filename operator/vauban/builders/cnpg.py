"""Desired objects of a managed ManagedCluster: CloudNativePG's `Cluster`, the superuser
Secret and the NetworkPolicy. Pure: spec in, manifests out."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vauban.api.cluster import ClusterBackupPolicy, ManagedClusterSpec, ObjectStore
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
        body["spec"]["backup"] = continuous_archiving(owner, spec.backup)
    if spec.postgresql and spec.postgresql.shared_preload_libraries:
        # The API's allow-list: libraries the instance image ships (pgaudit), nothing a
        # tenant could load code from.
        body["spec"]["postgresql"]["shared_preload_libraries"] = sorted(
            spec.postgresql.shared_preload_libraries
        )
    return body


def archive_path(owner: Owner, store: ObjectStore) -> str:
    """Where CloudNativePG archives WAL and base backups: beside the logical backups, under
    the cluster's own prefix."""
    parts = [store.prefix.strip("/"), owner.namespace, owner.name, "wal-archive"]
    return f"s3://{store.bucket}/" + "/".join(p for p in parts if p)


def continuous_archiving(owner: Owner, policy: ClusterBackupPolicy) -> dict[str, Any]:
    """CloudNativePG's barman-cloud archiving (WAL and base backups: point-in-time recovery
    of the whole cluster), to the cluster's object store. Encrypted at rest by the bucket
    (SSE): barman-cloud has no client-side encryption, unlike Vauban's logical backups."""
    store = policy.object_store
    credentials = store.credentials_secret_ref.name
    barman: dict[str, Any] = {
        "destinationPath": archive_path(owner, store),
        "s3Credentials": {
            "accessKeyId": {"name": credentials, "key": "accessKeyId"},
            "secretAccessKey": {"name": credentials, "key": "secretAccessKey"},
        },
        "wal": {"compression": "gzip", "encryption": "AES256"},
        "data": {"compression": "gzip", "encryption": "AES256"},
    }
    if store.endpoint:
        barman["endpointURL"] = store.endpoint
    archiving: dict[str, Any] = {"barmanObjectStore": barman, "target": "prefer-standby"}
    if policy.retention is not None and policy.retention.max_age is not None:
        # CloudNativePG counts in days, weeks or months; ours may be in hours: round up.
        days = max(1, -(-duration_seconds(policy.retention.max_age) // 86400))
        archiving["retentionPolicy"] = f"{days}d"
    return archiving


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
            "method": "barmanObjectStore",
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
