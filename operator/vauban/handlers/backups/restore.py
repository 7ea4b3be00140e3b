"""The restore that fills a new database from a backup, once, before it is reported Ready:
the source found where the records put it, then each step decided by
`vauban.reconcile.restore` and carried out here."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from vauban import timefmt
from vauban.api.backup import MANAGED_BACKUP, ManagedBackupStatus
from vauban.api.cluster import ManagedClusterSpec
from vauban.api.database import MANAGED_DATABASE, ManagedDatabaseSpec, RestoreStatus
from vauban.builders import backup as build
from vauban.conditions import Reason, State, Verdict
from vauban.handlers import keys
from vauban.handlers.backups.agents import agent_secret, delete_agent_object, job_ended, our_job
from vauban.handlers.backups.ledger import Placement, database_of, incarnation, place, write_ledger
from vauban.handlers.backups.store import store_of
from vauban.handlers.context import Context
from vauban.handlers.publish import post_event
from vauban.reconcile.backup import RESTORE_ANNOTATION, job_state
from vauban.reconcile.database import ClusterView
from vauban.reconcile.restore import (
    ManifestFacts,
    RestoreAction,
    RestoreSource,
    RestoreStep,
    recorded_restore,
    restore_step,
    source_refusal,
)


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
        return name, placed, ManagedBackupStatus.parse(found.get("status")).phase
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


def _source_view(name: str, placed: Placement, claimed: str | None) -> RestoreSource:
    manifest = placed.manifest
    return RestoreSource(
        name=name,
        namespace=placed.incarnation.database.namespace,
        database_uid=placed.incarnation.database.uid,
        data_key_id=placed.incarnation.key.key_id,
        location=placed.location,
        entry=placed.entry,
        manifest=None
        if manifest is None
        else ManifestFacts(
            location=manifest.location,
            complete=manifest.format_version >= 2,
            namespace=manifest.namespace,
            database_uid=manifest.database_uid,
            data_key_id=manifest.data_key_id,
        ),
        bucket_error=placed.bucket_error,
        claimed=claimed,
    )


async def advance(
    ctx: Context,
    body: Mapping[str, Any],
    spec: ManagedDatabaseSpec,
    cluster: ClusterView,
    cluster_spec: ManagedClusterSpec,
    tenant: build.AgentLogin,
    backups: Mapping[tuple[str, str], Iterable[Mapping[str, Any]]],
) -> tuple[Verdict | None, RestoreStatus | None]:
    """Take the next step of the restore that fills a new database from a backup, once,
    before it is reported Ready. Returns the verdict while the restore is not done (None once
    it is) and status.restore. Whether it was done is in this database's ledger; what to
    restore, and with which data key, is where the records put the source backup, never what
    a status says."""
    if spec.restore is None:
        return None, None
    database = database_of(body)
    if cluster_spec.backup is None:
        return Verdict(
            State.STALLED,
            Reason.BACKUP_NOT_CONFIGURED,
            f"ManagedCluster {cluster.ref} has no object store to restore from.",
        ), None
    target_key = await keys.database_key(ctx, cluster, cluster_spec, database)
    if isinstance(target_key, Verdict):
        return target_key, None
    target = await incarnation(ctx, database.namespace, database.name, database.uid)
    if isinstance(target, Verdict):
        return target, None
    settled = recorded_restore(target.ledger.restore)
    if settled is not None:
        return settled.verdict, settled.status
    store = await store_of(ctx, cluster.namespace, cluster_spec.backup.object_store)
    if isinstance(store, str):
        return Verdict(State.STALLED, Reason.RESTORE_FAILED, f"Cannot restore: {store}."), None
    source = await _restore_source(ctx, database.namespace, spec, store, backups)
    if isinstance(source, Verdict):
        return source, None
    name, placed, claimed = source
    refusal = source_refusal(_source_view(name, placed, claimed), database.namespace)
    state = job_state(None, None)
    if refusal is None:
        namespace, job_name = ctx.settings.namespace, build.restore_job_name(database)
        job = our_job(await ctx.kube.read_job(namespace, job_name), database, "restore")
        ended = job is not None and job_ended(job)
        message = await ctx.kube.termination_message(namespace, job_name) if ended else None
        state = job_state(job, message)
    step = restore_step(name, refusal, state, timefmt.now())
    if step.action is RestoreAction.START_JOB:
        await _start_job(ctx, body, database, tenant, store, placed, name)
    elif step.action is RestoreAction.RECORD_OUTCOME:
        await _record_outcome(ctx, body, database, step, name)
    return step.verdict, step.status


async def _start_job(
    ctx: Context,
    body: Mapping[str, Any],
    database: build.Database,
    tenant: build.AgentLogin,
    store: build.Store,
    placed: Placement,
    name: str,
) -> None:
    namespace = ctx.settings.namespace
    job_name = build.restore_job_name(database)
    # The source's data key, found and unwrapped for the uid its record names.
    await agent_secret(ctx, database, "restore", tenant, store, placed.incarnation.key)
    run = build.AgentRun(
        operation="restore",
        database=database,
        secret=build.agent_secret_name(database, "restore"),
        image=ctx.settings.agent_image,
        location=placed.location,
        platform_ids=ctx.settings.platform_assigns_user_ids,
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


async def _record_outcome(
    ctx: Context, body: Mapping[str, Any], database: build.Database, step: RestoreStep, name: str
) -> None:
    assert step.record is not None
    namespace = ctx.settings.namespace
    record = json.dumps(step.record, separators=(",", ":"))
    await write_ledger(ctx, database, {RESTORE_ANNOTATION: record})
    # The data key must not outlive the restore in a Secret.
    await delete_agent_object(
        ctx, "Secret", namespace, build.agent_secret_name(database, "restore")
    )
    await ctx.kube.delete_job(namespace, build.restore_job_name(database))
    if step.verdict is None:
        await post_event(
            ctx, MANAGED_DATABASE, body, "Normal", "Restored", f"Restored ManagedBackup {name}."
        )
