"""When a database goes, its backups: the final backup it asked for, its schedules stopped,
and its data key either destroyed at once (crypto-shredding) or kept for
retainAfterDeletionDays, after which its backups, their ManagedBackups and the key are
purged. What goes is named by the data key's Secret, never by a status."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import kopf

from vauban import timefmt
from vauban.api.backup import MANAGED_BACKUP, ManagedBackupStatus
from vauban.api.database import MANAGED_DATABASE, DatabaseBackup, ManagedDatabaseSpec
from vauban.backup.storage_errors import ObjectLocked, StorageError
from vauban.builders import backup as build
from vauban.builders.keys import data_key_secret_name
from vauban.handlers import keys
from vauban.handlers.backups import recovery
from vauban.handlers.backups.agents import delete_agent_object
from vauban.handlers.backups.ledger import DEK_SECRET_PREFIX, database_of
from vauban.handlers.backups.runs import reconcile
from vauban.handlers.backups.store import backup_policy_of, store_of
from vauban.handlers.context import Context
from vauban.handlers.publish import post_event
from vauban.reconcile.backup import (
    FAILED,
    PURGE_AFTER_ANNOTATION,
    STORE_ANNOTATION,
    SUCCEEDED,
    Purge,
    ledger_of,
    purge_due,
)
from vauban.reconcile.database import ClusterView

logger = logging.getLogger(__name__)


async def final_backup(ctx: Context, body: Mapping[str, Any]) -> None:
    """Take the last backup a deleted database asked for, and hold its deletion until the
    backup is done (raising kopf's TemporaryError, so kopf calls back later)."""
    meta = body["metadata"]
    name = f"{meta['name'][:56].rstrip('-.')}-final"
    record = build.managed_backup(
        name=name, namespace=meta["namespace"], database=meta["name"], trigger="Final"
    )
    if await ctx.kube.create_custom(MANAGED_BACKUP.plural, record):
        await post_event(
            ctx,
            MANAGED_DATABASE,
            body,
            "Normal",
            "FinalBackup",
            f"Taking the final backup {name} before the database goes.",
        )
    found = await ctx.kube.read(MANAGED_BACKUP, meta["namespace"], name)
    if found is not None and ManagedBackupStatus.parse(found.get("status")).phase not in (
        SUCCEEDED,
        FAILED,
    ):
        await reconcile(ctx, found)
        raise kopf.TemporaryError(f"waiting for the final backup {name}", delay=5)


async def database_deleted(
    ctx: Context,
    body: Mapping[str, Any],
    spec: ManagedDatabaseSpec,
    cluster: ClusterView | None,
    now: datetime | None = None,
) -> None:
    """Stop a deleted database's schedules, and plan the end of its backups: they stay
    restorable for backup.retainAfterDeletionDays, then they and the data key are purged.
    With deletionPolicy Delete and no retention days, the data key is destroyed at once
    (crypto-shredding: every backup becomes unreadable)."""
    database = database_of(body)
    namespace = ctx.settings.namespace
    for kind, name in (
        ("CronJob", build.cronjob_name(database, "backup")),
        ("CronJob", build.cronjob_name(database, "verify")),
        ("Secret", build.agent_secret_name(database, "backup")),
        ("Secret", build.agent_secret_name(database, "verify")),
        ("Secret", build.agent_secret_name(database, "restore")),
    ):
        await delete_agent_object(ctx, kind, namespace, name)
    await ctx.kube.delete_job(namespace, build.restore_job_name(database))
    days = (spec.backup or DatabaseBackup()).retain_after_deletion_days
    dek = data_key_secret_name(database.uid)
    if days == 0 and spec.deletion_policy == "Delete":
        remains = await _forget_key_record(ctx, database, cluster)
        await keys.destroy_data_key(ctx, database.uid)
        if remains is not None:
            await post_event(ctx, MANAGED_DATABASE, body, "Warning", "KeyRecordRemains", remains)
        await post_event(
            ctx,
            MANAGED_DATABASE,
            body,
            "Normal",
            "DataKeyDestroyed",
            "The data key is destroyed: the backups of this database can no longer be read.",
        )
        return
    purge_after = timefmt.rfc3339((now or timefmt.now()) + timedelta(days=days))
    annotations: dict[str, str | None] = {PURGE_AFTER_ANNOTATION: purge_after}
    if cluster is not None:
        annotations[STORE_ANNOTATION] = cluster.ref
    await ctx.kube.annotate_secret(namespace, dek, annotations)


async def _forget_key_record(
    ctx: Context, database: build.Database, cluster: ClusterView | None
) -> str | None:
    """The key record in the bucket goes before the data key: with it, the KEK (in an HSM,
    or escrowed) would still open the backups. None once gone; else what to do."""
    policy = await backup_policy_of(ctx, cluster.namespace, cluster.name) if cluster else None
    if cluster is None or policy is None:
        return None  # backups were never configured: no record was written
    store = await store_of(ctx, cluster.namespace, policy.object_store)
    try:
        if isinstance(store, str):
            raise StorageError(store)
        await recovery.forget(ctx, store, database)
    except StorageError as e:
        return (
            f"The key record of this database in the bucket could not be deleted ({e}): with "
            "the cluster's key-encryption key it still opens the backups. Delete "
            f"<prefix>/{database.namespace}/{database.name}/{database.uid}/key.json."
        )
    return None


async def purge_expired(
    ctx: Context,
    backups: Mapping[tuple[str, str], Iterable[Mapping[str, Any]]],
    now: datetime | None = None,
) -> None:
    """Purge the backups and data keys of databases deleted longer ago than their
    retainAfterDeletionDays: every object under the incarnation's prefix of the bucket, the
    ManagedBackups its ledger holds, then the key. What goes is named by the data key's
    Secret (the database's namespace, name and uid, the cluster), never by a status."""
    namespace = ctx.settings.namespace
    found = await ctx.kube.secret_annotations(namespace, "vauban.dev/key=dek")
    for purge in purge_due(found, prefix=DEK_SECRET_PREFIX, now=now or timefmt.now()):
        await _purge(ctx, purge, found[purge.secret], backups)


async def _purge(
    ctx: Context,
    purge: Purge,
    marks: Mapping[str, str],
    backups: Mapping[tuple[str, str], Iterable[Mapping[str, Any]]],
) -> None:
    database = build.Database(purge.namespace, purge.database, purge.database_uid)
    if purge.cluster:
        cluster_namespace, _, cluster_name = purge.cluster.partition("/")
        policy = await backup_policy_of(ctx, cluster_namespace, cluster_name)
        if policy is None:
            logger.warning(
                "cannot purge the backups of %s: its cluster %s is gone",
                purge.secret,
                purge.cluster,
            )
            return
        store = await store_of(ctx, cluster_namespace, policy.object_store)
        if isinstance(store, str):
            logger.warning("cannot purge the backups of %s: %s", purge.secret, store)
            return
        prefix = store.database_prefix(database) + "/"
        try:
            bucket = ctx.buckets(store)
            for location in await asyncio.to_thread(bucket.locations, prefix):
                await asyncio.to_thread(bucket.delete_backup, location)
            await recovery.forget(ctx, store, database)
        except ObjectLocked as e:
            logger.info("purge of %s waits: %s", purge.secret, e)
            return
        except StorageError as e:
            logger.warning("cannot purge the backups of %s: %s", purge.secret, e)
            return
    ledger = ledger_of(marks)
    for body in list(backups.get((purge.namespace, purge.database), ())):
        if body["metadata"].get("uid") in ledger.entries:
            await ctx.kube.delete_custom(MANAGED_BACKUP, purge.namespace, body["metadata"]["name"])
    await ctx.kube.delete_secret(ctx.settings.namespace, purge.secret)
    logger.info("purged the backups and data key %s of a deleted database", purge.secret)
