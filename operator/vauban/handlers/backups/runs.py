"""ManagedBackups and the agent's Jobs: a backup's Job started, its outcome read from what
the operator alone controls (the Job, the bucket's authenticated manifest, the ledger) and
shown in its status; the restore tests' results recorded; a backup's deletion."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any, get_args

import kopf

from vauban import timefmt
from vauban.api.backup import (
    MANAGED_BACKUP,
    BackupLocation,
    BackupTrigger,
    ManagedBackupSpec,
    ManagedBackupStatus,
)
from vauban.api.database import MANAGED_DATABASE
from vauban.backup.manifest import Manifest
from vauban.backup.storage_errors import ObjectLocked, StorageError
from vauban.builders import backup as build
from vauban.builders.keys import data_key_secret_name
from vauban.conditions import Reason, State, Verdict
from vauban.handlers.backups.agents import backup_run, job_ended, our_job
from vauban.handlers.backups.ledger import Placement, database_store, place, write_ledger
from vauban.handlers.backups.store import manifest_status
from vauban.handlers.context import Context, ObjectKey, fingerprint
from vauban.handlers.envelope import Envelope
from vauban.handlers.publish import awaiting_finalizer, parse_spec, post_event, publish
from vauban.kube.retry import jittered
from vauban.reconcile.backup import (
    EXPIRED_PREFIX,
    FAILED,
    LEDGER_PREFIX,
    RUNNING,
    SUCCEEDED,
    VERIFICATION_PREFIX,
    BackupAction,
    BackupOutcome,
    LedgerEntry,
    backup_outcome,
    job_failure,
    job_state,
    verification,
)
from vauban.reconcile.status import is_ready

logger = logging.getLogger(__name__)

TRIGGER_ANNOTATION = "vauban.dev/trigger"


_TRIGGERS: dict[str, BackupTrigger] = {t: t for t in get_args(BackupTrigger)}


def _trigger(body: Mapping[str, Any]) -> BackupTrigger:
    """Shown, not trusted: Scheduled, Final and Imported records are annotated by the
    operator."""
    trigger = (body["metadata"].get("annotations") or {}).get(TRIGGER_ANNOTATION)
    return _TRIGGERS.get(trigger or "", "OnDemand")


def _memo(body: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = body["metadata"]
    return (MANAGED_BACKUP.kind, meta["namespace"], f"{meta['name']}/{meta.get('uid', '')}")


_SHOWN = ("phase", "location", "dataKeyId", "sha256", "finishedAt", "verification")


def _shown(status: Mapping[str, Any]) -> str:
    return fingerprint({k: status.get(k) for k in _SHOWN})


def _shown_fields(status: Mapping[str, Any]) -> ManagedBackupStatus:
    """Everything a ManagedBackup's status shows besides its conditions."""
    return ManagedBackupStatus.parse(
        {k: v for k, v in status.items() if k not in ("conditions", "observedGeneration")}
    )


def _read_again(ctx: Context, key: ObjectKey, body: Mapping[str, Any]) -> None:
    """After a failure, the next reconcile reads the records again even if what is shown
    did not change (the Job may not be deleted yet)."""
    ctx.applied.pop(_memo(body), None)


ENVELOPE = Envelope(MANAGED_BACKUP, kept=_shown_fields, failed=_read_again)


async def reconcile(ctx: Context, body: Mapping[str, Any]) -> None:
    await ENVELOPE.run(ctx, body, functools.partial(_reconcile, ctx))


async def _reconcile(ctx: Context, body: Mapping[str, Any]) -> None:
    status = ManagedBackupStatus.parse(body.get("status"))
    terminal = status.phase in (SUCCEEDED, FAILED)
    if terminal and ctx.applied.get(_memo(body)) == _shown(status.to_wire()):
        return  # what this process recorded, unchanged since: nothing to read again
    spec = await parse_spec(ctx, MANAGED_BACKUP, ManagedBackupSpec, body)
    if spec is None:
        return
    namespace = body["metadata"]["namespace"]
    name = spec.database_ref.name
    live = await ctx.kube.read(MANAGED_DATABASE, namespace, name)
    shown = ManagedBackupStatus(trigger=_trigger(body))
    placed = await _placed(ctx, body, name, live)
    if isinstance(placed, Verdict):
        if terminal:
            return  # the records cannot be read now: what is shown stays shown
        await _pending(ctx, body, shown, placed)
        return
    shown = shown.merged(
        ManagedBackupStatus(
            job=placed.job,
            location=BackupLocation(bucket=placed.store.bucket, key=placed.location),
        )
    )
    database = placed.incarnation.database
    job = our_job(await ctx.kube.read_job(ctx.settings.namespace, placed.job), database, "backup")
    state = job_state(job, None)
    outcome = backup_outcome(
        job=state,
        authentic_manifest=placed.manifest is not None,
        bucket_error=placed.bucket_error,
        entry=placed.entry,
        terminal=terminal,
    )
    if outcome.action is BackupAction.RUNNING:
        if placed.entry is None:
            await _record_entry(ctx, body, placed, RUNNING)
        await _running(ctx, body, shown, f"Job {placed.job} is running.", state.started)
        return
    if outcome.action is BackupAction.UNKNOWN:
        # Nothing is concluded about a backup until the bucket answers.
        if outcome.verdict is not None:
            await _pending(ctx, body, shown, outcome.verdict)
        return
    await _conclude(ctx, body, placed, live, shown, outcome, job)
    if job is not None:
        # The result is recorded: the Job (and its pod) are no longer needed.
        await ctx.kube.delete_job(ctx.settings.namespace, placed.job)


