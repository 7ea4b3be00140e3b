"""One reconcile of one object, the same for every kind: under the object's lock, on a fresh
read, counted and timed, and an error no rule foresaw said in status (ReconcileFailed)
instead of only in the log.

An object can be reconciled by its own event, a re-check and its cluster's or its rendered
objects' events at once: the lock serializes them, and each re-reads the object, so a stale
copy never repeats a rotation nor re-creates what a deleted cluster owned.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from vauban.api.common import KindInfo, StatusModel
from vauban.handlers.context import Context, ObjectKey
from vauban.handlers.publish import publish, unexpected

logger = logging.getLogger(__name__)

Body = Mapping[str, Any]


def _nothing_kept(status: Body) -> StatusModel | None:
    return None


def _free(body: Body) -> AbstractAsyncContextManager[object]:
    return contextlib.nullcontext()


def back_off(ctx: Context, key: ObjectKey, body: Body) -> None:
    """The periodic re-check of an object that keeps failing waits longer each time."""
    ctx.backoff.failed(key)


@dataclass(frozen=True)
class Envelope:
    """How the reconciles of one kind are run."""

    kind: KindInfo
    kept: Callable[[Body], StatusModel | None] = _nothing_kept
    """The status fields a failed reconcile leaves displayed, from the stored status: a
    failed step loses no information."""

    failed: Callable[[Context, ObjectKey, Body], None] = back_off
    """What this process does after a failed reconcile of the object (`body` as read)."""

    around: Callable[[Body], AbstractAsyncContextManager[object]] = _free
    """Held while waiting for the lock and during the reconcile (`body` as given)."""

    within: Callable[[Body], AbstractAsyncContextManager[object]] = _free
    """Taken after the lock, before the fresh read (`body` as given): a waiting reconcile
    holds nothing yet."""

    def key(self, body: Body) -> ObjectKey:
        return (self.kind.kind, body["metadata"]["namespace"], body["metadata"]["name"])

    async def run(
        self,
        ctx: Context,
        body: Body,
        reconcile: Callable[[Body], Awaitable[None]],
        *,
        still_wanted: Callable[[Body], bool] | None = None,
    ) -> None:
        """Reconcile the object `body` names, as stored now: nothing when it is gone, being
        deleted, or no longer `still_wanted`. An unexpected error is published as
        ReconcileFailed (kind and HTTP status only; the traceback goes to the log) and raised
        again, for kopf's own retry."""
        key = self.key(body)
        _, namespace, name = key
        async with self.around(body), ctx.locks.hold(key), self.within(body):
            fresh = await ctx.kube.read(self.kind, namespace, name)
            if fresh is None or fresh["metadata"].get("deletionTimestamp"):
                return
            if still_wanted is not None and not still_wanted(fresh):
                return
            with ctx.metrics.reconcile(self.kind.kind):
                try:
                    await reconcile(fresh)
                except Exception as e:
                    logger.exception(
                        "reconcile of %s %s/%s failed", self.kind.kind, namespace, name
                    )
                    kept = self.kept(fresh.get("status") or {})
                    await publish(ctx, self.kind, fresh, unexpected(e), fields=kept)
                    self.failed(ctx, key, fresh)
                    raise
