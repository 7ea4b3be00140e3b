"""The deletion watch's protocol with the apiserver, scripted: list for a resourceVersion,
watch from it, resume from the last one seen, relist after a 410, back off after a
failure. tests/integration/test_deletion_watch.py runs it against a real apiserver."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import pytest
from kubernetes.aio.client.exceptions import ApiException

from vauban.kube import watch
from vauban.kube.rest import METADATA, METADATA_LIST, SECRETS, Object, Rest, json_lines
from vauban.kube.watch import Seen, watch_deletions

SELECTOR = "app.kubernetes.io/managed-by=vauban,vauban.dev/database"


class ScriptDone(BaseException):
    """The script has no more answers: ends the test's watch as a cancellation would."""


class ScriptedRest(Rest):
    """Answers each list and watch request with the next answer of its script, and keeps
    the requests made."""

    def __init__(self, lists: Sequence[Object], watches: Sequence[Sequence[Object] | Exception]):
        self._lists, self._watches = iter(lists), iter(watches)
        self.requests: list[tuple[str, dict[str, str]]] = []

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Mapping[str, Any] | None = None,
        content_type: str | None = None,
        accept: str = "",
    ) -> Object:
        assert (method, path, accept) == ("GET", "/api/v1/namespaces/shop/secrets", METADATA_LIST)
        self.requests.append(("list", dict(query)))
        return next(self._lists)

    async def stream(
        self, path: str, *, query: Sequence[tuple[str, str]], accept: str, seconds: float
    ) -> AsyncIterator[Object]:
        assert (path, accept) == ("/api/v1/namespaces/shop/secrets", METADATA)
        self.requests.append(("watch", dict(query)))
        answer = next(self._watches, None)
        if answer is None:
            raise ScriptDone
        if isinstance(answer, Exception):
            raise answer
        for event in answer:
            yield event


class Told:
    """A DeletionListener that keeps what it is told."""

    def __init__(self) -> None:
        self.gone: list[Seen] = []
        self.relists: list[list[str]] = []
        self.failures: list[str] = []

    def deleted(self, seen: Seen) -> None:
        self.gone.append(seen)

    def relisted(self, present: Sequence[Seen]) -> None:
        self.relists.append([s.name for s in present])

    def failed(self, error: BaseException) -> None:
        self.failures.append(type(error).__name__)


def secret(name: str, version: str, **labels: str) -> Object:
    return {
        "metadata": {
            "name": name,
            "namespace": "shop",
            "resourceVersion": version,
            "labels": labels,
        }
    }


def event(kind: str, obj: Object) -> Object:
    return {"type": kind, "object": obj}


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)  # the backoff's; nothing else here sleeps
    yield delays


def run(rest: ScriptedRest, told: Told) -> None:
    with pytest.raises(ScriptDone):
        asyncio.run(watch_deletions(rest, SECRETS, "shop", SELECTOR, told))


def test_deletions_are_told_and_each_watch_resumes_where_the_last_ended(slept: list[float]) -> None:
    rest = ScriptedRest(
        lists=[{"metadata": {"resourceVersion": "10"}, "items": [secret("old", "5")]}],
        watches=[
            [
                event("ADDED", secret("a-credentials", "11", **{"vauban.dev/database": "a"})),
                event("DELETED", secret("a-credentials", "12", **{"vauban.dev/database": "a"})),
                event("BOOKMARK", {"metadata": {"resourceVersion": "15"}}),
            ],
            [event("MODIFIED", secret("b-credentials", "16"))],
        ],
    )
    told = Told()
    run(rest, told)
    assert [(s.namespace, s.name, dict(s.labels)) for s in told.gone] == [
        ("shop", "a-credentials", {"vauban.dev/database": "a"})
    ]
    # The first list reads one object, for its resourceVersion: what is there is not news.
    assert rest.requests[0] == ("list", {"labelSelector": SELECTOR, "limit": "1"})
    versions = [q["resourceVersion"] for kind, q in rest.requests if kind == "watch"]
    assert versions == ["10", "15", "16"], "each watch resumes from the last version seen"
    first_watch = rest.requests[1][1]
    assert first_watch["allowWatchBookmarks"] == "true" and first_watch["labelSelector"] == SELECTOR
    assert told.relists == [] and told.failures == [] and slept == []


