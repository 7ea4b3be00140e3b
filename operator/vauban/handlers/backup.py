"""ManagedBackup handlers, the Jobs of the backup agent, and the backup duties of a
ManagedDatabase's reconcile (its agent Secret, CronJobs, retention and BackupHealthy).

The agent does the data path in Jobs of the operator's namespace; the operator creates them,
maps their outcome onto ManagedBackups, and reads each backup's manifest — the only proof a
backup is complete — from the bucket.

What decides. A ManagedBackup's status may be written by its namespace (a tenant's Role with
`vauban.dev` resources `*` includes `*/status`): it displays, it never decides. Every decision
that starts, restores, decrypts or deletes comes from what the operator alone controls: the
live ManagedDatabase's identity (namespace, name, uid), the data key Secret the operator made
for that uid (whose annotations name the database and hold the ledger, see
`vauban.reconcile.backup`), the operator's Jobs, and the bucket's manifests, authenticated with
the data key. A backup's location is derived from that identity and the Job's name, never read
from status; so is everything a status shows, which a wiped or forged status is rebuilt from.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import kopf

from vauban import timefmt
from vauban.api.backup import MANAGED_BACKUP, ManagedBackupSpec
from vauban.api.cluster import MANAGED_CLUSTER, ManagedClusterSpec, ObjectStore
from vauban.api.database import MANAGED_DATABASE, ManagedDatabaseSpec
from vauban.backup.manifest import Manifest, ManifestNotAuthentic
from vauban.backup.storage import InvalidManifest, ObjectLocked, StorageError
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
)
from vauban.handlers import keys
from vauban.handlers.context import Context, fingerprint
from vauban.handlers.publish import awaiting_finalizer, parse_spec, post_event, publish
from vauban.reconcile import backup as logic
from vauban.reconcile.database import ClusterView
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


# --- what the operator's records say ----------------------------------------------------------


@dataclass(frozen=True)
class Incarnation:
    """One incarnation of a ManagedDatabase (one uid) as the operator recorded it: the data
    key Secret it made for that uid names the database, holds the key (unwrapped with the uid
    as its context, so a key moved to another database's Secret does not open) and the
    ledger of its backups."""

    database: build.Database
    key: build.DataKey
    ledger: logic.Ledger


DEK_SECRET_PREFIX = keys_secret_name("")


async def incarnation(ctx: Context, namespace: str, name: str, uid: str) -> Incarnation | Verdict:
    """The incarnation `uid` of ManagedDatabase `namespace/name`, if the operator's record
    says that is whose it is."""
    found = await ctx.kube.read_secret_and_annotations(
        ctx.settings.namespace, keys_secret_name(uid)
    )
    if found is None:
        return Verdict(
            State.STALLED,
            Reason.KEY_MISSING,
            f"The data key of ManagedDatabase {name} (uid {uid}) no longer exists: the "
            "database was deleted and its data key destroyed (crypto-shredding), or its "
            "retention after deletion ran out.",
        )
    values, annotations = found
    if annotations.get(logic.DATABASE_ANNOTATION) != f"{namespace}/{name}":
        return Verdict(
            State.STALLED,
            Reason.RESTORE_REFUSED,
            f"The data key of uid {uid} was not made for ManagedDatabase {namespace}/{name}.",
        )
    key = await keys.unwrap_data_key(ctx, values, uid)
    if isinstance(key, Verdict):
        return key
    if key.key_id != data_key_id(uid):
        return Verdict(
            State.STALLED,
            Reason.RESTORE_REFUSED,
            f"The data key Secret of uid {uid} holds another key ({key.key_id}).",
        )
    return Incarnation(build.Database(namespace, name, uid), key, logic.ledger_of(annotations))


async def incarnation_uids(ctx: Context, namespace: str, name: str) -> list[str]:
    """The uids of every incarnation of `namespace/name` whose data key still exists."""
    found = await ctx.kube.secret_annotations(ctx.settings.namespace, "vauban.dev/key=dek")
    return sorted(
        secret.removeprefix(DEK_SECRET_PREFIX)
        for secret, marks in found.items()
        if marks.get(logic.DATABASE_ANNOTATION) == f"{namespace}/{name}"
        and secret.startswith(DEK_SECRET_PREFIX)
    )


async def _record(ctx: Context, database: build.Database, values: Mapping[str, str | None]) -> None:
    """Write to (None: remove from) the ledger of `database`'s incarnation."""
    await ctx.kube.annotate_secret(
        ctx.settings.namespace, keys_secret_name(database.uid), dict(values)
    )


def location_of(store: build.Store, database: build.Database, job: str) -> str:
    """Where the backup a Job makes is stored: under its database's incarnation."""
    return f"{store.database_prefix(database)}/{job}"


_JOB_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _derived_job(body: Mapping[str, Any]) -> str:
    """A ManagedBackup's Job when the ledger has none for it yet: named after its uid, or,
    for a scheduled run recorded before the ledger existed, the Job its annotation names.
    The annotation is the tenant's to write, but it only picks a name under this database's
    own prefix (a single path segment)."""
    meta = body["metadata"]
    annotated = str((meta.get("annotations") or {}).get(JOB_ANNOTATION) or "")
    return annotated if _JOB_NAME.match(annotated) else build.job_name(meta.get("uid", ""))


def _ours(
    job: Mapping[str, Any] | None, database: build.Database, operation: build.Operation
) -> Mapping[str, Any] | None:
    """`job` if it is an agent Job the operator made for `database` (Jobs live in the
    operator's namespace, where tenants cannot write), else None."""
    if job is None:
        return None
    meta = job["metadata"]
    labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    if (
        labels.get(build.OPERATION_LABEL) == operation
        and labels.get(build.DATABASE_UID_LABEL) == database.uid
        and annotations.get(build.NAMESPACE_ANNOTATION) == database.namespace
    ):
        return job
    return None


def _authentic(manifest: Manifest, key: build.DataKey) -> bool:
    if manifest.data_key_id != key.key_id:
        return False
    try:
        manifest.authenticate(key.material)
    except ManifestNotAuthentic as e:
        logger.warning("ignoring a backup: %s", e)
        return False
    return True


def _read_authentic(store: build.Store, location: str, key: build.DataKey) -> Manifest | None:
    """The manifest at `location` if it exists and authenticates with `key` (blocking)."""
    try:
        manifest = bucket(store).read_manifest(location)
    except InvalidManifest as e:
        logger.warning("ignoring a backup: %s", e)
        return None
    return manifest if manifest is not None and _authentic(manifest, key) else None


def _list_authentic(
    store: build.Store, database: build.Database, key: build.DataKey
) -> dict[str, Manifest]:
    """The authenticated backups of one incarnation, by Job (blocking)."""
    prefix = store.database_prefix(database) + "/"
    return {
        m.location.rsplit("/", 1)[-1]: m
        for m in bucket(store).list_manifests(prefix)
        if m.location.startswith(prefix) and _authentic(m, key)
    }


@dataclass(frozen=True)
class Placement:
    """Where a ManagedBackup's backup is, per the records: its incarnation, its Job, its
    ledger entry (None before its Job started), and its manifest once complete."""

    incarnation: Incarnation
    store: build.Store
    job: str
    entry: logic.LedgerEntry | None
    manifest: Manifest | None
    bucket_error: str | None = None
    """Why the manifest could not be looked for: unknown is not absent."""

    @property
    def location(self) -> str:
        return location_of(self.store, self.incarnation.database, self.job)


async def _store_for(
    ctx: Context, namespace: str, name: str, live: Mapping[str, Any] | None
) -> tuple[build.Store, ManagedClusterSpec] | Verdict:
    """The object store of database `namespace/name`'s cluster: the live database's, or the
    one recorded on its data key when it was deleted."""
    if live is not None:
        ref = (live.get("spec") or {}).get("clusterRef") or {}
        cluster_namespace, cluster_name = ref.get("namespace") or namespace, ref.get("name", "")
    else:
        found = await ctx.kube.secret_annotations(ctx.settings.namespace, "vauban.dev/key=dek")
        refs = [
            marks.get(logic.STORE_ANNOTATION, "")
            for marks in found.values()
            if marks.get(logic.DATABASE_ANNOTATION) == f"{namespace}/{name}"
        ]
        cluster_namespace, _, cluster_name = next((r for r in refs if r), "").partition("/")
        if not cluster_name:
            return Verdict(
                State.WAITING, Reason.DATABASE_NOT_FOUND, f"ManagedDatabase {name} does not exist."
            )
    cluster = await ctx.kube.read(MANAGED_CLUSTER, cluster_namespace, cluster_name)
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


async def place(
    ctx: Context,
    body: Mapping[str, Any],
    database_name: str,
    live: Mapping[str, Any] | None,
    store: build.Store,
) -> Placement | Verdict:
    """Where the records put ManagedBackup `body` (of database `database_name`, whose live
    object is `live` if it exists): the incarnation whose ledger has it, else (a backup not
    started yet, or recorded before the ledger existed) the one whose bucket prefix holds a
    manifest at its derived Job, else the live database's."""
    meta = body["metadata"]
    namespace, backup_uid = meta["namespace"], meta.get("uid", "")
    live_meta = (live or {}).get("metadata") or {}
    live_uid = live_meta.get("uid")
    uids = [live_uid] if live_uid else []
    created = str(meta.get("creationTimestamp", ""))
    if not live_uid or created < str(live_meta.get("creationTimestamp", "")):
        # Older than the live database (or it is gone): it may be an earlier incarnation's.
        uids += [u for u in await incarnation_uids(ctx, namespace, database_name) if u != live_uid]
    found: list[Incarnation] = []
    first_problem: Verdict | None = None
    for uid in uids:
        current = await incarnation(ctx, namespace, database_name, uid)
        if (
            isinstance(current, Verdict)
            and uid == live_uid
            and current.reason == Reason.KEY_MISSING
        ):
            # Made at its first reconcile with backups on: not yet.
            current = Verdict(
                State.WAITING,
                Reason.DATABASE_NOT_READY,
                f"ManagedDatabase {database_name} has no data key yet (made once it is Ready).",
            )
        if isinstance(current, Verdict):
            first_problem = first_problem or current
            continue
        found.append(current)
        entry = current.ledger.entries.get(backup_uid)
        if entry is not None:
            manifest = None
            if entry.state != logic.FAILED:
                location = location_of(store, current.database, entry.job)
                try:
                    manifest = await asyncio.to_thread(
                        _read_authentic, store, location, current.key
                    )
                except StorageError as e:
                    return Placement(current, store, entry.job, entry, None, str(e))
            return Placement(current, store, entry.job, entry, manifest)
    job = _derived_job(body)
    for current in found:
        location = location_of(store, current.database, job)
        try:
            manifest = await asyncio.to_thread(_read_authentic, store, location, current.key)
        except StorageError as e:
            # Only looking for a backup made before the ledger: one not started yet goes
            # ahead, and its Job reports what the bucket says.
            logger.info("cannot look for a backup at %s: %s", location, e)
            manifest = None
        if manifest is not None or current.database.uid == live_uid:
            return Placement(current, store, job, None, manifest)
    if first_problem is not None:
        return first_problem
    return Verdict(
        State.STALLED,
        Reason.KEY_MISSING,
        f"No data key of ManagedDatabase {database_name} exists: it never had a backup here, "
        "or it was deleted and its data key destroyed (crypto-shredding), or its retention "
        "after deletion ran out. Its backups cannot be read.",
    )


# --- the database's side -------------------------------------------------------------------


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

    fields: dict[str, Any]
    conditions: list[DomainCondition]


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


def _not_healthy(reason: Reason, message: str) -> DatabaseBackups:
    return DatabaseBackups(
        {}, [DomainCondition(ConditionType.BACKUP_HEALTHY, "False", reason, message)]
    )


def _created(body: Mapping[str, Any]) -> datetime | None:
    return timefmt.parse_rfc3339(body["metadata"].get("creationTimestamp"))


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
    record = await ctx.kube.read_secret_and_annotations(namespace, keys_secret_name(database.uid))
    ledger = logic.ledger_of(record[1] if record else {})

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

    try:
        stored = await asyncio.to_thread(_list_authentic, store, database, key)
    except StorageError as e:
        return _not_healthy(Reason.BACKUP_NOT_CONFIGURED, f"The bucket cannot be listed: {e}.")
    mine = [
        (b["metadata"].get("uid", ""), b["metadata"]["name"], _created(b))
        for b in backups
        if not b["metadata"].get("deletionTimestamp")
    ]
    records = logic.records(mine, ledger, {job: m.finished_at for job, m in stored.items()})
    now = now or timefmt.now()
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
    by_name = {name: uid for uid, name, _ in mine}
    latest_job = ledger.entries[by_name[latest.name]].job if latest else None
    await _verification(ctx, database, settings, logins, store, key, latest, latest_job)
    verified = _last_verified(ledger, records, by_name)
    created = timefmt.parse_rfc3339(body["metadata"].get("creationTimestamp"))
    condition = logic.health(records, schedule=schedule, database_created=created, now=now)
    manifest = stored.get(latest_job or "")
    ctx.metrics.backups(
        database.namespace,
        database.name,
        last_success=latest.finished if latest else None,
        last_verified=timefmt.parse_rfc3339(verified[1]) if verified else None,
        schedule_seconds=logic.interval(schedule, now).total_seconds() if schedule else None,
        last={"status": _manifest_fields(manifest)} if manifest else None,
    )
    fields = {
        "schedule": schedule,
        "lastBackup": latest.name if latest else None,
        "lastBackupTime": timefmt.rfc3339(latest.finished) if latest and latest.finished else None,
        "lastVerifiedBackup": verified[0] if verified else None,
        "lastVerifiedTime": verified[1] if verified else None,
        "dataKeyId": key.key_id,
    }
    return DatabaseBackups({k: v for k, v in fields.items() if v is not None}, [condition])


def _last_verified(
    ledger: logic.Ledger, records: list[logic.BackupRecord], uids: Mapping[str, str]
) -> tuple[str, str] | None:
    passed = [
        (r.name, entry.time)
        for r in records
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
    latest: logic.BackupRecord | None,
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
        location=location_of(store, database, latest_job),
        scratch_database=f"vauban_verify_{database.uid.replace('-', '')[:16]}",
    )
    cronjob = build.cronjob(run, name=name, namespace=namespace, schedule=verify.schedule)
    cronjob["spec"]["jobTemplate"]["metadata"]["annotations"][build.BACKUP_ANNOTATION] = latest.name
    await _apply_once(ctx, "CronJob", cronjob)


# --- ManagedBackup -------------------------------------------------------------------------


def _trigger(body: Mapping[str, Any]) -> str:
    """Shown, not trusted: Scheduled and Final records are annotated by the operator."""
    trigger = (body["metadata"].get("annotations") or {}).get(TRIGGER_ANNOTATION)
    return trigger if trigger in ("OnDemand", "Scheduled", "Final") else "OnDemand"


def _memo(body: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = body["metadata"]
    return (MANAGED_BACKUP.kind, meta["namespace"], f"{meta['name']}/{meta.get('uid', '')}")


_SHOWN = ("phase", "location", "dataKeyId", "sha256", "finishedAt", "verification")


def _shown(status: Mapping[str, Any]) -> str:
    return fingerprint({k: status.get(k) for k in _SHOWN})


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
    terminal = status.get("phase") in (logic.SUCCEEDED, logic.FAILED)
    if terminal and ctx.applied.get(_memo(body)) == _shown(status):
        return  # what this process recorded, unchanged since: nothing to read again
    spec = await parse_spec(ctx, MANAGED_BACKUP, ManagedBackupSpec, body)
    if spec is None:
        return
    namespace = body["metadata"]["namespace"]
    name = spec.database_ref.name
    live = await ctx.kube.read(MANAGED_DATABASE, namespace, name)
    shown: dict[str, Any] = {"trigger": _trigger(body)}
    context = await _store_for(ctx, namespace, name, live)
    placed = (
        context if isinstance(context, Verdict) else await place(ctx, body, name, live, context[0])
    )
    if isinstance(placed, Verdict):
        if terminal:
            return  # the records cannot be read now: what is shown stays shown
        await publish(ctx, MANAGED_BACKUP, body, placed, fields={**shown, "phase": "Pending"})
        return
    shown.update(job=placed.job, location={"bucket": placed.store.bucket, "key": placed.location})
    database = placed.incarnation.database
    job = _ours(await ctx.kube.read_job(ctx.settings.namespace, placed.job), database, "backup")
    finished = job is not None and _finished(job)
    if job is not None and not finished:
        if placed.entry is None:
            await _record_entry(ctx, body, placed, logic.RUNNING)
        started = (job.get("status") or {}).get("startTime")
        verdict = Verdict(State.PROGRESSING, Reason.BACKUP_RUNNING, f"Job {placed.job} is running.")
        await publish(
            ctx,
            MANAGED_BACKUP,
            body,
            verdict,
            fields={**shown, "phase": "Running", "startedAt": started},
        )
        return
    failed_job = job is not None and logic.job_state(job, None).failed
    if placed.manifest is not None:
        await _succeeded(ctx, body, placed, placed.manifest, shown)
    elif placed.bucket_error is not None and not failed_job:
        # Nothing is concluded about a backup until the bucket answers.
        if not terminal:
            verdict = Verdict(
                State.WAITING,
                Reason.BACKUP_NOT_CONFIGURED,
                f"The bucket cannot be read: {placed.bucket_error}.",
            )
            await publish(ctx, MANAGED_BACKUP, body, verdict, fields={**shown, "phase": "Pending"})
        return
    elif job is not None:
        message = await ctx.kube.termination_message(ctx.settings.namespace, placed.job)
        state = logic.job_state(job, message)
        verdict = logic.failure_verdict(state, _result(message))
        if state.succeeded:
            verdict = Verdict(
                verdict.state,
                verdict.reason,
                "Backup failed: the agent reported success but no authentic manifest exists "
                "at its location.",
            )
        await _failed(ctx, body, placed, verdict, shown, state.finished)
    elif placed.entry is not None:
        why = (
            placed.entry.message
            if placed.entry.state == logic.FAILED
            else "Backup failed: its Job disappeared, or its backup is gone from the bucket."
        )
        await _failed(
            ctx,
            body,
            placed,
            Verdict(State.STALLED, Reason.BACKUP_FAILED, why),
            shown,
            timefmt.rfc3339(placed.entry.at) if placed.entry.at else None,
        )
    elif terminal:
        # A finished backup the records do not know: its status alone is not evidence.
        await _publish_terminal(
            ctx,
            body,
            Verdict(
                State.STALLED,
                Reason.BACKUP_FAILED,
                "No record of this backup: neither the bucket nor the operator's ledger holds "
                "it. Create a new ManagedBackup.",
            ),
            {**shown, "phase": logic.FAILED},
        )
    else:
        await _start(ctx, body, placed, live, shown)
    if job is not None:
        # The result is recorded: the Job (and its pod) are no longer needed.
        await ctx.kube.delete_job(ctx.settings.namespace, placed.job)


async def _start(
    ctx: Context,
    body: Mapping[str, Any],
    placed: Placement,
    live: Mapping[str, Any] | None,
    shown: dict[str, Any],
) -> None:
    database = placed.incarnation.database
    if live is None or live["metadata"].get("uid") != database.uid:
        verdict = Verdict(
            State.WAITING,
            Reason.DATABASE_NOT_FOUND,
            f"ManagedDatabase {database.name} does not exist.",
        )
        await publish(ctx, MANAGED_BACKUP, body, verdict, fields={**shown, "phase": "Pending"})
        return
    if not is_true(previous_conditions(live.get("status")), ConditionType.READY):
        verdict = Verdict(
            State.WAITING,
            Reason.DATABASE_NOT_READY,
            f"ManagedDatabase {database.name} is not Ready yet.",
        )
        await publish(ctx, MANAGED_BACKUP, body, verdict, fields={**shown, "phase": "Pending"})
        return
    if awaiting_finalizer(body) is not None:
        return  # kopf's finalizer is coming, and with it the next event
    created = await ctx.kube.create_job(
        build.job(
            backup_run(ctx, database, placed.store),
            name=placed.job,
            namespace=ctx.settings.namespace,
            backup=body["metadata"]["name"],
        )
    )
    if not created:
        taken = await ctx.kube.read_job(ctx.settings.namespace, placed.job)
        if _ours(taken, database, "backup") is None:
            verdict = Verdict(
                State.STALLED,
                Reason.BACKUP_FAILED,
                f"Backup failed: the Job name {placed.job} is taken by a Job of another "
                "database. Create a new ManagedBackup.",
            )
            await _failed(ctx, body, placed, verdict, shown, None)
            return
    await _record_entry(ctx, body, placed, logic.RUNNING)
    verdict = Verdict(State.PROGRESSING, Reason.BACKUP_RUNNING, f"Job {placed.job} started.")
    await publish(
        ctx,
        MANAGED_BACKUP,
        body,
        verdict,
        fields={**shown, "phase": "Running", "startedAt": timefmt.now_rfc3339()},
    )


async def _record_entry(
    ctx: Context,
    body: Mapping[str, Any],
    placed: Placement,
    state: str,
    at: datetime | None = None,
    message: str = "",
) -> None:
    meta = body["metadata"]
    entry = logic.LedgerEntry(meta["name"], placed.job, state, at, message)
    key, value = entry.annotation(meta.get("uid", ""))
    await _record(ctx, placed.incarnation.database, {key: value})


def _manifest_fields(manifest: Manifest) -> dict[str, Any]:
    return {
        "startedAt": timefmt.rfc3339(manifest.started_at),
        "finishedAt": timefmt.rfc3339(manifest.finished_at),
        "sizeBytes": manifest.stored_bytes,
        "dumpBytes": manifest.dump_bytes,
        "sha256": manifest.sha256,
        "dataKeyId": manifest.data_key_id,
        "serverVersion": manifest.server_version,
        "tables": len(manifest.tables),
        "retainUntil": (
            timefmt.rfc3339(manifest.object_lock.retain_until) if manifest.object_lock else None
        ),
    }


async def _succeeded(
    ctx: Context,
    body: Mapping[str, Any],
    placed: Placement,
    manifest: Manifest,
    shown: dict[str, Any],
) -> None:
    if placed.entry is None or placed.entry.state != logic.SUCCEEDED:
        await _record_entry(ctx, body, placed, logic.SUCCEEDED, manifest.finished_at)
    verification = placed.incarnation.ledger.verifications.get(body["metadata"].get("uid", ""))
    verdict = Verdict(
        State.READY,
        Reason.BACKUP_COMPLETED,
        f"Backup complete: {manifest.stored_bytes} bytes stored, {len(manifest.tables)} "
        "tables, manifest written.",
    )
    fields = {
        **shown,
        **_manifest_fields(manifest),
        "phase": logic.SUCCEEDED,
        "verification": verification.status() if verification else None,
    }
    await _publish_terminal(ctx, body, verdict, fields)


async def _failed(
    ctx: Context,
    body: Mapping[str, Any],
    placed: Placement,
    verdict: Verdict,
    shown: dict[str, Any],
    finished: str | None,
) -> None:
    at = timefmt.parse_rfc3339(finished) or timefmt.now()
    if placed.entry is None or placed.entry.state != logic.FAILED:
        await _record_entry(ctx, body, placed, logic.FAILED, at, verdict.message[:900])
        ctx.metrics.backup_failed(
            body["metadata"]["namespace"], body["spec"]["databaseRef"]["name"]
        )
    fields = {**shown, "phase": logic.FAILED, "finishedAt": timefmt.rfc3339(at)}
    await _publish_terminal(ctx, body, verdict, fields)


async def _publish_terminal(
    ctx: Context, body: Mapping[str, Any], verdict: Verdict, fields: dict[str, Any]
) -> None:
    await publish(ctx, MANAGED_BACKUP, body, verdict, fields=fields)
    ctx.applied[_memo(body)] = _shown({k: v for k, v in fields.items() if v is not None})


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
    policy says Delete — unless its database is being deleted too (or was, and this is an
    earlier incarnation's backup), whose retainAfterDeletionDays keep backups a while
    longer. What is deleted is where the records put this backup, never what its status
    says."""
    meta = body["metadata"]
    ctx.applied.pop(_memo(body), None)
    spec = body.get("spec") or {}
    name = (spec.get("databaseRef") or {}).get("name", "")
    live = await ctx.kube.read(MANAGED_DATABASE, meta["namespace"], name)
    context = await _store_for(ctx, meta["namespace"], name, live)
    placed = (
        context if isinstance(context, Verdict) else await place(ctx, body, name, live, context[0])
    )
    if isinstance(placed, Verdict):
        logger.info(
            "ManagedBackup %s/%s: no record of a stored backup (%s)",
            meta["namespace"],
            meta["name"],
            placed.message,
        )
        return
    database = placed.incarnation.database
    job = await ctx.kube.read_job(ctx.settings.namespace, placed.job)
    if _ours(job, database, "backup") is not None:
        await ctx.kube.delete_job(ctx.settings.namespace, placed.job)
    uid = meta.get("uid", "")
    forget = {logic.LEDGER_PREFIX + uid: None, logic.VERIFICATION_PREFIX + uid: None}
    alive = (
        live is not None
        and not live["metadata"].get("deletionTimestamp")
        and live["metadata"].get("uid") == database.uid
    )
    if not alive:
        logger.info(
            "ManagedBackup %s/%s: kept in the bucket, its database is being deleted",
            meta["namespace"],
            meta["name"],
        )
        return
    if spec.get("deletionPolicy", "Delete") == "Delete":
        try:
            await asyncio.to_thread(bucket(placed.store).delete_backup, placed.location)
        except ObjectLocked as e:
            # The lock is the point: the object outlives this record, and the bucket's
            # lifecycle rules remove it once the lock ends.
            await post_event(ctx, MANAGED_BACKUP, body, "Warning", "BackupLocked", str(e))
        except StorageError as e:
            raise kopf.TemporaryError(f"cannot delete the stored backup: {e}", delay=60) from e
    await _record(ctx, database, forget)


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
    uid = labels.get(build.DATABASE_UID_LABEL)
    if not namespace or not database or not uid:
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
            if (
                found is not None
                and (found.get("spec") or {}).get("databaseRef", {}).get("name") == database
            ):
                # The ledger binds the record to this very Job (and so its location).
                entry = logic.LedgerEntry(name, meta["name"], logic.RUNNING)
                key, value = entry.annotation(found["metadata"].get("uid", ""))
                marks = await ctx.kube.read_secret_and_annotations(
                    ctx.settings.namespace, keys_secret_name(uid)
                )
                if marks is not None and key not in marks[1]:
                    await _record(ctx, build.Database(namespace, database, uid), {key: value})
        found = await ctx.kube.read(MANAGED_BACKUP, namespace, name)
        if found is not None:
            await reconcile(ctx, found)
        return None
    if not _finished(body):
        return None
    if operation == "verify":
        await _record_verification(
            ctx,
            body,
            build.Database(namespace, database, uid),
            annotations.get(build.BACKUP_ANNOTATION),
        )
        await ctx.kube.delete_job(ctx.settings.namespace, meta["name"])
    return (namespace, database)


async def _record_verification(
    ctx: Context, job: Mapping[str, Any], database: build.Database, backup: str | None
) -> None:
    if backup is None:
        return
    found = await ctx.kube.read(MANAGED_BACKUP, database.namespace, backup)
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
    entry = logic.VerificationEntry(
        "Passed" if passed else "Failed", timefmt.now_rfc3339(), message
    )
    key, value = entry.annotation(found["metadata"].get("uid", ""))
    await _record(ctx, database, {key: value})
    if not passed:
        ctx.metrics.verification_failed(database.namespace, database.name)
    await post_event(
        ctx,
        MANAGED_BACKUP,
        found,
        "Normal" if passed else "Warning",
        "RestoreVerified" if passed else "RestoreVerificationFailed",
        message,
    )
    ctx.applied.pop(_memo(found), None)
    await reconcile(ctx, found)


# --- restore at creation -------------------------------------------------------------------


async def _placed_source(
    ctx: Context, namespace: str, source: Mapping[str, Any], store: build.Store
) -> Placement | Verdict:
    """Where the records put ManagedBackup `source` of `namespace`."""
    database = ((source.get("spec") or {}).get("databaseRef") or {}).get("name", "")
    live = await ctx.kube.read(MANAGED_DATABASE, namespace, database)
    return await place(ctx, source, database, live, store)


async def _restore_source(
    ctx: Context,
    namespace: str,
    spec: ManagedDatabaseSpec,
    store: build.Store,
    backups: Mapping[tuple[str, str], Iterable[Mapping[str, Any]]],
) -> tuple[str, Placement, str | None] | Verdict:
    """The backup spec.restore names, as the records place it, once it is complete."""
    assert spec.restore is not None
    if spec.restore.backup_ref is not None:
        name = spec.restore.backup_ref.name
        found = await ctx.kube.read(MANAGED_BACKUP, namespace, name)
        if found is None:
            return Verdict(
                State.WAITING,
                Reason.RESTORING,
                f"ManagedBackup {name} does not exist; the restore waits for it.",
            )
        placed = await _placed_source(ctx, namespace, found, store)
        if isinstance(placed, Verdict):
            return Verdict(
                State.STALLED if placed.state == State.STALLED else State.WAITING,
                Reason.RESTORE_FAILED if placed.reason == Reason.KEY_MISSING else placed.reason,
                f"Cannot restore {name}: {placed.message}",
            )
        return name, placed, (found.get("status") or {}).get("phase")
    assert spec.restore.database_ref is not None
    source = spec.restore.database_ref.name
    candidates: list[tuple[datetime, str, Placement]] = []
    for body in backups.get((namespace, source), ()):
        if body["metadata"].get("deletionTimestamp"):
            continue
        placed = await _placed_source(ctx, namespace, body, store)
        if not isinstance(placed, Verdict) and placed.manifest is not None:
            candidates.append((placed.manifest.finished_at, body["metadata"]["name"], placed))
    if not candidates:
        return Verdict(
            State.WAITING,
            Reason.RESTORING,
            f"Waiting for a successful backup of ManagedDatabase {source} to restore.",
        )
    _, name, placed = max(candidates, key=lambda c: c[0])
    return name, placed, None


def _refusal(name: str, placed: Placement, namespace: str, claimed: str | None) -> Verdict | None:
    """Why the backup `placed` may not fill a database of `namespace`, as a verdict (or a
    reason to wait). `claimed` is the phase the source's status shows: only ever a reason to
    refuse, never to restore."""
    manifest = placed.manifest
    if placed.bucket_error is not None:
        return Verdict(
            State.WAITING,
            Reason.RESTORING,
            f"The bucket cannot be read ({placed.bucket_error}); the restore of {name} waits.",
        )
    if manifest is None:
        entry = placed.entry
        unstarted = entry is None and claimed not in (logic.SUCCEEDED, logic.FAILED)
        if (entry is not None and entry.state == logic.RUNNING) or unstarted:
            return Verdict(
                State.WAITING,
                Reason.RESTORING,
                f"ManagedBackup {name} has not completed; the restore waits for it.",
            )
        if entry is not None and entry.state == logic.FAILED:
            # spec.restore is immutable, so this backup can never come to hold data.
            return Verdict(
                State.STALLED,
                Reason.RESTORE_SOURCE_FAILED,
                f"ManagedBackup {name} failed ({entry.message}): it holds nothing to restore. "
                "Delete this ManagedDatabase and create it again naming a successful backup "
                "(or restore.databaseRef, which takes the latest successful one).",
            )
        return Verdict(
            State.STALLED,
            Reason.RESTORE_REFUSED,
            f"ManagedBackup {name} has no complete backup on record (the operator's ledger and "
            "the bucket's authenticated manifests): nothing to restore. A ManagedBackup's status "
            "is not evidence of a backup.",
        )
    database = placed.incarnation.database
    why = logic.restore_refusal(
        location=placed.location,
        manifest_location=manifest.location,
        complete=manifest.format_version >= 2,
        manifest_namespace=manifest.namespace,
        manifest_database_uid=manifest.database_uid,
        manifest_data_key_id=manifest.data_key_id,
        namespace=namespace,
        database_uid=database.uid,
        data_key_id=placed.incarnation.key.key_id,
    )
    if database.namespace != namespace:
        why = why or f"the backup belongs to namespace {database.namespace}"
    if why is None:
        return None
    return Verdict(State.STALLED, Reason.RESTORE_REFUSED, f"Restore of {name} refused: {why}.")


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
    verdict while the restore is not done (None once it is) and status.restore. Whether it
    was done is in this database's ledger; what to restore, and with which data key, is
    where the records put the source backup, never what a status says."""
    if spec.restore is None:
        return None, None
    database = database_of(body)
    if cluster_spec.backup is None:
        return Verdict(
            State.STALLED,
            Reason.BACKUP_NOT_CONFIGURED,
            f"ManagedCluster {cluster.ref} has no object store to restore from.",
        ), None
    target_key = await keys.data_key(
        ctx,
        KekOwner(cluster.namespace, cluster.name, cluster.uid),
        cluster_spec.encryption.provider,
        database,
        create=True,
    )
    if isinstance(target_key, Verdict):
        return target_key, None
    target = await incarnation(ctx, database.namespace, database.name, database.uid)
    if isinstance(target, Verdict):
        return target, None
    done = target.ledger.restore
    if done is not None and done.get("phase") == logic.SUCCEEDED:
        return None, done
    if done is not None and done.get("phase") == logic.FAILED:
        return Verdict(
            State.STALLED,
            Reason.RESTORE_FAILED,
            f"The restore of {done.get('source')} failed ({done.get('message', '')}); delete "
            "and re-create this ManagedDatabase to try again.",
        ), done
    store = await store_of(ctx, cluster.namespace, cluster_spec.backup.object_store)
    if isinstance(store, str):
        return Verdict(State.STALLED, Reason.RESTORE_FAILED, f"Cannot restore: {store}."), None
    source = await _restore_source(ctx, database.namespace, spec, store, backups)
    if isinstance(source, Verdict):
        return source, None
    name, placed, claimed = source
    running = {"source": name, "phase": "Running"}
    refused = _refusal(name, placed, database.namespace, claimed)
    if refused is not None:
        return refused, {**running, "phase": "Pending"}

    namespace = ctx.settings.namespace
    job_name = build.restore_job_name(database)
    secret = build.agent_secret_name(database, "restore")
    job = _ours(await ctx.kube.read_job(namespace, job_name), database, "restore")
    if job is None:
        # The source's data key, found and unwrapped for the uid its record names.
        await _agent_secret(ctx, database, "restore", tenant, store, placed.incarnation.key)
        run = build.AgentRun(
            operation="restore",
            database=database,
            secret=secret,
            image=ctx.settings.agent_image,
            location=placed.location,
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
    if state.succeeded:
        outcome = {
            **running,
            "phase": logic.SUCCEEDED,
            "completedAt": timefmt.now_rfc3339(),
        }
    else:
        result = _result(message) or {}
        detail = f"{result.get('reason', 'JobFailed')}: {str(result.get('message', ''))[:600]}"
        outcome = {**running, "phase": logic.FAILED, "message": detail}
    await _record(
        ctx, database, {logic.RESTORE_ANNOTATION: json.dumps(outcome, separators=(",", ":"))}
    )
    # The data key must not outlive the restore in a Secret.
    await _forget(ctx, "Secret", namespace, secret)
    await ctx.kube.delete_job(namespace, job_name)
    if state.succeeded:
        await post_event(
            ctx, MANAGED_DATABASE, body, "Normal", "Restored", f"Restored ManagedBackup {name}."
        )
        return None, outcome
    return Verdict(
        State.STALLED,
        Reason.RESTORE_FAILED,
        f"The restore of {name} failed ({outcome['message']}). Nothing was applied if the "
        "backup failed its integrity checks; delete and re-create this ManagedDatabase to "
        "try again.",
    ), {**running, "phase": logic.FAILED}


# --- after a database is deleted -----------------------------------------------------------


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
    purge_after = timefmt.rfc3339((now or timefmt.now()) + timedelta(days=days))
    annotations: dict[str, str | None] = {logic.PURGE_AFTER_ANNOTATION: purge_after}
    if cluster is not None:
        annotations[logic.STORE_ANNOTATION] = cluster.ref
    await ctx.kube.annotate_secret(namespace, dek, annotations)


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
    for purge in logic.purge_due(found, prefix=DEK_SECRET_PREFIX, now=now or timefmt.now()):
        await _purge(ctx, purge, found[purge.secret], backups)


async def _purge(
    ctx: Context,
    purge: logic.Purge,
    marks: Mapping[str, str],
    backups: Mapping[tuple[str, str], Iterable[Mapping[str, Any]]],
) -> None:
    database = build.Database(purge.namespace, purge.database, purge.database_uid)
    if purge.cluster:
        cluster_namespace, _, cluster_name = purge.cluster.partition("/")
        cluster = await ctx.kube.read(MANAGED_CLUSTER, cluster_namespace, cluster_name)
        try:
            cluster_spec = ManagedClusterSpec.model_validate((cluster or {}).get("spec") or {})
        except ValueError:
            cluster_spec = None
        if cluster_spec is None or cluster_spec.backup is None:
            logger.warning(
                "cannot purge the backups of %s: its cluster %s is gone",
                purge.secret,
                purge.cluster,
            )
            return
        store = await store_of(ctx, cluster_namespace, cluster_spec.backup.object_store)
        if isinstance(store, str):
            logger.warning("cannot purge the backups of %s: %s", purge.secret, store)
            return
        prefix = store.database_prefix(database) + "/"
        try:
            for location in await asyncio.to_thread(bucket(store).locations, prefix):
                await asyncio.to_thread(bucket(store).delete_backup, location)
        except ObjectLocked as e:
            logger.info("purge of %s waits: %s", purge.secret, e)
            return
        except StorageError as e:
            logger.warning("cannot purge the backups of %s: %s", purge.secret, e)
            return
    ledger = logic.ledger_of(marks)
    for body in list(backups.get((purge.namespace, purge.database), ())):
        if body["metadata"].get("uid") in ledger.entries:
            await ctx.kube.delete_custom(MANAGED_BACKUP, purge.namespace, body["metadata"]["name"])
    await ctx.kube.delete_secret(ctx.settings.namespace, purge.secret)
    logger.info("purged the backups and data key %s of a deleted database", purge.secret)


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
