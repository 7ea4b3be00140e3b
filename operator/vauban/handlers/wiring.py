"""Registers every handler on a kopf registry.

Handlers are registered explicitly rather than by decorators at import time, so settings
(intervals, namespaces) reach them without module-level state and tests can build an
operator of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any

import kopf

from vauban.api.backup import MANAGED_BACKUP, ManagedBackupStatus
from vauban.api.cluster import MANAGED_CLUSTER
from vauban.api.common import GROUP, VERSION
from vauban.api.database import MANAGED_DATABASE
from vauban.builders import backup as backup_objects
from vauban.builders import cnpg
from vauban.builders.credentials import DATABASE_LABEL
from vauban.handlers import cluster, uploads
from vauban.handlers.backups import purge, runs
from vauban.handlers.context import Context, context_of
from vauban.handlers.databases import deletion, lifecycle, stored, usage
from vauban.handlers.publish import snapshot
from vauban.kube.watch import Seen
from vauban.reconcile.database import ClusterView, cluster_key_of
from vauban.settings import Settings

logger = logging.getLogger(__name__)

CLUSTERS = (GROUP, VERSION, MANAGED_CLUSTER.plural)
DATABASES = (GROUP, VERSION, MANAGED_DATABASE.plural)
BACKUPS = (GROUP, VERSION, MANAGED_BACKUP.plural)
JOBS = ("batch", "v1", "jobs")


def _being_deleted(body: Mapping[str, Any]) -> bool:
    return bool(body["metadata"].get("deletionTimestamp"))


def _live(type: str | None, body: Mapping[str, Any]) -> bool:  # noqa: A002 - kopf's kwarg name
    return type != "DELETED" and not _being_deleted(body)


ClusterIndex = kopf.Index[tuple[str, str], ClusterView]
DependentsIndex = kopf.Index[tuple[str, str], dict[str, Any]]


# Long by nature: one small closure per kopf handler, counted as the complexity of this one.
def register(registry: kopf.OperatorRegistry, settings: Settings) -> None:  # noqa: C901, PLR0915
    """Indices are injected by kopf as keyword arguments named after their ids; handlers
    take them from **kwargs, as kopf's callback protocols do not name them."""
    recheck = settings.recheck_interval_seconds
    cluster_seen: dict[tuple[str, str], tuple[bool, bool, int | None]] = {}

    # The indices are async functions only so that kopf calls them in the event loop: it
    # runs sync handlers in a thread pool, a thread hop per event that costs more than them.
    @kopf.index(*CLUSTERS, id="clusters", registry=registry)
    async def clusters(body: kopf.Body, **_: Any) -> dict[tuple[str, str], ClusterView]:
        view = cluster.view_of(body)
        return {(view.namespace, view.name): view}

    @kopf.index(*DATABASES, id="databases_by_cluster", registry=registry)
    async def databases_by_cluster(
        body: kopf.Body, **_: Any
    ) -> dict[tuple[str, str], dict[str, Any]] | None:
        cluster = cluster_key_of(body)
        return None if cluster is None else {cluster: stored.index_entry(body)}

    @kopf.on.event(*CLUSTERS, id="cluster", registry=registry)
    async def cluster_event(
        type: str,  # noqa: A002 - kopf's kwarg name
        body: kopf.Body,
        memo: kopf.Memo,
        **kwargs: Any,
    ) -> None:
        ctx = context_of(memo)
        index: ClusterIndex = kwargs["clusters"]
        dependents: DependentsIndex = kwargs["databases_by_cluster"]
        if type == "DELETED":
            ctx.metrics.forget(MANAGED_CLUSTER.kind, *_key(body))
            _drop_memory_of(ctx, MANAGED_CLUSTER.kind, body)
            ctx.usage_probed.pop(_key(body), None)
        elif _live(type, body) and not cluster.settled(ctx, body):
            await cluster.reconcile(ctx, body, unless_settled=True)
        # Databases waiting on this cluster learn of its change (or its deletion) now, not at
        # their next periodic re-check. Only a change they can see counts (readiness, spec,
        # existence): a cluster's health figures change at each probe, and would otherwise
        # reconcile every database on it each time.
        seen = (type == "DELETED", cluster.view_of(body).ready, body["metadata"].get("generation"))
        if cluster_seen.get(_key(body)) == seen:
            return
        if type == "DELETED":
            cluster_seen.pop(_key(body), None)
        else:
            cluster_seen[_key(body)] = seen
        # All at once, as many at a time as the cluster's slots allow: a fleet waiting for
        # its server is back within seconds of it, not one database after the other.
        await asyncio.gather(
            *(
                _guarded(
                    lifecycle.reconcile(ctx, dependent, index, kwargs["backups_by_database"]),
                    dependent,
                )
                for dependent in list(dependents.get(_key(body), ()))
                if not _being_deleted(dependent)
            )
        )

    @kopf.on.delete(*CLUSTERS, id="cluster_finalizer", registry=registry)
    async def cluster_delete(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
        dependents: DependentsIndex = kwargs["databases_by_cluster"]
        ctx = context_of(memo)
        with ctx.metrics.reconcile(MANAGED_CLUSTER.kind, "finalize", waiting=_WAITING):
            await cluster.finalize(ctx, body, list(dependents.get(_key(body), ())))

    # Objects Vauban rendered (CloudNativePG Clusters, NetworkPolicies): a change of their
    # status is mapped onto the owner's, a change by someone else is repaired by re-applying.
    # kopf starts watching CloudNativePG's Clusters when its CRD appears.
    @kopf.index(*CLUSTERS, id="cluster_bodies", registry=registry)
    async def cluster_bodies(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
        return {_key(body): snapshot(body)}

    async def owned_object_event(
        type: str,  # noqa: A002 - kopf's kwarg name
        body: kopf.Body,
        memo: kopf.Memo,
        **kwargs: Any,
    ) -> None:
        cluster.rendered_object_event(context_of(memo), type, body)
        owners: DependentsIndex = kwargs["cluster_bodies"]
        name = body["metadata"].get("labels", {}).get(cnpg.CLUSTER_LABEL)
        for owner in list(owners.get((body["metadata"]["namespace"], name), ())):
            if not _being_deleted(owner):
                await _guarded(cluster.reconcile(context_of(memo), owner), owner)

    for resource, handler_id in (
        ((cnpg.CNPG_GROUP, cnpg.CNPG_VERSION, cnpg.CNPG_PLURAL), "engine_cluster"),
        (("networking.k8s.io", "v1", "networkpolicies"), "network_policy"),
    ):
        kopf.on.event(*resource, id=handler_id, labels=cnpg.MANAGED_BY, registry=registry)(
            owned_object_event
        )

    @kopf.on.event(*DATABASES, id="database", registry=registry)
    async def database_event(
        type: str,  # noqa: A002 - kopf's kwarg name
        body: kopf.Body,
        memo: kopf.Memo,
        **kwargs: Any,
    ) -> None:
        ctx = context_of(memo)
        if type == "DELETED":
            ctx.metrics.forget(MANAGED_DATABASE.kind, *_key(body))
            ctx.metrics.forget_backups(*_key(body))
            _drop_memory_of(ctx, MANAGED_DATABASE.kind, body)
        elif _live(type, body) and not lifecycle.settled(ctx, body):
            await lifecycle.reconcile(ctx, body, kwargs["clusters"], kwargs["backups_by_database"])

    @kopf.on.delete(*DATABASES, id="database_finalizer", registry=registry)
    async def database_delete(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
        ctx = context_of(memo)
        with ctx.metrics.reconcile(MANAGED_DATABASE.kind, "finalize", waiting=_WAITING):
            await deletion.finalize(ctx, body, kwargs["clusters"])

    @kopf.index(*BACKUPS, id="backups_by_database", registry=registry)
    async def backups_by_database(
        body: kopf.Body, **_: Any
    ) -> dict[tuple[str, str], dict[str, Any]] | None:
        name = (body.get("spec", {}).get("databaseRef") or {}).get("name")
        if name is None:
            return None
        return {(body["metadata"]["namespace"], str(name)): snapshot(body)}

    @kopf.on.event(*BACKUPS, id="backup", registry=registry)
    async def backup_event(
        type: str,  # noqa: A002 - kopf's kwarg name
        body: kopf.Body,
        memo: kopf.Memo,
        **kwargs: Any,
    ) -> None:
        if _live(type, body):
            await runs.reconcile(context_of(memo), body)
        # The database's status (last backup, BackupHealthy) follows its backups.
        ref = body.get("spec", {}).get("databaseRef") or {}
        await _reconcile_database(
            context_of(memo), body["metadata"]["namespace"], ref.get("name"), kwargs
        )

    @kopf.on.delete(*BACKUPS, id="backup_finalizer", registry=registry)
    async def backup_delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        ctx = context_of(memo)
        with ctx.metrics.reconcile(MANAGED_BACKUP.kind, "finalize", waiting=_WAITING):
            await runs.finalize(ctx, body)

    # The agent's Jobs, in the operator's namespace: their outcome becomes a ManagedBackup's
    # status, a restore's progress, a restore test's result.
    @kopf.on.event(
        *JOBS,
        id="agent_job",
        labels={backup_objects.COMPONENT_LABEL: backup_objects.AGENT_COMPONENT},
        when=lambda namespace, **_: namespace == settings.namespace,
        registry=registry,
    )
    async def agent_job_event(
        type: str,  # noqa: A002 - kopf's kwarg name
        body: kopf.Body,
        memo: kopf.Memo,
        **kwargs: Any,
    ) -> None:
        if type == "DELETED":
            return
        ctx = context_of(memo)
        with ctx.metrics.reconcile(MANAGED_BACKUP.kind, "agent_job"):
            owner = await runs.job_event(ctx, body)
        if owner is not None:
            await _reconcile_database(ctx, *owner, kwargs)

    async def _reconcile_database(
        ctx: Context, namespace: str, name: str | None, indices: Mapping[str, Any]
    ) -> None:
        # The index's copy: a reconcile needs the spec's clusterRef to wait for its turn.
        target = next(
            (
                body
                for store in list(indices["databases_by_cluster"].values())
                for body in store
                if _key(body) == (namespace, name)
            ),
            None,
        )
        if target is None:
            return  # not indexed yet: its own first event reconciles it
        await _guarded(
            lifecycle.reconcile(ctx, target, indices["clusters"], indices["backups_by_database"]),
            target,
        )

    # One background task re-examines objects: those not ready every `recheck` seconds (with
    # backoff for failing servers), since what they wait for may not be watched (a Secret
    # created); ready ones once per probe interval (an external server going away, sizes).
    # kopf timers would do it, but each timer forces a finalizer onto its object, and a
    # finalizer blocks deletion whenever the operator is down.

    @kopf.on.startup(id="recheck", registry=registry)
    async def start_recheck(memo: kopf.Memo, **kwargs: Any) -> None:
        context_of(memo).indices.attach(kwargs)
        memo.recheck = asyncio.create_task(
            _recheck_forever(
                context_of(memo),
                recheck,
                clusters=kwargs["clusters"],
                cluster_bodies=kwargs["cluster_bodies"],
                databases=kwargs["databases_by_cluster"],
                backups=kwargs["backups_by_database"],
            ),
            name="vauban-recheck",
        )

    @kopf.on.cleanup(id="recheck", registry=registry)
    async def stop_recheck(memo: kopf.Memo, **_: Any) -> None:
        task: asyncio.Task[None] | None = memo.get("recheck")
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # The tenants' credentials Secrets, for their deletion only: one deleted by hand is
    # noticed and recreated within seconds, not at the next resync. Watched by Vauban
    # rather than kopf, which would keep a memory per Secret (kube/watch.py).
    @kopf.on.startup(id="secret_deletions", registry=registry)
    async def start_secret_watches(memo: kopf.Memo, **kwargs: Any) -> None:
        ctx = context_of(memo)

        async def reconcile(namespace: str, name: str) -> None:
            await _reconcile_database(ctx, namespace, name, kwargs)

        def databases() -> list[tuple[str, str]]:
            return [
                _key(body)
                for store in list(kwargs["databases_by_cluster"].values())
                for body in store
            ]

        memo.secret_watches = [
            SecretDeletions(ctx, namespace, reconcile, databases)
            for namespace in secret_namespaces(settings)
        ]

    @kopf.on.cleanup(id="secret_deletions", registry=registry)
    async def stop_secret_watches(memo: kopf.Memo, **_: Any) -> None:
        for watch in memo.get("secret_watches", []):
            await watch.close()

    @kopf.on.login(id="login", registry=registry)
    async def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
        creds = await context_of(memo).kube.credentials()
        return kopf.ConnectionInfo(
            server=creds.server,
            ca_path=creds.ca_path,
            insecure=creds.insecure,
            scheme=creds.scheme,
            token=creds.token,
            certificate_path=creds.certificate_path,
            private_key_path=creds.private_key_path,
        )


# kopf's way of being called again later: a finalizer that waits is not failing.
_WAITING = (kopf.TemporaryError,)


def _key(body: Mapping[str, Any]) -> tuple[str, str]:
    return (body["metadata"]["namespace"], body["metadata"]["name"])


def _drop_memory_of(ctx: Context, kind: str, body: Mapping[str, Any]) -> None:
    """What this process kept about an object that is gone: a thousand databases created
    and deleted must not leave a thousand timestamps behind."""
    key = (kind, *_key(body))
    ctx.reconciled.pop(key, None)
    ctx.suspensions_checked.pop(key, None)
    ctx.clusters_told.pop(key, None)
    ctx.requests_seen.pop(key, None)
    ctx.backoff.succeeded(key)


def secret_namespaces(settings: Settings) -> Sequence[str | None]:
    """One watch per namespace kopf watches, or one over every namespace (None)."""
    return settings.namespaces or [None]


class SecretDeletions:
    """The databases of one namespace (None: all) whose credentials Secret was deleted,
    reconciled each in a task of its own: a slow server never holds the stream."""

    SELECTOR = f"{','.join(f'{k}={v}' for k, v in cnpg.MANAGED_BY.items())},{DATABASE_LABEL}"

    def __init__(
        self,
        ctx: Context,
        namespace: str | None,
        reconcile: Callable[[str, str], Coroutine[Any, Any, None]],
        databases: Callable[[], Iterable[tuple[str, str]]],
    ) -> None:
        self._ctx, self._namespace = ctx, namespace
        self._reconcile, self._databases = reconcile, databases
        self._reconciles: set[asyncio.Task[None]] = set()
        self._stream = asyncio.create_task(
            ctx.kube.watch_secret_deletions(namespace, self.SELECTOR, self),
            name=f"vauban-secret-deletions-{namespace or 'all'}",
        )

    def deleted(self, seen: Seen) -> None:
        name = seen.labels.get(DATABASE_LABEL)
        if name:
            self._spawn(seen.namespace, name)

    def relisted(self, present: Sequence[Seen]) -> None:
        # What the stream's gap may have hidden: every database without a Secret now.
        have = {(s.namespace, s.labels.get(DATABASE_LABEL)) for s in present}
        for namespace, name in self._databases():
            if self._namespace in (None, namespace) and (namespace, name) not in have:
                self._spawn(namespace, name)

    def failed(self, error: BaseException) -> None:
        self._ctx.metrics.api_errors.labels("watch").inc()

    def _spawn(self, namespace: str, name: str) -> None:
        task = asyncio.create_task(self._reconcile(namespace, name))
        self._reconciles.add(task)
        task.add_done_callback(self._reconciles.discard)

    async def close(self) -> None:
        tasks = [self._stream, *self._reconciles]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _recheck_forever(
    ctx: Context,
    interval: float,
    *,
    clusters: ClusterIndex,
    cluster_bodies: DependentsIndex,
    databases: DependentsIndex,
    backups: DependentsIndex,
) -> None:
    purged = 0.0
    while True:
        await asyncio.sleep(interval)
        # Backups of deleted databases past their retention, and uploads left incomplete:
        # looked for once per probe interval, since days are the unit.
        if time.monotonic() - purged >= ctx.settings.probe_interval_seconds:
            purged = time.monotonic()
            await _guarded(
                purge.purge_expired(ctx, backups),
                {"metadata": {"namespace": ctx.settings.namespace, "name": "purge"}},
            )
            await _guarded(
                uploads.sweep(ctx, [v for views in list(clusters.values()) for v in views]),
                {"metadata": {"namespace": ctx.settings.namespace, "name": "uploads"}},
            )
        for store in list(cluster_bodies.values()):
            for body in list(store):
                if not _being_deleted(body) and cluster.due(ctx, body):
                    await _guarded(cluster.reconcile(ctx, body), body)
        # The databases of each cluster, the clusters side by side: a server that does not
        # answer delays only its own databases' re-checks.
        await asyncio.gather(
            *(
                _recheck_databases(ctx, key, list(store), clusters, databases, backups)
                for key, store in list(databases.items())
            )
        )
        # Backups waiting for their database (or for a Job event missed while down).
        for store in list(backups.values()):
            for body in list(store):
                phase = ManagedBackupStatus.parse(body.get("status")).phase
                if not _being_deleted(body) and phase not in ("Succeeded", "Failed"):
                    await _guarded(runs.reconcile(ctx, body), body)


async def _recheck_databases(
    ctx: Context,
    key: tuple[str, str],
    bodies: list[Mapping[str, Any]],
    clusters: ClusterIndex,
    databases: DependentsIndex,
    backups: DependentsIndex,
) -> None:
    """A ready cluster's databases have their usage read once per probe interval, all with
    one query; then each database that is due is reconciled: not ready, credentials to
    retire or rotate, drift the usage read found, or its resync interval elapsed."""
    view = next(iter(clusters.get(key, ())), None)
    # The first read comes one interval after the cluster is first seen: until then, the
    # reconciles that follow a start or a burst have just read the same figures.
    since = time.monotonic() - ctx.usage_probed.setdefault(key, time.monotonic())
    if view is not None and view.ready and since >= ctx.settings.probe_interval_seconds:
        ctx.usage_probed[key] = time.monotonic()
        await _guarded(
            usage.probe(ctx, view, bodies),
            {"metadata": {"namespace": key[0], "name": key[1]}},
        )
    for body in bodies:
        if not _being_deleted(body) and lifecycle.due(ctx, body):
            await _guarded(
                lifecycle.reconcile(ctx, body, clusters, backups, only_if_due=True),
                body,
            )


async def _guarded(reconcile: Awaitable[None], body: Mapping[str, Any]) -> None:
    """One object's failure (an API error) must not stop the re-checks of the others."""
    try:
        await reconcile
    except Exception:
        logger.exception("re-check of %s/%s failed", *_key(body))
