"""What the real node's cluster runs on top, installed the way users install it: CloudNativePG
from its release manifest, and Vauban with `helm install` of helm/vauban, both with the images
built on this machine (`vauban.devcluster.images`)."""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from vauban.devcluster import pki
from vauban.devcluster.build import (
    BARMAN_CLOUD_PLUGIN_VERSION,
    CLOUDNATIVEPG_VERSION,
    ensure_tool,
    module_source,
)
from vauban.devcluster.images import (
    AGENT_REPOSITORY,
    BARMAN_CLOUD_PLUGIN_IMAGE,
    BARMAN_CLOUD_SIDECAR_IMAGE,
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


BARMAN_CLOUD_SERVICE = "barman-cloud"
"""The plugin's Service in CloudNativePG's namespace, and the name its certificate is for."""


def _tls_secret(
    name: str,
    cert: x509.Certificate,
    key: Any,
    ca: x509.Certificate,
) -> dict[str, Any]:
    """A kubernetes.io/tls Secret whose tls.crt also carries the CA: CloudNativePG and the
    plugin each trust the other's tls.crt as a CA bundle (upstream, cert-manager's self-signed
    certificates)."""
    pem = cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(
        serialization.Encoding.PEM
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": CLOUDNATIVEPG_NAMESPACE},
        "data": {
            "tls.crt": base64.b64encode(pem).decode(),
            "tls.key": base64.b64encode(key_pem).decode(),
            "ca.crt": base64.b64encode(ca.public_bytes(serialization.Encoding.PEM)).decode(),
        },
    }


def barman_cloud_crd() -> Path:
    """The plugin's ObjectStore CRD, for control planes that run no plugin (kwok's)."""
    source = module_source(
        "github.com/cloudnative-pg/plugin-barman-cloud", BARMAN_CLOUD_PLUGIN_VERSION
    )
    return source / "config" / "crd" / "bases" / "barmancloud.cnpg.io_objectstores.yaml"


def barman_cloud_manifest() -> list[dict[str, Any]]:
    """plugin-barman-cloud's manifest from its Go module, for the images built here: its
    cert-manager Certificates and Issuer replaced by Secrets signed by a CA made here (no
    cert-manager on the real node), the images named after ours."""
    source = module_source(
        "github.com/cloudnative-pg/plugin-barman-cloud", BARMAN_CLOUD_PLUGIN_VERSION
    )
    text = (source / "manifest.yaml").read_text(encoding="utf-8")
    objects = [o for o in yaml.safe_load_all(text) if o]
    kept = [o for o in objects if not o["apiVersion"].startswith("cert-manager.io/")]
    deployments = [o for o in kept if o["kind"] == "Deployment"]
    sidecar = [o for o in kept if o["kind"] == "Secret" and "SIDECAR_IMAGE" in o.get("data", {})]
    if len(deployments) != 1 or len(sidecar) != 1 or len(objects) - len(kept) != 3:
        raise InstallError(
            "plugin-barman-cloud's manifest.yaml no longer has one Deployment, one "
            "SIDECAR_IMAGE Secret and three cert-manager objects: revisit "
            "vauban.devcluster.install.barman_cloud_manifest"
        )
    (container,) = deployments[0]["spec"]["template"]["spec"]["containers"]
    container["image"] = BARMAN_CLOUD_PLUGIN_IMAGE
    container["imagePullPolicy"] = "IfNotPresent"
    sidecar[0]["data"] = {
        "SIDECAR_IMAGE": base64.b64encode(BARMAN_CLOUD_SIDECAR_IMAGE.encode()).decode()
    }
    ca, ca_key = pki.certificate_authority("plugin-barman-cloud")
    server, server_key = pki.leaf_certificate(
        ca,
        ca_key,
        pki.name(BARMAN_CLOUD_SERVICE),
        ExtendedKeyUsageOID.SERVER_AUTH,
        x509.SubjectAlternativeName([x509.DNSName(BARMAN_CLOUD_SERVICE)]),
    )
    client, client_key = pki.leaf_certificate(
        ca, ca_key, pki.name("barman-cloud-client"), ExtendedKeyUsageOID.CLIENT_AUTH
    )
    return [
        _tls_secret("barman-cloud-server-tls", server, server_key, ca),
        _tls_secret("barman-cloud-client-tls", client, client_key, ca),
        *kept,
    ]


def install_barman_cloud(kubectl: Kubectl, *, timeout: float = 300) -> float:
    """plugin-barman-cloud (CNPG-I) beside CloudNativePG; returns the seconds it took."""
    started = time.monotonic()
    manifest = "\n---\n".join(json.dumps(o) for o in barman_cloud_manifest())
    kubectl.run("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=manifest)
    kubectl.run(
        "rollout",
        "status",
        "-n",
        CLOUDNATIVEPG_NAMESPACE,
        f"deployment/{BARMAN_CLOUD_SERVICE}",
        f"--timeout={int(timeout)}s",
        timeout=timeout + 30,
    )
    elapsed = time.monotonic() - started
    logger.info("plugin-barman-cloud %s available in %.1f s", BARMAN_CLOUD_PLUGIN_VERSION, elapsed)
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
