"""ManagedBackup handlers, the Jobs of the backup agent, and the backup duties of a
ManagedDatabase's reconcile (its agent Secret, CronJobs, retention and BackupHealthy).

The agent does the data path in Jobs of the operator's namespace; the operator creates them,
maps their outcome onto ManagedBackups, and reads each backup's manifest — the only proof a
backup is complete — from the bucket.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf

from vauban.api.backup import MANAGED_BACKUP, ManagedBackupSpec
from vauban.api.cluster import MANAGED_CLUSTER, ManagedClusterSpec, ObjectStore
from vauban.api.database import MANAGED_DATABASE, ManagedDatabaseSpec
from vauban.backup.manifest import Manifest
from vauban.backup.storage import ObjectLocked, StorageError
from vauban.backup.storage import ObjectStore as Bucket
from vauban.builders import backup as build
from vauban.builders.keys import KekOwner, data_key_id
from vauban.builders.keys import data_key_secret_name as keys_secret_name
from vauban.conditions import (
    ConditionType,
    DomainCondition,
    Reason,
    State,
    Verdict,
    is_true,
    now_rfc3339,
)
from vauban.handlers import keys
from vauban.handlers.context import Context, fingerprint
from vauban.handlers.publish import awaiting_finalizer, parse_spec, post_event, publish
from vauban.reconcile import backup as logic
from vauban.reconcile.database import ClusterView, parse_time
from vauban.reconcile.status import previous_conditions

logger = logging.getLogger(__name__)

TRIGGER_ANNOTATION = "vauban.dev/trigger"
JOB_ANNOTATION = "vauban.dev/job"


def database_of(body: Mapping[str, Any]) -> build.Database:
    meta = body["metadata"]
    return build.Database(meta["namespace"], meta["name"], meta.get("uid", ""))


async def store_of(ctx: Context, cluster_namespace: str, spec: ObjectStore) -> build.Store | str:
    """The cluster's object store with its credentials, or why it cannot be used."""
    ref = spec.credentials_secret_ref.name
    values = await ctx.kube.read_secret(cluster_namespace, ref)
    if values is None or "accessKeyId" not in values or "secretAccessKey" not in values:
        return (
            f"the object store's credentials Secret {cluster_namespace}/{ref} is missing or "
            "lacks accessKeyId and secretAccessKey"
        )
    return build.Store(
        bucket=spec.bucket,
        region=spec.region,
        endpoint=spec.endpoint,
        prefix=spec.prefix,
        access_key_id=values["accessKeyId"],
        secret_access_key=values["secretAccessKey"],
        object_lock_days=spec.object_lock_days,
    )


def bucket(store: build.Store) -> Bucket:
    return Bucket(
        endpoint=store.endpoint,
        region=store.region,
        bucket=store.bucket,
        access_key_id=store.access_key_id,
        secret_access_key=store.secret_access_key,
    )


async def _apply_once(ctx: Context, kind: str, body: Mapping[str, Any]) -> None:
    """Apply an agent Secret or CronJob only when it differs from what this process last
    applied: a ready database's periodic reconcile then costs no write."""
    meta = body["metadata"]
    key = (kind, meta["namespace"], meta["name"])
    printed = fingerprint(body)
    if ctx.applied.get(key) == printed:
        return
    if kind == "Secret":
        await ctx.kube.apply_secret(body)
    else:
        await ctx.kube.apply_cronjob(body)
    ctx.applied[key] = printed


async def _forget(ctx: Context, kind: str, namespace: str, name: str) -> None:
    if kind == "Secret":
        await ctx.kube.delete_secret(namespace, name)
    else:
        await ctx.kube.delete_cronjob(namespace, name)
    ctx.applied.pop((kind, namespace, name), None)


# --- the database's side -------------------------------------------------------------------


@dataclass(frozen=True)
class Logins:
    """How agents reach the database: the tenant's login (backups, restores) and the
    cluster's admin (restore tests, which create a scratch database)."""

    tenant: build.AgentLogin
    admin: build.AgentLogin


@dataclass(frozen=True)
class DatabaseBackups:
    """What the database's status says about its backups."""

    fields: dict[str, Any]
    conditions: list[DomainCondition]


