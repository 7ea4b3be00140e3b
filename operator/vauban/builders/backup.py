"""Desired objects of the backup data path: the agent's Secret, the Jobs and CronJobs that run
`vauban agent`, and the ManagedBackup recording a scheduled run. Pure: values in, manifests
out.

Every agent Job runs in the operator's namespace, never in the tenant's: its Secret holds the
database's data key and the object store's credentials, which a tenant able to read Secrets
in its own namespace must not see (the store is shared by every database of the cluster).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from vauban.api.common import API_VERSION
from vauban.builders.cnpg import MANAGED_BY

Operation = Literal["backup", "verify", "restore"]

COMPONENT_LABEL = "vauban.dev/component"
AGENT_COMPONENT = "backup-agent"
OPERATION_LABEL = "vauban.dev/operation"
DATABASE_UID_LABEL = "vauban.dev/database-uid"
BACKUP_LABEL = "vauban.dev/backup"
AGENT_POD_LABEL = "vauban.dev/agent"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
NAMESPACE_ANNOTATION = "vauban.dev/namespace"
DATABASE_ANNOTATION = "vauban.dev/database"
BACKUP_ANNOTATION = "vauban.dev/backup"
LOCATION_ANNOTATION = "vauban.dev/location"

AGENT_LABELS = {**MANAGED_BY, COMPONENT_LABEL: AGENT_COMPONENT}

CA_KEY = "ca.crt"
CA_PATH = "/etc/vauban/tls/ca.crt"


@dataclass(frozen=True)
class Database:
    """The ManagedDatabase a Job works for."""

    namespace: str
    name: str
    uid: str

    def labels(self, operation: Operation) -> dict[str, str]:
        return {**AGENT_LABELS, OPERATION_LABEL: operation, DATABASE_UID_LABEL: self.uid}

    def annotations(self) -> dict[str, str]:
        return {NAMESPACE_ANNOTATION: self.namespace, DATABASE_ANNOTATION: self.name}


@dataclass(frozen=True)
class Store:
    """The cluster's object store, with its credentials."""

    bucket: str
    region: str
    endpoint: str | None
    prefix: str
    access_key_id: str
    secret_access_key: str
    object_lock_days: int | None = None

    def database_prefix(self, database: Database) -> str:
        """Where every backup of one database lives: one prefix per database (by uid, so a
        database re-created under the same name never mixes with its predecessor's)."""
        parts = [self.prefix.strip("/"), database.namespace, database.name, database.uid]
        return "/".join(p for p in parts if p)


@dataclass(frozen=True)
class AgentLogin:
    """How the agent reaches the database."""

    host: str
    port: int
    user: str
    password: str
    dbname: str
    sslmode: str
    ca_pem: str | None = None


@dataclass(frozen=True)
class DataKey:
    key_id: str
    material: bytes


def agent_secret_name(database: Database, purpose: Literal["backup", "verify", "restore"]) -> str:
    return f"vauban-{purpose}-{database.uid}"


def cronjob_name(database: Database, operation: Literal["backup", "verify"]) -> str:
    # 7 + 36 characters: within CronJob's 52, leaving Job names (CronJob name plus an
    # 11-character suffix) within 63.
    return f"{operation}-{database.uid}"


def job_name(backup_uid: str) -> str:
    return f"backup-{backup_uid}"


def restore_job_name(database: Database) -> str:
    return f"restore-{database.uid}"


def agent_secret(
    *,
    name: str,
    namespace: str,
    database: Database,
    operation: Operation,
    login: AgentLogin,
    store: Store,
    key: DataKey,
) -> dict[str, Any]:
    """The environment of an agent Job: libpq's variables, the store, the data key."""
    values = {
        "PGHOST": login.host,
        "PGPORT": str(login.port),
        "PGUSER": login.user,
        "PGPASSWORD": login.password,
        "PGDATABASE": login.dbname,
        "PGSSLMODE": login.sslmode,
        "VAUBAN_S3_REGION": store.region,
        "VAUBAN_S3_BUCKET": store.bucket,
        "AWS_ACCESS_KEY_ID": store.access_key_id,
        "AWS_SECRET_ACCESS_KEY": store.secret_access_key,
        "VAUBAN_DATA_KEY": base64.b64encode(key.material).decode(),
        "VAUBAN_DATA_KEY_ID": key.key_id,
        # Recorded in each backup's authenticated manifest; a restore requires its own.
        "VAUBAN_DATABASE_NAMESPACE": database.namespace,
        "VAUBAN_DATABASE_NAME": database.name,
        "VAUBAN_DATABASE_UID": database.uid,
    }
    if store.endpoint:
        values["VAUBAN_S3_ENDPOINT"] = store.endpoint
    if store.object_lock_days:
        values["VAUBAN_OBJECT_LOCK_DAYS"] = str(store.object_lock_days)
    if login.ca_pem:
        values[CA_KEY] = login.ca_pem
        values["PGSSLROOTCERT"] = CA_PATH
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": database.labels(operation),
            "annotations": database.annotations(),
        },
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in sorted(values.items())},
    }


def secret_values(secret: Mapping[str, Any]) -> dict[str, str]:
    """The decoded data of a Secret manifest, to compare with what is stored."""
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


