"""The event recorder's folding of a burst: every object stays named, writes stay few."""

from __future__ import annotations

import asyncio
from typing import Any

from kubernetes.aio.client.exceptions import ApiException

from vauban.kube.events import MESSAGE_LIMIT, ObjectRef, Recorder, fold_message, pack
from vauban.kube.rest import EVENTS, Resource

CLUSTER = ObjectRef("ManagedCluster", "tenant", "main", "uid-cluster")


def db(name: str, namespace: str = "tenant") -> ObjectRef:
    return ObjectRef("ManagedDatabase", namespace, name, f"uid-{name}")


class FakeCore:
    """The two calls the recorder makes, kept as the apiserver would store their Events."""

    def __init__(self) -> None:
        self.stored: dict[str, dict[str, Any]] = {}
        self.writes: list[str] = []

    async def create(self, resource: Resource, body: dict[str, Any]) -> dict[str, Any]:
        assert resource == EVENTS
        name = f"{body['metadata']['generateName']}{len(self.stored)}"
        self.stored[name] = {
            "namespace": body["metadata"]["namespace"],
            "involved": body["involvedObject"]["name"],
            "reason": body["reason"],
            "count": body["count"],
            "message": body["message"],
        }
        self.writes.append(f"create {name}")
        return {**body, "metadata": {**body["metadata"], "name": name}}

    async def merge_patch(
        self, resource: Resource, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        assert resource == EVENTS
        if name not in self.stored:
            raise ApiException(status=404, reason="Not Found")
        self.stored[name].update(count=patch["count"], message=patch["message"])
        self.writes.append(f"patch {name}")
        return {}


def recorder(core: FakeCore, quiet: float = 30.0, rewrite: float = 0.3) -> Recorder:
    """A burst lasts as long as a test needs unless `quiet` is short; folds settle fast."""
    return Recorder(
        core,  # type: ignore[arg-type]
        quiet_seconds=quiet,
        settle_seconds=0.05,
        flush_seconds=0.3,
        rewrite_seconds=rewrite,
    )


async def until(done: Any) -> None:
    """Wait for what a timer does, however loaded the machine."""
    for _ in range(1000):
        if done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not done in 10 s")


def ready(rec: Recorder, name: str) -> Any:
    return rec.record(db(name), "Normal", "Available", f"{name} is ready", fold_into=CLUSTER)


def test_one_object_alone_has_its_own_event() -> None:
    core = FakeCore()

    async def scenario() -> None:
        rec = recorder(core, quiet=0.1)
        await ready(rec, "a")
        await asyncio.sleep(0.3)  # quiet: the next one starts a burst of its own
        await ready(rec, "b")
        await rec.close()

    asyncio.run(scenario())
    assert [(e["involved"], e["count"]) for e in core.stored.values()] == [("a", 1), ("b", 1)]


def test_a_burst_is_one_event_on_its_own_object_and_one_fold_naming_the_others() -> None:
    core = FakeCore()

    async def scenario() -> None:
        rec = recorder(core)
        for i in range(10):
            await ready(rec, f"d{i}")
        assert len(core.writes) == 1  # the first, on d0; the rest wait for the fold
        await until(lambda: len(core.writes) == 2)  # settled: the fold is written
        await rec.close()

    asyncio.run(scenario())
    assert len(core.writes) == 2
    first, fold = core.stored.values()
    assert (first["involved"], first["count"], first["message"]) == ("d0", 1, "d0 is ready")
    assert (fold["involved"], fold["reason"], fold["count"]) == ("main", "Available", 9)
    assert fold["message"] == fold_message(
        "ManagedDatabase", "Available", [f"d{i}" for i in range(1, 10)]
    )


def test_a_long_burst_patches_its_fold_and_spills_over_when_full() -> None:
    core = FakeCore()
    names = [f"database-with-a-long-name-{i:03}" for i in range(1, 80)]

    async def scenario() -> None:
        rec = recorder(core)
        await ready(rec, "database-with-a-long-name-000")
        for name in names[:5]:
            await ready(rec, name)
        await until(lambda: len(core.writes) == 2)  # settled: the fold is written
        for name in names[5:]:
            await ready(rec, name)
        await rec.close()

    asyncio.run(scenario())
    folds = [e for e in core.stored.values() if e["involved"] == "main"]
    assert any(w.startswith("patch") for w in core.writes)
    assert len(folds) == len(pack("ManagedDatabase", "Available", names)) > 1
    assert all(len(f["message"]) <= MESSAGE_LIMIT for f in folds)
    # Every object of the burst is named, once.
    assert sum(f["count"] for f in folds) == len(names)
    named = [n for f in folds for n in f["message"].split(": ", 1)[1].split(". ")[0].split(", ")]
    assert named == names


def test_a_burst_in_waves_rewrites_its_fold_at_most_once_a_rewrite_interval() -> None:
    """Waves of a long burst each settle; the fold is not rewritten after each of them, and
    every object is still named once the burst is over."""
    core = FakeCore()
    names = [f"d{i}" for i in range(1, 27)]

    async def scenario() -> None:
        rec = recorder(core, rewrite=5.0)
        await ready(rec, "d0")
        await ready(rec, names[0])
        await until(lambda: len(core.writes) == 2)  # the fold's first write, once settled
        for wave in range(5):
            for name in names[1 + 5 * wave : 6 + 5 * wave]:
                await ready(rec, name)
            await asyncio.sleep(0.15)  # longer than settling: each wave would be a patch
        assert core.writes[2:] == []
        await rec.close()

    asyncio.run(scenario())
    fold = next(e for e in core.stored.values() if e["involved"] == "main")
    assert fold["count"] == len(names) and len(core.writes) == 3


def test_no_fold_on_a_host_in_another_namespace_or_without_one() -> None:
    core = FakeCore()

    async def scenario() -> None:
        rec = recorder(core)
        for i in range(3):
            await rec.record(
                db(f"x{i}", "other"), "Normal", "Available", "ready", fold_into=CLUSTER
            )
            await rec.record(db(f"y{i}"), "Normal", "Available", "ready")
        await rec.close()

    asyncio.run(scenario())
    assert sorted(e["involved"] for e in core.stored.values()) == [
        "x0",
        "x1",
        "x2",
        "y0",
        "y1",
        "y2",
    ]


def test_different_reasons_are_not_folded_together() -> None:
    core = FakeCore()

    async def scenario() -> None:
        rec = recorder(core)
        await ready(rec, "a")
        await rec.record(db("b"), "Warning", "Unreachable", "gone", fold_into=CLUSTER)
        await rec.close()

    asyncio.run(scenario())
    assert [(e["involved"], e["reason"]) for e in core.stored.values()] == [
        ("a", "Available"),
        ("b", "Unreachable"),
    ]


def test_a_fold_whose_event_expired_is_written_again() -> None:
    core = FakeCore()

    async def scenario() -> None:
        rec = recorder(core)
        await ready(rec, "a")
        await ready(rec, "b")
        await until(lambda: len(core.writes) == 2)
        core.stored = {k: v for k, v in core.stored.items() if v["involved"] != "main"}
        await ready(rec, "c")
        await rec.close()

    asyncio.run(scenario())
    folds = [e for e in core.stored.values() if e["involved"] == "main"]
    assert [(f["count"], f["message"].split(": ")[1].split(".")[0]) for f in folds] == [(2, "b, c")]


def test_stopping_writes_what_is_pending_and_a_failed_write_does_not_stop_the_fold() -> None:
    core = FakeCore()
    create = core.create
    failures = [OSError("connection reset")]

    async def flaky(resource: Resource, body: dict[str, Any]) -> dict[str, Any]:
        if body["involvedObject"]["name"] == "main" and failures:
            raise failures.pop()
        return await create(resource, body)

    core.create = flaky  # type: ignore[method-assign]

    async def scenario() -> None:
        rec = recorder(core)
        await ready(rec, "a")
        await ready(rec, "b")
        await until(lambda: not failures)  # the fold's write fails, and is logged
        await ready(rec, "c")
        await rec.close()  # not settled yet: written now

    asyncio.run(scenario())
    folds = [e for e in core.stored.values() if e["involved"] == "main"]
    assert [f["count"] for f in folds] == [2]
    assert "b, c" in folds[0]["message"]


def test_bursts_over_are_forgotten() -> None:
    core = FakeCore()

    async def scenario() -> Recorder:
        rec = recorder(core, quiet=0.1)
        await ready(rec, "a")
        await ready(rec, "b")
        await until(lambda: len(core.writes) == 2)
        await asyncio.sleep(0.2)  # written, and over
        await rec.record(db("c"), "Warning", "Unreachable", "gone", fold_into=CLUSTER)
        await rec.close()
        return rec

    rec = asyncio.run(scenario())
    assert [key[3] for key in rec._series] == ["Unreachable"]
