"""A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, and kwok for nodes and pods.

Everything listens on loopback only. ClusterIPs are allocated from a private range by the
apiserver but nothing ever dials one: the apiserver's own `kubernetes` Service has no
endpoints (`--endpoint-reconciler-type=none`) and kwok gives fake pods and nodes loopback
addresses.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vauban.builders.backup import AGENT_POD_LABEL
from vauban.devcluster import pki
from vauban.devcluster.build import KWOK_VERSION, Binaries, ensure_binaries, module_source
from vauban.devcluster.process import Managed, die_with, free_port, stop_process_group

logger = logging.getLogger(__name__)

SERVICE_CIDR = "10.96.0.0/24"
SERVICE_IP = "10.96.0.1"
POD_CIDR = "127.1.0.0/16"
NODE_IP = "127.0.0.1"
CONTEXT = "vauban-local"
FAKE_NODES = ("kwok-node-0", "kwok-node-1", "kwok-node-2")
STORAGE_CLASS = "standard"

# kwok's own stage definitions, read from its module: nodes become Ready and keep a lease,
# pods become Running and Ready, Job pods Succeeded, deleted pods go away, claims of the
# default StorageClass get a volume bound.
KWOK_STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
    "volume/fast/pvc-provision.yaml",
    "volume/fast/pv-bind.yaml",
    "volume/fast/pvc-delete.yaml",
    "volume/fast/pv-delete.yaml",
)
KWOK_STORAGE_CLASS = "kwok-volume"


class ControlPlaneError(RuntimeError):
    """A component did not start; the message carries the end of its log."""


@dataclass
class Component:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise ControlPlaneError(
                f"{self.name} exited with code {self.process.returncode}:\n{self.tail()}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        stop_process_group(self.process, timeout)


class LocalControlPlane(Managed):
    """Start with `start()` or as a context manager; `kubeconfig` is then usable by kubectl,
    the Python client and the operator."""

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        binaries: Binaries | None = None,
        keep: bool = False,
    ) -> None:
        """`data_dir` defaults to a fresh temporary folder, removed by `stop()` unless `keep`
        (its logs/ help after a failure); a given `data_dir` is always kept."""
        self._owns_dir = data_dir is None and not keep
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="vauban-controlplane-"))
        self._binaries = binaries
        self._components: list[Component] = []
        self.kubeconfig = self.data_dir / "kubeconfig"
        self.apiserver_port = 0

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def pids(self) -> dict[str, int]:
        """Process id of each running component."""
        return {c.name: c.process.pid for c in self._components}

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> None:
        started = time.monotonic()
        binaries = self._binaries or ensure_binaries()
        try:
            self._start(binaries, deadline=started + timeout)
        except BaseException:
            self.stop()
            raise
        logger.info(
            "local control plane ready at %s in %.1f s (kubeconfig %s)",
            self.server,
            time.monotonic() - started,
            self.kubeconfig,
        )

    def stop(self) -> None:
        for component in reversed(self._components):
            component.stop()
        self._components.clear()
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    close = stop

    def _start(self, binaries: Binaries, deadline: float) -> None:
        certs = pki.create(self.data_dir / "pki", service_ip=SERVICE_IP)
        etcd_port, etcd_peer_port = free_port(), free_port()
        self.apiserver_port = free_port()
        self._write_kubeconfig(certs)

        etcd = self._spawn(
            "etcd",
            [
                str(binaries.etcd),
                "--name=vauban",
                f"--data-dir={self.data_dir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}",
                f"--initial-cluster=vauban=http://127.0.0.1:{etcd_peer_port}",
                # A throw-away store: durability only costs time here.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait(etcd, deadline, lambda: _http_ok(f"http://127.0.0.1:{etcd_port}/health"))

        apiserver = self._spawn(
            "kube-apiserver",
            [
                str(binaries.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                # No endpoints for the `kubernetes` Service: nothing may dial a ClusterIP.
                "--endpoint-reconciler-type=none",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--tls-cert-file={certs.server_cert}",
                f"--tls-private-key-file={certs.server_key}",
                f"--client-ca-file={certs.ca_cert}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={certs.service_account_public}",
                f"--service-account-signing-key-file={certs.service_account_key}",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                "--profiling=false",
            ],
        )
        context = self._ssl_context(certs)
        self._wait(apiserver, deadline, lambda: _http_ok(f"{self.server}/readyz", context=context))

        common = [
            f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
        ]
        self._spawn(
            "kube-controller-manager",
            [
                str(binaries.kube_controller_manager),
                *common,
                f"--service-account-private-key-file={certs.service_account_key}",
                f"--root-ca-file={certs.ca_cert}",
                # Pod CIDRs come from kwok; there is no cloud.
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller",
            ],
        )
        self._spawn("kube-scheduler", [str(binaries.kube_scheduler), *common])
        stages = self._write_kwok_stages()
        self._spawn(
            "kwok",
            [
                str(binaries.kwok),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={stages}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-label-selector=type=kwok",
                f"--node-ip={NODE_IP}",
                f"--cidr={POD_CIDR}",
                "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{free_port()}",
            ],
        )

        kubectl = [str(binaries.kubectl), f"--kubeconfig={self.kubeconfig}"]
        self._kubectl_apply(kubectl, self._cluster_objects())
        # The default ServiceAccount is made by the controller manager: proof that it runs.
        self._wait_all(
            deadline,
            lambda: _succeeds([*kubectl, "get", "serviceaccount", "default", "-n", "default"]),
        )
        self._wait_all(
            deadline,
            lambda: _succeeds(
                [
                    *kubectl,
                    "wait",
                    "--for=condition=Ready",
                    "--timeout=5s",
                    *(f"node/{n}" for n in FAKE_NODES),
                ]
            ),
        )

    # -- helpers --------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> Component:
        log = self.data_dir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with(os.getpid()),
                cwd=self.data_dir,
            )
        component = Component(name, process, log)
        self._components.append(component)
        return component

    def _wait(self, component: Component, deadline: float, ready: Callable[[], bool]) -> None:
        while not ready():
            component.check_alive()
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"{component.name} not ready in time:\n{component.tail()}")
            time.sleep(0.2)

    def _wait_all(self, deadline: float, ready: Callable[[], bool]) -> None:
        while not ready():
            for component in self._components:
                component.check_alive()
            if time.monotonic() > deadline:
                tails = "\n\n".join(f"== {c.name}\n{c.tail(15)}" for c in self._components)
                raise ControlPlaneError(f"control plane not ready in time:\n{tails}")
            time.sleep(0.3)

    @staticmethod
    def _ssl_context(certs: pki.Pki) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(certs.ca_cert))
        context.load_cert_chain(str(certs.admin_cert), str(certs.admin_key))
        return context

    def _write_kubeconfig(self, certs: pki.Pki) -> None:
        write_kubeconfig(
            self.kubeconfig, self.server, certs.ca_cert, certs.admin_cert, certs.admin_key
        )

    def _write_kwok_stages(self) -> Path:
        source = module_source("sigs.k8s.io/kwok", KWOK_VERSION) / "kustomize" / "stage"
        documents = [(source / stage).read_text(encoding="utf-8") for stage in KWOK_STAGES]
        # Pods of Vauban's backup agent are not completed by kwok: the AgentRunner runs them
        # for real (on loopback) and writes their outcome.
        documents = [
            yaml.safe_dump(_without_agent_pods(yaml.safe_load(d)))
            if "name: pod-complete" in d
            else d
            for d in documents
        ]
        # Claims of our default class are provisioned by kwok's stage, written for its own.
        text = "\n---\n".join(documents).replace(f"'{KWOK_STORAGE_CLASS}'", f"'{STORAGE_CLASS}'")
        path = self.data_dir / "kwok-stages.yaml"
        path.write_text(text, encoding="utf-8")
        return path

    @staticmethod
    def _cluster_objects() -> list[dict[str, object]]:
        nodes: list[dict[str, object]] = [
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": {
                        "type": "kwok",
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "topology.kubernetes.io/zone": f"zone-{'abc'[i]}",
                    },
                    "annotations": {"kwok.x-k8s.io/node": "fake"},
                },
                "status": {
                    "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "500"},
                    "capacity": {"cpu": "32", "memory": "256Gi", "pods": "500"},
                },
            }
            for i, name in enumerate(FAKE_NODES)
        ]
        storage_class: dict[str, object] = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": STORAGE_CLASS,
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": "kwok.x-k8s.io/volume",
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        }
        return [*nodes, storage_class]

    def _kubectl_apply(self, kubectl: list[str], objects: list[dict[str, object]]) -> None:
        manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
        result = subprocess.run(
            [*kubectl, "apply", "-f", "-"],
            input=manifest,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ControlPlaneError(f"could not create nodes and storage class:\n{result.stderr}")


def write_kubeconfig(
    path: Path, server: str, ca: Path, cert: Path, key: Path, user: str = "vauban-admin"
) -> None:
    """A kubeconfig with one context (CONTEXT), authenticated by a client certificate."""

    def b64(file: Path) -> str:
        return base64.b64encode(file.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CONTEXT,
                "cluster": {"server": server, "certificate-authority-data": b64(ca)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)},
            }
        ],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": user}}],
        "current-context": CONTEXT,
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    path.chmod(0o600)


def _without_agent_pods(stage: dict[str, Any]) -> dict[str, Any]:
    stage["spec"]["selector"]["matchExpressions"].append(
        {"key": f'.metadata.labels["{AGENT_POD_LABEL}"]', "operator": "DoesNotExist"}
    )
    return stage


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _succeeds(argv: list[str]) -> bool:
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0