def _counts_for(backup: Mapping[str, Any], database: build.Database) -> bool:
    """Whether a ManagedBackup counts for this database's retention and health: not being
    deleted already, and not left by an earlier database of the same name (whose backups
    are kept for its own retainAfterDeletionDays). Locations hold the database's uid."""
    if backup["metadata"].get("deletionTimestamp"):
        return False
    key = ((backup.get("status") or {}).get("location") or {}).get("key")
    return key is None or f"/{database.uid}/" in f"/{key}/"


def backup_run(ctx: Context, database: build.Database, store: build.Store) -> build.AgentRun:
    """The backup agent's run for a database: the same for its CronJob and on demand."""
    return build.AgentRun(
        operation="backup",
        database=database,
        secret=build.agent_secret_name(database, "backup"),
        image=ctx.settings.agent_image,
        location_prefix=store.database_prefix(database),
    )


async def _agent_secret(
    ctx: Context,
    database: build.Database,
    operation: build.Operation,
    login: build.AgentLogin,
    store: build.Store,
    key: build.DataKey,
) -> None:
    """The Secret an agent Job of `operation` reads its environment from, kept current."""
    await _apply_once(
        ctx,
        "Secret",
        build.agent_secret(
            name=build.agent_secret_name(database, operation),
            namespace=ctx.settings.namespace,
            database=database,
            operation=operation,
            login=login,
            store=store,
            key=key,
        ),
    )


def _records(backups: Iterable[Mapping[str, Any]]) -> list[logic.BackupRecord]:
    return [logic.BackupRecord.of(b) for b in backups]


def _not_healthy(reason: Reason, message: str) -> DatabaseBackups:
    return DatabaseBackups(
        {}, [DomainCondition(ConditionType.BACKUP_HEALTHY, "False", reason, message)]
    )


async def for_database(
    ctx: Context,
    body: Mapping[str, Any],
    spec: ManagedDatabaseSpec,
    cluster: ClusterView,
    cluster_spec: ManagedClusterSpec,
    logins: Logins,
    backups: list[Mapping[str, Any]],
) -> DatabaseBackups | None:
    """Keep a ready database's backup machinery as its spec says; None when the cluster has
    no object store (backups are off)."""
    policy = cluster_spec.backup
    database = database_of(body)
    namespace = ctx.settings.namespace
    previous = (body.get("status") or {}).get("backup") or {}
    if policy is None:
        if previous:
            for kind, name in (
                ("CronJob", build.cronjob_name(database, "backup")),
                ("CronJob", build.cronjob_name(database, "verify")),
                ("Secret", build.agent_secret_name(database, "backup")),
                ("Secret", build.agent_secret_name(database, "verify")),
            ):
                await _forget(ctx, kind, namespace, name)
        return None
    backups = [b for b in backups if _counts_for(b, database)]
    settings = spec.backup
    schedule = (settings.schedule if settings else None) or policy.schedule
    if schedule is not None and (error := logic.schedule_error(schedule)) is not None:
        return _not_healthy(Reason.INVALID_SPEC, f"The backup schedule {schedule!r}: {error}.")
    store = await store_of(ctx, cluster.namespace, policy.object_store)
    if isinstance(store, str):
        return _not_healthy(Reason.BACKUP_NOT_CONFIGURED, f"Backups cannot run: {store}.")
    key = await keys.data_key(
        ctx,
        KekOwner(cluster.namespace, cluster.name, cluster.uid),
        cluster_spec.encryption.provider,
        database,
        create=True,
    )
    if isinstance(key, Verdict):
        return _not_healthy(key.reason, key.message)

    await _agent_secret(ctx, database, "backup", logins.tenant, store, key)
    run = backup_run(ctx, database, store)
    cronjob = build.cronjob_name(database, "backup")
    if schedule is not None:
        await _apply_once(
            ctx,
            "CronJob",
            build.cronjob(run, name=cronjob, namespace=namespace, schedule=schedule),
        )
    elif previous.get("schedule"):
        await _forget(ctx, "CronJob", namespace, cronjob)

    records = _records(backups)
    now = datetime.now(UTC)
    retention = (settings.retention if settings else None) or policy.retention
    if retention is not None:
        for name in logic.expired(
            records, keep_last=retention.keep_last, max_age=retention.max_age, now=now
        ):
            await ctx.kube.delete_custom(MANAGED_BACKUP, database.namespace, name)
            await post_event(
                ctx,
                MANAGED_DATABASE,
                body,
                "Normal",
                "BackupExpired",
                f"ManagedBackup {name} removed by the retention policy.",
            )
            records = [r for r in records if r.name != name]

    latest = logic.last_success(records)
    await _verification(ctx, database, settings, logins, store, key, latest, backups)
    verified = _last_verified(backups)
    created = parse_time(str(body["metadata"].get("creationTimestamp", "")))
    condition = logic.health(records, schedule=schedule, database_created=created, now=now)
    ctx.metrics.backups(
        database.namespace,
        database.name,
        last_success=latest.finished if latest else None,
        last_verified=parse_time(verified[1]) if verified else None,
        schedule_seconds=logic.interval(schedule, now).total_seconds() if schedule else None,
        last=_last_backup_body(backups, latest.name if latest else None),
    )
    fields = {
        "schedule": schedule,
        "lastBackup": latest.name if latest else None,
        "lastBackupTime": _rfc3339(latest.finished) if latest and latest.finished else None,
        "lastVerifiedBackup": verified[0] if verified else None,
        "lastVerifiedTime": verified[1] if verified else None,
        "dataKeyId": key.key_id,
    }
    return DatabaseBackups({k: v for k, v in fields.items() if v is not None}, [condition])


