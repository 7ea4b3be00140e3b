"""Events: one per transition of an object's state, never one per reconcile.

A burst (a thousand databases created at once, or all of a server's databases finding it
gone) would otherwise write one Event per object: a quarter of the writes a database costs.
`Recorder` correlates them the way client-go's event recorder does for one object, across the
objects of a burst: the first Event of a burst is written on its own object, as when it is
alone; the same Event (type and reason) on the other objects of the same host (their cluster,
in their namespace) within the burst is folded into one Event on the host, whose `count` says
how many objects had it and whose message names each of them, in order. Nothing is
dropped: every object that had an Event is named in one, whose first and last timestamps
bound when, and its own message stays in its status conditions (with the transition's time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
from kubernetes.aio.client.exceptions import ApiException

from vauban import timefmt
from vauban.api.common import API_VERSION
from vauban.kube.rest import EVENTS, Rest

logger = logging.getLogger(__name__)

REPORTER = "vauban"

EventType = Literal["Normal", "Warning"]

MESSAGE_LIMIT = 1024
"""What the apiserver keeps of a message; a fold's names are split across Events beyond it."""

_UNRECORDED = (ApiException, aiohttp.ClientError, OSError, TimeoutError)
"""What a fold's write may meet: it runs in a task of its own, where nothing would retry it
or say it failed; like a direct Event's refusal, it is logged and the fold goes on."""


@dataclass(frozen=True)
class ObjectRef:
    """An object an Event is about."""

    kind: str
    namespace: str
    name: str
    uid: str


async def post(
    api: Rest,
    *,
    kind: str,
    namespace: str,
    name: str,
    uid: str,
    type_: EventType,
    reason: str,
    message: str,
) -> None:
    """Record an Event on an object. Failing to record one never fails a reconcile: status
    already carries the same information."""
    now = datetime.now(UTC)
    try:
        await api.create(
            EVENTS,
            _event(ObjectRef(kind, namespace, name, uid), type_, reason, message, now, now, 1),
        )
    except ApiException as e:
        logger.warning("could not record event %s on %s/%s: %s", reason, namespace, name, e.reason)


def _event(
    regarding: ObjectRef,
    type_: EventType,
    reason: str,
    message: str,
    first: datetime,
    last: datetime,
    count: int,
) -> dict[str, Any]:
    """A core/v1 Event, in its JSON form."""
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{regarding.name}.", "namespace": regarding.namespace},
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": regarding.kind,
            "namespace": regarding.namespace,
            "name": regarding.name,
            "uid": regarding.uid,
        },
        "type": type_,
        "reason": reason,
        "message": message[:MESSAGE_LIMIT],
        "firstTimestamp": timefmt.rfc3339(first),
        "lastTimestamp": timefmt.rfc3339(last),
        "count": count,
        "source": {"component": REPORTER},
        "reportingComponent": REPORTER,
        "reportingInstance": REPORTER,
    }


def fold_message(kind: str, reason: str, names: list[str]) -> str:
    """The message of a fold: which objects had the Event. Their own messages are in their
    status conditions (the Event of a transition repeats its condition's message)."""
    return (
        f"(combined from similar events on {len(names)} {kind}s) {reason}: "
        f"{', '.join(names)}. Each one's message is in its status conditions."
    )


def pack(kind: str, reason: str, names: list[str]) -> list[list[str]]:
    """`names` in runs whose fold message fits in one Event, in order."""
    runs: list[list[str]] = [[]]
    for name in names:
        if runs[-1] and len(fold_message(kind, reason, [*runs[-1], name])) > MESSAGE_LIMIT:
            runs.append([])
        runs[-1].append(name)
    return runs


@dataclass(eq=False)
class _Series:
    """The Events of one burst with the same host, kind, type and reason."""

    host: ObjectRef
    kind: str
    type_: EventType
    reason: str
    last_seen: float
    """When the last Event of the burst came (monotonic): a burst ends after a quiet spell."""

    first_pending: float = 0.0
    written_at: float | None = None
    """When the fold's Event was last written (monotonic); None before its first write."""

    pending: list[tuple[str, datetime]] = field(default_factory=list)
    written: list[tuple[str, datetime]] = field(default_factory=list)
    """What the fold Event being filled (`event`) names, as written."""

    event: str | None = None
    timer: asyncio.Task[None] | None = None


