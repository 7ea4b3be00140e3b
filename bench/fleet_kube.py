"""The fleet benchmark's view of the control plane: an audited LocalControlPlane, a small
HTTPS client of its own (no kubectl process per call), watches that time-stamp what they
see, and the apiserver's audit log read back as requests by client, verb and resource.

Nothing here is operator code: the operator under test is `vauban run`, as a process.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from vauban.devcluster import LocalControlPlane

BENCH_USER_AGENT = "vauban-bench"

# One event per request when it is received, one when it completes (with its code). Node
# leases (kwok's heartbeats) are left out: no client under test touches them.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["ResponseStarted"],
    "rules": [
        {"level": "None", "resources": [{"group": "coordination.k8s.io", "resources": ["leases"]}]},
        # The status Vauban writes, body included: what changed between two writes.
        {
            "level": "Request",
            "verbs": ["patch", "update"],
            "resources": [{"group": "vauban.dev", "resources": ["manageddatabases/status"]}],
        },
        {"level": "Metadata"},
    ],
}


class AuditedControlPlane(LocalControlPlane):
    """The project's LocalControlPlane, with the apiserver's audit log on: the only place
    where requests can be told apart by client (`userAgent`). LocalControlPlane has no hook
    for extra apiserver flags; its `_spawn` is where the apiserver's argv passes."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.audit_log = self.data_dir / "audit.log"

    def _spawn(self, name: str, argv: list[str]) -> Any:
        if name == "kube-apiserver":
            policy = self.data_dir / "audit-policy.yaml"
            policy.write_text(yaml.safe_dump(AUDIT_POLICY), encoding="utf-8")
            argv = [
                *argv,
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-maxsize=0",
            ]
        return super()._spawn(name, argv)


# -- a small client -------------------------------------------------------------------------


class ApiError(RuntimeError):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status