def _last_backup_body(
    backups: list[Mapping[str, Any]], name: str | None
) -> Mapping[str, Any] | None:
    return next((b for b in backups if b["metadata"]["name"] == name), None)


def _last_verified(backups: list[Mapping[str, Any]]) -> tuple[str, str] | None:
    passed = [
        (b["metadata"]["name"], (b.get("status") or {})["verification"]["time"])
        for b in backups
        if ((b.get("status") or {}).get("verification") or {}).get("result") == "Passed"
    ]
    return max(passed, key=lambda p: p[1], default=None)


async def _verification(
    ctx: Context,
    database: build.Database,
    settings: Any,
    logins: Logins,
    store: build.Store,
    key: build.DataKey,
    latest: logic.BackupRecord | None,
    backups: list[Mapping[str, Any]],
) -> None:
    """The restore-test CronJob, pointed at the latest successful backup."""
    namespace = ctx.settings.namespace
    name = build.cronjob_name(database, "verify")
    secret = build.agent_secret_name(database, "verify")
    verify = settings.verify if settings else None
    body = _last_backup_body(backups, latest.name if latest else None)
    location = ((body or {}).get("status") or {}).get("location", {}).get("key")
    if verify is None or latest is None or location is None:
        # Nothing to test (yet): remove a restore test applied before — once per process
        # when none was, since the spec may have dropped it while the operator was down.
        memo = ("CronJob", namespace, name)
        if ctx.applied.get(memo) != "":
            await _forget(ctx, "CronJob", namespace, name)
            await _forget(ctx, "Secret", namespace, secret)
            ctx.applied[memo] = ""
        return
    await _agent_secret(ctx, database, "verify", logins.admin, store, key)
    run = build.AgentRun(
        operation="verify",
        database=database,
        secret=secret,
        image=ctx.settings.agent_image,
        location=location,
        scratch_database=f"vauban_verify_{database.uid.replace('-', '')[:16]}",
    )
    cronjob = build.cronjob(run, name=name, namespace=namespace, schedule=verify.schedule)
    cronjob["spec"]["jobTemplate"]["metadata"]["annotations"][build.BACKUP_ANNOTATION] = latest.name
    await _apply_once(ctx, "CronJob", cronjob)


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# --- ManagedBackup -------------------------------------------------------------------------


def _job_of(body: Mapping[str, Any]) -> tuple[str, str]:
    """The backup's Job and trigger: named by the operator for a scheduled or final backup,
    derived from the object's uid for one created on demand."""
    meta = body["metadata"]
    annotations = meta.get("annotations") or {}
    job = annotations.get(JOB_ANNOTATION) or build.job_name(meta.get("uid", ""))
    return job, annotations.get(TRIGGER_ANNOTATION, "OnDemand")


