"""RFC 3339 as Vauban writes and reads it, in one module."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from vauban import timefmt
from vauban.api.database import CredentialsStatus
from vauban.reconcile.database import timers_wake_at

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def test_written_in_utc_to_the_second_with_z() -> None:
    assert timefmt.rfc3339(datetime(2026, 1, 31, 2, 0, 0, 999_999, tzinfo=UTC)) == (
        "2026-01-31T02:00:00Z"
    )
    paris = timezone(timedelta(hours=1))
    assert timefmt.rfc3339(datetime(2026, 1, 31, 3, 0, tzinfo=paris)) == "2026-01-31T02:00:00Z"
    # Vauban makes no naive datetime; one is read as UTC, never as the machine's local time.
    assert timefmt.rfc3339(datetime(2026, 1, 31, 2, 0)) == "2026-01-31T02:00:00Z"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-31T02:00:00Z", datetime(2026, 1, 31, 2, 0, tzinfo=UTC)),
        ("2026-01-31T03:00:00+01:00", datetime(2026, 1, 31, 2, 0, tzinfo=UTC)),
        ("2026-01-31T02:00:00.5Z", datetime(2026, 1, 31, 2, 0, 0, 500_000, tzinfo=UTC)),
    ],
)
def test_read_back_aware_in_utc(text: str, expected: datetime) -> None:
    parsed = timefmt.parse_rfc3339(text)
    assert parsed == expected
    assert parsed is not None and parsed.tzinfo is UTC


@pytest.mark.parametrize("text", [None, "", "None", "yesterday", "2026-13-01T00:00:00Z", 42])
def test_what_cannot_be_read_is_no_time_never_a_crash(text: object) -> None:
    assert timefmt.parse_rfc3339(text) is None


def test_a_time_without_a_zone_is_not_guessed() -> None:
    assert timefmt.parse_rfc3339("2026-01-31T02:00:00") is None


def test_round_trip_and_now() -> None:
    now = timefmt.now()
    assert now.tzinfo is UTC
    assert timefmt.parse_rfc3339(timefmt.rfc3339(now)) == now.replace(microsecond=0)
    assert timefmt.parse_rfc3339(timefmt.now_rfc3339()) is not None


def test_a_damaged_status_time_is_not_due_rather_than_a_crash() -> None:
    """The timers once parsed status times by hand and raised on an empty one."""
    damaged = CredentialsStatus(retiring=["a"], retire_after="", last_rotation="x")
    assert timers_wake_at(damaged, "30d") is None
