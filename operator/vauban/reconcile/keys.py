"""When a cluster's key-encryption key is rotated: pure, like every decision."""

from __future__ import annotations

from datetime import datetime, timedelta

from vauban.api.common import duration_seconds

ROTATE_KEY_ANNOTATION = "vauban.dev/rotate-key"


def rotation_due(
    *,
    created: datetime | None,
    period: str | None,
    token: str | None,
    acted_token: str | None,
    now: datetime,
) -> bool:
    """A new token on the annotation (on demand) or a current version older than the period.
    A version of unknown age is not rotated on the period alone."""
    if token and token != acted_token:
        return True
    return bool(
        period
        and created is not None
        and now - created >= timedelta(seconds=duration_seconds(period))
    )
