"""The backup agent's objects in the operator's namespace: its Secrets and CronJobs (applied
only when they changed) and its Jobs (recognised as the operator's own before anything is
read from them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vauban.builders import backup as build
from vauban.handlers.context import Context, fingerprint
from vauban.reconcile.backup import job_state


def backup_run(ctx: Context, database: build.Database, store: build.Store) -> build.AgentRun:
    """The backup agent's run for a database: the same for its CronJob and on demand."""
    return build.AgentRun(
        operation="backup",
        database=database,
        secret=build.agent_secret_name(database, "backup"),
        image=ctx.settings.agent_image,
        location_prefix=store.database_prefix(database),
        platform_ids=ctx.settings.platform_assigns_user_ids,
    )


async def apply_once(ctx: Context, kind: str, body: Mapping[str, Any]) -> None:
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


async def delete_agent_object(ctx: Context, kind: str, namespace: str, name: str) -> None:
    if kind == "Secret":
        await ctx.kube.delete_secret(namespace, name)
    else:
        await ctx.kube.delete_cronjob(namespace, name)
    ctx.applied.pop((kind, namespace, name), None)


async def agent_secret(
    ctx: Context,
    database: build.Database,
    operation: build.Operation,
    login: build.AgentLogin,
    store: build.Store,
    key: build.DataKey,
) -> None:
    """The Secret an agent Job of `operation` reads its environment from, kept current."""
    await apply_once(
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


def our_job(
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


def job_ended(job: Mapping[str, Any]) -> bool:
    state = job_state(job, None)
    return state.succeeded or state.failed
