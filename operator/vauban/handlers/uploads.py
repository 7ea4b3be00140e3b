"""Incomplete multipart uploads left in the clusters' buckets, swept."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import timedelta

from vauban import timefmt
from vauban.handlers.backups.store import store_of
from vauban.handlers.context import Context
from vauban.reconcile.database import ClusterView

logger = logging.getLogger(__name__)


async def sweep(ctx: Context, clusters: Iterable[ClusterView]) -> None:
    """Abort the uploads under each cluster's backup prefix older than
    `stale_upload_seconds`. A bucket shared by several clusters is swept once per prefix."""
    started_before = timefmt.now() - timedelta(seconds=ctx.settings.stale_upload_seconds)
    seen: set[tuple[str | None, str, str]] = set()
    for cluster in clusters:
        if cluster.spec is None or cluster.spec.backup is None:
            continue
        store = await store_of(ctx, cluster.namespace, cluster.spec.backup.object_store)
        if isinstance(store, str):
            continue  # the cluster's backups report it
        where = (store.endpoint, store.bucket, store.prefix)
        if where in seen:
            continue
        seen.add(where)
        aborted = await asyncio.to_thread(
            ctx.buckets(store).abort_stale_uploads, store.prefix, started_before
        )
        for key in aborted:
            logger.warning(
                "aborted a multipart upload left in bucket %s for more than %g s: %s",
                store.bucket,
                ctx.settings.stale_upload_seconds,
                key,
            )
