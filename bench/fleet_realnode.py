"""The managed-clusters benchmark on real CloudNativePG (issue #17): N one-instance
ManagedClusters applied at once on the real node, until Ready, against CloudNativePG alone
applying the same `Cluster`s (what Vauban rendered, read back) — the time Vauban adds — and
the API writes Vauban makes per cluster, from the apiserver's audit log.

    flock /tmp/realnode.lock .venv/bin/python bench/fleet_realnode.py --clusters 4
    flock /tmp/realnode.lock .venv/bin/python bench/fleet_realnode.py --databases 50

With `--databases N`, the rounds are databases on one ManagedCluster instead: N
ManagedDatabases at once, until Ready, against N of CloudNativePG's own `Database` objects
on the same Cluster, until applied (issue #21's second reference). CloudNativePG's Database
creates a database for a role that exists (here `app`, its default owner); a ManagedDatabase
also creates its owner and login roles, writes the credentials Secret and checks the login.

The real node is one per machine (hence the lock). It starts a 3-node real cluster with the
apiserver's audit log on, installs CloudNativePG and Vauban as the e2e tier does, then runs
the rounds in turn (Vauban first: its rendered Clusters are CloudNativePG's input after),
each in a fresh namespace, deleting everything (volumes too) between rounds. Writes
`bench/results/fleet-realnode.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from fleet_kube import AUDIT_POLICY, WRITES, audit_offset

from vauban.builders import cnpg
from vauban.devcluster.build import ensure_binaries
from vauban.devcluster.realnode import RealCluster, unavailable_reason

ROOT = Path(__file__).resolve().parent
OPERATOR_USER = "system:serviceaccount:vauban-system:vauban"
SPEC = {
    "version": "17",
    "instances": 1,
    "storage": {"size": "1Gi"},
    "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
    "deletionPolicy": "Delete",
}
"""The e2e tier's cluster (tests/support/kube.py), one instance, its volume deleted with it."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class AuditedRealCluster(RealCluster):
    """The real node with the apiserver's audit log on (as bench/fleet_kube.py's
    AuditedControlPlane does for the kwok one): requests told apart by user."""

    def __init__(self) -> None:
        super().__init__(nodes=3)
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