async def reconcile(ctx: Context, body: Mapping[str, Any]) -> None:
    meta = body["metadata"]
    async with ctx.locks[(MANAGED_BACKUP.kind, meta["namespace"], meta["name"])]:
        fresh = await ctx.kube.read(MANAGED_BACKUP, meta["namespace"], meta["name"])
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return
        with ctx.metrics.reconcile(MANAGED_BACKUP.kind):
            await _reconcile(ctx, fresh)


async def _reconcile(ctx: Context, body: Mapping[str, Any]) -> None:
    status = body.get("status") or {}
    if status.get("phase") in (logic.SUCCEEDED, logic.FAILED):
        return  # a finished backup never changes, except for its restore tests
    spec = await parse_spec(ctx, MANAGED_BACKUP, ManagedBackupSpec, body)
    if spec is None:
        return
    namespace = body["metadata"]["namespace"]
    job_name, trigger = _job_of(body)
    kept = {k: status[k] for k in ("trigger", "job", "location", "startedAt") if k in status}
    kept.setdefault("trigger", trigger)
    database = await ctx.kube.read(MANAGED_DATABASE, namespace, spec.database_ref.name)
    context = await _backup_context(ctx, database, spec.database_ref.name)
    job = await ctx.kube.read_job(ctx.settings.namespace, job_name)
    if job is None and "job" not in status:
        if isinstance(context, Verdict):
            await publish(ctx, MANAGED_BACKUP, body, context, fields={**kept, "phase": "Pending"})
            return
        if awaiting_finalizer(body) is not None:
            return  # kopf's finalizer is coming, and with it the next event
        assert database is not None
        store, _ = context
        await ctx.kube.create_job(
            build.job(
                backup_run(ctx, database_of(database), store),
                name=job_name,
                namespace=ctx.settings.namespace,
                backup=body["metadata"]["name"],
            )
        )
        kept.update(
            job=job_name,
            startedAt=now_rfc3339(),
            location={
                "bucket": store.bucket,
                "key": f"{store.database_prefix(database_of(database))}/{job_name}",
            },
        )
        verdict = Verdict(State.PROGRESSING, Reason.BACKUP_RUNNING, f"Job {job_name} started.")
        await publish(ctx, MANAGED_BACKUP, body, verdict, fields={**kept, "phase": "Running"})
        return
    if job is not None and "location" not in kept and not isinstance(context, Verdict):
        store = context[0]
        kept["job"] = job_name
        kept["location"] = {
            "bucket": store.bucket,
            "key": f"{store.database_prefix(database_of(database or {}))}/{job_name}",
        }
    await _follow_job(ctx, body, job, job_name, kept, context)


async def _backup_context(
    ctx: Context, database: Mapping[str, Any] | None, name: str
) -> tuple[build.Store, ManagedClusterSpec] | Verdict:
    """The object store a backup of `database` goes to, or why there is none yet."""
    if database is None:
        return Verdict(
            State.WAITING, Reason.DATABASE_NOT_FOUND, f"ManagedDatabase {name} does not exist."
        )
    if not is_true(previous_conditions(database.get("status")), ConditionType.READY):
        return Verdict(
            State.WAITING, Reason.DATABASE_NOT_READY, f"ManagedDatabase {name} is not Ready yet."
        )
    ref = (database.get("spec") or {}).get("clusterRef") or {}
    cluster_namespace = ref.get("namespace") or database["metadata"]["namespace"]
    cluster = await ctx.kube.read(MANAGED_CLUSTER, cluster_namespace, ref.get("name", ""))
    try:
        cluster_spec = ManagedClusterSpec.model_validate((cluster or {}).get("spec") or {})
    except ValueError:
        cluster_spec = None
    if cluster_spec is None or cluster_spec.backup is None:
        return Verdict(
            State.STALLED,
            Reason.BACKUP_NOT_CONFIGURED,
            f"The ManagedCluster of ManagedDatabase {name} has no spec.backup.objectStore: "
            "there is nowhere to store a backup. Ask the platform team to configure one.",
        )
    store = await store_of(ctx, cluster_namespace, cluster_spec.backup.object_store)
    if isinstance(store, str):
        return Verdict(State.WAITING, Reason.BACKUP_NOT_CONFIGURED, f"Cannot back up: {store}.")
    return store, cluster_spec


