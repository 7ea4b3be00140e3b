"""kubectl for the tests: they act as a user would, with YAML and the real apiserver."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


@dataclass(frozen=True)
class KubeCtl:
    binary: str
    kubeconfig: Path

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary, f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
        return result

    def apply(
        self, manifest: dict[str, Any] | str, *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        return self.run("apply", "-f", "-", stdin=text, check=check)

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any]:
        out = self.run("get", kind, name, "-n", namespace, "-o", "json").stdout
        return json.loads(out)  # type: ignore[no-any-return]

    def get_list(self, kind: str, namespace: str, *selectors: str) -> list[dict[str, Any]]:
        out = self.run("get", kind, "-n", namespace, "-o", "json", *selectors).stdout
        return json.loads(out)["items"]  # type: ignore[no-any-return]

    def unique_namespace(self, hint: str) -> str:
        base = re.sub(r"[^a-z0-9-]+", "-", hint.lower()).strip("-")[:40].strip("-")
        name = f"{base}-{uuid.uuid4().hex[:6]}"
        self.run("create", "namespace", name)
        return name


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in obj.get("status", {}).get("conditions", []):
        if c["type"] == type_:
            return c  # type: ignore[no-any-return]
    return None


def ready(kube: KubeCtl, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    """The object if its Ready condition is True, else None (for `eventually`)."""
    obj = kube.get(kind, name, namespace)
    c = condition(obj, "Ready")
    return obj if c and c["status"] == "True" else None


def with_reason(
    kube: KubeCtl, kind: str, name: str, namespace: str, reason: str
) -> dict[str, Any] | None:
    """The object if its Ready condition has `reason`, else None (for `eventually`)."""
    obj = kube.get(kind, name, namespace)
    ready = condition(obj, "Ready")
    return obj if ready and ready["reason"] == reason else None


def string_secret(namespace: str, name: str, **values: str) -> dict[str, Any]:
    """A Secret holding `values` (as stringData)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": values,
    }


def external_cluster(namespace: str, name: str, port: int, **spec: Any) -> dict[str, Any]:
    """A mode External ManagedCluster at 127.0.0.1:`port`, admin Secret `admin`. The suite's
    servers have no certificate; real deployments keep sslMode verify-full."""
    return {
        "apiVersion": "vauban.dev/v1alpha1",
        "kind": "ManagedCluster",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "mode": "External",
            "external": {
                "host": "127.0.0.1",
                "port": port,
                "adminSecretRef": {"name": "admin"},
                "sslMode": "disable",
            },
            **spec,
        },
    }


def managed_cluster(namespace: str, name: str, instances: int, **spec: Any) -> dict[str, Any]:
    """A mode Managed ManagedCluster of PostgreSQL 17, sized for the real node's tests."""
    return {
        "apiVersion": "vauban.dev/v1alpha1",
        "kind": "ManagedCluster",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "version": "17",
            "instances": instances,
            "storage": {"size": "1Gi"},
            "resources": {
                "requests": {"cpu": "100m", "memory": "256Mi"},
                "limits": {"memory": "512Mi"},
            },
            **spec,
        },
    }


def eventually(probe: Callable[[], T | None], *, timeout: float = 30.0, what: str = "") -> T:
    """Poll until `probe` returns something truthy; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or probe}; last: {last!r}")


@dataclass(frozen=True)
class OperatorProcess:
    """`vauban run` started by the suite, and where its log goes."""

    process: subprocess.Popen[bytes]
    log: Path
    metrics_port: int

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample of the operator's /metrics, as Prometheus would scrape it."""
        from prometheus_client.parser import text_string_to_metric_families

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return None


ROOT = Path(__file__).resolve().parents[2]


def install_crds(kube: KubeCtl) -> None:
    """Vauban's CRDs and admission policy, as `make run` and the Helm chart install them."""
    from vauban.api.crdgen import KINDS
    from vauban.devrun import wait_established

    kube.run("apply", "--server-side", "--field-manager=vauban-tests", "-f", str(ROOT / "crds"))
    wait_established(Path(kube.binary), kube.kubeconfig, [kind.crd_name for kind in KINDS])


@contextlib.contextmanager
def own_control_plane(root: Path) -> Iterator[KubeCtl]:
    """A control plane of a test module's own, with Vauban's CRDs, for tests that need what
    the session's must not have (CloudNativePG's CRDs, operators of their own)."""
    from vauban.devcluster import LocalControlPlane, ensure_binaries

    with LocalControlPlane(root / "plane") as plane:
        kube = KubeCtl(str(ensure_binaries().kubectl), plane.kubeconfig)
        install_crds(kube)
        kube.apply(operator_namespace())
        yield kube


OPERATOR_NAMESPACE = "vauban-system"


def operator_namespace() -> dict[str, Any]:
    """The operator's own namespace (its keys, its backup agent's Jobs), as its chart makes."""
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}}