class Kube:
    def __init__(self, kubeconfig: Path) -> None:
        self.argv = [str(ensure_binaries().kubectl), f"--kubeconfig={kubeconfig}"]

    def run(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            [*self.argv, *args], input=stdin, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {done.stderr[-2000:]}")
        return done.stdout

    def apply(self, objects: list[dict[str, Any]]) -> None:
        self.run(
            "apply",
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
        )

    def items(self, resource: str, namespace: str) -> list[dict[str, Any]]:
        return list(json.loads(self.run("get", resource, "-n", namespace, "-o", "json"))["items"])


def _ready_condition(obj: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
    )


def _wait_ready(
    kube: Kube, namespace: str, names: list[str], t0: float, timeout: float
) -> dict[str, dict[str, float]]:
    """Seconds from t0 to each cluster's readiness, polled every second: Vauban's Ready
    (when ManagedClusters exist) and CloudNativePG's (its Ready condition, the instance
    ready)."""
    seen: dict[str, dict[str, float]] = {n: {} for n in names}
    deadline = time.monotonic() + timeout
    watch_vauban = bool(kube.items("managedclusters", namespace))
    while time.monotonic() < deadline:
        now = time.monotonic() - t0
        for engine in kube.items("clusters.postgresql.cnpg.io", namespace):
            name = engine["metadata"]["name"]
            ready = (
                _ready_condition(engine) and (engine.get("status") or {}).get("readyInstances") == 1
            )
            if name in seen and ready:
                seen[name].setdefault("cloudnativepg", now)
        if watch_vauban:
            for cluster in kube.items("managedclusters", namespace):
                if _ready_condition(cluster):
                    seen[cluster["metadata"]["name"]].setdefault("vauban", now)
        wanted = ("vauban", "cloudnativepg") if watch_vauban else ("cloudnativepg",)
        if all(all(k in s for k in wanted) for s in seen.values()):
            break
        time.sleep(1)
    return seen


def _wait_applied(
    kube: Kube, resource: str, namespace: str, names: list[str], t0: float, timeout: float
) -> dict[str, float]:
    """Seconds from t0 until each object says it is done, polled every second: a
    ManagedDatabase's Ready condition, a CloudNativePG Database's `status.applied`."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(seen) < len(names):
        now = time.monotonic() - t0
        for obj in kube.items(resource, namespace):
            status = obj.get("status") or {}
            if _ready_condition(obj) or status.get("applied") is True:
                seen.setdefault(obj["metadata"]["name"], now)
        time.sleep(1)
    return seen


def _writes(audit: Path, offset: int, start: float, end: float) -> Counter[str]:
    """Writes per user and resource received in [start, end] (wall clock)."""
    found: Counter[str] = Counter()
    with audit.open("rb") as f:
        f.seek(offset)
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("stage") != "RequestReceived" or event.get("verb") not in WRITES:
                continue
            at = datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00"))
            if not start - 1 <= at.timestamp() <= end + 1:
                continue
            ref = event.get("objectRef") or {}
            resource = ref.get("resource", "?") + (
                "/" + ref["subresource"] if ref.get("subresource") else ""
            )
            found[f"{event['user']['username']} {event['verb']} {resource}"] += 1
    return found


def _overhead(times: dict[str, dict[str, float]]) -> float | None:
    """The median of what Vauban's Ready came after CloudNativePG's, cluster by cluster."""
    gaps = [t["vauban"] - t["cloudnativepg"] for t in times.values() if len(t) == 2]
    return round(statistics.median(gaps), 1) if gaps else None


def _gone(kube: Kube, namespace: str) -> None:
    kube.run("delete", "namespace", namespace, "--timeout=300s")


def _summary(times: dict[str, dict[str, float]], key: str) -> dict[str, float | None]:
    values = sorted(t[key] for t in times.values() if key in t)
    if not values:
        return {"all": None, "median": None}
    return {"all": round(values[-1], 1), "median": round(statistics.median(values), 1)}


def vauban_round(
    kube: Kube, cluster: AuditedRealCluster, n: int, repeat: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    namespace = f"bench-vauban-{repeat}"
    kube.run("create", "namespace", namespace)
    names = [f"c{i}" for i in range(n)]
    offset = audit_offset(cluster.audit_log)
    wall0, t0 = time.time(), time.monotonic()
    kube.apply(
        [
            {"apiVersion": "vauban.dev/v1alpha1", "kind": "ManagedCluster",
             "metadata": {"name": name, "namespace": namespace}, "spec": SPEC}
            for name in names
        ]
    )  # fmt: skip
    times = _wait_ready(kube, namespace, names, t0, timeout=900)
    time.sleep(10)  # what the operator writes once Ready (its last status, Events)
    writes = _writes(cluster.audit_log, offset, wall0, time.time())
    rendered = kube.items("clusters.postgresql.cnpg.io", namespace)
    operator = {
        k.split(" ", 1)[1]: v for k, v in writes.items() if k.startswith(OPERATOR_USER + " ")
    }
    result = {
        "n": n,
        "seconds": times,
        "vauban_ready": _summary(times, "vauban"),
        "cloudnativepg_ready": _summary(times, "cloudnativepg"),
        "overhead_seconds_median": _overhead(times),
        "operator_writes": operator,
        "operator_writes_per_cluster": round(sum(operator.values()) / n, 2),
        "writes_by_user": {k: v for k, v in writes.items() if not k.startswith("system:node:")},
    }
    _gone(kube, namespace)
    return result, rendered


def cloudnativepg_round(
    kube: Kube, cluster: AuditedRealCluster, rendered: list[dict[str, Any]], repeat: int
) -> dict[str, Any]:
    """The Clusters Vauban rendered, as CloudNativePG stored them (its defaults filled),
    applied by hand with their superuser Secrets: nothing of Vauban's is in the way."""
    namespace = f"bench-cloudnativepg-{repeat}"
    kube.run("create", "namespace", namespace)
    objects: list[dict[str, Any]] = []
    for engine in rendered:
        name = engine["metadata"]["name"]
        secret = cnpg.superuser_secret(cnpg.Owner(name=name, namespace=namespace, uid=""))
        secret["metadata"].pop("ownerReferences", None)
        objects.append(secret)
        objects.append(
            {
                "apiVersion": engine["apiVersion"],
                "kind": engine["kind"],
                "metadata": {"name": name, "namespace": namespace},
                "spec": engine["spec"],
            }
        )
    names = [e["metadata"]["name"] for e in rendered]
    offset = audit_offset(cluster.audit_log)
    wall0, t0 = time.time(), time.monotonic()
    kube.apply(objects)
    times = _wait_ready(kube, namespace, names, t0, timeout=900)
    writes = _writes(cluster.audit_log, offset, wall0, time.time())
    result = {
        "n": len(names),
        "seconds": times,
        "cloudnativepg_ready": _summary(times, "cloudnativepg"),
        "writes_by_user": {k: v for k, v in writes.items() if not k.startswith("system:node:")},
    }
    _gone(kube, namespace)
    return result


def database_round(
    kube: Kube, cluster: AuditedRealCluster, namespace: str, side: str, n: int, repeat: int
) -> dict[str, Any]:
    """N databases at once on the ManagedCluster `pg` of `namespace`, by Vauban
    (ManagedDatabases) or by CloudNativePG alone (Databases), until all are done; then
    deleted, their databases dropped, before the next round."""
    names = [f"{side[0]}{repeat}-{i}" for i in range(n)]
    if side == "vauban":
        resource = "manageddatabases.vauban.dev"
        objects = [
            {"apiVersion": "vauban.dev/v1alpha1", "kind": "ManagedDatabase",
             "metadata": {"name": name, "namespace": namespace},
             "spec": {"clusterRef": {"name": "pg"}, "databaseName": name.replace("-", "_"),
                      "owner": f"{name.replace('-', '_')}_owner", "deletionPolicy": "Delete"}}
            for name in names
        ]  # fmt: skip
    else:
        resource = "databases.postgresql.cnpg.io"
        objects = [
            {"apiVersion": "postgresql.cnpg.io/v1", "kind": "Database",
             "metadata": {"name": name, "namespace": namespace},
             "spec": {"cluster": {"name": "pg"}, "name": name.replace("-", "_"), "owner": "app",
                      "databaseReclaimPolicy": "delete"}}
            for name in names
        ]  # fmt: skip
    offset = audit_offset(cluster.audit_log)
    wall0, t0 = time.time(), time.monotonic()
    kube.apply(objects)
    times = _wait_applied(kube, resource, namespace, names, t0, timeout=30 + 6 * n)
    time.sleep(5)  # what is written once done (the last status, Events)
    writes = _writes(cluster.audit_log, offset, wall0, time.time())
    values = sorted(times.values())
    result = {
        "side": side,
        "n": n,
        "done": len(values),
        "all_seconds": round(values[-1], 1) if len(values) == n else None,
        "median_seconds": round(statistics.median(values), 1) if values else None,
        "writes_by_user": {k: v for k, v in writes.items() if not k.startswith("system:node:")},
    }
    if side == "vauban":
        operator = sum(v for k, v in writes.items() if k.startswith(OPERATOR_USER + " "))
        result["operator_writes_per_database"] = round(operator / n, 2)
    kube.run("delete", resource, "--all", "-n", namespace, "--timeout=600s")
    return result


def database_rounds(
    kube: Kube, cluster: AuditedRealCluster, n: int, repeats: int
) -> dict[str, Any]:
    namespace = "bench-databases"
    kube.run("create", "namespace", namespace)
    kube.apply(
        [
            {"apiVersion": "vauban.dev/v1alpha1", "kind": "ManagedCluster",
             "metadata": {"name": "pg", "namespace": namespace}, "spec": SPEC}
        ]
    )  # fmt: skip
    ready = _wait_ready(kube, namespace, ["pg"], time.monotonic(), timeout=900)
    log(f"ManagedCluster pg: {ready}")
    runs: list[dict[str, Any]] = []
    for repeat in range(repeats):
        # In turn: neither side always has the server's first, colder, round.
        for side in ("cloudnativepg", "vauban") if repeat % 2 else ("vauban", "cloudnativepg"):
            log(f"round {repeat + 1}, {side}: {n} databases")
            run = database_round(kube, cluster, namespace, side, n, repeat)
            log(json.dumps({k: v for k, v in run.items() if k != "writes_by_user"}))
            runs.append(run)

    def median_of(side: str) -> float | None:
        values = [r["all_seconds"] for r in runs if r["side"] == side and r["all_seconds"]]
        return round(statistics.median(values), 1) if values else None

    vauban, alone = median_of("vauban"), median_of("cloudnativepg")
    return {
        "n": n,
        "spec": SPEC,
        "runs": runs,
        "median_all_seconds": {"vauban": vauban, "cloudnativepg_database": alone},
        "ratio": round(vauban / alone, 2) if vauban and alone else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clusters", type=int, default=4)
    parser.add_argument("--databases", type=int, default=0, help="databases rounds instead")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    output: Path = args.output or ROOT / "results" / (
        "fleet-realnode-databases.json" if args.databases else "fleet-realnode.json"
    )
    reason = unavailable_reason()
    if reason is not None:
        print(f"the real node cannot run here: {reason}", file=sys.stderr)
        return 2
    cluster = AuditedRealCluster()
    started = time.monotonic()
    cluster.start()
    try:
        took = cluster.install_stack()
        log(f"real node and stack up in {time.monotonic() - started:.0f} s ({took})")
        kube = Kube(cluster.kubeconfig)
        if args.databases:
            results = {
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **database_rounds(kube, cluster, args.databases, args.repeats),
            }
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps(results, indent=2), encoding="utf-8")
            log(f"{results['median_all_seconds']}, ratio {results['ratio']}: written to {output}")
            return 0
        vauban_runs: list[dict[str, Any]] = []
        alone_runs: list[dict[str, Any]] = []
        rendered: list[dict[str, Any]] = []
        keys = ("vauban_ready", "cloudnativepg_ready", "operator_writes_per_cluster")
        # In turn V, C, then C, V...: neither side has the cold start (first pods) alone.
        for repeat in range(args.repeats):
            order = ("alone", "vauban") if repeat % 2 else ("vauban", "alone")
            for side in order:
                if side == "vauban":
                    log(f"round {repeat + 1}, Vauban: {args.clusters} ManagedClusters")
                    vauban, rendered = vauban_round(kube, cluster, args.clusters, repeat)
                    log(json.dumps({k: vauban[k] for k in keys}))
                    vauban_runs.append(vauban)
                else:
                    log(f"round {repeat + 1}, CloudNativePG alone: {len(rendered)} Clusters")
                    alone = cloudnativepg_round(kube, cluster, rendered, repeat)
                    log(json.dumps(alone["cloudnativepg_ready"]))
                    alone_runs.append(alone)
        results = {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "spec": SPEC,
            "vauban": vauban_runs,
            "cloudnativepg_alone": alone_runs,
        }
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2), encoding="utf-8")
        log(f"written to {output}")
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
