"""What Vauban's registry on a server holds (engines.postgres.registry reads and writes it):
the authority on what Vauban created there and for which ManagedDatabase."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class LoginRecord:
    role: str
    generation: int
    published: bool
    """Whether the tenant's Secret ever named it. A login never published has a password no
    one knows: it is dropped as soon as it is not the one being published."""

    retire_after: datetime | None = None
    """Set once it is replaced: it keeps working until then."""


@dataclass(frozen=True)
class Rotation:
    """A rotation carried out: the annotation's token it answered (None: the rotation
    period's), and when."""

    token: str | None
    at: datetime


@dataclass(frozen=True)
class DatabaseRecord:
    uid: str
    """The ManagedDatabase's UID: a new object of the same name is another owner."""

    namespace: str
    name: str
    database: str
    owner: str
    retained: bool = False
    """The ManagedDatabase is gone and its database was kept (deletionPolicy Retain): its
    names stay taken until a platform admin hands them over (docs/security.md)."""

    extensions: frozenset[str] = frozenset()
    """Extensions Vauban created: only those are dropped when the spec no longer lists them."""

    rotation_token: str | None = None
    last_rotation: datetime | None = None
    logins: tuple[LoginRecord, ...] = field(default=())
