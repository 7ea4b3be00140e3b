"""The local control plane cleans up after itself, even when whoever started it is killed.

What it runs (version, controllers, kwok's nodes and pods, loopback addresses, `stop()`) is
checked in test_controlplane.py; these start planes of their own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import vauban
from vauban.devcluster import LocalControlPlane, ensure_binaries

pytestmark = pytest.mark.integration

# Started as a separate process so that the test can kill it the hard way.
PARENT = """
import json, sys, time
from pathlib import Path
from vauban.devcluster import LocalControlPlane

plane = LocalControlPlane(Path(sys.argv[1]))
plane.start()
Path(sys.argv[2]).write_text(json.dumps(plane.pids))
time.sleep(600)
"""


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for init to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(") ", 1)[1][0] != "Z"


def _wait_for(path: Path, parent: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert parent.poll() is None, f"the parent died while starting:\n{log.read_text()}"
        assert time.monotonic() < deadline, "the control plane did not start in time"
        time.sleep(0.2)


@pytest.mark.skipif(sys.platform != "linux", reason="relies on Linux's PR_SET_PDEATHSIG")
def test_components_die_with_the_process_that_started_them(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids.json"
    env = {**os.environ, "PYTHONPATH": str(Path(vauban.__file__).parents[1])}
    log = tmp_path / "parent.log"
    with log.open("wb") as out:
        parent = subprocess.Popen(
            [sys.executable, "-c", PARENT, str(tmp_path / "plane"), str(pids_file)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for(pids_file, parent, log, timeout=120)
    finally:
        # No cleanup code of the parent runs: only the kernel can stop the components.
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    pids = json.loads(pids_file.read_text())
    assert len(pids) == 5

    deadline = time.monotonic() + 10
    while (left := [name for name, pid in pids.items() if _running(pid)]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert not left, f"still running after their parent was killed: {left}"


def test_a_temporary_plane_leaves_no_folder_and_a_kubeconfig_for_kubectl() -> None:
    with LocalControlPlane() as plane:
        config = yaml.safe_load(plane.kubeconfig.read_text())
        assert config["current-context"] == "vauban-local"
        assert config["clusters"][0]["cluster"]["server"] == plane.server
        assert plane.server.startswith("https://127.0.0.1:")
        kubectl = str(ensure_binaries().kubectl)
        whoami = subprocess.run(
            [kubectl, f"--kubeconfig={plane.kubeconfig}", "auth", "whoami", "-o", "json"],
            capture_output=True,
            text=True,
            check=True,
        )
        user = json.loads(whoami.stdout)["status"]["userInfo"]
        assert user["username"] == "vauban-admin"
        assert "system:masters" in user["groups"]
        data_dir = plane.data_dir
    assert not data_dir.exists()


def test_a_kept_plane_leaves_its_logs() -> None:
    plane = LocalControlPlane(keep=True)
    try:
        plane.start()
    finally:
        plane.stop()
    try:
        logs = sorted(p.name for p in (plane.data_dir / "logs").iterdir())
        assert "kube-apiserver.log" in logs
        assert "etcd.log" in logs
    finally:
        shutil.rmtree(plane.data_dir)
