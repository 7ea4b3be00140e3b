"""What the backup tests share: the bucket a cluster backs up to, a cluster of the suite's
PostgreSQL backing up there and a database on it, a ManagedBackup as a tenant applies it and
waits for it, the tenant's own connection to fill a database, and the
end of a deleted database's retention."""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

import psycopg

from support.kube import OPERATOR_NAMESPACE, KubeCtl, eventually, external_cluster, string_secret
from vauban.devcluster.postgres import PostgresServer
from vauban.devcluster.s3 import S3Server


def object_store(s3: S3Server, bucket: str, **spec: Any) -> dict[str, Any]:
    """A ManagedCluster's spec.backup.objectStore: `bucket` of the suite's S3 server, with the
    credentials of Secret `bucket` in the cluster's namespace."""
    return {
        "bucket": bucket,
        "endpoint": s3.endpoint,
        "region": "us-east-1",
        "prefix": "vauban",
        "credentialsSecretRef": {"name": "bucket"},
        **spec,
    }


def backed_up_cluster(
    kube: KubeCtl,
    namespace: str,
    postgres: PostgresServer,
    s3: S3Server,
    bucket: str,
    *,
    secret_key: str | None = None,
    encryption: dict[str, Any] | None = None,
    **store_spec: Any,
) -> None:
    """ManagedCluster `pg` on the suite's PostgreSQL (an admin role of its own, Secret
    `admin`), backing up to `bucket` (Secret `bucket`)."""
    admin, password = f"admin_{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    postgres.create_role(admin, password, "CREATEROLE", "CREATEDB")
    kube.apply(string_secret(namespace, "admin", username=admin, password=password))
    kube.apply(
        string_secret(
            namespace,
            "bucket",
            accessKeyId=s3.access_key,
            secretAccessKey=secret_key or s3.secret_key,
        )
    )
    store = object_store(s3, bucket, **store_spec)
    extra = {"encryption": encryption} if encryption else {}
    kube.apply(
        external_cluster(namespace, "pg", postgres.port, backup={"objectStore": store}, **extra)
    )


def tenant_database(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    """ManagedDatabase `name` on cluster `pg`, with database and owner names unique to the
    namespace (the suite's server is shared)."""
    return {
        "apiVersion": "vauban.dev/v1alpha1",
        "kind": "ManagedDatabase",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "clusterRef": {"name": "pg"},
            "databaseName": f"{name}_{namespace[-6:]}".replace("-", "_"),
            "owner": f"own_{name}_{namespace[-6:]}".replace("-", "_"),
            **spec,
        },
    }


def managed_backup(namespace: str, name: str, database: str, **spec: Any) -> dict[str, Any]:
    """An on-demand ManagedBackup of `database`."""
    return {
        "apiVersion": "vauban.dev/v1alpha1",
        "kind": "ManagedBackup",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"databaseRef": {"name": database}, **spec},
    }


def finished(kube: KubeCtl, namespace: str, name: str) -> dict[str, Any] | None:
    """ManagedBackup `name` once it Succeeded or Failed, else None (for `eventually`). Not
    there yet is None too: the operator records a scheduled run shortly after its Job."""
    found = kube.run("get", "managedbackup", name, "-n", namespace, "-o", "json", check=False)
    if found.returncode != 0:
        if "NotFound" in found.stderr:
            return None
        raise AssertionError(f"kubectl get managedbackup {name} failed:\n{found.stderr}")
    obj: dict[str, Any] = json.loads(found.stdout)
    return obj if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None


def connect_tenant(kube: KubeCtl, namespace: str, database: str) -> psycopg.Connection[Any]:
    """A session of `database`'s own login, read from its `<database>-credentials` Secret."""
    data = kube.get("secret", f"{database}-credentials", namespace)["data"]
    values = {k: base64.b64decode(v).decode() for k, v in data.items()}
    return psycopg.connect(
        host="127.0.0.1",
        port=int(values["port"]),
        user=values["username"],
        password=values["password"],
        dbname=values["dbname"],
        autocommit=True,
    )


def purged_after_retention(kube: KubeCtl, data_key_secret: str, *, timeout: float) -> None:
    """The retainAfterDeletionDays of a deleted database pass (its purge deadline, on its data
    key Secret, is moved to the past, as time would), and the operator purges its data key."""
    kube.run(
        "annotate",
        "--overwrite",
        "secret",
        data_key_secret,
        "-n",
        OPERATOR_NAMESPACE,
        "vauban.dev/purge-after=2000-01-01T00:00:00Z",
    )

    def gone() -> bool:
        found = kube.run("get", "secret", data_key_secret, "-n", OPERATOR_NAMESPACE, check=False)
        return found.returncode != 0

    eventually(gone, timeout=timeout, what=f"data key {data_key_secret} purged")