@dataclass(frozen=True)
class AgentRun:
    """One run of `vauban agent`: what it does, where, with which Secret."""

    operation: Operation
    database: Database
    secret: str
    image: str
    location: str | None = None
    """A fixed location (restore, verify); a backup's is derived from its Job's name."""

    location_prefix: str = ""
    """Prefix of a backup's location; the Job's name completes it."""

    scratch_database: str | None = None
    deadline_seconds: int = 6 * 3600
    platform_ids: bool = False
    """Leave the pod's user and group to the platform (OpenShift's restricted-v2 SCC assigns
    them from the namespace's range and refuses others) rather than the images' 65532."""


def _pod_template(run: AgentRun, labels: Mapping[str, str]) -> dict[str, Any]:
    env: list[dict[str, Any]] = []
    if run.location is not None:
        location = run.location
    else:
        # The Job controller labels each pod with its Job's name: scheduled Jobs get
        # their name (and so their location) only when the CronJob creates them.
        env.append(
            {
                "name": "VAUBAN_JOB_NAME",
                "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{JOB_NAME_LABEL}']"}},
            }
        )
        location = f"{run.location_prefix}/$(VAUBAN_JOB_NAME)"
    env.append({"name": "VAUBAN_LOCATION", "value": location})
    args = ["agent", run.operation, "--location", "$(VAUBAN_LOCATION)"]
    if run.scratch_database is not None:
        args += ["--scratch-database", run.scratch_database]
    return {
        "metadata": {"labels": {**labels, AGENT_POD_LABEL: "true"}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {
                "runAsNonRoot": True,
                **({} if run.platform_ids else {"runAsUser": 65532, "runAsGroup": 65532}),
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "agent",
                    "image": run.image,
                    "command": ["vauban"],
                    "args": args,
                    "envFrom": [{"secretRef": {"name": run.secret}}],
                    "env": env,
                    "terminationMessagePolicy": "File",
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "192Mi"},
                        "limits": {"memory": "512Mi"},
                    },
                    "volumeMounts": [
                        # The root filesystem is read-only; the agent's scratch space is this.
                        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108
                        {"name": "tls", "mountPath": "/etc/vauban/tls", "readOnly": True},
                    ],
                }
            ],
            "volumes": [
                {"name": "tmp", "emptyDir": {}},
                {
                    "name": "tls",
                    "secret": {
                        "secretName": run.secret,
                        "optional": True,
                        "items": [{"key": CA_KEY, "path": CA_KEY}],
                    },
                },
            ],
        },
    }


def _job_spec(run: AgentRun, labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        # A failed backup is reported, not retried in a loop: the next run (or a new
        # ManagedBackup) tries again with whatever was fixed.
        "backoffLimit": 0,
        "activeDeadlineSeconds": run.deadline_seconds,
        # The operator deletes a Job once it has recorded the result; this only collects
        # Jobs whose result could never be recorded.
        "ttlSecondsAfterFinished": 7 * 24 * 3600,
        "template": _pod_template(run, labels),
    }


def job(run: AgentRun, *, name: str, namespace: str, backup: str | None = None) -> dict[str, Any]:
    """A Job running the agent once: an on-demand backup (`backup` names its
    ManagedBackup), a restore."""
    labels = run.database.labels(run.operation)
    annotations = run.database.annotations()
    if backup is not None:
        labels[BACKUP_LABEL] = "true"
        annotations[BACKUP_ANNOTATION] = backup
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": _job_spec(run, labels),
    }


def cronjob(run: AgentRun, *, name: str, namespace: str, schedule: str) -> dict[str, Any]:
    """A CronJob running the agent on a schedule (backups, restore tests)."""
    labels = run.database.labels(run.operation)
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": run.database.annotations(),
        },
        "spec": {
            "schedule": schedule,
            "timeZone": "Etc/UTC",
            # A run still going when the next is due is left alone: two dumps of one
            # database at once only double the load.
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 3600,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "metadata": {"labels": labels, "annotations": run.database.annotations()},
                "spec": _job_spec(run, labels),
            },
        },
    }


def scheduled_backup_name(database: str, job: str) -> str:
    """The ManagedBackup recording a scheduled Job: the database's name and the Job's
    time suffix, within 63 characters."""
    suffix = job.rsplit("-", 1)[-1]
    return f"{database[: 62 - len(suffix)].rstrip('-.')}-{suffix}"


def managed_backup(
    *,
    name: str,
    namespace: str,
    database: str,
    trigger: str,
    job: str | None = None,
    retain: bool = False,
) -> dict[str, Any]:
    """A ManagedBackup the operator creates: for a scheduled run, the final backup, or a
    backup imported from the bucket (`retain`: deleting it leaves the stored backup)."""
    annotations = {"vauban.dev/trigger": trigger}
    if job is not None:
        annotations["vauban.dev/job"] = job
    return {
        "apiVersion": API_VERSION,
        "kind": "ManagedBackup",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**MANAGED_BY, "vauban.dev/database": database[:63].rstrip("-.")},
            "annotations": annotations,
        },
        # Retention owns scheduled and final backups (a person deleting one means it);
        # imported ones are the only copy a recovery has.
        "spec": {
            "databaseRef": {"name": database},
            "deletionPolicy": "Retain" if retain else "Delete",
        },
    }
