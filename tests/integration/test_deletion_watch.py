"""The deletion watch against a real apiserver: the label selector, metadata only (a Secret's
data never reaches the operator), deletions told. An expired version (410, which a fresh
control plane's uncompacted etcd does not give) is scripted in tests/unit/test_watch.py."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from typing import Any

from support.kube import KubeCtl
from vauban.kube.client import connect
from vauban.kube.resources import Kube
from vauban.kube.rest import METADATA, METADATA_LIST, SECRETS, Rest
from vauban.kube.watch import Seen

SELECTOR = "app.kubernetes.io/managed-by=vauban,vauban.dev/database"
MANAGED = {"app.kubernetes.io/managed-by": "vauban"}


class Told:
    def __init__(self) -> None:
        self.gone: list[Seen] = []
        self.failures: list[BaseException] = []
        self.news = asyncio.Event()

    def deleted(self, seen: Seen) -> None:
        self.gone.append(seen)
        self.news.set()

    async def until_told(self, name: str, seconds: float = 30) -> None:
        async with asyncio.timeout(seconds):
            while not any(s.name == name for s in self.gone):
                self.news.clear()
                await self.news.wait()

    def relisted(self, present: Sequence[Seen]) -> None:
        raise AssertionError("no gap here: nothing to relist")

    def failed(self, error: BaseException) -> None:
        self.failures.append(error)


def secret(namespace: str, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "stringData": {"password": "never-streamed"},
    }


def create(kube: KubeCtl, obj: dict[str, Any]) -> None:
    """Not `kubectl apply`: its last-applied annotation would carry the values, and Vauban
    applies server-side."""
    kube.run("create", "-f", "-", stdin=json.dumps(obj))


def test_deletions_of_labelled_secrets_are_told_and_nothing_else(
    kube: KubeCtl, namespace: str
) -> None:
    async def scenario() -> Told:
        told = Told()
        client = Kube(await connect(kube.kubeconfig, streams=1))
        watching = asyncio.create_task(client.watch_secret_deletions(namespace, SELECTOR, told))
        try:
            # Canaries until one is told: from then on the watch is established.
            for n in itertools.count():
                canary = secret(namespace, f"canary-{n}", {**MANAGED, "vauban.dev/database": "c"})
                await asyncio.to_thread(create, kube, canary)
                await asyncio.to_thread(
                    kube.run, "delete", "secret", f"canary-{n}", "-n", namespace
                )
                try:
                    await told.until_told(f"canary-{n}", 2)
                    break
                except TimeoutError:
                    assert n < 15, "the watch never told a deletion"
            for name, labels in (
                ("a-credentials", {**MANAGED, "vauban.dev/database": "a"}),
                ("unlabelled", {}),
                ("not-credentials", MANAGED),
            ):
                await asyncio.to_thread(create, kube, secret(namespace, name, labels))
            for name in ("unlabelled", "not-credentials", "a-credentials"):
                await asyncio.to_thread(kube.run, "delete", "secret", name, "-n", namespace)
            await told.until_told("a-credentials")
        finally:
            watching.cancel()
            await client.close()
        return told

    told = asyncio.run(scenario())
    told.gone = [s for s in told.gone if not s.name.startswith("canary-")]
    assert [(s.namespace, s.name, dict(s.labels)) for s in told.gone] == [
        (namespace, "a-credentials", {**MANAGED, "vauban.dev/database": "a"})
    ], "only the selected Secret's deletion"
    assert told.failures == []


def test_the_apiserver_streams_metadata_only(kube: KubeCtl, namespace: str) -> None:
    async def scenario() -> list[dict[str, Any]]:
        api = await connect(kube.kubeconfig, streams=1)
        rest, client = Rest(api), Kube(api)
        try:
            listed = await rest.request(
                "GET", SECRETS.path(namespace), query=[("limit", "1")], accept=METADATA_LIST
            )
            query = [("watch", "true"), ("resourceVersion", listed["metadata"]["resourceVersion"])]
            await asyncio.to_thread(create, kube, secret(namespace, "s", {}))
            seen: list[dict[str, Any]] = []
            async with asyncio.timeout(30):
                async for event in rest.stream(
                    SECRETS.path(namespace), query=query, accept=METADATA, seconds=30
                ):
                    seen.append(event)
                    break
            return seen
        finally:
            await client.close()

    seen = asyncio.run(scenario())
    assert seen[0]["type"] == "ADDED"
    assert seen[0]["object"]["kind"] == "PartialObjectMetadata"
    assert "data" not in seen[0]["object"] and "never-streamed" not in str(seen)
