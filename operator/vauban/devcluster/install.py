"""What the real node's cluster runs on top, installed the way users install it: CloudNativePG
from its release manifest, and Vauban with `helm install` of helm/vauban, both with the images
built on this machine (`vauban.devcluster.images`)."""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vauban.devcluster.build import CLOUDNATIVEPG_VERSION, ensure_tool, module_source
from vauban.devcluster.images import (
    AGENT_REPOSITORY,
    OPERATOR_REPOSITORY,
    POSTGRES_REPOSITORY,
    Images,
)

logger = logging.getLogger(__name__)

CLOUDNATIVEPG_NAMESPACE = "cnpg-system"
VAUBAN_NAMESPACE = "vauban-system"
RELEASE = "vauban"
# operator/vauban/devcluster/install.py -> the repository root.
CHART = Path(__file__).resolve().parents[3] / "helm" / "vauban"


class InstallError(RuntimeError):
    """An installation step failed; the message carries what the tool said."""


@dataclass(frozen=True)
class Kubectl:
    binary: Path
    kubeconfig: Path

    def run(self, *args: str, stdin: str | None = None, timeout: float = 300) -> str:
        result = subprocess.run(
            [str(self.binary), f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise InstallError(f"kubectl {' '.join(args)} failed:\n{result.stderr[-3000:]}")
        return result.stdout


def cloudnativepg_manifest() -> str:
    """CloudNativePG's release manifest, from its Go module (the version whose manager the
    image holds). Its operator's `imagePullPolicy: Always` becomes IfNotPresent: nothing can
    be pulled here, the image is already on every node."""
    version = CLOUDNATIVEPG_VERSION.removeprefix("v")
    source = module_source("github.com/cloudnative-pg/cloudnative-pg", CLOUDNATIVEPG_VERSION)
    text = (source / "releases" / f"cnpg-{version}.yaml").read_text(encoding="utf-8")
    if text.count("imagePullPolicy: Always") != 1:
        raise InstallError(
            f"cnpg-{version}.yaml no longer has exactly one `imagePullPolicy: Always`: "
            "revisit vauban.devcluster.install.cloudnativepg_manifest"
        )
    return text.replace("imagePullPolicy: Always", "imagePullPolicy: IfNotPresent")


def install_cloudnativepg(kubectl: Kubectl, *, timeout: float = 300) -> float:
    """Apply the manifest and wait for the operator to be available; returns the seconds."""
    started = time.monotonic()
    kubectl.run(
        "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=cloudnativepg_manifest()
    )
    kubectl.run(
        "rollout",
        "status",
        "-n",
        CLOUDNATIVEPG_NAMESPACE,
        "deployment/cnpg-controller-manager",
        f"--timeout={int(timeout)}s",
        timeout=timeout + 30,
    )
    elapsed = time.monotonic() - started
    logger.info("CloudNativePG %s available in %.1f s", CLOUDNATIVEPG_VERSION, elapsed)
    return elapsed


def vauban_values(images: Images, *, object_storage_ports: Sequence[int]) -> dict[str, Any]:
    """The chart's values for the images built here (what a user sets for a mirror)."""
    tag = images.operator_tag
    agent_tag = images.agent.name.rsplit(":", 1)[1]
    return {
        "image": {"repository": OPERATOR_REPOSITORY, "tag": tag, "pullPolicy": "IfNotPresent"},
        "backupAgent": {"image": {"repository": AGENT_REPOSITORY, "tag": agent_tag}},
        "operator": {"postgresImageRepository": POSTGRES_REPOSITORY, "logFormat": "plain"},
        "networkPolicy": {"objectStoragePorts": sorted({443, *object_storage_ports})},
    }


def install_vauban(
    kubectl: Kubectl,
    images: Images,
    *,
    object_storage_ports: Sequence[int] = (),
    extra_values: dict[str, Any] | None = None,
    timeout: float = 300,
) -> float:
    """`helm install` of the chart in its namespace, labelled for Pod Security "restricted"
    (enforced), waiting for both replicas; returns the seconds."""
    started = time.monotonic()
    namespace = json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": VAUBAN_NAMESPACE,
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                },
            },
        }
    )
    kubectl.run("apply", "-f", "-", stdin=namespace)
    values = vauban_values(images, object_storage_ports=list(object_storage_ports))
    for key, value in (extra_values or {}).items():
        values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) else value
    helm = ensure_tool("helm")
    result = subprocess.run(
        [
            str(helm),
            "upgrade",
            "--install",
            RELEASE,
            str(CHART),
            f"--kubeconfig={kubectl.kubeconfig}",
            f"--namespace={VAUBAN_NAMESPACE}",
            "--values=-",
            "--wait",
            f"--timeout={int(timeout)}s",
        ],
        input=json.dumps(values),
        capture_output=True,
        text=True,
        timeout=timeout + 60,
        check=False,
    )
    if result.returncode != 0:
        raise InstallError(f"helm install of Vauban failed:\n{result.stderr[-3000:]}")
    # helm's --wait counts a Deployment ready at replicas - maxUnavailable, i.e. one pod of two
    # with the chart's maxUnavailable: 1. A rollout is complete only when every replica is.
    kubectl.run(
        "rollout",
        "status",
        f"deployment/{RELEASE}",
        f"--namespace={VAUBAN_NAMESPACE}",
        f"--timeout={int(timeout)}s",
        timeout=timeout + 60,
    )
    elapsed = time.monotonic() - started
    logger.info("Vauban installed by its chart, both replicas ready, in %.1f s", elapsed)
    return elapsed