async def _placed(
    ctx: Context, body: Mapping[str, Any], database: str, live: Mapping[str, Any] | None
) -> Placement | Verdict:
    """Where the records put ManagedBackup `body` of database `database` (whose live object
    is `live` if it exists), in its cluster's object store."""
    store = await database_store(ctx, body["metadata"]["namespace"], database, live)
    return store if isinstance(store, Verdict) else await place(ctx, body, database, live, store)


async def _pending(
    ctx: Context, body: Mapping[str, Any], shown: ManagedBackupStatus, verdict: Verdict
) -> None:
    fields = shown.merged(ManagedBackupStatus(phase="Pending"))
    await publish(ctx, MANAGED_BACKUP, body, verdict, fields=fields)


async def _running(
    ctx: Context,
    body: Mapping[str, Any],
    shown: ManagedBackupStatus,
    message: str,
    started: str | None,
) -> None:
    verdict = Verdict(State.PROGRESSING, Reason.BACKUP_RUNNING, message)
    fields = shown.merged(ManagedBackupStatus(phase="Running", started_at=started))
    await publish(ctx, MANAGED_BACKUP, body, verdict, fields=fields)


async def _conclude(
    ctx: Context,
    body: Mapping[str, Any],
    placed: Placement,
    live: Mapping[str, Any] | None,
    shown: ManagedBackupStatus,
    outcome: BackupOutcome,
    job: Mapping[str, Any] | None,
) -> None:
    """Act on an outcome that is not a running Job or an unreadable bucket."""
    if outcome.action is BackupAction.SUCCEEDED:
        assert placed.manifest is not None
        await _succeeded(ctx, body, placed, placed.manifest, shown)
    elif outcome.action is BackupAction.JOB_FAILED:
        message = await ctx.kube.termination_message(ctx.settings.namespace, placed.job)
        ended = job_state(job, message)
        finished = timefmt.parse_rfc3339(ended.finished)
        await _failed(ctx, body, placed, job_failure(ended), shown, finished)
    elif outcome.action is BackupAction.FAILED:
        assert outcome.verdict is not None
        await _failed(ctx, body, placed, outcome.verdict, shown, outcome.finished)
    elif outcome.action is BackupAction.UNRECORDED:
        assert outcome.verdict is not None
        await _publish_terminal(
            ctx, body, outcome.verdict, shown.merged(ManagedBackupStatus(phase=FAILED))
        )
    else:
        await _start(ctx, body, placed, live, shown)


async def _start(
    ctx: Context,
    body: Mapping[str, Any],
    placed: Placement,
    live: Mapping[str, Any] | None,
    shown: ManagedBackupStatus,
) -> None:
    database = placed.incarnation.database
    waiting = _not_startable(database, live)
    if waiting is not None:
        await _pending(ctx, body, shown, waiting)
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
        if our_job(taken, database, "backup") is None:
            verdict = Verdict(
                State.STALLED,
                Reason.BACKUP_FAILED,
                f"Backup failed: the Job name {placed.job} is taken by a Job of another "
                "database. Create a new ManagedBackup.",
            )
            await _failed(ctx, body, placed, verdict, shown, None)
            return
    await _record_entry(ctx, body, placed, RUNNING)
    await _running(ctx, body, shown, f"Job {placed.job} started.", timefmt.now_rfc3339())


def _not_startable(database: build.Database, live: Mapping[str, Any] | None) -> Verdict | None:
    """Why a backup of `database` cannot start now: that incarnation is gone, or not Ready."""
    if live is None or live["metadata"].get("uid") != database.uid:
        return Verdict(
            State.WAITING,
            Reason.DATABASE_NOT_FOUND,
            f"ManagedDatabase {database.name} does not exist.",
        )
    if not is_ready(live.get("status")):
        return Verdict(
            State.WAITING,
            Reason.DATABASE_NOT_READY,
            f"ManagedDatabase {database.name} is not Ready yet.",
        )
    return None


async def _record_entry(
    ctx: Context,
    body: Mapping[str, Any],
    placed: Placement,
    state: str,
    at: datetime | None = None,
    message: str = "",
) -> None:
    meta = body["metadata"]
    entry = LedgerEntry(meta["name"], placed.job, state, at, message)
    key, value = entry.annotation(meta.get("uid", ""))
    await write_ledger(ctx, placed.incarnation.database, {key: value})


