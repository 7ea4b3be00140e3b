"""A world for controller tests: the fakes of every port in one operator Context, objects
put into the fake apiserver, and the handlers' entry points called the way kopf's wiring
calls them (vauban.handlers.wiring), indices built from what the fake apiserver holds.

A test reads like a scenario: put objects, reconcile, let a Job end, reconcile again, look
at the status, the Secrets, the server and the bucket.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import Coroutine, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from controllers.fakes import FakeBuckets, FakeKeyProvider, FakeKube, FakeServer, FakeServers
from vauban.api.backup import MANAGED_BACKUP
from vauban.api.cluster import MANAGED_CLUSTER
from vauban.api.database import MANAGED_DATABASE
from vauban.backup.manifest import Manifest
from vauban.builders import backup as build
from vauban.handlers import cluster
from vauban.handlers.backups import purge, runs
from vauban.handlers.context import Context
from vauban.handlers.databases import deletion, lifecycle, stored, usage
from vauban.handlers.publish import snapshot
from vauban.metrics import Metrics
from vauban.reconcile.database import ClusterView
from vauban.settings import Settings

T = TypeVar("T")

NAMESPACE = "shop"
HOST, PORT = "pg.example", 5432
BUCKET = "backups"


def ready_condition(status: Mapping[str, Any] | None) -> dict[str, Any]:
    conditions = (status or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Ready"), {})


class World:
    def __init__(self, **settings: Any) -> None:
        self.kube = FakeKube()
        self.servers = FakeServers()
        self.server: FakeServer = self.servers.add(HOST, PORT)
        self.buckets = FakeBuckets()
        self.keys = FakeKeyProvider()
        self.settings = Settings(**settings)
        self.ctx = Context(
            kube=self.kube,
            settings=self.settings,
            metrics=Metrics(),
            servers=self.servers,
            buckets=self.buckets,
            key_providers={"kubernetes-secret": self.keys},
        )
        self.loop = asyncio.new_event_loop()
        self._manifests = 0

    def close(self) -> None:
        self.loop.close()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    # -- objects -------------------------------------------------------------------------

    def external_cluster(
        self, name: str = "legacy", *, backup: bool = False, **spec: Any
    ) -> dict[str, Any]:
        """An adopted server, with its admin Secret (and its bucket's credentials)."""
        self.kube.put_secret(
            NAMESPACE, "legacy-admin", {"username": "vauban_admin", "password": "admin-password"}
        )
        body: dict[str, Any] = {
            "mode": "External",
            "external": {
                "host": HOST,
                "port": PORT,
                "adminSecretRef": {"name": "legacy-admin"},
                "sslMode": "disable",
            },
            **spec,
        }
        if backup:
            self.kube.put_secret(
                NAMESPACE, "bucket", {"accessKeyId": "id", "secretAccessKey": "secret"}
            )
            body["backup"] = {
                "objectStore": {
                    "bucket": BUCKET,
                    "region": "eu-west-3",
                    "credentialsSecretRef": {"name": "bucket"},
                },
                "retention": {"keepLast": 2},
            }
        obj = self.kube.put(
            MANAGED_CLUSTER, {"metadata": {"name": name, "namespace": NAMESPACE}, "spec": body}
        )
        self.run(cluster.reconcile(self.ctx, obj))
        return self.kube.get(MANAGED_CLUSTER, NAMESPACE, name)

    def database(
        self,
        name: str = "inventory",
        *,
        namespace: str = NAMESPACE,
        annotations: Mapping[str, str] | None = None,
        **spec: Any,
    ) -> dict[str, Any]:
        body = {
            "clusterRef": {"name": "legacy", "namespace": NAMESPACE},
            "databaseName": name,
            "owner": f"{name}_owner",
            **spec,
        }
        meta = {"name": name, "namespace": namespace, "annotations": dict(annotations or {})}
        return self.kube.put(MANAGED_DATABASE, {"metadata": meta, "spec": body})

    def backup(self, name: str, database: str = "inventory") -> dict[str, Any]:
        return self.kube.put(
            MANAGED_BACKUP,
            {
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {"databaseRef": {"name": database}},
            },
        )

    def status(self, kind: Any, name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
        return dict(self.kube.get(kind, namespace, name).get("status") or {})

    def ready(self, kind: Any, name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
        return ready_condition(self.status(kind, name, namespace))

    # -- the indices kopf would keep -----------------------------------------------------

    def clusters(self) -> dict[tuple[str, str], list[ClusterView]]:
        return {
            (ns, name): [cluster.view_of(body)]
            for (plural, ns, name), body in self.kube.objects.items()
            if plural == MANAGED_CLUSTER.plural
        }

    def backups_by_database(self) -> dict[tuple[str, str], list[dict[str, Any]]]:
        index: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for (plural, ns, _), body in self.kube.objects.items():
            if plural == MANAGED_BACKUP.plural:
                database = body["spec"]["databaseRef"]["name"]
                index.setdefault((ns, database), []).append(snapshot(body))
        return index

    # -- the handlers, as the wiring calls them ------------------------------------------

    def reconcile_cluster(self, name: str = "legacy") -> dict[str, Any]:
        self.run(cluster.reconcile(self.ctx, self.kube.get(MANAGED_CLUSTER, NAMESPACE, name)))
        return self.status(MANAGED_CLUSTER, name)

    def reconcile_database(
        self, name: str = "inventory", namespace: str = NAMESPACE
    ) -> dict[str, Any]:
        body = self.kube.get(MANAGED_DATABASE, namespace, name)
        self.run(lifecycle.reconcile(self.ctx, body, self.clusters(), self.backups_by_database()))
        return self.status(MANAGED_DATABASE, name, namespace)

    def probe_usage(self, cluster_name: str = "legacy") -> None:
        """The periodic read of a cluster's databases' sizes and sessions."""
        bodies = [
            stored.index_entry(body)
            for (plural, _, _), body in self.kube.objects.items()
            if plural == MANAGED_DATABASE.plural
        ]
        view = self.clusters()[(NAMESPACE, cluster_name)][0]
        self.run(usage.probe(self.ctx, view, bodies))

    def delete_database(self, name: str = "inventory") -> None:
        """kopf's deletion handler, then the object gone."""
        body = self.kube.get(MANAGED_DATABASE, NAMESPACE, name)
        body["metadata"]["deletionTimestamp"] = datetime.now(UTC).isoformat()
        self.run(deletion.finalize(self.ctx, body, self.clusters()))
        self.kube.remove(MANAGED_DATABASE, NAMESPACE, name)

    def purge_expired(self, now: datetime) -> None:
        self.run(purge.purge_expired(self.ctx, self.backups_by_database(), now))

    def reconcile_backup(self, name: str) -> dict[str, Any]:
        self.run(runs.reconcile(self.ctx, self.kube.get(MANAGED_BACKUP, NAMESPACE, name)))
        return self.status(MANAGED_BACKUP, name)

    def job_event(self, job: str) -> tuple[str, str] | None:
        body = self.kube.jobs[(self.settings.namespace, job)]
        return self.run(runs.job_event(self.ctx, body))

    # -- the backup agent and the Job controller -----------------------------------------

    def agent_jobs(self, operation: str) -> list[str]:
        return sorted(
            name
            for (ns, name), job in self.kube.jobs.items()
            if job["metadata"]["labels"].get(build.OPERATION_LABEL) == operation
        )

    def cron_run(self, cronjob: str, job: str) -> None:
        """The CronJob controller starts a Job from the CronJob's template."""
        template = self.kube.cronjobs[(self.settings.namespace, cronjob)]["spec"]["jobTemplate"]
        body = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {**template["metadata"], "name": job, "namespace": self.settings.namespace},
            "spec": template["spec"],
        }
        self.run(self.kube.create_job(body))

    def finish_job(
        self, job: str, *, succeed: bool = True, message: str = "", manifest: bool = True
    ) -> None:
        """The Job ends as the agent would end it: on success of a backup, its manifest,
        sealed with the data key of its Secret, is in the bucket first (unless `manifest`
        is False: an agent that claims a success it did not write)."""
        key = (self.settings.namespace, job)
        body = self.kube.jobs[key]
        operation = body["metadata"]["labels"].get(build.OPERATION_LABEL)
        if succeed and manifest and operation == "backup":
            self._write_manifest(body, job)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        condition = {"type": "Complete" if succeed else "Failed", "status": "True"}
        condition["lastTransitionTime"] = now
        status = {"startTime": body["status"].get("startTime"), "conditions": [condition]}
        if succeed:
            status["completionTime"] = now
        body["status"] = status
        if message:
            self.kube.termination_messages[key] = message

    def _write_manifest(self, job: Mapping[str, Any], name: str) -> None:
        container = job["spec"]["template"]["spec"]["containers"][0]
        secret = container["envFrom"][0]["secretRef"]["name"]
        env = self.kube.secrets[(self.settings.namespace, secret)].values
        location = next(e["value"] for e in container["env"] if e["name"] == "VAUBAN_LOCATION")
        location = location.replace("$(VAUBAN_JOB_NAME)", name)
        # A minute apart, in the order they are written: retention orders by finish time.
        self._manifests += 1
        now = datetime.now(UTC) - timedelta(minutes=60 - self._manifests)
        manifest = Manifest(
            backup_id=secrets.token_hex(16),
            location=location,
            database=env["PGDATABASE"],
            server_version="17.6",
            started_at=now,
            finished_at=now,
            dump_bytes=1000,
            stored_bytes=600,
            sha256="0" * 64,
            chunk_size=1 << 20,
            data_key_id=env["VAUBAN_DATA_KEY_ID"],
            wrapped_key=b"\0" * 60,
            tables={"public.items": 3},
            namespace=env["VAUBAN_DATABASE_NAMESPACE"],
            managed_database=env["VAUBAN_DATABASE_NAME"],
            database_uid=env["VAUBAN_DATABASE_UID"],
        ).sealed(base64.b64decode(env["VAUBAN_DATA_KEY"]))
        self.buckets(_store(env)).manifests[location] = manifest


def _store(env: Mapping[str, str]) -> build.Store:
    return build.Store(
        bucket=env["VAUBAN_S3_BUCKET"],
        region=env["VAUBAN_S3_REGION"],
        endpoint=env.get("VAUBAN_S3_ENDPOINT"),
        prefix="",
        access_key_id=env["AWS_ACCESS_KEY_ID"],
        secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
