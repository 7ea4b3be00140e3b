"""A ready database's backup machinery, kept as its spec says: the agent's Secret, the
backup and restore-test CronJobs, retention, and what its status says of its backups
(BackupHealthy) — from the bucket's authenticated manifests and the ledger, never from the
ManagedBackups' status."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vauban import timefmt
from vauban.api.backup import MANAGED_BACKUP
from vauban.api.cluster import ManagedClusterSpec
from vauban.api.database import MANAGED_DATABASE, BackupStatus, ManagedDatabaseSpec
from vauban.backup.storage_errors import StorageError
from vauban.builders import backup as build
from vauban.builders.keys import data_key_secret_name
from vauban.conditions import ConditionType, DomainCondition, Reason, Verdict
from vauban.handlers import keys
from vauban.handlers.backups import recovery
from vauban.handlers.backups.agents import (
    agent_secret,
    apply_once,
    backup_run,
    delete_agent_object,
)
from vauban.handlers.backups.ledger import database_of, location_of, write_ledger
from vauban.handlers.backups.store import list_authentic, manifest_status, store_of
from vauban.handlers.context import Context
from vauban.handlers.databases.stored import status as stored_status
from vauban.handlers.publish import post_event
from vauban.reconcile.backup import (
    BackupRecord,
    Ledger,
    expired,
    expiry,
    health,
    interval,
    last_success,
    ledger_of,
    records,
    schedule_error,
)
from vauban.reconcile.database import ClusterView


@dataclass(frozen=True)
class Logins:
    """How agents reach the database: the tenant's login (backups, restores: the tenant's
    content replays with the tenant's own privileges) and the cluster's admin (restore
    tests: the agent uses it only to create and drop a throw-away role and its scratch
    database, and restores as that role)."""

    tenant: build.AgentLogin
    admin: build.AgentLogin


@dataclass(frozen=True)
class DatabaseBackups:
    """What the database's status says about its backups."""

    status: BackupStatus | None
    conditions: list[DomainCondition]


def _not_healthy(reason: Reason, message: str) -> DatabaseBackups:
    return DatabaseBackups(
        None, [DomainCondition(ConditionType.BACKUP_HEALTHY, "False", reason, message)]
    )


def _created(body: Mapping[str, Any]) -> datetime | None:
    return timefmt.parse_rfc3339(body["metadata"].get("creationTimestamp"))


async def _agent_and_key_record(
    ctx: Context,
    cluster: ClusterView,
    cluster_spec: ManagedClusterSpec,
    database: build.Database,
    store: build.Store,
    logins: Logins,
) -> build.DataKey | DatabaseBackups:
    """The database's data key, with the backup agent's Secret and, in the bucket, what
    restores its backups elsewhere (the key record): a failure to write it says that backups
    would not survive the loss of this cluster. The agent's Secret comes first, so that a
    bucket refusing the operator's writes is reported by the backups too, in their words."""
    key = await keys.database_key(ctx, cluster, cluster_spec, database)
    if isinstance(key, Verdict):
        return _not_healthy(key.reason, key.message)
    await agent_secret(ctx, database, "backup", logins.tenant, store, key)
    unrecoverable = await recovery.publish(ctx, cluster, database, store, key)
    if unrecoverable is not None:
        return _not_healthy(
            Reason.BACKUP_NOT_CONFIGURED,
            f"Backups could not be restored after the loss of this cluster: {unrecoverable}.",
        )
    return key