async def _succeeded(
    ctx: Context,
    body: Mapping[str, Any],
    placed: Placement,
    manifest: Manifest,
    shown: ManagedBackupStatus,
) -> None:
    if placed.entry is None or placed.entry.state != SUCCEEDED:
        await _record_entry(ctx, body, placed, SUCCEEDED, manifest.finished_at)
    verification = placed.incarnation.ledger.verifications.get(body["metadata"].get("uid", ""))
    verdict = Verdict(
        State.READY,
        Reason.BACKUP_COMPLETED,
        f"Backup complete: {manifest.stored_bytes} bytes stored, {len(manifest.tables)} "
        "tables, manifest written.",
    )
    fields = shown.merged(manifest_status(manifest)).merged(
        ManagedBackupStatus(
            phase=SUCCEEDED, verification=verification.status() if verification else None
        )
    )
    await _publish_terminal(ctx, body, verdict, fields)


async def _failed(
    ctx: Context,
    body: Mapping[str, Any],
    placed: Placement,
    verdict: Verdict,
    shown: ManagedBackupStatus,
    finished: datetime | None,
) -> None:
    at = finished or timefmt.now()
    if placed.entry is None or placed.entry.state != FAILED:
        await _record_entry(ctx, body, placed, FAILED, at, verdict.message[:900])
        ctx.metrics.backup_failed(
            body["metadata"]["namespace"], body["spec"]["databaseRef"]["name"]
        )
    fields = shown.merged(ManagedBackupStatus(phase=FAILED, finished_at=timefmt.rfc3339(at)))
    await _publish_terminal(ctx, body, verdict, fields)


async def _publish_terminal(
    ctx: Context, body: Mapping[str, Any], verdict: Verdict, fields: ManagedBackupStatus
) -> None:
    await publish(ctx, MANAGED_BACKUP, body, verdict, fields=fields)
    ctx.applied[_memo(body)] = _shown(fields.to_wire())


async def finalize(ctx: Context, body: Mapping[str, Any]) -> None:
    """Before a ManagedBackup goes: its Job stops, and its stored backup is deleted if its
    policy says Delete or the retention policy expired it — unless its database is being
    deleted too (or was, and this is an earlier incarnation's backup), whose
    retainAfterDeletionDays keep backups a while longer. What is deleted is where the
    records put this backup, never what its status says."""
    meta = body["metadata"]
    ctx.applied.pop(_memo(body), None)
    spec = body.get("spec") or {}
    name = (spec.get("databaseRef") or {}).get("name", "")
    live = await ctx.kube.read(MANAGED_DATABASE, meta["namespace"], name)
    placed = await _placed(ctx, body, name, live)
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
    if our_job(job, database, "backup") is not None:
        await ctx.kube.delete_job(ctx.settings.namespace, placed.job)
    uid = meta.get("uid", "")
    erased = {
        LEDGER_PREFIX + uid: None,
        VERIFICATION_PREFIX + uid: None,
        EXPIRED_PREFIX + uid: None,
    }
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
    # Retain by default: deleting the object (a GitOps prune) is not a request to erase it.
    if uid in placed.incarnation.ledger.expired or spec.get("deletionPolicy") == "Delete":
        try:
            await asyncio.to_thread(ctx.buckets(placed.store).delete_backup, placed.location)
        except ObjectLocked as e:
            # The lock is the point: the object outlives this record, and the bucket's
            # lifecycle rules remove it once the lock ends.
            await post_event(ctx, MANAGED_BACKUP, body, "Warning", "BackupLocked", str(e))
        except StorageError as e:
            raise kopf.TemporaryError(
                f"cannot delete the stored backup: {e}", delay=jittered(60)
            ) from e
    await write_ledger(ctx, database, erased)


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
                entry = LedgerEntry(name, meta["name"], RUNNING)
                key, value = entry.annotation(found["metadata"].get("uid", ""))
                marks = await ctx.kube.read_secret_and_annotations(
                    ctx.settings.namespace, data_key_secret_name(uid)
                )
                if marks is not None and key not in marks[1]:
                    await write_ledger(ctx, build.Database(namespace, database, uid), {key: value})
        found = await ctx.kube.read(MANAGED_BACKUP, namespace, name)
        if found is not None:
            await reconcile(ctx, found)
        return None
    if not job_ended(body):
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
    message = await ctx.kube.termination_message(ctx.settings.namespace, job["metadata"]["name"])
    entry = verification(job_state(job, message), timefmt.now())
    passed = entry.result == "Passed"
    key, value = entry.annotation(found["metadata"].get("uid", ""))
    await write_ledger(ctx, database, {key: value})
    if not passed:
        ctx.metrics.verification_failed(database.namespace, database.name)
    await post_event(
        ctx,
        MANAGED_BACKUP,
        found,
        "Normal" if passed else "Warning",
        "RestoreVerified" if passed else "RestoreVerificationFailed",
        entry.message,
    )
    ctx.applied.pop(_memo(found), None)
    await reconcile(ctx, found)
