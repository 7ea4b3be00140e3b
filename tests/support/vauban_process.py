"""`vauban run` as a process of its own, the way it runs in a pod."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from support.kube import OperatorProcess


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_operator(kubeconfig: Path, log: Path, **extra_env: str) -> Iterator[OperatorProcess]:
    port, metrics_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "VAUBAN_KUBECONFIG": str(kubeconfig),
        "VAUBAN_RECHECK_INTERVAL_SECONDS": "1",
        "VAUBAN_PROBE_INTERVAL_SECONDS": "2",
        "VAUBAN_LIVENESS_PORT": str(port),
        "VAUBAN_METRICS_PORT": str(metrics_port),
        "VAUBAN_LOG_FORMAT": "json",
        "VAUBAN_LOG_LEVEL": "DEBUG",
        **extra_env,
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "vauban", "run"], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    running = OperatorProcess(process, log, metrics_port)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"operator exited:\n{running.log_text()[-4000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"operator not live:\n{running.log_text()[-4000:]}"
                    ) from None
                time.sleep(0.3)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
