"""A namespace its cluster no longer admits keeps no way in: the logins its database holds
are suspended (data kept; admitting the namespace again restores them)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import psycopg

from vauban.api.cluster import ManagedClusterSpec
from vauban.api.database import MANAGED_DATABASE, ManagedDatabaseSpec
from vauban.conditions import Verdict
from vauban.engines.postgres import registry
from vauban.engines.postgres.plan import suspend_login
from vauban.handlers.context import NEVER, Context
from vauban.handlers.databases import stored
from vauban.handlers.databases.connection import connect
from vauban.handlers.publish import post_event
from vauban.reconcile.database import ClusterView
from vauban.reconcile.status import ready_condition

logger = logging.getLogger(__name__)


async def refused(
    ctx: Context,
    body: Mapping[str, Any],
    spec: ManagedDatabaseSpec,
    cluster: ClusterView,
    cluster_spec: ManagedClusterSpec,
    verdict: Verdict,
) -> Verdict:
    """The verdict on a database whose namespace the cluster refuses (`verdict`), once its
    logins were looked for on the server: at the refusal, then once per resync interval."""
    previous = ready_condition(body.get("status"))
    if previous is None or previous.reason != verdict.reason or _resync_due(ctx, body):
        return await _suspend(ctx, body, spec, cluster, cluster_spec, verdict)
    # Between two looks at the server, what the last one found stays said.
    return Verdict(verdict.state, verdict.reason, previous.message)


def _resync_due(ctx: Context, body: Mapping[str, Any]) -> bool:
    """Once per resync interval, a refused namespace's logins are looked for again: a status
    forged to say they were suspended costs at most that long, not the suspension."""
    elapsed = time.monotonic() - ctx.suspensions_checked.get(stored.key(body), NEVER)
    return elapsed >= ctx.settings.resync_interval_seconds


async def _suspend(
    ctx: Context,
    body: Mapping[str, Any],
    spec: ManagedDatabaseSpec,
    cluster: ClusterView,
    cluster_spec: ManagedClusterSpec,
    refused: Verdict,
) -> Verdict:
    """A namespace the cluster no longer admits keeps no way in: the logins its database
    holds are suspended at once (data kept; admitting the namespace again restores them)."""
    ctx.suspensions_checked[stored.key(body)] = time.monotonic()
    connection = await connect(ctx, cluster, cluster_spec, spec.database_name)
    if isinstance(connection, Verdict):
        return refused
    try:
        async with (
            ctx.server_slots[cluster.server],
            ctx.servers.admin(connection.admin) as server,
        ):
            record = await server.record_of(str(body["metadata"]["uid"]))
            if record is None or not record.logins:
                return refused
            roles = [login.role for login in record.logins]
            catalog = await server.catalog(record.database, roles)
            active = [r for r in roles if r in catalog.roles and catalog.roles[r].can_login]
            await server.run([s for role in active for s in suspend_login(role)])
    except (psycopg.Error, registry.RegistryUnusable) as e:
        logger.info("logins of %s not suspended yet: %s", stored.key(body), type(e).__name__)
        return refused
    if active:
        await post_event(
            ctx,
            MANAGED_DATABASE,
            body,
            "Warning",
            "LoginsSuspended",
            f"Logins {', '.join(active)} may no longer log in: the namespace is not admitted "
            f"by ManagedCluster {cluster.ref} any more. The data is kept.",
        )
    return Verdict(
        refused.state,
        refused.reason,
        refused.message.replace("Nothing was created.", "")
        + " Its logins are suspended and its data kept; admitting the namespace again "
        "restores them.",
    )
