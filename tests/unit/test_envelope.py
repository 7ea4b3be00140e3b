"""The reconcile envelope every kind shares: fresh read, skip of what is gone, and an
unexpected error said in status (ReconcileFailed) with what status knew kept."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

import pytest

from vauban.api.common import KindInfo
from vauban.api.database import MANAGED_DATABASE
from vauban.handlers.backups import runs
from vauban.handlers.context import Context, ObjectLocks
from vauban.handlers.envelope import Envelope
from vauban.kube.resources import Kube
from vauban.metrics import Metrics
from vauban.settings import Settings


class FakeKube:
    """The stored objects, by name; status writes are recorded."""

    def __init__(self, stored: Mapping[str, Any] | None) -> None:
        self.stored = stored
        self.reads = 0
        self.statuses: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    async def read(self, kind: KindInfo, namespace: str, name: str) -> Mapping[str, Any] | None:
        self.reads += 1
        return self.stored

    async def apply_status(
        self, kind: KindInfo, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        self.statuses.append(status)

    async def post_event(self, **event: Any) -> None:
        self.events.append(event)


def body(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "shop", "name": "b1", "uid": "u1", "generation": 1},
        "spec": {},
        "status": status,
    }


def context(stored: Mapping[str, Any] | None) -> tuple[Context, FakeKube]:
    kube = FakeKube(stored)
    return Context(kube=cast(Kube, kube), settings=Settings(), metrics=Metrics()), kube


def test_the_reconcile_gets_the_object_as_stored_now() -> None:
    stale, fresh = body(phase="Pending"), body(phase="Running")
    ctx, _ = context(fresh)
    seen: list[Mapping[str, Any]] = []

    async def reconcile(current: Mapping[str, Any]) -> None:
        seen.append(current)

    asyncio.run(Envelope(MANAGED_DATABASE).run(ctx, stale, reconcile))
    assert seen == [fresh]


@pytest.mark.parametrize(
    "stored",
    [
        None,
        {**body(), "metadata": {**body()["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}},
    ],
)
def test_what_is_gone_or_going_is_not_reconciled(stored: Mapping[str, Any] | None) -> None:
    ctx, _ = context(stored)

    async def reconcile(current: Mapping[str, Any]) -> None:
        raise AssertionError("not called")

    asyncio.run(Envelope(MANAGED_DATABASE).run(ctx, body(), reconcile))


def test_no_longer_wanted_is_decided_on_the_fresh_copy() -> None:
    ctx, _ = context(body(phase="Ready"))

    async def reconcile(current: Mapping[str, Any]) -> None:
        raise AssertionError("not called")

    def wanted(fresh: Mapping[str, Any]) -> bool:
        return bool(fresh["status"]["phase"] != "Ready")

    asyncio.run(Envelope(MANAGED_DATABASE).run(ctx, body(), reconcile, still_wanted=wanted))


def test_an_unexpected_error_is_said_in_status_and_raised_again() -> None:
    ctx, kube = context(body(phase="Running", job="j1", location={"bucket": "b", "key": "k"}))
    ctx.applied[("ManagedBackup", "shop", "b1/u1")] = "memo"

    async def reconcile(current: Mapping[str, Any]) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        asyncio.run(runs.ENVELOPE.run(ctx, body(), reconcile))
    [status] = kube.statuses
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ReconcileFailed" and "RuntimeError" in ready["message"]
    # What a ManagedBackup's status showed stays shown.
    assert status["job"] == "j1" and status["location"] == {"bucket": "b", "key": "k"}
    assert status["phase"] == "Running"
    # And its records are read again at the next reconcile.
    assert ("ManagedBackup", "shop", "b1/u1") not in ctx.applied


def test_clusters_and_databases_back_off_after_an_error() -> None:
    ctx, _ = context(body())

    async def reconcile(current: Mapping[str, Any]) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        asyncio.run(Envelope(MANAGED_DATABASE).run(ctx, body(), reconcile))
    assert not ctx.backoff.due(("ManagedDatabase", "shop", "b1"))


def test_reconciles_of_one_object_take_turns_and_leave_no_lock_behind() -> None:
    """The object's lock serialises its reconciles, and exists only while one holds or
    awaits it: a fleet keeps no lock per database between reconciles."""
    locks = ObjectLocks()
    key = ("ManagedDatabase", "team-a", "shop")
    inside: list[str] = []

    async def reconcile(name: str) -> None:
        async with locks.hold(key):
            inside.append(f"{name} in")
            await asyncio.sleep(0)
            inside.append(f"{name} out")

    async def both() -> int:
        first = asyncio.create_task(reconcile("first"))
        second = asyncio.create_task(reconcile("second"))
        await asyncio.sleep(0)
        during = len(locks)
        await asyncio.gather(first, second)
        return during

    assert asyncio.run(both()) == 1
    assert inside == ["first in", "first out", "second in", "second out"]
    assert len(locks) == 0
