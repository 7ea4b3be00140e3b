"""samples/ is valid, and what the README says `make run` shows is what the operator says."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest

from support.kube import KubeCtl, condition, eventually

SAMPLES = Path(__file__).resolve().parents[2] / "samples"

pytestmark = pytest.mark.usefixtures("operator")


@pytest.mark.parametrize(
    ("kind", "name", "reason", "phase"),
    [
        ("managedcluster", "main", "EngineNotInstalled", "Failed"),
        ("manageddatabase", "orders", "ClusterNotReady", "Pending"),
        ("manageddatabase", "analytics", "ClusterNotFound", "Pending"),
    ],
)
def test_samples_report_what_the_readme_says(
    kube: KubeCtl, kind: str, name: str, reason: str, phase: str
) -> None:
    for sample in sorted(SAMPLES.glob("*.yaml")):
        kube.run("apply", "-f", str(sample))

    def reported() -> bool:
        obj = kube.get(kind, name, "vauban-demo")
        ready = condition(obj, "Ready")
        return bool(ready and ready["reason"] == reason and obj["status"]["phase"] == phase)

    eventually(reported, what=f"{kind} {name}: {reason}/{phase}")


def test_external_samples_get_a_status(kube: KubeCtl) -> None:
    """What it says depends on what listens at 127.0.0.1:5432 (make run starts a server
    there; the suite does not), but it always says something."""
    for sample in sorted(SAMPLES.glob("*.yaml")):
        kube.run("apply", "-f", str(sample))
    for kind, name in (("managedcluster", "legacy"), ("manageddatabase", "inventory")):
        eventually(partial(_ready_condition, kube, kind, name), what=f"Ready on {kind} {name}")


def _ready_condition(kube: KubeCtl, kind: str, name: str) -> dict[str, Any] | None:
    return condition(kube.get(kind, name, "vauban-demo"), "Ready")
