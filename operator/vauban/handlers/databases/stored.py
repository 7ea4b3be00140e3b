"""What a ManagedDatabase object says of itself, read in one place: its key, its status
parsed once, the status fields a failed step keeps displayed, whether status says it was
provisioned. For display and this process's bookkeeping only: what exists on the server is
its registry's to say."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vauban.api.database import MANAGED_DATABASE, ManagedDatabaseStatus
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
