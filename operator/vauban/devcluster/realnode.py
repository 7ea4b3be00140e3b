"""The local cluster with real nodes: pods run for real, in containers, on this machine.

Everything runs inside one network namespace the cluster creates (`ip netns add`), with no
route out: only `lo`, a bridge holding the control plane's and the nodes' addresses
(10.250.0.0/24), a route for the Service range, and one CNI bridge per node for its pods
(10.244.<n>.0/24). Pods reach Services, the node addresses and each other, and nothing else.
Components are started with `nsenter --net=/run/netns/<name>` (not `ip netns exec`, which
remounts /sys and hides the cgroup mounts runc needs).

- etcd, kube-apiserver, kube-controller-manager, kube-scheduler: as in the kwok mode, the
  apiserver advertising 10.250.0.1;
- containerd and runc (Debian packages): one containerd per node, each with its own folders
  and socket;
- kubelet (`k8s.io/kubernetes`, cached as `kubernetes-node-<version>`): one per node (node-a,
  node-b, ... in zones zone-a, zone-b, ...);
- kube-proxy (same module): Services, in nftables mode, for the whole namespace;
- CoreDNS (its Go module): cluster DNS on 10.250.0.1:53, nothing upstream;
- the CNI bridge and host-local plugins (Debian's containernetworking-plugins): pod networking.

Storage: static `local` PersistentVolumes under the cluster's folder (a few per node) and a
default StorageClass `standard` without provisioner; a released volume is wiped and offered
again. Images: `vauban.devcluster.images`, imported into each node's containerd.

The host is left as it was: settings that would change it are avoided (kube-proxy's conntrack
sysctls off; the kubelet sees the kernel settings it wants through files bind-mounted in a
mount namespace of its own, instead of writing the host's), and `stop()` removes every
process, mount, cgroup, the namespace, and the entries containerd, CNI and the kubelet write
outside the project's folders (`hostclean`). A cluster whose process died is swept by the
next start, or `vauban dev clean`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vauban.devcluster import forward, hostclean, pki
from vauban.devcluster.build import (
    Binaries,
    NodeBinaries,
    cache_dir,
    ensure_binaries,
    ensure_node_binaries,
)
from vauban.devcluster.controlplane import (
    Component,
    ControlPlaneError,
    LocalControlPlane,
    _http_ok,
    _succeeds,
    write_kubeconfig,
)
from vauban.devcluster.images import Images, ensure_images, import_images
from vauban.devcluster.install import (
    Kubectl,
    install_barman_cloud,
    install_cloudnativepg,
    install_vauban,
)
from vauban.devcluster.process import stop_process_group

logger = logging.getLogger(__name__)

API_IP = "10.250.0.1"
"""The apiserver's advertised address, CoreDNS's, and where test servers (S3) listen."""
NODE_NETWORK = "10.250.0.0/24"
SERVICE_CIDR = "10.96.0.0/24"
SERVICE_IP = "10.96.0.1"
POD_CIDR = "10.244.0.0/16"
APISERVER_PORT = 6443
CLUSTER_DOMAIN = "cluster.local"
NODE_BRIDGE = "vauban0"
STORAGE_CLASS = "standard"
VOLUMES_PER_NODE = 6
VOLUME_CAPACITY = "100Gi"
VOLUME_LABEL = "vauban.dev/local-volume"
CNI_BIN = Path("/usr/lib/cni")
CONTENT_STORE = "io.containerd.content.v1.content"
"""containerd's blob folder, under its root."""
# The kernel settings the kubelet insists on (it writes them, host-wide, if they differ):
# shown to it, in its own mount namespace, as files with the values it wants.
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}
HOST_TOOLS: tuple[str, ...] = ("ip", "nsenter", "unshare", "mount", "umount", "containerd", "ctr")
HOST_TOOLS += ("runc", "nft", "containerd-shim-runc-v2", "mmdebstrap", "tar", "chroot", "cp")