async def _follow_job(
    ctx: Context,
    body: Mapping[str, Any],
    job: Mapping[str, Any] | None,
    job_name: str,
    kept: dict[str, Any],
    context: tuple[build.Store, ManagedClusterSpec] | Verdict,
) -> None:
    finished = job is not None and _finished(job)
    message = (
        await ctx.kube.termination_message(ctx.settings.namespace, job_name) if finished else None
    )
    state = logic.job_state(job, message)
    if state.exists and not (state.succeeded or state.failed):
        verdict = Verdict(State.PROGRESSING, Reason.BACKUP_RUNNING, f"Job {job_name} is running.")
        await publish(ctx, MANAGED_BACKUP, body, verdict, fields={**kept, "phase": "Running"})
        return
    result = _result(state.message)
    manifest: Manifest | None = None
    problem: str | None = None
    if state.succeeded and isinstance(context, Verdict):
        problem = f"its manifest could not be read: {context.message}"
    elif state.succeeded and not isinstance(context, Verdict):
        try:
            manifest = await asyncio.to_thread(
                bucket(context[0]).read_manifest, kept["location"]["key"]
            )
        except StorageError as e:
            problem = f"its manifest could not be read: {e}"
        if manifest is None and problem is None:
            problem = "the agent reported success but no manifest exists"
    if manifest is not None:
        fields = {
            **kept,
            "phase": logic.SUCCEEDED,
            "startedAt": manifest.started_at,
            "finishedAt": manifest.finished_at,
            "sizeBytes": manifest.stored_bytes,
            "dumpBytes": manifest.dump_bytes,
            "sha256": manifest.sha256,
            "dataKeyId": manifest.data_key_id,
            "serverVersion": manifest.server_version,
            "tables": len(manifest.tables),
            "retainUntil": manifest.object_lock.retain_until if manifest.object_lock else None,
        }
        verdict = Verdict(
            State.READY,
            Reason.BACKUP_COMPLETED,
            f"Backup complete: {manifest.stored_bytes} bytes stored, {len(manifest.tables)} "
            "tables, manifest written.",
        )
    else:
        verdict = logic.failure_verdict(state, result)
        if problem is not None:
            verdict = Verdict(verdict.state, verdict.reason, f"Backup failed: {problem}.")
        fields = {**kept, "phase": logic.FAILED, "finishedAt": state.finished or now_rfc3339()}
        ctx.metrics.backup_failed(
            body["metadata"]["namespace"], body["spec"]["databaseRef"]["name"]
        )
    await publish(ctx, MANAGED_BACKUP, body, verdict, fields=fields)
    # The result is recorded: the Job (and its pod) are no longer needed.
    await ctx.kube.delete_job(ctx.settings.namespace, job_name)


def _finished(job: Mapping[str, Any]) -> bool:
    state = logic.job_state(job, None)
    return state.succeeded or state.failed


