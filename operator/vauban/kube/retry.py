"""Retry delays with jitter: objects that failed together (a server down for all of a
cluster's databases, an apiserver restarting under every watch) do not retry together."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator

_random = secrets.SystemRandom()


def jittered(seconds: float) -> float:
    """`seconds`, spread over [seconds / 2, seconds] ("equal jitter"): never later than
    asked, never sooner than half of it."""
    return seconds * _random.uniform(0.5, 1.0)


class JitteredDelays(Iterable[float]):
    """A fixed sequence of retry delays, drawn afresh with jitter at every iteration (kopf
    iterates its error backoffs once per failing request)."""

    def __init__(self, delays: Iterable[float]) -> None:
        self._delays = tuple(delays)

    def __len__(self) -> int:
        return len(self._delays)

    def __iter__(self) -> Iterator[float]:
        return (jittered(d) for d in self._delays)
