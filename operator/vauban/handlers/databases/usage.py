"""The periodic read of a ready cluster's databases: sizes and sessions, and whether what
was provisioned is still there, with one connection and one query for all of them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import psycopg

from vauban.api.common import human_size
from vauban.api.database import MANAGED_DATABASE, ManagedDatabaseStatus
from vauban.conditions import Verdict
from vauban.handlers.context import Context
from vauban.handlers.databases import stored
from vauban.handlers.databases.connection import connect, tell_cluster
from vauban.handlers.publish import refresh
from vauban.reconcile.database import ClusterView, usage_moved
from vauban.reconcile.status import ready_for_generation

logger = logging.getLogger(__name__)

USAGE_DEADLINE_SECONDS = 30.0
"""One read of a cluster's database sizes; pg_database_size walks each database's files."""


async def probe(ctx: Context, cluster: ClusterView, bodies: Iterable[Mapping[str, Any]]) -> None:
    """The periodic look at a cluster's ready databases, with one connection for all of them
    instead of a reconcile each: sizes and sessions go to status (when they moved) and to
    the metrics; a database or login gone from the server makes its database due for a full
    reconcile, which re-creates it."""
    if cluster.spec is None:
        return
    watched: list[tuple[Mapping[str, Any], str, str]] = []
    for body in bodies:
        credentials = stored.status(body).credentials
        login = credentials.username if credentials else None
        database = (body.get("spec") or {}).get("databaseName")
        if (
            login
            and database
            and not body["metadata"].get("deletionTimestamp")
            and ready_for_generation(body)
        ):
            watched.append((body, str(database), str(login)))
    if not watched:
        return
    connection = await connect(ctx, cluster, cluster.spec, "postgres")
    if isinstance(connection, Verdict):
        return  # the cluster's own status says what is missing
    try:
        async with ctx.server_slots[cluster.server]:
            async with asyncio.timeout(USAGE_DEADLINE_SECONDS):
                async with ctx.servers.admin(connection.admin) as server:
                    found = await server.usage(
                        {db for _, db, _ in watched}, {r for _, _, r in watched}
                    )
    except (psycopg.Error, TimeoutError) as e:
        # The databases keep their last figures; the cluster says the server does not answer.
        logger.info("usage of the databases of %s not read: %s", cluster.ref, type(e).__name__)
        await tell_cluster(ctx, cluster)
        return
    for body, db, login in watched:
        measured = found.databases.get(db)
        if measured is None or login not in found.logins:
            ctx.reconciled.pop(stored.key(body), None)
            continue
        fields = ManagedDatabaseStatus(
            size_bytes=measured.size_bytes,
            size=human_size(measured.size_bytes),
            connections=measured.connections,
        )
        status = stored.status(body)
        ctx.metrics.observe(
            MANAGED_DATABASE.kind, *stored.key(body)[1:], status.merged(fields).to_wire()
        )
        if usage_moved(status, fields):
            await refresh(ctx, MANAGED_DATABASE, body, fields)
