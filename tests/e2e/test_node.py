"""The real node itself: a pod runs in a container, and stopping the cluster leaves nothing on
the machine (processes, mounts, cgroups, the network namespace, shared paths)."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from support.kube import KubeCtl, eventually
from vauban.devcluster import hostclean
from vauban.devcluster.build import ensure_binaries
from vauban.devcluster.realnode import RealCluster, footprint, unavailable_reason

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