class Api:
    """Requests to the apiserver of a kubeconfig with client certificates (the local control
    plane's). One connection per thread, kept alive."""

    def __init__(self, kubeconfig: Path, user_agent: str = BENCH_USER_AGENT) -> None:
        config = yaml.safe_load(kubeconfig.read_text(encoding="utf-8"))
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        self.host, port = cluster["server"].removeprefix("https://").split(":")
        self.port = int(port)
        self.user_agent = user_agent
        self._dir = tempfile.TemporaryDirectory(prefix="vauban-bench-api-")
        folder = Path(self._dir.name)
        ca, cert, key = folder / "ca.crt", folder / "client.crt", folder / "client.key"
        ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
        cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
        key.write_bytes(base64.b64decode(user["client-key-data"]))
        self.context = ssl.create_default_context(cafile=str(ca))
        self.context.load_cert_chain(str(cert), str(key))
        self._local = threading.local()

    def _connection(self, timeout: float | None = 60) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            self.host, self.port, context=self.context, timeout=timeout
        )

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        ok: Iterable[int] = (200, 201),
    ) -> dict[str, Any]:
        for attempt in range(3):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = self._connection()
            try:
                conn.request(
                    method,
                    path,
                    body=None if body is None else json.dumps(body),
                    headers={
                        "Content-Type": content_type,
                        "Accept": "application/json",
                        "User-Agent": self.user_agent,
                    },
                )
                response = conn.getresponse()
                data = response.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
                time.sleep(0.2)
                continue
            if response.status == 429 and attempt < 2:
                time.sleep(1)
                continue
            if response.status not in ok:
                raise ApiError(response.status, data.decode(errors="replace"))
            return json.loads(data) if data else {}
        raise AssertionError("unreachable")

    def create(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", path, obj)

    def list(self, path: str) -> dict[str, Any]:
        return self.request("GET", path)

    def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", path, patch, "application/merge-patch+json")

    def apply(self, path: str, obj: dict[str, Any], manager: str) -> dict[str, Any]:
        return self.request(
            "PATCH",
            f"{path}?fieldManager={manager}&force=true",
            obj,
            "application/apply-patch+yaml",
        )

    def stream(self, path: str) -> Iterator[dict[str, Any]]:
        """The events of a watch, until it ends."""
        conn = self._connection(timeout=None)
        try:
            conn.request(
                "GET",
                path,
                headers={"Accept": "application/json", "User-Agent": self.user_agent},
            )
            response = conn.getresponse()
            if response.status != 200:
                raise ApiError(response.status, response.read().decode(errors="replace"))
            while True:
                line = response.readline()
                if not line:
                    return
                yield json.loads(line)
        finally:
            conn.close()


def path_of(api_version: str, plural: str, namespace: str | None = None, name: str = "") -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{plural}"
    return f"{base}/{name}" if name else base


def create_all(api: Api, items: list[tuple[str, dict[str, Any]]], workers: int = 4) -> float:
    """POST every (path, object) with `workers` threads; returns the seconds it took."""
    started = time.monotonic()
    queue = list(reversed(items))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        while True:
            with lock:
                if not queue or errors:
                    return
                path, obj = queue.pop()
            try:
                api.create(path, obj)
            except BaseException as e:
                with lock:
                    errors.append(e)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.monotonic() - started


# -- watches that time-stamp ------------------------------------------------------------------


def ready_of(obj: dict[str, Any]) -> bool:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


@dataclass
class Seen:
    """What a watch saw of one object, in time.monotonic() seconds."""

    added: float
    ready: float | None = None
    generation: int = 0
    observed: int = 0
    # generation -> first time status.observedGeneration reached it
    caught_up: dict[int, float] = field(default_factory=dict)


class Watcher:
    """Watches one resource (all namespaces) from now on and keeps, per object, when it was
    first seen, first Ready, and when observedGeneration caught up with each generation."""

    def __init__(
        self,
        api: Api,
        api_version: str,
        plural: str,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        ready: Callable[[dict[str, Any]], bool] = ready_of,
    ) -> None:
        self.api, self.api_version, self.plural = api, api_version, plural
        self.on_event, self.is_ready = on_event, ready
        self.seen: dict[tuple[str, str], Seen] = {}
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self._stop = False
        self._thread: threading.Thread | None = None

    def start(self) -> Watcher:
        listing = self.api.list(path_of(self.api_version, self.plural))
        version = listing["metadata"]["resourceVersion"]
        for item in listing["items"]:
            self._record("ADDED", item)
        self._thread = threading.Thread(target=self._run, args=(version,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop = True

    def _run(self, version: str) -> None:
        while not self._stop:
            path = (
                path_of(self.api_version, self.plural)
                + f"?watch=1&resourceVersion={version}&timeoutSeconds=3600"
            )
            try:
                for event in self.api.stream(path):
                    if self._stop:
                        return
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        break
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    self._record(event["type"], obj)
                    if self.on_event is not None:
                        self.on_event(event["type"], obj)
            except (OSError, http.client.HTTPException, ApiError, ValueError):
                time.sleep(0.5)

    def _record(self, kind: str, obj: dict[str, Any]) -> None:
        now = time.monotonic()
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        with self.changed:
            seen = self.seen.get(key)
            if seen is None:
                if kind == "DELETED":
                    return
                seen = self.seen[key] = Seen(added=now)
            seen.generation = int(meta.get("generation") or 0)
            observed = int((obj.get("status") or {}).get("observedGeneration") or 0)
            seen.observed = observed
            if observed and observed not in seen.caught_up:
                seen.caught_up[observed] = now
            if seen.ready is None and self.is_ready(obj):
                seen.ready = now
            self.changed.notify_all()

    def wait(self, done: Callable[[dict[tuple[str, str], Seen]], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not done(self.seen):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 1.0))
        return True


# -- the audit log --------------------------------------------------------------------------

HTTP_VERB = {
    "create": "POST",
    "update": "PUT",
    "patch": "PATCH",
    "delete": "DELETE",
    "deletecollection": "DELETE",
    "get": "GET",
    "list": "GET",
    "watch": "GET",
}
WRITES = ("create", "update", "patch", "delete", "deletecollection")


def client_of(user_agent: str) -> str:
    if user_agent.startswith(("vauban/", "kopf/")):
        return "operator"
    if user_agent.startswith("provider-sql/"):
        return "peer"
    if user_agent.startswith(BENCH_USER_AGENT):
        return "bench"
    if user_agent.startswith("kubectl"):
        return "kubectl"
    return "other"


def _timestamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class Requests:
    """Requests of one client received in a window, from the audit log."""

    total: int = 0
    by_verb: Counter[str] = field(default_factory=Counter)
    by_resource: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    by_agent: Counter[str] = field(default_factory=Counter)

    @property
    def writes(self) -> int:
        return sum(n for v, n in self.by_verb.items() if v in WRITES)

    def summary(self, per: int = 1) -> dict[str, Any]:
        def ratio(n: int) -> float:
            return round(n / per, 3)

        return {
            "total": self.total,
            "writes": self.writes,
            "per_object": ratio(self.total),
            "writes_per_object": ratio(self.writes),
            "by_verb_per_object": {k: ratio(v) for k, v in sorted(self.by_verb.items())},
            "by_http_method_per_object": {
                m: ratio(sum(n for v, n in self.by_verb.items() if HTTP_VERB.get(v) == m))
                for m in ("GET", "POST", "PUT", "PATCH", "DELETE")
            },
            "by_verb_and_resource": dict(self.by_resource.most_common()),
            "response_codes": dict(self.codes.most_common()),
            "user_agents": dict(self.by_agent.most_common()),
        }


def read_audit(log: Path, client: str, start: float, end: float, offset: int = 0) -> Requests:
    """Requests of `client` received in [start, end] (wall clock), by verb and resource;
    response codes from the completion events."""
    found = Requests()
    received: set[str] = set()
    with log.open("rb") as f:
        f.seek(offset)
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            agent = event.get("userAgent", "")
            if client_of(agent) != client:
                continue
            at = _timestamp(event["requestReceivedTimestamp"])
            if not start <= at <= end:
                continue
            if event["stage"] == "RequestReceived":
                received.add(event["auditID"])
                verb = event["verb"]
                ref = event.get("objectRef") or {}
                resource = ref.get("resource", event.get("requestURI", "?"))
                if ref.get("subresource"):
                    resource += "/" + ref["subresource"]
                found.total += 1
                found.by_verb[verb] += 1
                found.by_resource[f"{verb} {resource}"] += 1
                found.by_agent[agent.split(" ")[0]] += 1
            elif event["stage"] in ("ResponseComplete", "Panic") and (
                event["auditID"] in received or event["verb"] != "watch"
            ):
                code = (event.get("responseStatus") or {}).get("code", 0)
                found.codes[f"{event['verb']} {code}"] += 1
    return found


def audit_offset(log: Path) -> int:
    try:
        return log.stat().st_size
    except OSError:
        return 0


def object_trace(log: Path, client: str, namespace: str, name: str, offset: int = 0) -> list[str]:
    """Every request of `client` about one object and what it owns (its Secret, its Events:
    names starting with `name` + '-' or '.'), in order: `verb resource name -> code`."""
    out: list[str] = []
    with log.open("rb") as f:
        f.seek(offset)
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if (
                event["stage"] != "ResponseComplete"
                or client_of(event.get("userAgent", "")) != client
            ):
                continue
            ref = event.get("objectRef") or {}
            target = ref.get("name", "")
            if ref.get("namespace") != namespace or not (
                target == name or target.startswith((f"{name}-", f"{name}."))
            ):
                continue
            resource = ref.get("resource", "?") + (
                "/" + ref["subresource"] if ref.get("subresource") else ""
            )
            code = (event.get("responseStatus") or {}).get("code", 0)
            line = f"{event['verb']} {resource} {target} -> {code}"
            body = event.get("requestObject")
            if body is not None:
                line += " " + json.dumps(body.get("status", body), sort_keys=True)[:1500]
            out.append(line)
    return out
