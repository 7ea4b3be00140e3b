"""Helm for the tests: the chart is linted, rendered and installed with the real helm binary
(built from its Go module, like the control plane), as a platform team would."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from support.kube import ROOT, KubeCtl, eventually

CHART = ROOT / "helm" / "vauban"

# helm template assumes Kubernetes v1.20 unless told, and the chart requires >= 1.30.
KUBE_VERSION = "1.36.3"


@dataclass(frozen=True)
class Helm:
    binary: str

    def run(
        self, *args: str, kubeconfig: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        extra = [f"--kubeconfig={kubeconfig}"] if kubeconfig else []
        result = subprocess.run(
            [self.binary, *args, *extra],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
        return result

    def template(
        self,
        release: str,
        namespace: str,
        values: dict[str, Any] | None = None,
        *,
        crds: bool = False,
        check: bool = True,
        only: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """`helm template` of the chart (only one template's output if `only`); values are
        passed as a JSON document (valid YAML)."""
        args = ["template", release, str(CHART), "--namespace", namespace]
        args += [f"--kube-version={KUBE_VERSION}", "--values=-"]
        if only:
            args.append(f"--show-only=templates/{only}")
        if crds:
            args.append("--include-crds")
        result = subprocess.run(
            [self.binary, *args],
            input=json.dumps(values or {}),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm template failed:\n{result.stderr}")
        return result

    def render(
        self,
        release: str,
        namespace: str,
        values: dict[str, Any] | None = None,
        *,
        crds: bool = False,
    ) -> list[dict[str, Any]]:
        """The rendered objects, parsed."""
        text = self.template(release, namespace, values, crds=crds).stdout
        return [doc for doc in yaml.safe_load_all(text) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one rendered object of `kind` (and `name`)."""
    found = [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def token_kubeconfig(kube: KubeCtl, service_account: str, namespace: str, out: Path) -> Path:
    """A kubeconfig that authenticates as a ServiceAccount (a TokenRequest, as the kubelet
    gets for a pod), to run the operator with exactly the chart's RBAC."""
    token = kube.run(
        "create", "token", service_account, "-n", namespace, "--duration=1h"
    ).stdout.strip()
    config = yaml.safe_load(kube.kubeconfig.read_text(encoding="utf-8"))
    config["users"] = [{"name": service_account, "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = service_account
    out.write_text(yaml.safe_dump(config), encoding="utf-8")
    out.chmod(0o600)
    return out


def wait_for_operator_policy(operator: KubeCtl, namespace: str, timeout: float = 30.0) -> None:
    """Until the chart's admission policy on Secrets binds the operator: the apiserver
    enforces a new policy a moment after it is created, and a test of what the operator may
    do under it must not run in that moment. Probed with a server-side dry run of a Secret
    the policy refuses (admission runs, nothing is stored)."""
    probe = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "policy-probe", "namespace": namespace},
    }

    def enforced() -> bool | None:
        result = operator.run(
            "create", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(probe), check=False
        )
        return "ValidatingAdmissionPolicy" in result.stderr or None

    eventually(enforced, timeout=timeout, what="the operator's admission policy enforced")
