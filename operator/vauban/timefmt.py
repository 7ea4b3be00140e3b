"""Time as Vauban reads and writes it: RFC 3339 in UTC, to the second (`2026-01-31T02:00:00Z`).

One module for it, below every layer, because the formats written by hand in a dozen places
had drifted (one kept microseconds, one crashed on an empty string). Status, annotations and
manifests are written by this module and read back by it.
"""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    """The current instant, aware, in UTC."""
    return datetime.now(UTC)


def rfc3339(value: datetime) -> str:
    """`value` in UTC to the second, with a `Z`. A naive datetime is taken as UTC: Vauban
    makes none, and a local-time guess would shift it by the machine's offset."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def rfc3339_exact(value: datetime) -> str:
    """`value` in UTC with its fraction of a second when it has one: for the backup manifest,
    where two backups of a small database can finish within the same second and "the latest"
    must still be one of them. A whole second is written as `rfc3339` writes it."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def now_rfc3339() -> str:
    """The current instant as status and records write it."""
    return rfc3339(now())


def parse_rfc3339(value: object) -> datetime | None:
    """An RFC 3339 time in UTC; None when absent, empty, not a string, unreadable or without a
    time zone. Status and annotations may be damaged or forged: reading them never raises,
    and a time that cannot be placed is no time (nothing is decided on a guess)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo is not None else None