def node_name(index: int) -> str:
    return f"node-{'abcdefghi'[index]}"


def node_ip(index: int) -> str:
    return f"10.250.0.{11 + index}"


def unavailable_reason() -> str | None:
    """Why this machine cannot run the real node, in a sentence; None when it can."""
    if sys.platform != "linux":
        return "the real node needs Linux (network namespaces, cgroups, overlayfs)"
    if os.geteuid() != 0:
        return "the real node needs root (a network namespace, mounts, cgroups, containerd)"
    missing = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    missing += [
        f"{CNI_BIN}/{plugin}"
        for plugin in ("bridge", "host-local", "loopback")
        if not (CNI_BIN / plugin).is_file()
    ]
    if missing:
        return (
            f"missing on this machine: {', '.join(missing)} (Debian: apt-get install containerd "
            "runc containernetworking-plugins nftables iproute2 util-linux mmdebstrap)"
        )
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        filesystems = ""
    if "overlay" not in filesystems:
        return "the kernel has no overlayfs (containerd's snapshotter)"
    if not hostclean.cgroup_hierarchies():
        return "no cgroup hierarchy is mounted"
    probe = f"vauban-probe-{os.getpid()}"
    had_netns_dir = hostclean.NETNS_DIR.exists()
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if result.returncode != 0:
        return f"cannot create a network namespace: {result.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True, check=False)
    if not had_netns_dir:
        hostclean.delete_netns(probe)
    return None


# -- bookkeeping of running clusters (for the clean-up of one whose process died) -------------


@dataclass
class Record:
    id: str
    pid: int
    started: str
    data_dir: str
    owns_dir: bool
    netns: str
    cgroup: str
    cni_networks: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return records_dir() / f"{self.id}.json"

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(asdict(self)))

    def alive(self) -> bool:
        return _process_start(self.pid) == self.started


def records_dir() -> Path:
    return cache_dir() / "realnode"


