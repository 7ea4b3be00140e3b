"""Deletions of the objects a label selector picks, told as they happen, with nothing kept
per object: a list for a resourceVersion, then watches from it, of metadata only.

kopf keeps a memory for every object it watches (its memo, throttler, indexing and daemon
records) and parses every event's whole body: a credentials Secret watched only for its
deletion cost the operator about 2.6 KiB, half of what its database costs (bench/latest/
fleet-1000-secret-watch-ab.json). Here, what lives is one resourceVersion per stream; the
objects' data (a Secret's password) never reaches the process.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes.aio.client.exceptions import ApiException

from vauban.kube.rest import METADATA, METADATA_LIST, Resource, Rest
from vauban.kube.retry import jittered

logger = logging.getLogger(__name__)

# The server ends each watch after WATCH_SECONDS; the client gives up on one that stays
# silent longer (a proxy dropping idle streams without closing them), bookmarks included.
WATCH_SECONDS = 300
CLIENT_TIMEOUT_SECONDS = WATCH_SECONDS + 30
LIST_PAGE = 500
# Between failed attempts, jittered: every stream failing at an apiserver restart would
# otherwise retry in step.
BACKOFF_SECONDS = (1, 1, 2, 3, 5, 8, 13, 21)
GONE = 410


@dataclass(frozen=True)
class Seen:
    """What a deletion watch tells of an object: where it was and its labels."""

    namespace: str
    name: str
    labels: Mapping[str, str]

    @classmethod
    def of(cls, metadata: Mapping[str, Any]) -> Seen:
        return cls(
            namespace=str(metadata.get("namespace", "")),
            name=str(metadata.get("name", "")),
            labels=dict(metadata.get("labels") or {}),
        )


class DeletionListener(Protocol):
    def deleted(self, seen: Seen) -> None:
        """An object is gone. Called in the watch's task: must not block."""

    def relisted(self, present: Sequence[Seen]) -> None:
        """The stream had a gap (its resourceVersion expired), so deletions may have been
        missed: `present` is every object there now."""

    def failed(self, error: BaseException) -> None:
        """An attempt failed; the watch retries after a backoff."""


class Expired(Exception):
    """410 Gone: the resourceVersion is older than the server keeps."""


async def watch_deletions(
    rest: Rest,
    resource: Resource,
    namespace: str | None,
    selector: str,
    listener: DeletionListener,
) -> None:
    """Tells `listener` of each deletion until cancelled; `namespace` None for every one."""
    version: str | None = None
    listed_once = False
    relisted_at: str | None = None
    failures = 0
    while True:
        try:
            if version is None:
                version = await _list(rest, resource, namespace, selector, listener, listed_once)
                relisted_at = version if listed_once else None
                listed_once = True
            async for event in rest.stream(
                resource.path(namespace),
                query=[
                    ("watch", "true"),
                    ("labelSelector", selector),
                    ("resourceVersion", version),
                    ("allowWatchBookmarks", "true"),
                    ("timeoutSeconds", str(WATCH_SECONDS)),
                ],
                accept=METADATA,
                seconds=CLIENT_TIMEOUT_SECONDS,
            ):
                version = _follow(event, listener) or version
                failures = 0
            failures = 0  # the server ended the watch, as it does every WATCH_SECONDS
        # Any failure, foreseen (the API, the network, a malformed line) or not: a watch
        # that ended silently would leave deleted Secrets unnoticed until the next resync.
        except Exception as e:
            if isinstance(e, Expired) or (isinstance(e, ApiException) and e.status == GONE):
                # An expired version is relisted at once, unless a relist has just given it:
                # relisting again without a pause would loop against the apiserver.
                again = version is not None and version == relisted_at
                version = None
                if not again:
                    continue
            listener.failed(e)
            delay = BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)]
            failures += 1
            logger.warning(
                "watch of %s deletions failed (%s); again in %.0f s",
                resource.plural,
                type(e).__name__,
                delay,
            )
            await asyncio.sleep(jittered(delay))


def _follow(event: Mapping[str, Any], listener: DeletionListener) -> str | None:
    """The resourceVersion to resume from after `event`, telling a deletion."""
    kind, obj = event.get("type"), event.get("object") or {}
    if kind == "ERROR":
        if obj.get("code") == GONE:
            raise Expired
        raise ValueError(f"watch error {obj.get('code')}: {obj.get('reason')}")
    metadata = obj.get("metadata") or {}
    if kind == "DELETED":
        listener.deleted(Seen.of(metadata))
    version = metadata.get("resourceVersion")
    return str(version) if version else None


async def _list(
    rest: Rest,
    resource: Resource,
    namespace: str | None,
    selector: str,
    listener: DeletionListener,
    relist: bool,
) -> str:
    """The resourceVersion to watch from. The first list reads one object (the objects
    there at start are not news); a relist reads all, page by page, for the listener to
    find what the gap hid."""
    query = [("labelSelector", selector), ("limit", "1" if not relist else str(LIST_PAGE))]
    present: list[Seen] = []
    version, token = "", ""
    for page in itertools.count():
        listed = await rest.request(
            "GET",
            resource.path(namespace),
            query=[*query, ("continue", token)] if token else query,
            accept=METADATA_LIST,
        )
        meta = listed.get("metadata") or {}
        if page == 0:
            version = str(meta.get("resourceVersion") or "")
        if not relist:
            break
        present += [Seen.of(item.get("metadata") or {}) for item in listed.get("items") or []]
        token = str(meta.get("continue") or "")
        if not token:
            break
    if not version:
        raise ValueError(f"list of {resource.plural} without a resourceVersion")
    if relist:
        listener.relisted(present)
    return version
