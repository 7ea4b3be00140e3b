"""Retry delays are jittered, within bounds that keep their meaning."""

from __future__ import annotations

import time

from vauban.handlers.context import Backoff
from vauban.kube.retry import JitteredDelays, jittered


def test_a_jittered_delay_is_between_half_and_all_of_it() -> None:
    drawn = [jittered(10.0) for _ in range(200)]
    assert all(5.0 <= d <= 10.0 for d in drawn)
    assert len(set(drawn)) > 100  # spread, not one value


def test_kopf_draws_fresh_delays_at_each_failing_request() -> None:
    delays = JitteredDelays((1, 2, 4))
    assert len(delays) == 3
    first, second = list(delays), list(delays)
    assert first != second
    assert all(d / 2 <= got <= d for d, got in zip((1, 2, 4), first, strict=True))


def test_the_recheck_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    backoff = Backoff(base=100.0, cap=300.0)
    key = ("ManagedDatabase", "ns", "db")
    for bound in (100.0, 200.0, 300.0, 300.0):
        before = time.monotonic()
        backoff.failed(key)
        wait = backoff._next[key][1] - before
        assert bound / 2 - 1 <= wait <= bound + 1
        assert not backoff.due(key)
    backoff.succeeded(key)
    assert backoff.due(key)