def _process_start(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def records() -> list[Record]:
    found = []
    for path in sorted(records_dir().glob("*.json")):
        with contextlib.suppress(OSError, ValueError, TypeError):
            found.append(Record(**json.loads(path.read_text())))
    return found


def clean(record: Record) -> dict[str, list[str]]:
    """Remove every trace of a cluster; returns what could not be removed (empty lists)."""
    data_dir = Path(record.data_dir)
    netns = hostclean.NETNS_DIR / record.netns
    survivors = hostclean.kill_everything(netns, record.cgroup)
    sockets = hostclean.shim_sockets(data_dir.glob("nodes/*/containerd/state"))
    sandboxes = hostclean.sandbox_ids(data_dir)
    mounts = hostclean.unmount_all(data_dir)
    cgroups = hostclean.remove_cgroups(record.cgroup)
    hostclean.delete_netns(record.netns)
    others = [r for r in records() if r.id != record.id and r.alive()]
    hostclean.remove_shared(
        shim_socket_paths=sockets,
        cni_networks=record.cni_networks,
        sandboxes=sandboxes,
        data_dir=data_dir,
        last_instance=not others,
    )
    if record.owns_dir and not mounts:
        shutil.rmtree(data_dir, ignore_errors=True)
    record.path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        records_dir().rmdir()
    return {
        "processes": [str(p) for p in sorted(survivors)],
        "mounts": mounts,
        "cgroups": cgroups,
        "netns": [record.netns] if (hostclean.NETNS_DIR / record.netns).exists() else [],
    }


def sweep_stale() -> dict[str, dict[str, list[str]]]:
    """Clean up clusters whose process is gone (killed without its clean-up); returns, by
    cluster, what could not be removed."""
    swept = {}
    for record in records():
        if not record.alive():
            logger.warning(
                "cleaning up real-node cluster %s left by process %d", record.id, record.pid
            )
            swept[record.id] = clean(record)
    known = {record.id for record in records()}
    for cluster_id in orphans() - known:
        if _control_plane_runs(hostclean.NETNS_DIR / f"vauban-{cluster_id}"):
            continue  # someone's cluster, recorded in another cache folder
        logger.warning("cleaning up real-node cluster %s, which left no record", cluster_id)
        swept[cluster_id] = clean(
            Record(
                id=cluster_id,
                pid=0,
                started="",
                data_dir=str(_orphan_data_dir(cluster_id)),
                owns_dir=False,
                netns=f"vauban-{cluster_id}",
                cgroup=f"/vauban-{cluster_id}",
                cni_networks=[RealCluster._cni_network_name(cluster_id, i) for i in range(9)],
            )
        )
    return swept


_CLUSTER_NAME = re.compile(r"vauban-([0-9a-f]{8})")


def orphans() -> set[str]:
    """Ids of clusters whose namespace or cgroups exist (a record lost with its cache, say)."""
    names = [p.name for p in hostclean.NETNS_DIR.glob("vauban-*")]
    names += [p.name for h in hostclean.cgroup_hierarchies() for p in h.glob("vauban-*")]
    return {m.group(1) for name in names if (m := _CLUSTER_NAME.fullmatch(name))}


def _control_plane_runs(netns: Path) -> bool:
    """Whether the cluster's etcd or apiserver still run: they die with the process that
    started them, so a cluster without them is left behind."""
    for pid in hostclean.processes_in_netns(netns):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() in ("etcd", "kube-apiserver"):
                return True
    return False


def _orphan_data_dir(cluster_id: str) -> Path:
    """The folder of a recordless cluster, found from its mounts (each node's CNI
    configuration names the cluster), else a path that does not exist."""
    for point in hostclean.mount_points():
        if "/nodes/node-" not in point:
            continue
        folder = Path(point.split("/nodes/node-", 1)[0])
        for conflist in folder.glob("nodes/*/cni/net.d/*.conflist"):
            if f"vauban-{cluster_id}-" in conflist.read_text(errors="replace"):
                return folder
    return Path("/nonexistent-vauban-cluster")


def footprint(record: Record) -> dict[str, list[str]]:
    """What of a cluster exists on the host right now (after `stop()`: nothing)."""
    data_dir = Path(record.data_dir)
    netns = hostclean.NETNS_DIR / record.netns
    return {
        "processes": [
            str(p)
            for p in sorted(
                hostclean.processes_in_netns(netns) | hostclean.processes_in_cgroups(record.cgroup)
            )
        ],
        "mounts": hostclean.mounts_under(data_dir),
        "cgroups": [str(p) for p in hostclean.cgroup_dirs(record.cgroup)],
        "netns": [record.netns] if netns.exists() else [],
        "cni_results": [
            str(p)
            for n in [*record.cni_networks, "cni-loopback"]
            for s in hostclean.sandbox_ids(data_dir)
            for p in hostclean.CNI_RESULTS.glob(f"{n}-{s}-*")
        ],
        "data_dir": [str(data_dir)] if record.owns_dir and data_dir.exists() else [],
    }


# -- the cluster ------------------------------------------------------------------------------


# -- the cluster ------------------------------------------------------------------------------


class RealCluster(LocalControlPlane):
    """A control plane and `nodes` real nodes in a network namespace of their own. The
    kubeconfig (`kubeconfig`) reaches the apiserver from this machine through a forwarder on
    127.0.0.1; `inner_kubeconfig` is the one for processes inside the namespace."""

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        nodes: int = 3,
        keep: bool = False,
        binaries: Binaries | None = None,
        images: Images | None = None,
        preload: bool = True,
    ) -> None:
        """`preload=False` imports only the sandbox image into the nodes (a quicker start, for
        clusters that run nothing else)."""
        if not 1 <= nodes <= 9:
            raise ValueError("between 1 and 9 nodes")
        super().__init__(
            data_dir or Path(tempfile.mkdtemp(prefix="vauban-realnode-")),
            binaries=binaries,
        )
        self._owns_dir = data_dir is None and not keep
        self.nodes = nodes
        self.images = images
        self.preload = preload
        self.id = secrets.token_hex(4)
        self.netns = f"vauban-{self.id}"
        self.cgroup = f"/vauban-{self.id}"
        self.inner_kubeconfig = self.data_dir / "inner.kubeconfig"
        self.record: Record | None = None
        self._recycler: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def netns_path(self) -> Path:
        return hostclean.NETNS_DIR / self.netns

    @property
    def node_names(self) -> list[str]:
        return [node_name(i) for i in range(self.nodes)]

    def in_netns(self, *argv: str) -> list[str]:
        """`argv`, run inside the cluster's network namespace."""
        return ["nsenter", f"--net={self.netns_path}", "--", *argv]

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 300.0) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise ControlPlaneError(f"this machine cannot run the real node: {reason}")
        sweep_stale()
        binaries = self._binaries or ensure_binaries()
        node_binaries = ensure_node_binaries()
        images = self.images or ensure_images()
        self.images = images
        started = time.monotonic()
        self.record = Record(
            id=self.id,
            pid=os.getpid(),
            started=_process_start(os.getpid()),
            data_dir=str(self.data_dir),
            owns_dir=self._owns_dir,
            netns=self.netns,
            cgroup=self.cgroup,
            cni_networks=[self._cni_network(i) for i in range(self.nodes)],
        )
        self.record.save()
        try:
            self._start_real(binaries, node_binaries, images, deadline=started + timeout)
        except BaseException:
            self.stop()
            raise
        logger.info(
            "real-node cluster (%d nodes) ready in %.1f s, namespace %s (kubeconfig %s)",
            self.nodes,
            time.monotonic() - started,
            self.netns,
            self.kubeconfig,
        )

    def stop(self) -> None:
        self._stopping.set()
        if self._recycler is not None:
            self._recycler.join(timeout=10)
            self._recycler = None
        # Killed, not asked to stop: the cluster is thrown away, and a graceful stop (kubelets
        # draining pods, the apiserver its requests) took 15 s for nothing. What they leave
        # (containers, mounts) is what clean() removes after a crash too.
        for component in self._components:
            stop_process_group(component.process, 5, first=signal.SIGKILL)
        self._components.clear()
        if self.record is not None:
            left = clean(self.record)
            if any(left.values()):
                logger.error("the real node left behind: %s", left)
            self.record = None
        elif self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    close = stop

    @property
    def kubectl(self) -> Kubectl:
        return Kubectl(ensure_binaries().kubectl, self.kubeconfig)

    def install_stack(
        self,
        *,
        vauban: bool = True,
        object_storage_ports: Sequence[int] = (),
        values: dict[str, Any] | None = None,
    ) -> dict[str, float]:
        """CloudNativePG from its release manifest and its barman-cloud plugin, then (with
        `vauban`) Vauban by its chart, as users install them, with `values` over the chart's;
        returns the seconds each took."""
        assert self.images is not None, "start() first"
        took = {
            "cloudnative-pg": install_cloudnativepg(self.kubectl),
            "plugin-barman-cloud": install_barman_cloud(self.kubectl),
        }
        if vauban:
            took["vauban"] = install_vauban(
                self.kubectl,
                self.images,
                object_storage_ports=object_storage_ports,
                extra_values=values,
            )
        return took

    # -- start ----------------------------------------------------------------------------

    def _start_real(
        self, binaries: Binaries, node: NodeBinaries, images: Images, deadline: float
    ) -> None:
        self._create_netns()
        # Mounts made under the folder by the kubelets (in mount namespaces of their own) must
        # reach containerd and runc: the folder is a shared mount.
        subprocess.run(["mount", "--bind", str(self.data_dir), str(self.data_dir)], check=True)
        subprocess.run(["mount", "--make-shared", str(self.data_dir)], check=True)

        names = self.node_names
        clients: dict[str, tuple[str, str | None]] = {
            f"kubelet-{n}": (f"system:node:{n}", "system:nodes") for n in names
        }
        clients["kube-proxy"] = ("system:kube-proxy", None)
        certs = pki.create(
            self.data_dir / "pki", service_ip=SERVICE_IP, extra_ips=[API_IP], clients=clients
        )
        inner = f"https://{API_IP}:{APISERVER_PORT}"
        write_kubeconfig(
            self.inner_kubeconfig, inner, certs.ca_cert, certs.admin_cert, certs.admin_key
        )

        # This machine reaches the apiserver through a forwarder into the namespace.
        self._start_forwarder()
        self._write_kubeconfig(certs)

        self._spawn(
            "etcd",
            [
                str(binaries.etcd),
                "--name=vauban",
                f"--data-dir={self.data_dir / 'etcd'}",
                "--listen-client-urls=http://127.0.0.1:2379",
                "--advertise-client-urls=http://127.0.0.1:2379",
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=vauban=http://127.0.0.1:2380",
                "--listen-metrics-urls=",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        apiserver = self._spawn(
            "kube-apiserver",
            [
                str(binaries.kube_apiserver),
                "--etcd-servers=http://127.0.0.1:2379",
                "--bind-address=0.0.0.0",
                f"--advertise-address={API_IP}",
                f"--secure-port={APISERVER_PORT}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--tls-cert-file={certs.server_cert}",
                f"--tls-private-key-file={certs.server_key}",
                f"--client-ca-file={certs.ca_cert}",
                f"--kubelet-client-certificate={certs.admin_cert}",
                f"--kubelet-client-key={certs.admin_key}",
                # The node names are not in any DNS: the kubelets are reached by address.
                "--kubelet-preferred-address-types=InternalIP",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={certs.service_account_public}",
                f"--service-account-signing-key-file={certs.service_account_key}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=true",
                "--profiling=false",
            ],
        )
        context = self._ssl_context(certs)
        self._wait(apiserver, deadline, lambda: _http_ok(f"{self.server}/readyz", context=context))

        common = [
            f"--kubeconfig={self.inner_kubeconfig}",
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
                f"--cluster-cidr={POD_CIDR}",
                # Each node's pod range is fixed by its CNI configuration; there is no cloud.
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller",
            ],
        )
        self._spawn("kube-scheduler", [str(binaries.kube_scheduler), *common])

        resolv = self.data_dir / "resolv.conf"
        resolv.write_text(f"nameserver {API_IP}\n")
        # Started from this thread (their parent-death signal is tied to it), then loaded
        # with the images in parallel.
        containerds = [self._start_containerd(i, images) for i in range(self.nodes)]
        with ThreadPoolExecutor(max_workers=self.nodes) as pool:
            sockets = list(pool.map(lambda c: self._load_images(c, images, deadline), containerds))
        for i, socket_path in enumerate(sockets):
            self._start_kubelet(i, node, certs, socket_path, resolv)
        self._start_kube_proxy(node, certs)
        self._start_coredns(node)

        kubectl = [str(binaries.kubectl), f"--kubeconfig={self.kubeconfig}"]
        self._apply_objects(kubectl, self._storage_objects())
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
                    *(f"node/{n}" for n in names),
                ]
            ),
        )
        self._recycler = threading.Thread(
            target=self._recycle_volumes, args=(kubectl,), name="volume-recycler", daemon=True
        )
        self._recycler.start()

    def _create_netns(self) -> None:
        result = subprocess.run(
            ["ip", "netns", "add", self.netns], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise ControlPlaneError(f"ip netns add {self.netns}: {result.stderr.strip()}")
        addresses = [API_IP, *(node_ip(i) for i in range(self.nodes))]
        script = [
            "ip link set lo up",
            f"ip link add {NODE_BRIDGE} type bridge",
            *(f"ip addr add {a}/24 dev {NODE_BRIDGE}" for a in addresses),
            f"ip link set {NODE_BRIDGE} up",
            # Connections from the namespace itself to a ClusterIP need a route before
            # kube-proxy's rules translate them. No default route: nothing leaves.
            f"ip route add {SERVICE_CIDR} dev {NODE_BRIDGE}",
            # The namespace's own settings (not the host's): it routes between pod bridges.
            "echo 1 > /proc/sys/net/ipv4/ip_forward",
            "echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables",
        ]
        result = subprocess.run(
            self.in_netns("sh", "-ec", "\n".join(script)),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ControlPlaneError(f"setting up the namespace failed: {result.stderr.strip()}")

    def _start_forwarder(self) -> None:
        log = self.data_dir / "logs" / "forwarder.log"
        process, self.apiserver_port = forward.spawn(
            self.netns_path, f"{API_IP}:{APISERVER_PORT}", log
        )
        self._components.append(Component("forwarder", process, log))

    def _spawn(self, name: str, argv: list[str]) -> Any:
        """Components run inside the namespace."""
        return super()._spawn(name, self.in_netns(*argv))

    @staticmethod
    def _cni_network_name(cluster_id: str, index: int) -> str:
        return f"vauban-{cluster_id}-{node_name(index)}"

    def _cni_network(self, index: int) -> str:
        return self._cni_network_name(self.id, index)

    def _start_containerd(self, index: int, images: Images) -> tuple[str, Component, Path]:
        name = node_name(index)
        folder = self.data_dir / "nodes" / name
        root, state, cni = (
            folder / "containerd" / "root",
            folder / "containerd" / "state",
            folder / "cni",
        )
        for path in (root, state, cni / "net.d", cni / "ipam"):
            path.mkdir(parents=True, exist_ok=True)
        socket_path = state / "containerd.sock"
        if len(str(socket_path)) + len(".ttrpc") > 100:
            raise ControlPlaneError(f"{socket_path} is too long for a socket: use a shorter folder")
        subnet = f"10.244.{index}.0/24"
        conflist = {
            "cniVersion": "1.0.0",
            "name": self._cni_network(index),
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": f"cni{index}",
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": subnet}]],
                        # Only the cluster's ranges: pods have no default route either.
                        "routes": [{"dst": POD_CIDR}, {"dst": SERVICE_CIDR}, {"dst": NODE_NETWORK}],
                        "dataDir": str(cni / "ipam"),
                    },
                },
            ],
        }
        (cni / "net.d" / "10-vauban.conflist").write_text(json.dumps(conflist, indent=1))
        config = f"""version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket_path}"
[ttrpc]
  address = "{socket_path}.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{folder / "containerd" / "opt"}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{images.pause.name}"
  # No CAP_SYS_RESOURCE here: never ask for a lower OOM score than containerd's own.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{state / "runc"}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{cni / "net.d"}"
    max_conf_num = 1
"""
        config_path = folder / "containerd.toml"
        config_path.write_text(config)
        component = self._spawn(
            f"containerd-{name}", ["containerd", f"--config={config_path}", "--log-level=warn"]
        )
        return name, component, socket_path

    def _load_images(
        self, containerd: tuple[str, Component, Path], images: Images, deadline: float
    ) -> Path:
        name, component, socket_path = containerd
        ctr = ["ctr", f"--address={socket_path}"]
        self._wait(component, deadline, lambda: _succeeds([*ctr, "version"]))
        started = time.monotonic()
        import_images(
            ctr,
            images.all() if self.preload else [images.pause],
            self.data_dir / "nodes" / name / "containerd" / "root" / CONTENT_STORE,
        )
        logger.info("images imported into %s in %.1f s", name, time.monotonic() - started)
        return socket_path

    def _start_kubelet(
        self, index: int, node: NodeBinaries, certs: pki.Pki, socket_path: Path, resolv: Path
    ) -> None:
        name = node_name(index)
        folder = self.data_dir / "nodes" / name
        kubeconfig = folder / "kubelet.kubeconfig"
        cert, key = certs.clients[f"kubelet-{name}"]
        write_kubeconfig(
            kubeconfig, f"https://{API_IP}:{APISERVER_PORT}", certs.ca_cert, cert, key, name
        )
        address = node_ip(index)
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": address,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": address,
            "healthzPort": 10248,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(certs.ca_cert)},
            },
            "authorization": {"mode": "Webhook"},
            # cgroup v1 (this machine's hybrid layout), no systemd; a cgroup tree of its own
            # per node, so nodes (and clusters) never share /kubepods.
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"{self.cgroup}/{name}",
            "failCgroupV1": False,
            "containerRuntimeEndpoint": f"unix://{socket_path}",
            "clusterDNS": [API_IP],
            "clusterDomain": CLUSTER_DOMAIN,
            # Never the host's resolv.conf: its servers are unreachable from here.
            "resolvConf": str(resolv),
            "podLogsDir": str(folder / "pod-logs"),
            # Images cannot be pulled again: never collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "2%",
                "imagefs.available": "2%",
            },
            "serializeImagePulls": False,
            # Fail, never write the host's kernel settings (see KUBELET_SYSCTLS).
            "protectKernelDefaults": True,
            "failSwapOn": False,
            "staticPodPath": "",
        }
        config_path = folder / "kubelet.yaml"
        config_path.write_text(yaml.safe_dump(config))
        cgroup_dirs = self._make_cgroup_root(f"{self.cgroup}/{name}")
        logger.debug("cgroup root of %s: %s", name, cgroup_dirs)
        sysctls = folder / "sysctl"
        binds = []
        for key_path, value in KUBELET_SYSCTLS.items():
            file = sysctls / key_path.replace("/", "_")
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(f"{value}\n")
            binds.append(f"mount --bind {file} /proc/sys/{key_path}")
        wrapper = " && ".join([*binds, 'exec "$@"'])
        self._spawn(
            f"kubelet-{name}",
            [
                "unshare",
                "--mount",
                "--propagation=unchanged",
                "--",
                "sh",
                "-c",
                wrapper,
                "kubelet",
                str(node.kubelet),
                f"--config={config_path}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={folder / 'kubelet'}",
                f"--cert-dir={folder / 'kubelet-pki'}",
                f"--hostname-override={name}",
                f"--node-ip={address}",
                f"--node-labels=topology.kubernetes.io/zone=zone-{'abcdefghi'[index]}",
                "--v=1",
            ],
        )

    def _make_cgroup_root(self, path: str) -> list[Path]:
        """The kubelet wants its cgroup root to exist, in every hierarchy."""
        made = []
        for hierarchy in hostclean.cgroup_hierarchies():
            folder = hierarchy / path.lstrip("/")
            folder.mkdir(parents=True, exist_ok=True)
            if (hierarchy / "cpuset.cpus").exists():
                # A cpuset cgroup admits no task until it has CPUs and memory nodes.
                for parent in [
                    *reversed(folder.relative_to(hierarchy).parents),
                    folder.relative_to(hierarchy),
                ]:
                    current = hierarchy / parent
                    for file in ("cpuset.cpus", "cpuset.mems"):
                        target = current / file
                        if target.exists() and not target.read_text().strip():
                            target.write_text((current.parent / file).read_text())
            made.append(folder)
        return made

    def _start_kube_proxy(self, node: NodeBinaries, certs: pki.Pki) -> None:
        kubeconfig = self.data_dir / "kube-proxy.kubeconfig"
        cert, key = certs.clients["kube-proxy"]
        write_kubeconfig(
            kubeconfig,
            f"https://{API_IP}:{APISERVER_PORT}",
            certs.ca_cert,
            cert,
            key,
            "kube-proxy",
        )
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "nftables",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": node_name(0),
            "clusterCIDR": POD_CIDR,
            "bindAddress": API_IP,
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # Zero: leave the conntrack settings alone (some are host-wide).
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        }
        path = self.data_dir / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(config))
        self._spawn("kube-proxy", [str(node.kube_proxy), f"--config={path}", "--v=1"])

    def _start_coredns(self, node: NodeBinaries) -> None:
        corefile = self.data_dir / "Corefile"
        corefile.write_text(
            f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {API_IP}
    errors
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {self.inner_kubeconfig}
        pods insecure
    }}
    cache 30
}}
# Nothing upstream: no name outside the cluster resolves.
.:53 {{
    bind {API_IP}
    errors
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""
        )
        self._spawn("coredns", [str(node.coredns), "-conf", str(corefile)])

    # -- storage --------------------------------------------------------------------------

    def volume_path(self, node: str, index: int) -> Path:
        return self.data_dir / "volumes" / node / f"pv{index}"

    def _storage_objects(self) -> list[dict[str, Any]]:
        objects: list[dict[str, Any]] = [
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {
                    "name": STORAGE_CLASS,
                    "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                },
                "provisioner": "kubernetes.io/no-provisioner",
                "reclaimPolicy": "Retain",
                # The scheduler picks the node (anti-affinity, resources), then its volume.
                "volumeBindingMode": "WaitForFirstConsumer",
            }
        ]
        for name in self.node_names:
            for index in range(VOLUMES_PER_NODE):
                path = self.volume_path(name, index)
                path.mkdir(parents=True, exist_ok=True)
                objects.append(
                    {
                        "apiVersion": "v1",
                        "kind": "PersistentVolume",
                        "metadata": {"name": f"{name}-pv{index}", "labels": {VOLUME_LABEL: "true"}},
                        "spec": {
                            # Not enforced: every volume is a folder of the same file system.
                            "capacity": {"storage": VOLUME_CAPACITY},
                            "accessModes": ["ReadWriteOnce"],
                            "persistentVolumeReclaimPolicy": "Retain",
                            "storageClassName": STORAGE_CLASS,
                            "local": {"path": str(path)},
                            "nodeAffinity": {
                                "required": {
                                    "nodeSelectorTerms": [
                                        {
                                            "matchExpressions": [
                                                {
                                                    "key": "kubernetes.io/hostname",
                                                    "operator": "In",
                                                    "values": [name],
                                                }
                                            ]
                                        }
                                    ]
                                }
                            },
                        },
                    }
                )
        return objects

    def _apply_objects(self, kubectl: list[str], objects: list[dict[str, Any]]) -> None:
        manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
        result = subprocess.run(
            [*kubectl, "apply", "-f", "-"],
            input=manifest,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ControlPlaneError(f"could not create the storage objects:\n{result.stderr}")

    def _recycle_volumes(self, kubectl: list[str]) -> None:
        """What a local-volume provisioner does: a Released volume is emptied and offered
        again (its claim was deleted; Retain keeps the data until then)."""
        while not self._stopping.wait(3.0):
            result = subprocess.run(
                [*kubectl, "get", "pv", "-l", VOLUME_LABEL, "-o", "json"],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                continue
            for volume in json.loads(result.stdout)["items"]:
                if volume.get("status", {}).get("phase") != "Released":
                    continue
                path = Path(volume["spec"]["local"]["path"])
                if hostclean.mounts_under(path):
                    continue  # still mounted in a pod being torn down
                for child in path.iterdir() if path.is_dir() else []:
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
                subprocess.run(
                    [
                        *kubectl,
                        "patch",
                        "pv",
                        volume["metadata"]["name"],
                        "--type=json",
                        '-p=[{"op":"remove","path":"/spec/claimRef"}]',
                    ],
                    capture_output=True,
                    check=False,
                )
