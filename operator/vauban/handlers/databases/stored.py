"""What a ManagedDatabase object says of itself, read in one place: its key, its status
parsed once, the status fields a failed step keeps displayed, whether status says it was
provisioned. For display and this process's bookkeeping only: what exists on the server is
its registry's to say."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from vauban.api.common import GROUP
from vauban.api.database import MANAGED_DATABASE, ManagedDatabaseStatus
from vauban.conditions import ConditionType
from vauban.handlers.context import ObjectKey

_KEPT = (
    "cluster",
    "credentials",
    "binding",
    "extensions",
    "sizeBytes",
    "size",
    "connections",
    "backup",
    "restore",
)


def status(body: Mapping[str, Any]) -> ManagedDatabaseStatus:
    return ManagedDatabaseStatus.parse(body.get("status"))


def kept(status: Mapping[str, Any]) -> ManagedDatabaseStatus:
    """What was provisioned before stays reported: a failed step loses no information."""
    return ManagedDatabaseStatus.parse({k: status[k] for k in _KEPT if k in status})


def provisioned(body: Mapping[str, Any]) -> bool:
    """Whether status says the database was provisioned: for what is displayed and for
    placement's leniency only; what was created is the server's record's to say."""
    credentials = status(body).credentials
    return credentials is not None and bool(credentials.username)


def key(body: Mapping[str, Any]) -> ObjectKey:
    return (MANAGED_DATABASE.kind, body["metadata"]["namespace"], body["metadata"]["name"])


_INDEXED_METADATA = (
    "name",
    "namespace",
    "uid",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
)
_INDEXED_STATUS = (
    "observedGeneration",
    "phase",
    "credentials",
    "sizeBytes",
    "size",
    "connections",
)


class IndexEntry(dict[str, Any]):
    """An index entry: the body's shape, so the same functions read both, and room for
    what the periodic re-check derives from it (lifecycle.due), derived once per entry:
    the re-check asks every database of the fleet whether it is due, every few seconds,
    and an entry changes only with its object's events."""

    __slots__ = ("derived",)

    def __init__(self, fields: Mapping[str, Any]) -> None:
        super().__init__(fields)
        self.derived: object = None


def _compact(value: Any) -> Any:
    """`value` rebuilt with its keys interned: each watch event is parsed on its own, with
    its own copy of every key ("secretName", "lastTransitionTime"...), which an entry
    holding its dicts kept alive: about 1 KiB per database."""
    if isinstance(value, Mapping):
        return {sys.intern(str(k)): _compact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_compact(v) for v in value]
    return value


def index_entry(body: Mapping[str, Any]) -> IndexEntry:
    """What the operator keeps in memory of each ManagedDatabase between its events, for
    the decisions made outside of them: whether it is due for a re-check (readiness, the
    credentials' timers), the periodic usage read (database, login, last figures), the
    cluster's finalizer and compliance report (names, creation, backup schedule). A
    reconcile reads the object itself, under its lock.

    A shape of the object's body, so that the same functions read both; kept to these
    fields because a fleet's memory is this times its databases: the other conditions,
    every message (the Ready one's too), other tools' annotations (kubectl's last-applied
    copy of the whole object) and managedFields stay out."""
    meta = body["metadata"]
    status = body.get("status") or {}
    entry_status = {k: status[k] for k in _INDEXED_STATUS if k in status}
    # Its message is for people, who read it on the object.
    ready = [
        {k: v for k, v in c.items() if k != "message"}
        for c in status.get("conditions") or ()
        if isinstance(c, Mapping) and c.get("type") == ConditionType.READY
    ]
    if ready:
        entry_status["conditions"] = ready
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith(f"{GROUP}/")
    }
    return IndexEntry(
        {
            "metadata": {
                **{k: meta[k] for k in _INDEXED_METADATA if k in meta},
                **({"annotations": _compact(annotations)} if annotations else {}),
            },
            "spec": _compact(body.get("spec") or {}),
            "status": _compact(entry_status),
        }
    )