class Recorder:
    """Events of a burst folded on a host, the first of each burst written on its own
    object. `quiet_seconds`: events of the same key further apart than this start a new
    burst (a person creating objects one at a time sees each one's Event on it).
    A fold is first written once its burst has been quiet for `settle_seconds`, or
    `flush_seconds` after it gathered an object if the burst goes on; then rewritten with
    the objects gathered since at most every `rewrite_seconds` while the burst goes on, and
    when it is over. A long burst arrives in waves, each of which would otherwise settle and
    rewrite the fold: client-go's spam filter bounds an object's Events the same way (one
    per five minutes once a burst has spent its tokens)."""

    def __init__(
        self,
        api: Rest,
        *,
        quiet_seconds: float = 5.0,
        settle_seconds: float = 2.0,
        flush_seconds: float = 30.0,
        rewrite_seconds: float = 60.0,
    ) -> None:
        self._api = api
        self._quiet, self._settle, self._flush = quiet_seconds, settle_seconds, flush_seconds
        self._rewrite = rewrite_seconds
        self._series: dict[tuple[Any, ...], _Series] = {}
        self._unwritten: set[_Series] = set()

    async def record(
        self,
        regarding: ObjectRef,
        type_: EventType,
        reason: str,
        message: str,
        *,
        fold_into: ObjectRef | None = None,
    ) -> None:
        """An Event on `regarding`, or folded into one on `fold_into` when it is part of a
        burst. A host in another namespace is never used: its Events may be out of the
        reach of those who read `regarding`'s."""
        if fold_into is None or fold_into.namespace != regarding.namespace:
            await self._post(regarding, type_, reason, message)
            return
        key = (fold_into, regarding.kind, type_, reason)
        now = time.monotonic()
        series = self._series.get(key)
        if series is None or now - series.last_seen > self._quiet:
            self._forget_ended(now)
            self._series[key] = _Series(fold_into, regarding.kind, type_, reason, now)
            await self._post(regarding, type_, reason, message)
            return
        series.last_seen = now
        if not series.pending:
            series.first_pending = now
        series.pending.append((regarding.name, datetime.now(UTC)))
        self._unwritten.add(series)
        if series.timer is None:
            series.timer = asyncio.create_task(self._write_later(series), name="vauban-events")

    def _forget_ended(self, now: float) -> None:
        """Bursts over and written are forgotten: what is kept is bounded by the bursts going
        on, not by every cluster and reason ever seen."""
        for key, series in list(self._series.items()):
            if now - series.last_seen > self._quiet and series.timer is None:
                del self._series[key]

    async def close(self) -> None:
        """Write every fold not written yet (the process is stopping)."""
        for series in list(self._unwritten):
            if series.timer is not None:
                series.timer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await series.timer
            await self._write(series)

    async def _post(
        self, regarding: ObjectRef, type_: EventType, reason: str, message: str
    ) -> None:
        await post(
            self._api,
            kind=regarding.kind,
            namespace=regarding.namespace,
            name=regarding.name,
            uid=regarding.uid,
            type_=type_,
            reason=reason,
            message=message,
        )

    async def _write_later(self, series: _Series) -> None:
        try:
            while series.pending:
                if series.written_at is None:
                    due = min(series.first_pending + self._flush, series.last_seen + self._settle)
                else:
                    due = min(series.written_at + self._rewrite, series.last_seen + self._quiet)
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                    continue
                await self._write(series)
        finally:
            series.timer = None

    async def _write(self, series: _Series) -> None:
        """The fold's Event as it stands: the one being filled patched with the new names,
        new ones created for what does not fit in it. The names stay pending until written
        (or refused): a write cut short by the process stopping is made again by `close`."""
        taken = len(series.pending)
        if not taken:
            self._unwritten.discard(series)
            return
        entries = series.written + series.pending[:taken]
        runs = pack(series.kind, series.reason, [name for name, _ in entries])
        at = 0
        for index, run in enumerate(runs):
            chunk, at = entries[at : at + len(run)], at + len(run)
            if index == 0 and series.event is not None:
                if len(chunk) > len(series.written):
                    series.event = await self._patch(series, series.event, chunk)
            else:
                series.event = await self._create(series, chunk)
            series.written = chunk
        del series.pending[:taken]
        series.written_at = time.monotonic()
        if not series.pending:
            self._unwritten.discard(series)

    def _body(self, series: _Series, chunk: list[tuple[str, datetime]]) -> dict[str, Any]:
        return _event(
            series.host,
            series.type_,
            series.reason,
            fold_message(series.kind, series.reason, [name for name, _ in chunk]),
            chunk[0][1],
            chunk[-1][1],
            len(chunk),
        )

    async def _create(self, series: _Series, chunk: list[tuple[str, datetime]]) -> str | None:
        host = series.host
        try:
            created = await self._api.create(EVENTS, self._body(series, chunk))
        except _UNRECORDED as e:
            logger.warning(
                "could not record event %s on %s/%s: %s",
                series.reason,
                host.namespace,
                host.name,
                getattr(e, "reason", None) or type(e).__name__,
            )
            return None
        name = created.get("metadata", {}).get("name")
        return str(name) if name else None

    async def _patch(
        self, series: _Series, name: str, chunk: list[tuple[str, datetime]]
    ) -> str | None:
        """The fold's Event with its new count, names and last timestamp; created again if
        it is gone (Events expire)."""
        body = self._body(series, chunk)
        try:
            await self._api.merge_patch(
                EVENTS,
                series.host.namespace,
                name,
                {
                    "count": body["count"],
                    "message": body["message"],
                    "lastTimestamp": body["lastTimestamp"],
                },
            )
        except _UNRECORDED as e:
            if isinstance(e, ApiException) and e.status == 404:
                return await self._create(series, chunk)
            logger.warning(
                "could not record event %s on %s/%s: %s",
                series.reason,
                series.host.namespace,
                series.host.name,
                getattr(e, "reason", None) or type(e).__name__,
            )
        return name
