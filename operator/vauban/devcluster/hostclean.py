"""What the real node leaves on the host while it runs, and how every trace of it is removed:
processes (in its network namespace or its cgroups), mounts (under its folder), cgroups (in
every hierarchy), the network namespace, and the few paths outside the project's folders that
containerd, CNI and the kubelet write whatever they are told (see HOST_PATHS).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")
SHIM_SOCKETS = Path("/run/containerd/s")
CNI_RESULTS = Path("/var/lib/cni/results")
DEVICE_PLUGINS = Path("/var/lib/kubelet/device-plugins")
CONTAINER_LOG_LINKS = Path("/var/log/containers")

HOST_PATHS = (
    # containerd 1.6: each shim's socket, whatever the configured state folder.
    Path("/run/containerd"),
    # libcni's cache of results (not configurable through containerd 1.6).
    Path("/var/lib/cni"),
    # The kubelet's device-plugin socket folder (a constant of the kubelet).
    Path("/var/lib/kubelet"),
    # The kubelet's links to container logs (a constant of the kubelet).
    CONTAINER_LOG_LINKS,
    # Defaults that the configuration moves elsewhere: watched, never expected.
    Path("/var/lib/containerd"),
    Path("/opt/containerd"),
    Path("/var/log/pods"),
    Path("/etc/cni"),
    Path("/opt/cni"),
    NETNS_DIR,
)
"""Paths outside the project's folders that a real node could create: none must remain (or
differ from before it started) once it stopped."""


def existing_host_paths() -> set[str]:
    return {str(p) for p in HOST_PATHS if p.exists() or p.is_symlink()}


# -- mounts -----------------------------------------------------------------------------------


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape") if "\\" in field else field


def mount_points() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:  # noqa: PTH123
        return [_unescape(line.split()[4]) for line in f]


def mounts_under(folder: Path) -> list[str]:
    root = str(folder)
    return [m for m in mount_points() if m == root or m.startswith(root + "/")]


def unmount_all(folder: Path) -> list[str]:
    """Unmount everything at or under `folder`, deepest first; lazily if busy. Returns what
    could not be unmounted."""
    for _ in range(10):
        found = mounts_under(folder)
        if not found:
            return []
        for point in sorted(set(found), key=lambda m: m.count("/"), reverse=True):
            result = subprocess.run(["umount", point], capture_output=True, check=False)
            if result.returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    return mounts_under(folder)


# -- cgroups and processes --------------------------------------------------------------------


def cgroup_hierarchies() -> list[Path]:
    """Mount points of every cgroup hierarchy (v1 controllers, named ones, and v2)."""
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:  # noqa: PTH123
        for line in f:
            fields = line.split()
            fs_type = fields[fields.index("-") + 1]
            if fs_type in ("cgroup", "cgroup2"):
                points.append(Path(_unescape(fields[4])))
    return points


def cgroup_dirs(name: str) -> list[Path]:
    """`name` (e.g. /vauban-1234) in every hierarchy where it exists."""
    return [h / name.lstrip("/") for h in cgroup_hierarchies() if (h / name.lstrip("/")).is_dir()]


def processes_in_cgroups(name: str) -> set[int]:
    pids: set[int] = set()
    for top in cgroup_dirs(name):
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def _netns_inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def processes_in_netns(netns: Path) -> set[int]:
    inode = _netns_inode(netns)
    if inode is None:
        return set()
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "ns" / "net").stat().st_ino == inode:
                pids.add(int(entry.name))
    pids.discard(os.getpid())
    return pids


def kill_everything(netns: Path, cgroup: str, timeout: float = 15.0) -> set[int]:
    """SIGKILL every process in the namespace or the cgroups until none is left (containers,
    shims, anything a component forked). Returns the survivors, if any."""
    deadline = time.monotonic() + timeout
    while True:
        pids = processes_in_netns(netns) | processes_in_cgroups(cgroup)
        if not pids or time.monotonic() > deadline:
            return pids
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def remove_cgroups(name: str) -> list[str]:
    """rmdir `name` and everything under it, in every hierarchy. Returns what remains."""
    for _ in range(20):
        left = cgroup_dirs(name)
        if not left:
            return []
        for top in left:
            for folder in sorted(
                (p for p in [top, *top.rglob("*")] if p.is_dir()),
                key=lambda p: len(p.parts),
                reverse=True,
            ):
                with contextlib.suppress(OSError):
                    folder.rmdir()
        time.sleep(0.1)
    return [str(p) for p in cgroup_dirs(name)]


# -- the network namespace --------------------------------------------------------------------


def delete_netns(name: str) -> None:
    if (NETNS_DIR / name).exists():
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
    # `ip netns add` bind-mounts /run/netns onto itself: gone once no namespace is left there.
    if NETNS_DIR.is_dir() and not any(NETNS_DIR.iterdir()):
        while str(NETNS_DIR) in mount_points():
            if subprocess.run(["umount", str(NETNS_DIR)], check=False).returncode != 0:
                break
        with contextlib.suppress(OSError):
            NETNS_DIR.rmdir()


# -- shared paths -----------------------------------------------------------------------------


def shim_sockets(state_dirs: Iterable[Path]) -> list[Path]:
    """The sockets of the shims these containerd instances started (each bundle records it)."""
    sockets = []
    for state in state_dirs:
        for address in state.glob("io.containerd.runtime.v2.task/*/*/address"):
            with contextlib.suppress(OSError):
                text = address.read_text().strip()
                sockets.append(Path(text.removeprefix("unix://")))
    return sockets


def sandbox_ids(data_dir: Path) -> set[str]:
    """Ids of every pod sandbox the cluster's containerd instances made (libcni names its
    cached results after them)."""
    ids: set[str] = set()
    for pattern in (
        "nodes/*/containerd/root/io.containerd.grpc.v1.cri/sandboxes/*",
        "nodes/*/containerd/state/io.containerd.runtime.v2.task/k8s.io/*",
    ):
        ids.update(p.name for p in data_dir.glob(pattern))
    return ids


def remove_shared(
    *,
    shim_socket_paths: Iterable[Path],
    cni_networks: Iterable[str],
    sandboxes: Iterable[str],
    data_dir: Path,
    last_instance: bool,
) -> None:
    """Remove this instance's entries from the shared paths, and the folders once empty."""
    for socket_path in shim_socket_paths:
        if socket_path.parent == SHIM_SOCKETS:
            socket_path.unlink(missing_ok=True)
    for network in [*cni_networks, "cni-loopback"]:
        for sandbox in sandboxes:
            for result in CNI_RESULTS.glob(f"{network}-{sandbox}-*"):
                result.unlink(missing_ok=True)
    if CONTAINER_LOG_LINKS.is_dir():
        for link in CONTAINER_LOG_LINKS.iterdir():
            with contextlib.suppress(OSError):
                if link.is_symlink() and str(link.readlink()).startswith(str(data_dir)):
                    link.unlink()
    if last_instance:
        shutil.rmtree(DEVICE_PLUGINS, ignore_errors=True)
    for folder in (
        SHIM_SOCKETS,
        SHIM_SOCKETS.parent,
        CNI_RESULTS,
        CNI_RESULTS.parent,
        DEVICE_PLUGINS.parent,
        CONTAINER_LOG_LINKS,
    ):
        with contextlib.suppress(OSError):
            folder.rmdir()