def _result(message: str | None) -> dict[str, Any] | None:
    """The agent's JSON result from a termination message; None when there is none."""
    if not message:
        return None
    try:
        parsed = json.loads(message.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    return parsed if isinstance(parsed, dict) else None


async def finalize(ctx: Context, body: Mapping[str, Any]) -> None:
    """Before a ManagedBackup goes: its Job stops, and its stored backup is deleted if its
    policy says Delete — unless its database is being deleted too, whose
    retainAfterDeletionDays keep backups a while longer."""
    meta = body["metadata"]
    job_name, _ = _job_of(body)
    await ctx.kube.delete_job(ctx.settings.namespace, job_name)
    status = body.get("status") or {}
    location = (status.get("location") or {}).get("key")
    spec = body.get("spec") or {}
    if spec.get("deletionPolicy", "Delete") != "Delete" or location is None:
        return
    name = (spec.get("databaseRef") or {}).get("name", "")
    database = await ctx.kube.read(MANAGED_DATABASE, meta["namespace"], name)
    if database is None or database["metadata"].get("deletionTimestamp"):
        logger.info(
            "ManagedBackup %s/%s: kept in the bucket, its database is being deleted",
            meta["namespace"],
            meta["name"],
        )
        return
    context = await _backup_context(ctx, database, name)
    if isinstance(context, Verdict):
        raise kopf.TemporaryError(f"cannot delete the stored backup: {context.message}", delay=60)
    try:
        await asyncio.to_thread(bucket(context[0]).delete_backup, location)
    except ObjectLocked as e:
        # The lock is the point: the object outlives this record, and the bucket's lifecycle
        # rules remove it once the lock ends.
        await post_event(ctx, MANAGED_BACKUP, body, "Warning", "BackupLocked", str(e))
    except StorageError as e:
        raise kopf.TemporaryError(f"cannot delete the stored backup: {e}", delay=60) from e


# --- the agent's Jobs ----------------------------------------------------------------------


async def job_event(ctx: Context, body: Mapping[str, Any]) -> tuple[str, str] | None:
    """Map an agent Job's change onto Vauban's objects. Returns the (namespace, name) of a
    ManagedDatabase to reconcile (a restore or a restore test finished), if any."""
    meta = body["metadata"]
    if meta.get("deletionTimestamp"):
        return None
    labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    namespace = annotations.get(build.NAMESPACE_ANNOTATION)
    database = annotations.get(build.DATABASE_ANNOTATION)
    if not namespace or not database:
        return None
    operation = labels.get(build.OPERATION_LABEL)
    if operation == "backup":
        name = annotations.get(build.BACKUP_ANNOTATION)
        if name is None:
            # A run of the schedule's CronJob: recorded as a ManagedBackup of its own, named
            # after the Job, so a Job seen twice is recorded once.
            name = build.scheduled_backup_name(database, meta["name"])
            created = await ctx.kube.create_custom(
                MANAGED_BACKUP.plural,
                build.managed_backup(
                    name=name,
                    namespace=namespace,
                    database=database,
                    trigger="Scheduled",
                    job=meta["name"],
                ),
            )
            if created:
                logger.info("scheduled backup %s/%s recorded", namespace, name)
        found = await ctx.kube.read(MANAGED_BACKUP, namespace, name)
        if found is not None:
            await reconcile(ctx, found)
        return None
    if not _finished(body):
        return None
    if operation == "verify":
        await _record_verification(ctx, body, namespace, annotations.get(build.BACKUP_ANNOTATION))
        await ctx.kube.delete_job(ctx.settings.namespace, meta["name"])
    return (namespace, database)


async def _record_verification(
    ctx: Context, job: Mapping[str, Any], namespace: str, backup: str | None
) -> None:
    if backup is None:
        return
    found = await ctx.kube.read(MANAGED_BACKUP, namespace, backup)
    if found is None:
        return
    result = _result(
        await ctx.kube.termination_message(ctx.settings.namespace, job["metadata"]["name"])
    )
    passed = logic.job_state(job, None).succeeded and (result or {}).get("result") == "Succeeded"
    message = str((result or {}).get("message") or "")[:900] or (
        "Restored into a scratch database; row counts match the manifest."
        if passed
        else "The restore test failed without a result (killed or deadline)."
    )
    status = dict(found.get("status") or {})
    status["verification"] = {
        "result": "Passed" if passed else "Failed",
        "time": now_rfc3339(),
        "message": message,
    }
    await ctx.kube.apply_status(MANAGED_BACKUP, namespace, backup, status)
    database = (found.get("spec") or {}).get("databaseRef", {}).get("name", "")
    if not passed:
        ctx.metrics.verification_failed(namespace, database)
    await post_event(
        ctx,
        MANAGED_BACKUP,
        found,
        "Normal" if passed else "Warning",
        "RestoreVerified" if passed else "RestoreVerificationFailed",
        message,
    )


# --- restore at creation -------------------------------------------------------------------


async def _restore_source(
    ctx: Context,
    namespace: str,
    spec: ManagedDatabaseSpec,
    backups: Mapping[tuple[str, str], Iterable[Mapping[str, Any]]],
) -> Mapping[str, Any] | Verdict:
    """The ManagedBackup spec.restore names, once it has succeeded."""
    assert spec.restore is not None
    if spec.restore.backup_ref is not None:
        name = spec.restore.backup_ref.name
    else:
        assert spec.restore.database_ref is not None
        source = spec.restore.database_ref.name
        latest = logic.last_success(_records(backups.get((namespace, source), ())))
        if latest is None:
            return Verdict(
                State.WAITING,
                Reason.RESTORING,
                f"Waiting for a successful backup of ManagedDatabase {source} to restore.",
            )
        name = latest.name
    found = await ctx.kube.read(MANAGED_BACKUP, namespace, name)
    phase = ((found or {}).get("status") or {}).get("phase")
    if found is None or phase != logic.SUCCEEDED:
        state = "does not exist" if found is None else f"is {phase or 'Pending'}"
        return Verdict(
            State.WAITING if phase != logic.FAILED else State.STALLED,
            Reason.RESTORING,
            f"ManagedBackup {name} {state}; the restore waits for it to succeed.",
        )
    return found


async def restore(
    ctx: Context,
    body: Mapping[str, Any],
    spec: ManagedDatabaseSpec,
    cluster: ClusterView,
    cluster_spec: ManagedClusterSpec,
    tenant: build.AgentLogin,
    backups: Mapping[tuple[str, str], Iterable[Mapping[str, Any]]],
) -> tuple[Verdict | None, dict[str, Any] | None]:
    """Fill a new database from a backup, once, before it is reported Ready. Returns the
    verdict while the restore is not done (None once it is) and status.restore."""
    previous = (body.get("status") or {}).get("restore")
    if spec.restore is None or (previous or {}).get("phase") == logic.SUCCEEDED:
        return None, previous
    database = database_of(body)
    source = await _restore_source(ctx, database.namespace, spec, backups)
    if isinstance(source, Verdict):
        return source, previous
    name = source["metadata"]["name"]
    status = source.get("status") or {}
    running = {"source": name, "phase": "Running"}
    key = await keys.data_key_by_id(ctx, str(status.get("dataKeyId", "")))
    if isinstance(key, Verdict):
        return Verdict(
            State.STALLED, Reason.RESTORE_FAILED, f"Cannot restore {name}: {key.message}"
        ), {**running, "phase": "Failed"}
    if cluster_spec.backup is None:
        return Verdict(
            State.STALLED,
            Reason.BACKUP_NOT_CONFIGURED,
            f"ManagedCluster {cluster.ref} has no object store to restore {name} from.",
        ), previous
    store = await store_of(ctx, cluster.namespace, cluster_spec.backup.object_store)
    location = status.get("location") or {}
    if isinstance(store, str) or location.get("bucket") != store.bucket:
        why = store if isinstance(store, str) else "it is in another bucket than this cluster's"
        return Verdict(State.STALLED, Reason.RESTORE_FAILED, f"Cannot restore {name}: {why}."), {
            **running,
            "phase": "Failed",
        }

    namespace = ctx.settings.namespace
    job_name = build.restore_job_name(database)
    secret = build.agent_secret_name(database, "restore")
    job = await ctx.kube.read_job(namespace, job_name)
    if job is None:
        if (previous or {}).get("phase") == "Failed":
            return Verdict(
                State.STALLED,
                Reason.RESTORE_FAILED,
                f"The restore of {name} failed; delete and re-create this ManagedDatabase to "
                "try again.",
            ), previous
        await _agent_secret(ctx, database, "restore", tenant, store, key)
        run = build.AgentRun(
            operation="restore",
            database=database,
            secret=secret,
            image=ctx.settings.agent_image,
            location=str(location["key"]),
        )
        await ctx.kube.create_job(build.job(run, name=job_name, namespace=namespace))
        await post_event(
            ctx,
            MANAGED_DATABASE,
            body,
            "Normal",
            "RestoreStarted",
            f"Restoring ManagedBackup {name} (Job {job_name}).",
        )
        return Verdict(State.PROGRESSING, Reason.RESTORING, f"Restoring {name}."), running
    if not _finished(job):
        return Verdict(State.PROGRESSING, Reason.RESTORING, f"Restoring {name}."), running
    message = await ctx.kube.termination_message(namespace, job_name)
    state = logic.job_state(job, message)
    # The data key must not outlive the restore in a Secret.
    await _forget(ctx, "Secret", namespace, secret)
    await ctx.kube.delete_job(namespace, job_name)
    if state.succeeded:
        await post_event(
            ctx, MANAGED_DATABASE, body, "Normal", "Restored", f"Restored ManagedBackup {name}."
        )
        return None, {**running, "phase": logic.SUCCEEDED, "completedAt": now_rfc3339()}
    result = _result(message) or {}
    detail = f"{result.get('reason', 'JobFailed')}: {str(result.get('message', ''))[:600]}"
    return Verdict(
        State.STALLED,
        Reason.RESTORE_FAILED,
        f"The restore of {name} failed ({detail}). Nothing was applied if the backup failed its "
        "integrity checks; delete and re-create this ManagedDatabase to try again.",
    ), {**running, "phase": "Failed"}


# --- after a database is deleted -----------------------------------------------------------

PURGE_AFTER_ANNOTATION = "vauban.dev/purge-after"
STORE_ANNOTATION = "vauban.dev/store-cluster"


async def database_deleted(
    ctx: Context, body: Mapping[str, Any], spec: ManagedDatabaseSpec, cluster: ClusterView | None
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
        await _forget(ctx, kind, namespace, name)
    await ctx.kube.delete_job(namespace, build.restore_job_name(database))
    days = spec.backup.retain_after_deletion_days if spec.backup else 30
    dek = keys_secret_name(database.uid)
    if days == 0 and spec.deletion_policy == "Delete":
        await keys.destroy_data_key(ctx, database.uid)
        await post_event(
            ctx,
            MANAGED_DATABASE,
            body,
            "Normal",
            "DataKeyDestroyed",
            "The data key is destroyed: the backups of this database can no longer be read.",
        )
        return
    purge_after = _rfc3339(datetime.now(UTC) + timedelta(days=days))
    annotations = {PURGE_AFTER_ANNOTATION: purge_after}
    if cluster is not None:
        annotations[STORE_ANNOTATION] = cluster.ref
    await ctx.kube.annotate_secret(namespace, dek, annotations)


async def purge_expired(
    ctx: Context, backups: Mapping[tuple[str, str], Iterable[Mapping[str, Any]]]
) -> None:
    """Purge the backups and data keys of databases deleted longer ago than their
    retainAfterDeletionDays: objects from the bucket, their ManagedBackups, then the key."""
    namespace = ctx.settings.namespace
    found = await ctx.kube.secret_annotations(namespace, "vauban.dev/key=dek")
    now = datetime.now(UTC)
    for name, marks in found.items():
        due = parse_time(marks.get(PURGE_AFTER_ANNOTATION, ""))
        if due is None or due > now:
            continue
        key_id = data_key_id(name.removeprefix("vauban-dek-"))
        doomed = [
            b
            for store in list(backups.values())
            for b in list(store)
            if (b.get("status") or {}).get("dataKeyId") == key_id
        ]
        cluster_ref = marks.get(STORE_ANNOTATION, "")
        cluster_namespace, _, cluster_name = cluster_ref.partition("/")
        cluster = await ctx.kube.read(MANAGED_CLUSTER, cluster_namespace, cluster_name)
        try:
            cluster_spec = ManagedClusterSpec.model_validate((cluster or {}).get("spec") or {})
        except ValueError:
            cluster_spec = None
        if doomed and (cluster_spec is None or cluster_spec.backup is None):
            logger.warning("cannot purge backups of key %s: its cluster is gone", key_id)
            continue
        for body in doomed:
            location = ((body.get("status") or {}).get("location") or {}).get("key")
            if location and cluster_spec is not None and cluster_spec.backup is not None:
                store = await store_of(ctx, cluster_namespace, cluster_spec.backup.object_store)
                if isinstance(store, str):
                    logger.warning("cannot purge backups of key %s: %s", key_id, store)
                    break
                await asyncio.to_thread(bucket(store).delete_backup, location)
            meta = body["metadata"]
            await ctx.kube.delete_custom(MANAGED_BACKUP, meta["namespace"], meta["name"])
        else:
            await ctx.kube.delete_secret(namespace, name)
            logger.info("purged the backups and data key %s of a deleted database", key_id)


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
    phase = ((found or {}).get("status") or {}).get("phase")
    if found is not None and phase not in (logic.SUCCEEDED, logic.FAILED):
        await reconcile(ctx, found)
        raise kopf.TemporaryError(f"waiting for the final backup {name}", delay=5)
