"""The periodic re-check on a node booted moments ago: monotonic time counts from boot, and
what was never reconciled is due, not "reconciled at boot"; and which cluster events pass."""

from __future__ import annotations

from typing import Any, cast

import pytest

from vauban.handlers import cluster
from vauban.handlers.context import Context
from vauban.handlers.databases import lifecycle
from vauban.kube.resources import Kube
from vauban.metrics import Metrics
from vauban.reconcile.status import is_ready
from vauban.settings import Settings


def ready(kind: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "metadata": {"namespace": "shop", "name": "main", "uid": "u1", "generation": 1},
        "spec": {"clusterRef": {"name": "main"}},
        "status": {
            "observedGeneration": 1,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Ready",
                    "message": "Ready.",
                    "observedGeneration": 1,
                    "lastTransitionTime": "2026-12-06T00:00:00Z",
                }
            ],
        },
    }


@pytest.fixture
def just_booted(monkeypatch: pytest.MonkeyPatch) -> Context:
    monkeypatch.setattr("time.monotonic", lambda: 5.0)
    return Context(kube=cast(Kube, None), settings=Settings(), metrics=Metrics())


def test_a_ready_cluster_never_probed_is_due(just_booted: Context) -> None:
    assert is_ready(ready("ManagedCluster")["status"])
    assert cluster.due(just_booted, ready("ManagedCluster"))


def test_a_ready_database_never_reconciled_is_due(just_booted: Context) -> None:
    assert lifecycle.due(just_booted, ready("ManagedDatabase"))


def test_a_cluster_event_passes_only_when_nothing_new_came_with_it(just_booted: Context) -> None:
    """The event of Vauban's own status write on a cluster it just probed passes; a person's
    request (an annotation), a new spec or a cluster never probed here is reconciled."""
    body = ready("ManagedCluster")
    assert not cluster.settled(just_booted, body)
    key = ("ManagedCluster", "shop", "main")
    just_booted.reconciled[key] = 5.0
    just_booted.requests_seen[key] = cluster._requests(body)
    assert cluster.settled(just_booted, body)
    requested = {**body, "metadata": {**body["metadata"], "annotations": {"a": "b"}}}
    assert not cluster.settled(just_booted, requested)
    changed = {**body, "metadata": {**body["metadata"], "generation": 2}}
    assert not cluster.settled(just_booted, changed)
