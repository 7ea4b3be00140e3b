"""A cluster's admin Secret read once for a burst of reconciles, and again once it is old."""

from __future__ import annotations

import asyncio
from typing import Any

from vauban.handlers.context import RecentSecrets


class Kube:
    def __init__(self) -> None:
        self.stored: dict[tuple[str, str], dict[str, str]] = {}
        self.reads = 0

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        self.reads += 1
        return self.stored.get((namespace, name))


def test_a_secret_is_read_again_only_once_old_and_a_missing_one_every_time() -> None:
    kube = Kube()
    recent = RecentSecrets(max_age=0.2)

    async def scenario() -> list[Any]:
        seen = [await recent.read(kube, "team", "admin")]  # missing: not remembered
        kube.stored[("team", "admin")] = {"password": "one"}
        seen.append(await recent.read(kube, "team", "admin"))
        kube.stored[("team", "admin")] = {"password": "two"}
        seen.append(await recent.read(kube, "team", "admin"))  # within max_age: as read
        await asyncio.sleep(0.3)
        seen.append(await recent.read(kube, "team", "admin"))
        return seen

    seen = asyncio.run(scenario())
    assert seen == [None, {"password": "one"}, {"password": "one"}, {"password": "two"}]
    assert kube.reads == 3
