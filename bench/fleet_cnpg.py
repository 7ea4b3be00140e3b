"""A stand-in for CloudNativePG's operator: no PostgreSQL pods run under kwok, so once Vauban
has rendered a CloudNativePG `Cluster`, this writes the status CloudNativePG would write when
its instances are up (Ready for the Cluster's current generation), as
tests/integration/test_managed.py does by hand. The apiserver still checks every rendered
Cluster against CloudNativePG's own CRD (v1.30.1, from its Go module)."""

from __future__ import annotations

import threading
from typing import Any

from fleet_kube import Api, ApiError, Watcher, path_of

CLOUDNATIVEPG_VERSION = "v1.30.1"
API_VERSION = "postgresql.cnpg.io/v1"


def healthy_status(obj: dict[str, Any]) -> dict[str, Any]:
    instances = int((obj.get("spec") or {}).get("instances") or 1)
    name = obj["metadata"]["name"]
    return {
        "instances": instances,
        "readyInstances": instances,
        "currentPrimary": f"{name}-1",
        "phase": "Cluster in healthy state",
        "image": "ghcr.io/cloudnative-pg/postgresql:17.6",
        "writeService": f"{name}-rw",
        "readService": f"{name}-r",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "ClusterIsReady",
                "message": "Cluster is Ready",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "observedGeneration": obj["metadata"]["generation"],
            }
        ],
    }


def _reported(obj: dict[str, Any]) -> bool:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return bool(c.get("observedGeneration") == obj["metadata"].get("generation"))
    return False


class Simulator:
    """Marks every CloudNativePG Cluster healthy once, for each generation."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.patched = 0
        self._lock = threading.Lock()
        self.watcher = Watcher(api, API_VERSION, "clusters", on_event=self._on_event)

    def start(self) -> Simulator:
        self.watcher.start()
        return self

    def stop(self) -> None:
        self.watcher.stop()

    def _on_event(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED" or _reported(obj):
            return
        meta = obj["metadata"]
        path = path_of(API_VERSION, "clusters", meta["namespace"], meta["name"]) + "/status"
        try:
            self.api.merge_patch(path, {"status": healthy_status(obj)})
        except ApiError:
            return
        with self._lock:
            self.patched += 1
