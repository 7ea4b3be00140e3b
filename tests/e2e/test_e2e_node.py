"""The real node itself: a pod runs in a container, and stopping the cluster leaves nothing on
the machine (processes, mounts, cgroups, the network namespace, shared paths)."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import yaml

from support.kube import KubeCtl, eventually
from vauban.devcluster import hostclean
from vauban.devcluster.build import ensure_binaries
from vauban.devcluster.realnode import RealCluster, footprint, sweep_stale, unavailable_reason

pytestmark = pytest.mark.skipif(
    unavailable_reason() is not None, reason=f"real node unavailable: {unavailable_reason()}"
)


def test_a_pod_runs_and_stop_leaves_nothing_behind() -> None:
    before = hostclean.existing_host_paths()
    cluster = RealCluster(nodes=1, preload=False)
    started = time.monotonic()
    cluster.start()
    try:
        start_seconds = time.monotonic() - started
        assert cluster.record is not None
        record = cluster.record
        kube = KubeCtl(str(ensure_binaries().kubectl), cluster.kubeconfig)
        assert cluster.images is not None
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "sandbox", "namespace": "default"},
            "spec": {
                "containers": [
                    {"name": "pause", "image": cluster.images.pause.name, "command": ["/pause"]}
                ]
            },
        }
        kube.run("apply", "-f", "-", stdin=yaml.safe_dump(pod))
        running = eventually(
            lambda: (
                obj
                if (obj := kube.get("pod", "sandbox", "default"))["status"].get("phase")
                == "Running"
                else None
            ),
            timeout=60,
            what="the pod Running",
        )
        assert running["status"]["podIP"].startswith("10.244.0.")
        assert footprint(record)["processes"], "containers run in the cluster's namespace"
    finally:
        stopped = time.monotonic()
        cluster.stop()
        stop_seconds = time.monotonic() - stopped
    left = footprint(record)
    assert not any(left.values()), json.dumps(left, indent=1)
    assert hostclean.existing_host_paths() == before
    print(f"1 node, start {start_seconds:.1f} s, stop {stop_seconds:.1f} s")


def test_a_killed_cluster_without_its_record_is_swept() -> None:
    """What a killed run leaves (its processes gone without clean-up, even its record lost):
    `vauban dev clean` finds it by its namespace and cgroups and removes all of it."""
    before = hostclean.existing_host_paths()
    cluster = RealCluster(nodes=1, preload=False)
    cluster.start()
    record = cluster.record
    assert record is not None and cluster.images is not None
    kube = KubeCtl(str(ensure_binaries().kubectl), cluster.kubeconfig)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sandbox", "namespace": "default"},
        "spec": {"containers": [{"name": "pause", "image": cluster.images.pause.name}]},
    }
    kube.run("apply", "-f", "-", stdin=yaml.safe_dump(pod))
    eventually(
        lambda: kube.get("pod", "sandbox", "default")["status"].get("phase") == "Running",
        timeout=60,
        what="the pod Running",
    )
    # A crash: the components die, nothing is cleaned, and the record goes too.
    for component in cluster._components:
        component.process.kill()
        component.process.wait()
    cluster._components.clear()
    cluster._stopping.set()
    record.path.unlink()
    assert footprint(record)["mounts"], "containers and their mounts outlive the components"
    left = sweep_stale()
    assert not any(left[record.id].values()), left
    after = footprint(record)
    assert not any(v for k, v in after.items() if k != "data_dir"), json.dumps(after, indent=1)
    assert hostclean.existing_host_paths() == before
    shutil.rmtree(record.data_dir, ignore_errors=True)
