"""Plays the kubelet for the backup agent's pods on the local control plane.

kwok fakes every other pod; the agent's pods are the data path under test, so they run for
real: this runner picks each one up once kwok has made it Running, resolves its environment
the way the kubelet would (Secrets, `$(VAR)` references, the downward API, secret volumes),
runs its command with this Python's `vauban`, and writes the outcome — exit code and
termination message — into the pod's status. The Job controller then completes the Job as it
would on a real cluster.

It only ever dials loopback: a pod whose database or object store is elsewhere fails with a
message saying so, without being run.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from vauban.builders.backup import AGENT_POD_LABEL

logger = logging.getLogger(__name__)

_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: known variables are replaced, others left as is."""
    return _REFERENCE.sub(lambda m: env.get(m.group(1), m.group(0)), value)


class AgentRunner:
    """Start with `start()`, stop with `stop()`; runs agent pods of `namespace`."""

    def __init__(self, kubectl: str, kubeconfig: Path, namespace: str, interval: float = 0.5):
        self._kubectl = [kubectl, f"--kubeconfig={kubeconfig}"]
        self._namespace = namespace
        self._interval = interval
        self._stop = threading.Event()
        self._done: set[str] = set()
        self._thread = threading.Thread(target=self._loop, name="agent-runner", daemon=True)
        self.runs: list[dict[str, Any]] = []
        """What each run did: pod, argv, exit code, result (for tests to inspect)."""

    def start(self) -> AgentRunner:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _get(self, *args: str) -> dict[str, Any]:
        out = subprocess.run(
            [*self._kubectl, "get", *args, "-o", "json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        parsed: dict[str, Any] = json.loads(out)
        return parsed

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                pods = self._get("pods", "-n", self._namespace, "-l", f"{AGENT_POD_LABEL}=true")
            except subprocess.CalledProcessError:
                continue
            for pod in pods.get("items", []):
                uid = pod["metadata"]["uid"]
                if uid in self._done or (pod.get("status") or {}).get("phase") != "Running":
                    continue
                self._done.add(uid)
                try:
                    self._run(pod)
                except Exception:
                    logger.exception("agent runner: pod %s failed", pod["metadata"]["name"])

    def _secret(self, name: str) -> dict[str, str]:
        data = self._get("secret", name, "-n", self._namespace).get("data") or {}
        return {k: base64.b64decode(v).decode() for k, v in data.items()}

    def _run(self, pod: dict[str, Any]) -> None:
        container = pod["spec"]["containers"][0]
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            env.update(self._secret(source["secretRef"]["name"]))
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = expand(item["value"], env)
            elif "fieldRef" in item.get("valueFrom", {}):
                path = item["valueFrom"]["fieldRef"]["fieldPath"]
                label = re.fullmatch(r"metadata\.labels\['(.+)'\]", path)
                if label:
                    env[item["name"]] = pod["metadata"]["labels"].get(label.group(1), "")
        with tempfile.TemporaryDirectory(prefix="vauban-agent-") as scratch:
            env = self._mount_secrets(pod, container, env, Path(scratch))
            argv = [expand(a, env) for a in container.get("args") or []]
            refused = self._refusal(env)
            if refused:
                self._finish(
                    pod,
                    1,
                    json.dumps({"result": "Failed", "reason": "NotLoopback", "message": refused}),
                )
                return
            result = subprocess.run(
                [sys.executable, "-m", "vauban", *argv],
                env={**env, "PATH": "/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch},
                capture_output=True,
                text=True,
                check=False,
                timeout=600,
            )
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        message = lines[-1] if lines else result.stderr[-1000:]
        self.runs.append(
            {
                "pod": pod["metadata"]["name"],
                "argv": argv,
                "exitCode": result.returncode,
                "message": message,
                "stderr": result.stderr[-4000:],
            }
        )
        self._finish(pod, result.returncode, message[-4000:])

    def _mount_secrets(
        self, pod: dict[str, Any], container: dict[str, Any], env: dict[str, str], root: Path
    ) -> dict[str, str]:
        """Secret volumes become files under `root`; env values naming a mount path are
        rewritten to the file's place."""
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"], {})
            if "secret" not in volume:
                continue
            target = root / mount["name"]
            target.mkdir()
            values = self._secret(volume["secret"]["secretName"])
            for item in volume["secret"].get("items") or [{"key": k, "path": k} for k in values]:
                if item["key"] in values:
                    (target / item["path"]).write_text(values[item["key"]], encoding="utf-8")
            env = {k: v.replace(mount["mountPath"], str(target)) for k, v in env.items()}
        return env

    @staticmethod
    def _refusal(env: Mapping[str, str]) -> str | None:
        host = env.get("PGHOST", "")
        if host and not _loopback(host):
            return f"the local agent runner only reaches loopback; PGHOST is {host}"
        endpoint = env.get("VAUBAN_S3_ENDPOINT")
        if endpoint and not _loopback(urlparse(endpoint).hostname or ""):
            return "the local agent runner only reaches loopback; the S3 endpoint is not"
        if not endpoint and env.get("VAUBAN_S3_BUCKET"):
            return "the local agent runner only reaches loopback; no S3 endpoint is set"
        return None

    def _finish(self, pod: dict[str, Any], code: int, message: str) -> None:
        container = pod["spec"]["containers"][0]
        now = (pod.get("status") or {}).get("startTime")
        status = {
            "status": {
                "phase": "Succeeded" if code == 0 else "Failed",
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container["image"],
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "started": False,
                        "state": {
                            "terminated": {
                                "exitCode": code,
                                "reason": "Completed" if code == 0 else "Error",
                                "message": message,
                                "startedAt": now,
                                "finishedAt": now,
                            }
                        },
                    }
                ],
            }
        }
        subprocess.run(
            [
                *self._kubectl,
                "patch",
                "pod",
                pod["metadata"]["name"],
                "-n",
                self._namespace,
                "--subresource=status",
                "--type=merge",
                "-p",
                json.dumps(status),
            ],
            capture_output=True,
            check=True,
        )