@pytest.mark.parametrize(
    "gone",
    [
        [event("ERROR", {"kind": "Status", "code": 410, "reason": "Expired"})],
        ApiException(status=410, reason="Gone"),
    ],
    ids=["error-event", "http-status"],
)
def test_an_expired_version_relists_every_page_for_what_the_gap_hid(
    gone: list[Object] | Exception, slept: list[float]
) -> None:
    rest = ScriptedRest(
        lists=[
            {"metadata": {"resourceVersion": "10"}, "items": []},
            {
                "metadata": {"resourceVersion": "30", "continue": "page-2"},
                "items": [secret("x", "21")],
            },
            {"metadata": {"resourceVersion": "31"}, "items": [secret("y", "22")]},
        ],
        watches=[gone, []],
    )
    told = Told()
    run(rest, told)
    assert told.relists == [["x", "y"]]
    lists = [q for kind, q in rest.requests if kind == "list"]
    assert lists[1] == {"labelSelector": SELECTOR, "limit": "500"}
    assert lists[2]["continue"] == "page-2"
    # The version of a paged list is its first page's: the snapshot the pages continue.
    assert [q["resourceVersion"] for kind, q in rest.requests if kind == "watch"] == [
        "10",
        "30",
        "30",
    ]
    assert told.failures == [] and slept == [], "an expired version is not a failure"


def test_a_version_expired_right_after_a_relist_waits_before_the_next(slept: list[float]) -> None:
    expired = [event("ERROR", {"kind": "Status", "code": 410, "reason": "Expired"})]
    rest = ScriptedRest(
        lists=[
            {"metadata": {"resourceVersion": "10"}, "items": []},
            {"metadata": {"resourceVersion": "30"}, "items": [secret("x", "21")]},
            {"metadata": {"resourceVersion": "40"}, "items": [secret("x", "21")]},
        ],
        watches=[expired, expired, [event("BOOKMARK", {"metadata": {"resourceVersion": "41"}})]],
    )
    told = Told()
    run(rest, told)
    assert told.relists == [["x"], ["x"]]
    assert told.failures == ["Expired"] and len(slept) == 1, "the second relist waited"
    versions = [q["resourceVersion"] for kind, q in rest.requests if kind == "watch"]
    assert versions == ["10", "30", "40", "41"]


def test_a_failure_is_told_and_retried_after_a_growing_jittered_delay(slept: list[float]) -> None:
    rest = ScriptedRest(
        lists=[{"metadata": {"resourceVersion": "10"}, "items": []}],
        watches=[
            ApiException(status=500),
            OSError("connection reset"),
            [event("ERROR", {"kind": "Status", "code": 500, "reason": "InternalError"})],
            [event("BOOKMARK", {"metadata": {"resourceVersion": "12"}})],
            ApiException(status=503),
        ],
    )
    told = Told()
    run(rest, told)
    assert told.failures == ["ApiException", "OSError", "ValueError", "ApiException"]
    bounds = [*watch.BACKOFF_SECONDS[:3], watch.BACKOFF_SECONDS[0]]
    assert all(d / 2 <= s <= d for s, d in zip(slept, bounds, strict=True)), (
        f"{slept}: growing, jittered, and back to the first delay once a watch succeeded"
    )
    versions = [q["resourceVersion"] for kind, q in rest.requests if kind == "watch"]
    assert versions == ["10", "10", "10", "10", "12", "12"], "a failure does not relist"


def test_json_lines_whatever_the_chunks() -> None:
    objects = [{"type": "ADDED", "n": i, "pad": "x" * 300_000 * (i == 1)} for i in range(3)]
    data = b"".join(json.dumps(o).encode() + b"\n" for o in objects)

    async def chunks(size: int) -> AsyncIterator[bytes]:
        for i in range(0, len(data), size):
            yield data[i : i + size]

    async def read(size: int) -> list[Object]:
        return [o async for o in json_lines(chunks(size))]

    for size in (1, 7, 65_536, len(data)):
        assert asyncio.run(read(size)) == objects