async def for_database(
    ctx: Context,
    body: Mapping[str, Any],
    spec: ManagedDatabaseSpec,
    cluster: ClusterView,
    cluster_spec: ManagedClusterSpec,
    logins: Logins,
    backups: list[Mapping[str, Any]],
    now: datetime | None = None,
) -> DatabaseBackups | None:
    """Keep a ready database's backup machinery as its spec says; None when the cluster has
    no object store (backups are off). Retention and health come from the bucket's
    authenticated manifests and the ledger, not from the ManagedBackups' status."""
    policy = cluster_spec.backup
    database = database_of(body)
    namespace = ctx.settings.namespace
    previous = stored_status(body).backup
    if policy is None:
        if previous is not None:
            for kind, name in (
                ("CronJob", build.cronjob_name(database, "backup")),
                ("CronJob", build.cronjob_name(database, "verify")),
                ("Secret", build.agent_secret_name(database, "backup")),
                ("Secret", build.agent_secret_name(database, "verify")),
            ):
                await delete_agent_object(ctx, kind, namespace, name)
        return None
    settings = spec.backup
    schedule = (settings.schedule if settings else None) or policy.schedule
    if schedule is not None and (error := schedule_error(schedule)) is not None:
        return _not_healthy(Reason.INVALID_SPEC, f"The backup schedule {schedule!r}: {error}.")
    store = await store_of(ctx, cluster.namespace, policy.object_store)
    if isinstance(store, str):
        return _not_healthy(Reason.BACKUP_NOT_CONFIGURED, f"Backups cannot run: {store}.")
    key = await _agent_and_key_record(ctx, cluster, cluster_spec, database, store, logins)
    if isinstance(key, DatabaseBackups):
        return key
    record = await ctx.kube.read_secret_and_annotations(
        namespace, data_key_secret_name(database.uid)
    )
    ledger = ledger_of(record[1] if record else {})

    run = backup_run(ctx, database, store)
    cronjob = build.cronjob_name(database, "backup")
    if schedule is not None:
        await apply_once(
            ctx,
            "CronJob",
            build.cronjob(run, name=cronjob, namespace=namespace, schedule=schedule),
        )
    elif previous is not None and previous.schedule:
        await delete_agent_object(ctx, "CronJob", namespace, cronjob)

    try:
        stored = await asyncio.to_thread(list_authentic, ctx, store, database, key)
    except StorageError as e:
        return _not_healthy(Reason.BACKUP_NOT_CONFIGURED, f"The bucket cannot be listed: {e}.")
    mine = [
        (b["metadata"].get("uid", ""), b["metadata"]["name"], _created(b))
        for b in backups
        if not b["metadata"].get("deletionTimestamp")
    ]
    history = records(mine, ledger, {job: m.finished_at for job, m in stored.items()})
    by_uid = {name: uid for uid, name, _ in mine}
    now = now or timefmt.now()
    retention = (settings.retention if settings else None) or policy.retention
    if retention is not None:
        gone = await _expire(
            ctx,
            body,
            backups,
            expired(history, keep_last=retention.keep_last, max_age=retention.max_age, now=now),
            by_uid,
            now,
        )
        history = [r for r in history if r.name not in gone]

    latest = last_success(history)
    latest_job = ledger.entries[by_uid[latest.name]].job if latest else None
    await _verification(ctx, database, settings, logins, store, key, latest, latest_job)
    verified = _last_verified(ledger, history, by_uid)
    condition = health(history, schedule=schedule, database_created=_created(body), now=now)
    manifest = stored.get(latest_job or "")
    ctx.metrics.backups(
        database.namespace,
        database.name,
        last_success=latest.finished if latest else None,
        last_verified=timefmt.parse_rfc3339(verified[1]) if verified else None,
        schedule_seconds=interval(schedule, now).total_seconds() if schedule else None,
        last={"status": manifest_status(manifest).to_wire()} if manifest else None,
    )
    status = BackupStatus(
        schedule=schedule,
        last_backup=latest.name if latest else None,
        last_backup_time=timefmt.rfc3339(latest.finished) if latest and latest.finished else None,
        last_verified_backup=verified[0] if verified else None,
        last_verified_time=verified[1] if verified else None,
        data_key_id=key.key_id,
    )
    return DatabaseBackups(status, [condition])


async def _expire(
    ctx: Context,
    body: Mapping[str, Any],
    backups: list[Mapping[str, Any]],
    names: list[str],
    uids: Mapping[str, str],
    now: datetime,
) -> set[str]:
    """Delete the ManagedBackups retention expired, stored backups included; return their
    names. The admission policy refuses to delete a protected one, for the operator too: it
    is kept past retention."""
    database = database_of(body)
    protected = {
        b["metadata"]["name"] for b in backups if (b.get("spec") or {}).get("deletionProtection")
    }
    gone = set()
    for name in names:
        if name in protected:
            continue
        # Recorded first, so that its finalizer erases the stored backup even when the object
        # says Retain, and even if this delete is retried after a restart.
        mark, at = expiry(uids[name], now)
        await write_ledger(ctx, database, {mark: at})
        await ctx.kube.delete_custom(MANAGED_BACKUP, database.namespace, name)
        await post_event(
            ctx,
            MANAGED_DATABASE,
            body,
            "Normal",
            "BackupExpired",
            f"ManagedBackup {name} removed by the retention policy.",
        )
        gone.add(name)
    return gone


def _last_verified(
    ledger: Ledger, history: list[BackupRecord], uids: Mapping[str, str]
) -> tuple[str, str] | None:
    passed = [
        (r.name, entry.time)
        for r in history
        if (entry := ledger.verifications.get(uids.get(r.name, ""))) is not None
        and entry.result == "Passed"
    ]
    return max(passed, key=lambda p: p[1], default=None)


async def _verification(
    ctx: Context,
    database: build.Database,
    settings: Any,
    logins: Logins,
    store: build.Store,
    key: build.DataKey,
    latest: BackupRecord | None,
    latest_job: str | None,
) -> None:
    """The restore-test CronJob, pointed at the latest successful backup."""
    namespace = ctx.settings.namespace
    name = build.cronjob_name(database, "verify")
    secret = build.agent_secret_name(database, "verify")
    verify = settings.verify if settings else None
    if verify is None or latest is None or latest_job is None:
        # Nothing to test (yet): remove a restore test applied before — once per process
        # when none was, since the spec may have dropped it while the operator was down.
        memo = ("CronJob", namespace, name)
        if ctx.applied.get(memo) != "":
            await delete_agent_object(ctx, "CronJob", namespace, name)
            await delete_agent_object(ctx, "Secret", namespace, secret)
            ctx.applied[memo] = ""
        return
    await agent_secret(ctx, database, "verify", logins.admin, store, key)
    run = build.AgentRun(
        operation="verify",
        database=database,
        secret=secret,
        image=ctx.settings.agent_image,
        location=location_of(store, database, latest_job),
        scratch_database=f"vauban_verify_{database.uid.replace('-', '')[:16]}",
        platform_ids=ctx.settings.platform_assigns_user_ids,
    )
    cronjob = build.cronjob(run, name=name, namespace=namespace, schedule=verify.schedule)
    cronjob["spec"]["jobTemplate"]["metadata"]["annotations"][build.BACKUP_ANNOTATION] = latest.name
    await apply_once(ctx, "CronJob", cronjob)
