"""Before a ManagedDatabase goes: its final backup, then its logins revoked (Retain) or its
database and roles dropped (Delete), as the server's record says this very object owns."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import kopf
import psycopg

from vauban.api.database import MANAGED_DATABASE, ManagedDatabaseSpec
from vauban.builders.credentials import secret_name
from vauban.conditions import Reason, State, Verdict
from vauban.engines.postgres import registry
from vauban.engines.postgres.plan import drop_database, retire_login
from vauban.handlers.backups import purge
from vauban.handlers.context import Context
from vauban.handlers.databases import stored
from vauban.handlers.databases.connection import connect, database_error
from vauban.handlers.publish import post_event, publish
from vauban.kube.retry import jittered
from vauban.reconcile.database import ABANDON_ANNOTATION, ClusterView, cluster_key

logger = logging.getLogger(__name__)


async def finalize(
    ctx: Context,
    body: Mapping[str, Any],
    clusters: Mapping[tuple[str, str], Iterable[ClusterView]],
) -> None:
    """Before a ManagedDatabase goes: Retain revokes the tenant's logins and keeps the
    database; Delete drops the database and its roles. Only what the server's record says
    this very object (by UID) owns is touched, whatever its status says: nothing at all for
    an object that never provisioned (a name conflict). While the server cannot be reached
    (admin Secret missing, server down), deletion waits and says so (DeletionBlocked), unless
    the cluster carries ABANDON_ANNOTATION."""
    try:
        spec = ManagedDatabaseSpec.model_validate(body.get("spec", {}))
    except ValueError:
        return
    meta = body["metadata"]
    namespace, uid = meta["namespace"], str(meta["uid"])
    key = cluster_key(namespace, spec)
    cluster = next(iter(clusters.get(key, ())), None)
    if cluster is None or cluster.spec is None:
        # Nothing to reach: the cluster's own deletion waits for its databases, so it is gone
        # only if it never existed (or was forced away).
        await purge.database_deleted(ctx, body, spec, cluster)
        return
    connection = await connect(ctx, cluster, cluster.spec, spec.database_name)
    try:
        if isinstance(connection, Verdict):
            raise _Unreachable(connection.message)
        async with ctx.server_slots[cluster.server], ctx.servers.admin(connection.admin) as server:
            record = await server.record_of(uid)
    except (psycopg.Error, registry.RegistryUnusable, _Unreachable) as e:
        why = database_error(e).message if isinstance(e, psycopg.Error) else str(e)
        await _cannot_clean_up(ctx, body, spec, cluster, why)
        await purge.database_deleted(ctx, body, spec, cluster)
        return
    if record is not None and spec.backup is not None and spec.backup.final_backup:
        await purge.final_backup(ctx, body)
    await purge.database_deleted(ctx, body, spec, cluster)
    if record is None or record.retained:
        return
    try:
        async with ctx.server_slots[cluster.server], ctx.servers.admin(connection.admin) as server:
            logins = [login.role for login in record.logins]
            if spec.deletion_policy == "Delete":
                await server.run(drop_database(record.database, [*logins, record.owner]))
                await server.forget(uid)
            else:
                await server.run([s for role in logins for s in retire_login(role)])
                await server.retain(uid)
    except psycopg.Error as e:
        raise kopf.TemporaryError(database_error(e).message, delay=jittered(30)) from e
    logger.info(
        "ManagedDatabase %s/%s: %s on deletion",
        namespace,
        meta["name"],
        "dropped" if spec.deletion_policy == "Delete" else "logins revoked, data kept",
    )


class _Unreachable(Exception):
    """The server cannot be asked (its admin Secret is missing): the message says why."""


async def _cannot_clean_up(
    ctx: Context,
    body: Mapping[str, Any],
    spec: ManagedDatabaseSpec,
    cluster: ClusterView,
    why: str,
) -> None:
    """The server cannot be reached to clean up. Waiting is right when this object may hold
    a working login there; it is pointless when no Secret of it was ever written (no one has
    a password of what it may have created), or when the platform admin said to abandon."""
    if cluster.abandon_server_objects or not await _published(ctx, body):
        await post_event(
            ctx,
            MANAGED_DATABASE,
            body,
            "Warning",
            "CleanupSkipped",
            f"{why} Revoke the logins of {spec.owner} (or drop {spec.database_name}) by hand, "
            "and the record of this ManagedDatabase in the server's vauban database.",
        )
        return
    message = (
        f"Deletion waits until the server can be reached to "
        f"{'drop the database' if spec.deletion_policy == 'Delete' else 'revoke the logins'}: "
        f"{why} To give up cleaning up the server, a platform admin annotates ManagedCluster "
        f"{cluster.ref} with {ABANDON_ANNOTATION}=true."
    )
    await publish(
        ctx,
        MANAGED_DATABASE,
        body,
        Verdict(State.WAITING, Reason.DELETION_BLOCKED, message),
        fields=stored.kept(body.get("status") or {}),
    )
    raise kopf.TemporaryError(message, delay=5)


async def _published(ctx: Context, body: Mapping[str, Any]) -> bool:
    """Whether a credentials Secret of this very object exists (Vauban writes it only once
    the login works)."""
    meta = body["metadata"]
    found = await ctx.kube.read_secret_and_owners(meta["namespace"], secret_name(meta["name"]))
    return found is not None and meta.get("uid") in found[1]
