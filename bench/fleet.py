"""Fleet benchmark (issue #9): how Vauban behaves with hundreds of objects, against the raw
limits and a peer, on the real local control plane and a real PostgreSQL.

    make bench                                   # the default set (see bench/README.md)
    BENCH_SIZES=100 BENCH_REPEATS=1 BENCH_STEADY_SECONDS=60 make bench   # a quick run

Scenarios, each on a fresh control plane (etcd, kube-apiserver with its audit log on,
kube-controller-manager, kube-scheduler, kwok) and, where SQL is involved, a fresh PostgreSQL
with pg_stat_statements and connection logging:

1. provisioning burst: N ManagedDatabases on external-mode ManagedClusters (one per 100
   databases), created by one client with 4 workers; time to Ready per object (p50, p95)
   and for all, API requests per object by verb (audit log, the operator's user agents),
   SQL statements and connections per object, operator CPU and RSS. References in the same
   run: the same SQL plan issued with psycopg, the same objects and writes issued directly
   to the apiserver, and Crossplane's provider-sql provisioning N Roles + N Databases.
2. managed clusters burst: N ManagedClusters in mode Managed until Ready, a simulator writing
   CloudNativePG's status for the Clusters Vauban renders.
3. steady state: after the largest burst, BENCH_STEADY_SECONDS with nothing changing.
4. churn: then 10 % of the specs changed per minute for BENCH_CHURN_SECONDS; time from the
   change to status.observedGeneration catching up.
5. second wave: then N more ManagedDatabases on the same clusters (BENCH_SECOND_WAVE=1, after
   the largest N): the settled RSS with 2N live over the settled RSS with N, per 1000 objects.

Writes bench/results/fleet.json (every run's numbers and the medians) and
bench/results/fleet.png; prints a summary. Takes long: not part of `make test`.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fleet_cnpg
import fleet_peer
import fleet_pg
from fleet_kube import (
    Api,
    AuditedControlPlane,
    Watcher,
    audit_offset,
    create_all,
    object_trace,
    path_of,
    read_audit,
)
from proc import cpu_seconds, start_profiler, stop_profiler, tree_cpu_seconds

from vauban import __version__
from vauban.devcluster import ensure_binaries
from vauban.devcluster.postgres import PostgresServer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
VAUBAN = "vauban.dev/v1alpha1"
PER_CLUSTER = 100
WORKERS = 4
OPERATOR_NAMESPACE = "vauban-system"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass(frozen=True)
class Knobs:
    sizes: list[int]
    managed_sizes: list[int]
    repeats: int
    largest_repeats: int
    managed_repeats: int
    steady_seconds: int
    churn_seconds: int
    recheck_seconds: int
    probe_seconds: int
    resync_seconds: int
    pg_max_connections: int
    servers: int
    steady_sizes: list[int]
    raw: bool
    peer: bool
    second_wave: bool
    timeout_per_object: float

    @classmethod
    def from_env(cls) -> Knobs:
        def ints(name: str, default: str) -> list[int]:
            text = os.environ.get(name, default).replace(",", " ")
            return [int(x) for x in text.split()]

        return cls(
            sizes=ints("BENCH_SIZES", "100 500 1000"),
            managed_sizes=ints("BENCH_MANAGED_SIZES", "50 200"),
            repeats=int(os.environ.get("BENCH_REPEATS", "3")),
            largest_repeats=int(os.environ.get("BENCH_LARGEST_REPEATS", "1")),
            managed_repeats=int(os.environ.get("BENCH_MANAGED_REPEATS", "1")),
            steady_seconds=int(os.environ.get("BENCH_STEADY_SECONDS", "600")),
            churn_seconds=int(os.environ.get("BENCH_CHURN_SECONDS", "180")),
            recheck_seconds=int(os.environ.get("BENCH_RECHECK_SECONDS", "30")),
            probe_seconds=int(os.environ.get("BENCH_PROBE_SECONDS", "300")),
            resync_seconds=int(os.environ.get("BENCH_RESYNC_SECONDS", "3600")),
            pg_max_connections=int(os.environ.get("BENCH_PG_MAX_CONNECTIONS", "100")),
            servers=max(1, int(os.environ.get("BENCH_SERVERS", "1"))),
            steady_sizes=ints("BENCH_STEADY_SIZES", ""),
            raw=os.environ.get("BENCH_RAW", "1") != "0",
            peer=os.environ.get("BENCH_PEER", "1") != "0",
            second_wave=os.environ.get("BENCH_SECOND_WAVE", "1") != "0",
            timeout_per_object=float(os.environ.get("BENCH_TIMEOUT_PER_OBJECT", "0.6")),
        )


# -- measuring a process ----------------------------------------------------------------------

PAGE = os.sysconf("SC_PAGE_SIZE")
OPERATOR_CODE = ("vauban/", "kopf/", "psycopg/", "kubernetes/", "aiohttp/", "pydantic")
"""Where a profile of the operator is summed by function, callees included."""
MIB = 1024 * 1024


def components_cpu(
    plane: AuditedControlPlane | None, pgs: list[PostgresServer], operator: int | None
) -> dict[str, float]:
    """CPU seconds so far of each part of a run: the operator, each control-plane component,
    the PostgreSQL servers together. A difference of two says where a burst's CPU went."""
    parts: dict[str, float] = {}
    if operator is not None:
        parts["operator"] = tree_cpu_seconds(operator)
    for name, pid in (plane.pids if plane is not None else {}).items():
        parts[name] = tree_cpu_seconds(pid)
    parts["postgresql"] = sum(
        tree_cpu_seconds(pg.process.pid) for pg in pgs if pg.process is not None
    )
    return parts


def cpu_spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before.get(k, 0.0), 2) for k in after}


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def hwm_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


class Monitor:
    """Samples a process's RSS and CPU every `every` seconds, from /proc, and how busy the
    whole machine is (other work on a shared machine shows there)."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int, float]] = []  # (monotonic, rss, cpu)
        self.machine: list[tuple[float, int, int]] = []  # (monotonic, busy, total)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Monitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, ValueError):
                self.samples.append((time.monotonic(), rss_bytes(self.pid), cpu_seconds(self.pid)))
                self.machine.append((time.monotonic(), *machine_jiffies()))
            self._stop.wait(self.every)

    def window(self, start: float, end: float) -> dict[str, Any]:
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return {}
        rss = [s[1] for s in inside]
        cpu = inside[-1][2] - inside[0][2]
        wall = inside[-1][0] - inside[0][0]
        machine = [m for m in self.machine if start <= m[0] <= end]
        busy = (
            (machine[-1][1] - machine[0][1]) / (machine[-1][2] - machine[0][2])
            if len(machine) >= 2 and machine[-1][2] > machine[0][2]
            else None
        )
        return {
            "machine_busy_percent": None if busy is None else round(100 * busy, 1),
            "cpu_seconds": round(cpu, 2),
            "cpu_percent_of_one_core": round(100 * cpu / wall, 2) if wall else None,
            "rss_peak_mib": round(max(rss) / MIB, 1),
            "rss_median_mib": round(statistics.median(rss) / MIB, 1),
            "rss_end_mib": round(rss[-1] / MIB, 1),
        }


# -- helpers ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    low, high = math.floor(k), math.ceil(k)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def curve(times: list[float], points: int = 120) -> list[tuple[float, float]]:
    """(seconds since start, fraction ready), at most `points` points."""
    ordered = sorted(times)
    if not ordered:
        return []
    step = max(1, len(ordered) // points)
    out = [(round(t, 3), round((i + 1) / len(ordered), 4)) for i, t in enumerate(ordered)][::step]
    if out[-1][1] != 1.0:
        out.append((round(ordered[-1], 3), 1.0))
    return [(0.0, 0.0), *out]


def kubectl(plane: AuditedControlPlane, *args: str) -> str:
    result = subprocess.run(
        [str(ensure_binaries().kubectl), f"--kubeconfig={plane.kubeconfig}", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return result.stdout


def install(plane: AuditedControlPlane, folder: Path, wait_for: list[str]) -> None:
    kubectl(plane, "apply", "--server-side", "--field-manager=vauban-bench", "-f", str(folder))
    for attempt in range(10):
        try:
            kubectl(plane, "wait", "--for=condition=Established", "--timeout=120s", *wait_for)
            return
        except RuntimeError:
            # A CRD just created may have no conditions yet: kubectl wait refuses it.
            if attempt == 9:
                raise
            time.sleep(1)


def vauban_crds(plane: AuditedControlPlane) -> None:
    from vauban.api.crdgen import KINDS

    install(plane, ROOT / "crds", [f"crd/{kind.crd_name}" for kind in KINDS])


def namespace(name: str) -> tuple[str, dict[str, Any]]:
    return path_of("v1", "namespaces"), {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name},
    }


@contextlib.contextmanager
def control_plane(work: Path, name: str) -> Iterator[tuple[AuditedControlPlane, Api]]:
    folder = work / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    plane = AuditedControlPlane(folder)
    plane.start()
    try:
        yield plane, Api(plane.kubeconfig)
    finally:
        plane.stop()
        # etcd and the audit log of a finished run are large; the components' logs are kept
        # (BENCH_KEEP_AUDIT=1 keeps the audit log too).
        shutil.rmtree(folder / "etcd", ignore_errors=True)
        if os.environ.get("BENCH_KEEP_AUDIT") != "1":
            with contextlib.suppress(OSError):
                (folder / "audit.log").unlink()


@contextlib.contextmanager
def postgres(knobs: Knobs, databases: int) -> Iterator[list[PostgresServer]]:
    """BENCH_SERVERS fresh servers, each on a loopback port of its own, each with the same
    settings; none is started when the databases would not fit on the disk."""
    fleet_pg.check_disk(databases, knobs.servers)
    with contextlib.ExitStack() as stack:
        servers = []
        for _ in range(knobs.servers):
            server = fleet_pg.start_server(knobs.pg_max_connections)
            stack.callback(server.destroy)
            servers.append(server)
        yield servers


OPERATOR_SOURCE: Path | None = None
"""A snapshot of the committed operator (git archive HEAD): what every run measures, even
if the working tree changes while the benchmark runs."""


def snapshot_operator(work: Path) -> Path | None:
    target = work / "src"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "HEAD", "operator"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        return None  # not a git checkout: the installed package is measured
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target / "operator"


MEMORY_TRACED = os.environ.get("BENCH_MEMORY") == "1"
"""BENCH_MEMORY=1: the operator runs under tracemalloc (traced_operator.py), and the result
has where its memory went (`memory`): what start-up and the burst added, by package and line.
Tracing doubles its memory and slows it: such a run's RSS and times are not comparable."""


@contextlib.contextmanager
def operator_process(
    plane: AuditedControlPlane, knobs: Knobs, logfile: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`vauban run` as a process, as in a pod: production-like intervals, INFO logs."""
    metrics_port = free_port()
    env = {
        **os.environ,
        "VAUBAN_KUBECONFIG": str(plane.kubeconfig),
        "VAUBAN_NAMESPACE": OPERATOR_NAMESPACE,
        "VAUBAN_RECHECK_INTERVAL_SECONDS": str(knobs.recheck_seconds),
        "VAUBAN_PROBE_INTERVAL_SECONDS": str(knobs.probe_seconds),
        "VAUBAN_RESYNC_INTERVAL_SECONDS": str(knobs.resync_seconds),
        "VAUBAN_LIVENESS_PORT": str(free_port()),
        "VAUBAN_METRICS_PORT": str(metrics_port),
        "VAUBAN_LOG_FORMAT": "json",
        "VAUBAN_LOG_LEVEL": "INFO",
    }
    if OPERATOR_SOURCE is not None:
        env["PYTHONPATH"] = str(OPERATOR_SOURCE)
    command = [sys.executable, "-m", "vauban", "run"]
    if MEMORY_TRACED:
        env["BENCH_MEMORY_OUT"] = str(logfile.with_name("memory"))
        command = [sys.executable, str(Path(__file__).with_name("traced_operator.py"))]
    with logfile.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        # Traced, the imports alone take a minute.
        deadline = time.monotonic() + (600 if MEMORY_TRACED else 90)
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"operator exited:\n{logfile.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("operator not ready in time") from None
                time.sleep(0.3)
        yield process, metrics_port
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class MemoryTrace:
    """The traced operator's dumps: when tracing starts, after its imports (taken on its
    own), after start-up (now), after the burst (`result`), then before and after the second
    wave (`since_last`)."""

    def __init__(self, process: subprocess.Popen[bytes], logfile: Path) -> None:
        self._process, self._logfile = process, logfile
        self._imports, self._started = self._dump(0), self._dump(1)
        self._last, self._number = self._started, 1

    def _dump(self, number: int) -> dict[str, Any]:
        path = self._logfile.with_name(f"memory.{number}.json")
        if number > 0:
            self._process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 120
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1)  # written in one go, but not atomically
        return json.loads(path.read_text())  # type: ignore[no-any-return]

    def result(self) -> dict[str, Any]:
        return {
            "start_up": _memory_growth(self._imports, self._started),
            "burst": self.since_last(),
        }

    def since_last(self) -> dict[str, Any]:
        """What the operator holds now more than at the previous dump."""
        self._number += 1
        before, self._last = self._last, self._dump(self._number)
        return _memory_growth(before, self._last)


def _memory_growth(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What `after` holds more than `before`, by package and by place, in KiB."""

    def grown(key: str) -> dict[str, float]:
        rows = {
            k: (v - before[key].get(k, 0)) / 1024
            for k, v in after[key].items()
            if v - before[key].get(k, 0) > 64 * 1024
        }
        return {k: round(v, 1) for k, v in sorted(rows.items(), key=lambda kv: -kv[1])}

    return {
        "traced_mib": round((after["traced_bytes"] - before["traced_bytes"]) / MIB, 1),
        "by_package_kib": grown("by_package"),
        "by_place_kib": grown("by_place"),
        "by_type_kib": grown("by_type"),
    }


def scrape(port: int) -> dict[str, float]:
    """The operator's reconcile counters: {kind: count}, {kind+'_seconds': sum}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "vauban_reconcile_duration_seconds_count":
                out[s.labels["kind"]] = out.get(s.labels["kind"], 0) + s.value
            elif s.name == "vauban_reconcile_duration_seconds_sum":
                key = s.labels["kind"] + "_seconds"
                out[key] = out.get(key, 0) + s.value
    return out


def log_levels(logfile: Path, since: int = 0) -> dict[str, Any]:
    """Lines of the operator's JSON log by level, and the first few warnings or errors."""
    levels: dict[str, int] = {}
    examples: list[str] = []
    with logfile.open("rb") as f:
        f.seek(since)
        for raw in f:
            try:
                entry = json.loads(raw)
                level = str(
                    entry.get("severity") or entry.get("levelname") or entry.get("level") or "?"
                )
                message = str(entry.get("message", ""))
            except ValueError:
                level, message = "raw", raw.decode(errors="replace").strip()
            levels[level] = levels.get(level, 0) + 1
            if level.lower() in ("warning", "error", "critical", "raw") and len(examples) < 5:
                examples.append(message[:300])
    return {"lines_by_level": levels, "examples": examples}


def not_ready_reasons(api: Api, api_version: str, plural: str) -> dict[str, int]:
    reasons: dict[str, int] = {}
    for item in api.list(path_of(api_version, plural))["items"]:
        for c in (item.get("status") or {}).get("conditions") or []:
            if c.get("type") == "Ready" and c.get("status") != "True":
                reasons[c.get("reason", "?")] = reasons.get(c.get("reason", "?"), 0) + 1
                break
        else:
            if not (item.get("status") or {}).get("conditions"):
                reasons["NoStatus"] = reasons.get("NoStatus", 0) + 1
    return reasons


def all_ready(expected: int) -> Callable[[dict[Any, Any]], bool]:
    return lambda seen: sum(1 for s in seen.values() if s.ready is not None) >= expected


def latencies(seen: dict[Any, Any]) -> list[float]:
    return [s.ready - s.added for s in seen.values() if s.ready is not None]


def rss_over_ready(
    monitor: Monitor, watcher: Watcher, start: float, end: float, rss_before: int, points: int = 60
) -> dict[str, Any]:
    """The operator's RSS against how many objects were Ready when it was sampled, over the
    burst: [seconds since the burst began, Ready objects, RSS MiB], at most `points` points,
    and the least-squares slope in MiB per 1000 Ready objects. During the burst the slope
    also holds what is in flight (queued events, bodies being reconciled); the steady
    state's `rss_growth_mib_per_1000_objects` is the figure for live objects alone."""
    ready = sorted(s.ready for s in watcher.seen.values() if s.ready is not None)
    samples = [(t, rss) for t, rss, _ in monitor.samples if start <= t <= end]
    rows = [(t - start, bisect.bisect_right(ready, t), rss / MIB) for t, rss in samples]
    step = max(1, len(rows) // points)
    picked = rows[::step]
    if rows and picked[-1] is not rows[-1]:
        picked.append(rows[-1])
    slope = None
    xs, ys = [r[1] for r in rows], [r[2] for r in rows]
    if len(rows) >= 2 and max(xs) > min(xs):
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
        slope = 1000 * cov / sum((x - mx) ** 2 for x in xs)
    return {
        "points": [[round(t, 1), k, round(m, 1)] for t, k, m in picked],
        "rss_before_mib": round(rss_before / MIB, 1),
        "burst_slope_mib_per_1000_ready": rounded(slope, 2),
    }


def rss_growth(process: dict[str, Any], rss_before: int, n: int) -> float | None:
    """MiB per 1000 live objects: the steady state's median RSS over the RSS before the
    burst (the same process, its clusters already Ready), per object."""
    median = process.get("rss_median_mib")
    if median is None or not n:
        return None
    return round(1000 * (float(median) - rss_before / MIB) / n, 2)


# -- objects ----------------------------------------------------------------------------------


def layout(n: int) -> list[tuple[str, int]]:
    """(namespace, index) of each of n databases: 100 per namespace, each namespace with one
    ManagedCluster (or ProviderConfig) of its own."""
    return [(f"tenant-{i // PER_CLUSTER}", i) for i in range(n)]


def namespaces_of(n: int) -> list[str]:
    return sorted({ns for ns, _ in layout(n)})


def server_of(ns: str, servers: int) -> int:
    """The server a namespace's cluster adopts: namespaces round-robin over the servers, so
    every server holds about N / servers databases and no namespace spans two servers."""
    return int(ns.rsplit("-", 1)[1]) % servers


def admin_secret(ns: str, admin: str) -> tuple[str, dict[str, Any]]:
    return path_of("v1", "secrets", ns), {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "admin", "namespace": ns},
        "stringData": {"username": admin, "password": fleet_pg.ADMIN_PASSWORD},
    }


def external_cluster(ns: str, port: int) -> tuple[str, dict[str, Any]]:
    return path_of(VAUBAN, "managedclusters", ns), {
        "apiVersion": VAUBAN,
        "kind": "ManagedCluster",
        "metadata": {"name": "pg", "namespace": ns},
        "spec": {
            "mode": "External",
            "external": {
                "host": "127.0.0.1",
                "port": port,
                "adminSecretRef": {"name": "admin"},
                "sslMode": "disable",
            },
        },
    }


def managed_database(ns: str, i: int) -> tuple[str, dict[str, Any]]:
    return path_of(VAUBAN, "manageddatabases", ns), {
        "apiVersion": VAUBAN,
        "kind": "ManagedDatabase",
        "metadata": {"name": f"d{i}", "namespace": ns},
        "spec": {"clusterRef": {"name": "pg"}, "databaseName": f"d{i}", "owner": f"o{i}"},
    }


def managed_cluster(ns: str, i: int) -> tuple[str, dict[str, Any]]:
    return path_of(VAUBAN, "managedclusters", ns), {
        "apiVersion": VAUBAN,
        "kind": "ManagedCluster",
        "metadata": {"name": f"c{i}", "namespace": ns},
        "spec": {"version": "17", "instances": 3, "storage": {"size": "10Gi"}},
    }


# -- scenario 1: provisioning burst, Vauban ---------------------------------------------------


def external_setup(
    plane: AuditedControlPlane, api: Api, pgs: list[PostgresServer], admin: str, n: int
) -> None:
    """Vauban's CRDs, and per namespace its admin Secret and its mode External cluster."""
    # The same admin on every server: each namespace's Secret names the admin of the server
    # its cluster adopts, as a tenant given an account on a shared server would.
    for pg in pgs:
        fleet_pg.create_admin(pg, admin)
    vauban_crds(plane)
    setup = [namespace(OPERATOR_NAMESPACE)]
    for ns in namespaces_of(n):
        port = pgs[server_of(ns, len(pgs))].port
        setup += [namespace(ns), admin_secret(ns, admin), external_cluster(ns, port)]
    for path, obj in setup:
        api.create(path, obj)


def vauban_burst(
    work: Path, knobs: Knobs, n: int, steady: bool, churn_too: bool, wave_too: bool
) -> dict[str, Any]:
    admin = "vauban_admin"
    databases = 2 * n if wave_too else n
    with postgres(knobs, databases) as pgs, control_plane(work, f"vauban-{n}") as (plane, api):
        external_setup(plane, api, pgs, admin, n)
        logfile = plane.data_dir / "logs" / "vauban.log"
        with operator_process(plane, knobs, logfile) as (process, metrics_port):
            clusters = Watcher(api, VAUBAN, "managedclusters").start()
            # Each cluster's first reconcile probes its server: more clusters, longer start.
            wait_clusters = max(120.0, 2.0 * len(namespaces_of(n)))
            if not clusters.wait(all_ready(len(namespaces_of(n))), timeout=wait_clusters):
                raise RuntimeError(f"external clusters not Ready in {wait_clusters:.0f} s")
            clusters.stop()
            monitor = Monitor(process.pid).start()
            time.sleep(3)  # start-up settles
            watcher = Watcher(api, VAUBAN, "manageddatabases").start()
            pg_logs = fleet_pg.mark(pgs)
            audit_from = audit_offset(plane.audit_log)
            log_from = logfile.stat().st_size
            before = scrape(metrics_port)
            rss_before = rss_bytes(process.pid)
            memory = MemoryTrace(process, logfile) if MEMORY_TRACED else None
            profiler = (
                start_profiler(process.pid, plane.data_dir / "profile.txt")
                if os.environ.get("BENCH_PROFILE") == "1"
                else None
            )
            cpu0 = components_cpu(plane, pgs, process.pid)
            wall0, t0 = time.time(), time.monotonic()
            log(f"vauban: creating {n} ManagedDatabases")
            create_seconds = create_all(
                api, [managed_database(ns, i) for ns, i in layout(n)], WORKERS
            )
            done = watcher.wait(all_ready(n), timeout=max(120.0, n * knobs.timeout_per_object))
            t_ready, cpu_to_ready = (
                time.monotonic(),
                cpu_spent(cpu0, components_cpu(plane, pgs, process.pid)),
            )
            ready_times = [s.ready - t0 for s in watcher.seen.values() if s.ready is not None]
            profile = (
                stop_profiler(profiler, plane.data_dir / "profile.txt", OPERATOR_CODE)
                if profiler is not None
                else None
            )
            # What follows Ready (status events echoed back) is part of the happy path's cost.
            time.sleep(10)
            t_end, wall_end = time.monotonic(), time.time()
            requests = read_audit(plane.audit_log, "operator", wall0, wall_end, audit_from)
            trace = object_trace(plane.audit_log, "operator", "tenant-0", "d0", audit_from)
            to_ready = read_audit(
                plane.audit_log, "operator", wall0, wall0 + (t_ready - t0), audit_from
            )
            sql = fleet_pg.counts_over(pgs, admin, pg_logs)
            after = scrape(metrics_port)
            result: dict[str, Any] = {
                "n": n,
                "clusters": len(namespaces_of(n)),
                "servers": len(pgs),
                "all_ready": done,
                "ready_count": len(ready_times),
                "create_seconds": round(create_seconds, 2),
                "time_to_all_ready_seconds": round(t_ready - t0, 2) if done else None,
                "per_object_seconds": {
                    "p50": rounded(percentile(latencies(watcher.seen), 0.5)),
                    "p95": rounded(percentile(latencies(watcher.seen), 0.95)),
                    "max": rounded(max(latencies(watcher.seen), default=None)),
                },
                "curve": curve(ready_times),
                "api": requests.summary(n),
                "api_writes_per_object_until_all_ready": round(to_ready.writes / n, 3),
                "api_trace_of_one_object": trace,
                "sql": sql.summary(n),
                "reconciles": {k: round(after.get(k, 0) - before.get(k, 0), 2) for k in after},
                "process": monitor.window(t0, t_end),
                # From the first create to the last Ready, every part on the machine.
                "cpu_seconds_to_ready_by_component": cpu_to_ready,
                "process_peak_rss_mib_since_start": round(hwm_bytes(process.pid) / MIB, 1),
                "rss_before_burst_mib": round(rss_before / MIB, 1),
                "rss_over_ready": rss_over_ready(monitor, watcher, t0, t_end, rss_before),
                "log": log_levels(logfile, log_from),
                **({"profile": profile} if profile else {}),
                **({"memory": memory.result()} if memory is not None else {}),
            }
            if not done:
                result["not_ready_reasons"] = not_ready_reasons(api, VAUBAN, "manageddatabases")
            if steady or wave_too:
                fleet = Fleet(
                    plane,
                    api,
                    pgs,
                    admin,
                    watcher,
                    monitor,
                    metrics_port,
                    logfile,
                    rss_before,
                    memory,
                )
                result.update(
                    after_burst(
                        fleet, knobs, n, done, steady=steady, churn_too=churn_too, wave_too=wave_too
                    )
                )
            watcher.stop()
            monitor.stop()
            return result


@dataclass(frozen=True)
class Fleet:
    """A burst's world, left as it was for steady state and churn: the control plane, the
    servers, the operator and what watches it."""

    plane: AuditedControlPlane
    api: Api
    pgs: list[PostgresServer]
    admin: str
    watcher: Watcher
    monitor: Monitor
    metrics_port: int
    logfile: Path
    rss_before: int
    memory: MemoryTrace | None


SETTLE_SECONDS = 20.0
"""After a wave's last Ready: its status events echoed back, and the operator's heap trimmed
(vauban.memory, 2 s after the last reconcile)."""


def settled_rss(monitor: Monitor, seconds: float = 10.0) -> float:
    """The operator's median RSS (MiB) over `seconds`, once a wave has settled."""
    time.sleep(SETTLE_SECONDS)
    start = time.monotonic()
    time.sleep(seconds)
    return float(monitor.window(start, time.monotonic())["rss_median_mib"])


def second_wave(fleet: Fleet, knobs: Knobs, n: int) -> dict[str, Any]:
    """N more databases on the same clusters once the first N are Ready and settled: the RSS
    they add, settled, is what N live objects cost. The first burst's own growth also holds
    the operator's warm-up and what the allocator keeps of the burst's peak, which the
    second reuses."""
    api, watcher, monitor = fleet.api, fleet.watcher, fleet.monitor
    rss_first = settled_rss(monitor)
    if fleet.memory is not None:
        fleet.memory.since_last()
    log(f"vauban: second wave, {n} more ManagedDatabases")
    t0 = time.monotonic()
    create_all(
        api,
        [managed_database(f"tenant-{i // PER_CLUSTER}", n + i) for i in range(n)],
        WORKERS,
    )
    done = watcher.wait(all_ready(2 * n), timeout=max(120.0, n * knobs.timeout_per_object))
    t_ready = time.monotonic()
    out: dict[str, Any] = {
        "objects": [n, 2 * n],
        "all_ready": done,
        "time_to_all_ready_seconds": round(t_ready - t0, 2) if done else None,
        "rss_peak_mib": monitor.window(t0, t_ready).get("rss_peak_mib"),
    }
    if done:
        rss_second = settled_rss(monitor)
        out["rss_settled_mib"] = [rss_first, rss_second]
        out["rss_growth_mib_per_1000_live_objects"] = round(1000 * (rss_second - rss_first) / n, 2)
        if fleet.memory is not None:
            out["memory"] = fleet.memory.since_last()
    return out


def after_burst(
    fleet: Fleet,
    knobs: Knobs,
    n: int,
    done: bool,
    *,
    steady: bool,
    churn_too: bool,
    wave_too: bool,
) -> dict[str, Any]:
    """Steady state (then churn, after the largest N) over the fleet the burst left, then
    the second wave."""
    if not done:
        # No steady state over a fleet that never became Ready: said, not measured.
        skipped = {"objects": n, "skipped": "the burst did not reach all Ready"}
        return {"steady": skipped} if steady else {}
    out: dict[str, Any] = {}
    if steady:
        out["steady"] = steady_state(fleet, knobs, n)
        if churn_too and knobs.churn_seconds > 0:
            out["churn"] = churn(fleet, knobs, n)
    if wave_too:
        out["second_wave"] = second_wave(fleet, knobs, n)
    return out


def steady_state(fleet: Fleet, knobs: Knobs, n: int) -> dict[str, Any]:
    plane, pgs, admin, monitor = fleet.plane, fleet.pgs, fleet.admin, fleet.monitor
    metrics_port, logfile = fleet.metrics_port, fleet.logfile
    seconds = knobs.steady_seconds
    log(f"vauban: steady state, {n} Ready objects, {seconds} s")
    pg_logs = fleet_pg.mark(pgs)
    audit_from = audit_offset(plane.audit_log)
    log_from = logfile.stat().st_size
    before = scrape(metrics_port)
    wall0, t0 = time.time(), time.monotonic()
    time.sleep(seconds)
    t1, wall1 = time.monotonic(), time.time()
    after = scrape(metrics_port)
    requests = read_audit(plane.audit_log, "operator", wall0, wall1, audit_from)
    sql = fleet_pg.counts_over(pgs, admin, pg_logs)
    minutes = (t1 - t0) / 60
    reconciles = after.get("ManagedDatabase", 0) - before.get("ManagedDatabase", 0)
    process = monitor.window(t0, t1)
    return {
        "seconds": round(t1 - t0, 1),
        "objects": n,
        "clusters": len(namespaces_of(n)),
        "servers": len(pgs),
        "process": process,
        "rss_growth_mib_per_1000_objects": rss_growth(process, fleet.rss_before, n),
        "api_requests_per_minute": round(requests.total / minutes, 2),
        "api_writes_per_minute": round(requests.writes / minutes, 2),
        "sql_statements_per_minute": round(sql.statements / minutes, 2),
        "sql_connections_per_minute": round(sql.connections / minutes, 2),
        "api": requests.summary(1),
        "database_reconciles": reconciles,
        "reconcile_seconds": round(
            after.get("ManagedDatabase_seconds", 0) - before.get("ManagedDatabase_seconds", 0), 2
        ),
        "sql": sql.summary(1),
        "probe_cost": {
            "per_reconcile_api_requests": round(requests.total / reconciles, 2)
            if reconciles
            else None,
            "per_reconcile_sql_statements": round(sql.statements / reconciles, 2)
            if reconciles
            else None,
            "per_reconcile_connections": round(sql.connections / reconciles, 2)
            if reconciles
            else None,
            "per_reconcile_cpu_ms": round(1000 * process.get("cpu_seconds", 0) / reconciles, 2)
            if reconciles
            else None,
        },
        "log": log_levels(logfile, log_from),
    }


def churn(fleet: Fleet, knobs: Knobs, n: int) -> dict[str, Any]:
    plane, api, pgs, admin = fleet.plane, fleet.api, fleet.pgs, fleet.admin
    watcher, monitor = fleet.watcher, fleet.monitor
    rounds = max(1, knobs.churn_seconds // 60)
    share = max(1, n // 10)
    log(f"vauban: churn, {share} specs changed per minute, {rounds} rounds")
    pg_logs = fleet_pg.mark(pgs)
    audit_from = audit_offset(plane.audit_log)
    wall0, t0 = time.time(), time.monotonic()
    changes: list[tuple[tuple[str, str], int, float]] = []
    keys = [(ns, f"d{i}") for ns, i in layout(n)]
    for r in range(rounds):
        started = time.monotonic()
        for ns, name in keys[r * share % n :][:share]:
            path = path_of(VAUBAN, "manageddatabases", ns, name)
            at = time.monotonic()
            obj = api.merge_patch(path, {"spec": {"connectionLimit": 10 + r}})
            changes.append(((ns, name), int(obj["metadata"]["generation"]), at))
        if r < rounds - 1:
            time.sleep(max(0.0, 60 - (time.monotonic() - started)))

    def caught_up(seen: dict[Any, Any]) -> bool:
        return all(any(g >= gen for g in seen[key].caught_up) for key, gen, _ in changes)

    # A round of 10 % at N = 10,000 is 1000 full reconciles: the wait grows with it.
    done = watcher.wait(caught_up, timeout=max(300.0, share * knobs.timeout_per_object))
    time.sleep(5)  # what follows the catch-up (status echoed back) counts too
    t1, wall1 = time.monotonic(), time.time()
    waits = []
    for key, gen, at in changes:
        times = [t for g, t in watcher.seen[key].caught_up.items() if g >= gen]
        if times:
            waits.append(min(times) - at)
    requests = read_audit(plane.audit_log, "operator", wall0, wall1, audit_from)
    sql = fleet_pg.counts_over(pgs, admin, pg_logs)
    return {
        "rounds": rounds,
        "changes": len(changes),
        "all_caught_up": done,
        "spec_to_observed_generation_seconds": {
            "p50": rounded(percentile(waits, 0.5)),
            "p95": rounded(percentile(waits, 0.95)),
            "max": rounded(max(waits, default=None)),
        },
        "api": requests.summary(len(changes)),
        "sql": sql.summary(len(changes)),
        "process": monitor.window(t0, t1),
    }


# -- scenario 1: the peer ---------------------------------------------------------------------


def peer_burst(work: Path, knobs: Knobs, n: int) -> dict[str, Any]:
    binary = fleet_peer.binary()
    with postgres(knobs, n) as pgs, control_plane(work, f"peer-{n}") as (plane, api):
        peer_setup(plane, api, pgs, n)
        logfile = plane.data_dir / "logs" / "provider-sql.log"
        process = fleet_peer.start(plane.kubeconfig, logfile, free_port())
        try:
            time.sleep(5)  # caches synced, controllers started
            if process.poll() is not None:
                raise RuntimeError(f"provider-sql exited:\n{logfile.read_text()[-3000:]}")
            monitor = Monitor(process.pid).start()
            roles = Watcher(api, fleet_peer.API_VERSION, "roles").start()
            databases = Watcher(api, fleet_peer.API_VERSION, "databases").start()
            pg_logs = fleet_pg.mark(pgs)
            audit_from = audit_offset(plane.audit_log)
            wall0, t0 = time.time(), time.monotonic()
            log(f"provider-sql {binary.parent.name}: creating {n} Roles and {n} Databases")
            items = []
            for ns, i in layout(n):
                items += fleet_peer.role_and_database(ns, f"o{i}", f"d{i}")
            create_seconds = create_all(api, items, WORKERS)
            timeout = max(120.0, n * knobs.timeout_per_object * 2)
            done = roles.wait(all_ready(n), timeout) and databases.wait(
                all_ready(n), max(10.0, timeout - (time.monotonic() - t0))
            )
            t_ready = time.monotonic()
            per_object, ready_times = peer_times(roles, databases, n, t0)
            time.sleep(10)
            t_end, wall_end = time.monotonic(), time.time()
            requests = read_audit(plane.audit_log, "peer", wall0, wall_end, audit_from)
            sql = fleet_pg.counts_over(pgs, "peer_admin", pg_logs)
            idle = peer_idle(plane, monitor, min(60, knobs.steady_seconds), audit_from)
            result: dict[str, Any] = {
                "n": n,
                "version": fleet_peer.VERSION,
                "all_ready": done,
                "ready_count": len(ready_times),
                "create_seconds": round(create_seconds, 2),
                "time_to_all_ready_seconds": round(t_ready - t0, 2) if done else None,
                "per_object_seconds": {
                    "p50": rounded(percentile(per_object, 0.5)),
                    "p95": rounded(percentile(per_object, 0.95)),
                    "max": rounded(max(per_object, default=None)),
                },
                "curve": curve(ready_times),
                "api": requests.summary(n),
                "sql": sql.summary(n),
                "process": monitor.window(t0, t_end),
                "process_peak_rss_mib_since_start": round(hwm_bytes(process.pid) / MIB, 1),
                "idle": idle,
            }
            if not done:
                result.update(peer_not_ready(api))
            roles.stop()
            databases.stop()
            monitor.stop()
            return result
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def peer_idle(
    plane: AuditedControlPlane, monitor: Monitor, seconds: int, audit_from: int
) -> dict[str, Any] | None:
    """A short look at the peer idle, as for Vauban's steady state (shorter)."""
    if not seconds:
        return None
    wall0, t0 = time.time(), time.monotonic()
    time.sleep(seconds)
    requests = read_audit(plane.audit_log, "peer", wall0, time.time(), audit_from)
    return {
        "seconds": seconds,
        "process": monitor.window(t0, time.monotonic()),
        "api_requests_per_minute": round(requests.total / (seconds / 60), 2),
    }


def peer_times(
    roles: Watcher, databases: Watcher, n: int, t0: float
) -> tuple[list[float], list[float]]:
    """Per ManagedDatabase-equivalent (a Role and its Database): from the first of the two
    to appear to the last Ready; and when the last was Ready, from the burst's start."""
    per_object, ready_times = [], []
    for ns, i in layout(n):
        r, d = roles.seen.get((ns, f"o{i}")), databases.seen.get((ns, f"d{i}"))
        if r and d and r.ready is not None and d.ready is not None:
            per_object.append(max(r.ready, d.ready) - min(r.added, d.added))
            ready_times.append(max(r.ready, d.ready) - t0)
    return per_object, ready_times


def peer_setup(plane: AuditedControlPlane, api: Api, pgs: list[PostgresServer], n: int) -> None:
    """provider-sql's CRDs, its superuser on every server, per namespace its ProviderConfig
    for the server the namespace is given (as Vauban's clusters are)."""
    for pg in pgs:
        fleet_pg.create_admin(pg, "peer_admin", superuser=True)
    install(
        plane,
        fleet_peer.crds(),
        [f"crd/{p}.{fleet_peer.GROUP}" for p in ("roles", "databases", "providerconfigs")],
    )
    for ns in namespaces_of(n):
        api.create(*namespace(ns))
        port = pgs[server_of(ns, len(pgs))].port
        for path, obj in fleet_peer.provider_config(ns, port):
            api.create(path, obj)


def peer_not_ready(api: Api) -> dict[str, Any]:
    events = api.list(path_of("v1", "events"))["items"]
    return {
        "not_ready_reasons": {
            "roles": not_ready_reasons(api, fleet_peer.API_VERSION, "roles"),
            "databases": not_ready_reasons(api, fleet_peer.API_VERSION, "databases"),
        },
        "events": sorted({f"{e.get('reason')}: {str(e.get('message'))[:300]}" for e in events})[
            :10
        ],
    }


# -- scenario 1: the raw limits ---------------------------------------------------------------


def raw_sql(knobs: Knobs, n: int) -> dict[str, Any]:
    with postgres(knobs, n) as pgs:
        for pg in pgs:
            fleet_pg.create_admin(pg, "raw_admin")
        names = [(server_of(ns, len(pgs)), f"d{i}", f"o{i}", f"o{i}_login1") for ns, i in layout(n)]
        cpu0 = components_cpu(None, pgs, None)
        result = fleet_pg.raw_sql(pgs, "raw_admin", names, WORKERS)
        # The verifiers are made before its clock starts: the servers' CPU is the plan's.
        result["cpu_seconds_by_component"] = cpu_spent(cpu0, components_cpu(None, pgs, None))
        return result


def credentials_like(ns: str, i: int) -> dict[str, Any]:
    """A Secret of the shape Vauban writes (kubernetes.io/basic-auth, nine keys)."""
    values = {
        "username": f"o{i}_login1",
        "password": "x" * 32,
        "host": "127.0.0.1",
        "port": "5432",
        "dbname": f"d{i}",
        "uri": f"postgresql://o{i}_login1:{'x' * 32}@127.0.0.1:5432/d{i}?sslmode=disable",
        "jdbc-uri": f"jdbc:postgresql://127.0.0.1:5432/d{i}?user=o{i}_login1&sslmode=disable",
        "pgpass": f"127.0.0.1:5432:d{i}:o{i}_login1:{'x' * 32}",
        "sslmode": "disable",
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/basic-auth",
        "metadata": {"name": f"d{i}-credentials", "namespace": ns},
        "stringData": values,
    }


def ready_status(generation: int = 1) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "observedGeneration": generation,
        "phase": "Ready",
        "conditions": [
            {
                "type": t,
                "status": s,
                "reason": r,
                "message": "bench",
                "lastTransitionTime": now,
                "observedGeneration": generation,
            }
            for t, s, r in (
                ("Ready", "True", "Ready"),
                ("Reconciling", "False", "Ready"),
                ("Stalled", "False", "Ready"),
            )
        ],
    }


def raw_api(work: Path, n: int) -> dict[str, Any]:
    """The same objects and the writes the end state needs, straight to the apiserver by one
    client with 4 workers: each ManagedDatabase created, its credentials Secret created, its
    status applied (server-side apply, as Vauban does). 3 writes an object, no reads."""
    with control_plane(work, f"raw-api-{n}") as (plane, api):
        vauban_crds(plane)
        for ns in namespaces_of(n):
            api.create(*namespace(ns))
        items: list[tuple[str, str, dict[str, Any]]] = []
        for ns, i in layout(n):
            path, obj = managed_database(ns, i)
            items.append(("create", path, obj))
            items.append(("create", path_of("v1", "secrets", ns), credentials_like(ns, i)))
            items.append(
                (
                    "apply",
                    path_of(VAUBAN, "manageddatabases", ns, f"d{i}") + "/status",
                    {"apiVersion": VAUBAN, "kind": "ManagedDatabase", "status": ready_status()},
                )
            )
        # Per object in order (create, Secret, status), objects spread over the workers.
        per_object = [items[k : k + 3] for k in range(0, len(items), 3)]
        queue = list(reversed(per_object))
        lock = threading.Lock()

        def work_() -> None:
            while True:
                with lock:
                    if not queue:
                        return
                    steps = queue.pop()
                for verb, path, obj in steps:
                    if verb == "create":
                        api.create(path, obj)
                    else:
                        api.apply(path, obj, "vauban-bench")

        t0 = time.monotonic()
        threads = [threading.Thread(target=work_, daemon=True) for _ in range(WORKERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return {
            "seconds": round(time.monotonic() - t0, 3),
            "writes_per_object": 3,
            "workers": WORKERS,
        }


# -- scenario 2: managed clusters burst -------------------------------------------------------


def managed_burst(work: Path, knobs: Knobs, n: int) -> dict[str, Any]:
    from vauban.devcluster.build import module_source

    with control_plane(work, f"managed-{n}") as (plane, api):
        vauban_crds(plane)
        bases = module_source(
            "github.com/cloudnative-pg/cloudnative-pg", fleet_cnpg.CLOUDNATIVEPG_VERSION
        )
        install(plane, bases / "config" / "crd" / "bases", ["crd/clusters.postgresql.cnpg.io"])
        api.create(*namespace(OPERATOR_NAMESPACE))
        per_ns = 50
        spread = [(f"fleet-{i // per_ns}", i) for i in range(n)]
        for ns in sorted({ns for ns, _ in spread}):
            api.create(*namespace(ns))
        simulator = fleet_cnpg.Simulator(
            Api(plane.kubeconfig, "vauban-bench/cnpg-simulator")
        ).start()
        logfile = plane.data_dir / "logs" / "vauban.log"
        with operator_process(plane, knobs, logfile) as (process, _):
            monitor = Monitor(process.pid).start()
            time.sleep(3)
            watcher = Watcher(api, VAUBAN, "managedclusters").start()
            audit_from = audit_offset(plane.audit_log)
            wall0, t0 = time.time(), time.monotonic()
            log(f"vauban: creating {n} managed ManagedClusters")
            create_seconds = create_all(api, [managed_cluster(ns, i) for ns, i in spread], WORKERS)
            done = watcher.wait(all_ready(n), timeout=max(120.0, n * knobs.timeout_per_object * 2))
            t_ready = time.monotonic()
            ready_times = [s.ready - t0 for s in watcher.seen.values() if s.ready is not None]
            time.sleep(10)
            t_end, wall_end = time.monotonic(), time.time()
            requests = read_audit(plane.audit_log, "operator", wall0, wall_end, audit_from)
            result: dict[str, Any] = {
                "n": n,
                "all_ready": done,
                "ready_count": len(ready_times),
                "create_seconds": round(create_seconds, 2),
                "time_to_all_ready_seconds": round(t_ready - t0, 2) if done else None,
                "per_object_seconds": {
                    "p50": rounded(percentile(latencies(watcher.seen), 0.5)),
                    "p95": rounded(percentile(latencies(watcher.seen), 0.95)),
                    "max": rounded(max(latencies(watcher.seen), default=None)),
                },
                "curve": curve(ready_times),
                "api": requests.summary(n),
                "simulator_status_writes": simulator.patched,
                "process": monitor.window(t0, t_end),
                "log": log_levels(logfile),
            }
            if not done:
                result["not_ready_reasons"] = not_ready_reasons(api, VAUBAN, "managedclusters")
            watcher.stop()
            simulator.stop()
            monitor.stop()
            return result


# -- summary ----------------------------------------------------------------------------------


def median_of(runs: list[dict[str, Any]], *path: str) -> float | None:
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)):
            values.append(float(value))
    return round(statistics.median(values), 3) if values else None


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {"provisioning": {}, "managed": {}}
    for key, runs in results["provisioning"].items():
        vauban, peer = runs.get("vauban", []), runs.get("peer", [])
        raw_sql_runs, raw_api_runs = runs.get("raw_sql", []), runs.get("raw_api", [])
        row: dict[str, Any] = {
            "vauban_time_to_all_ready_s": median_of(vauban, "time_to_all_ready_seconds"),
            "vauban_p50_s": median_of(vauban, "per_object_seconds", "p50"),
            "vauban_p95_s": median_of(vauban, "per_object_seconds", "p95"),
            "vauban_api_requests_per_object": median_of(vauban, "api", "per_object"),
            "vauban_api_writes_per_object": median_of(vauban, "api", "writes_per_object"),
            "vauban_sql_statements_per_object": median_of(vauban, "sql", "statements_per_object"),
            "vauban_sql_connections_per_object": median_of(vauban, "sql", "connections_per_object"),
            "vauban_cpu_seconds": median_of(vauban, "process", "cpu_seconds"),
            "vauban_rss_peak_mib": median_of(vauban, "process", "rss_peak_mib"),
            "raw_sql_s": median_of(raw_sql_runs, "seconds"),
            "raw_api_s": median_of(raw_api_runs, "seconds"),
            "peer_time_to_all_ready_s": median_of(peer, "time_to_all_ready_seconds"),
            "peer_p50_s": median_of(peer, "per_object_seconds", "p50"),
            "peer_p95_s": median_of(peer, "per_object_seconds", "p95"),
            "peer_api_requests_per_object": median_of(peer, "api", "per_object"),
            "peer_api_writes_per_object": median_of(peer, "api", "writes_per_object"),
            "peer_sql_statements_per_object": median_of(peer, "sql", "statements_per_object"),
            "peer_sql_connections_per_object": median_of(peer, "sql", "connections_per_object"),
            "peer_cpu_seconds": median_of(peer, "process", "cpu_seconds"),
            "peer_rss_peak_mib": median_of(peer, "process", "rss_peak_mib"),
            "peer_idle_rss_mib": median_of(peer, "idle", "process", "rss_median_mib"),
        }
        # Ratios are taken within each repeat (same run), then their median.
        ratios: dict[str, list[float]] = {}
        for r, v in enumerate(vauban):
            t = v.get("time_to_all_ready_seconds")
            if not t:
                continue
            for name, runs_, field_ in (
                ("vauban_over_raw_sql", raw_sql_runs, "seconds"),
                ("vauban_over_raw_api", raw_api_runs, "seconds"),
                ("vauban_over_peer_time", peer, "time_to_all_ready_seconds"),
            ):
                if r < len(runs_) and runs_[r].get(field_):
                    ratios.setdefault(name, []).append(t / runs_[r][field_])
            if r < len(peer) and peer[r].get("process", {}).get("rss_peak_mib"):
                ratios.setdefault("vauban_over_peer_peak_rss", []).append(
                    v["process"]["rss_peak_mib"] / peer[r]["process"]["rss_peak_mib"]
                )
        row["ratios"] = {k: round(statistics.median(v), 2) for k, v in ratios.items()}
        summary["provisioning"][key] = row
    summary["steady_by_n"] = steady_rows(results.get("steady_by_n") or {})
    for key, runs in results["managed"].items():
        summary["managed"][key] = {
            "time_to_all_ready_s": median_of(runs, "time_to_all_ready_seconds"),
            "p50_s": median_of(runs, "per_object_seconds", "p50"),
            "p95_s": median_of(runs, "per_object_seconds", "p95"),
            "api_requests_per_object": median_of(runs, "api", "per_object"),
            "api_writes_per_object": median_of(runs, "api", "writes_per_object"),
            "cpu_seconds": median_of(runs, "process", "cpu_seconds"),
            "rss_peak_mib": median_of(runs, "process", "rss_peak_mib"),
        }
    return summary


def steady_rows(by_n: dict[str, Any]) -> dict[str, Any]:
    """The steady-state figures side by side for every N that had one, to judge whether they
    are flat in N; and the RSS growth between the smallest and the largest of them (two
    operator processes of the same run)."""
    rows: dict[str, Any] = {}
    for key, s in sorted(by_n.items(), key=lambda x: int(x[0])):
        if s.get("skipped"):
            rows[key] = {"skipped": s["skipped"]}
            continue
        process = s.get("process", {})
        rows[key] = {
            "clusters": s.get("clusters"),
            "servers": s.get("servers"),
            "seconds": s.get("seconds"),
            "cpu_percent_of_one_core": process.get("cpu_percent_of_one_core"),
            "machine_busy_percent": process.get("machine_busy_percent"),
            "rss_median_mib": process.get("rss_median_mib"),
            "rss_growth_mib_per_1000_objects": s.get("rss_growth_mib_per_1000_objects"),
            "api_requests_per_minute": s.get("api_requests_per_minute"),
            "api_writes_per_minute": s.get("api_writes_per_minute"),
            "sql_statements_per_minute": s.get("sql_statements_per_minute"),
            "sql_connections_per_minute": s.get("sql_connections_per_minute"),
        }
    measured = [k for k, r in rows.items() if r.get("rss_median_mib") is not None]
    if len(measured) >= 2:
        low, high = measured[0], measured[-1]
        delta = rows[high]["rss_median_mib"] - rows[low]["rss_median_mib"]
        rows["rss_growth_between"] = {
            "from_n": int(low),
            "to_n": int(high),
            "mib_per_1000_objects": round(1000 * delta / (int(high) - int(low)), 2),
        }
    return rows


def targets(results: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets for this round, judged on the largest N measured."""
    sizes = sorted(int(k) for k in summary["provisioning"])
    out: dict[str, Any] = {}
    if sizes:
        row = summary["provisioning"][str(sizes[-1])]
        ratio = row["ratios"].get("vauban_over_peer_time")
        out["time_to_all_ready_no_worse_than_peer"] = {
            "n": sizes[-1],
            "vauban_s": row["vauban_time_to_all_ready_s"],
            "peer_s": row["peer_time_to_all_ready_s"],
            "ratio": ratio,
            "met": None if ratio is None else ratio <= 1.0,
        }
        writes = row["vauban_api_writes_per_object"]
        out["at_most_4_api_writes_per_database"] = {
            "n": sizes[-1],
            "writes_per_object": writes,
            "met": None if writes is None else writes <= 4,
        }
    steady = results.get("steady")
    if steady and steady.get("skipped"):
        out["steady_state"] = {"objects": steady["objects"], "met": None, "why": steady["skipped"]}
    elif steady:
        process = steady.get("process", {})
        out["steady_rss_under_200_mib"] = {
            "objects": steady["objects"],
            "rss_peak_mib": process.get("rss_peak_mib"),
            "rss_median_mib": process.get("rss_median_mib"),
            "met": process.get("rss_peak_mib", 1e9) < 200,
        }
        out["idle_cpu_under_2_percent"] = {
            "objects": steady["objects"],
            "cpu_percent_of_one_core": process.get("cpu_percent_of_one_core"),
            "met": (process.get("cpu_percent_of_one_core") or 1e9) < 2,
        }
        # The second wave's growth is what live objects alone cost. Between two N of the same
        # run the one-off cost of the first reconciles (code and caches warmed up, some 10-15
        # MiB) cancels out too; within one run it is spread over N objects, which overstates
        # the growth at small N.
        between = summary.get("steady_by_n", {}).get("rss_growth_between")
        wave = results.get("second_wave") or {}
        if wave.get("rss_growth_mib_per_1000_live_objects") is not None:
            growth = wave["rss_growth_mib_per_1000_live_objects"]
            n_first, n_both = wave["objects"]
            basis = f"settled RSS with {n_first} and {n_both} live objects (the second wave)"
        elif between and between["to_n"] == steady["objects"]:
            growth = between["mib_per_1000_objects"]
            basis = f"steady RSS at N = {between['from_n']} and N = {between['to_n']}"
        else:
            growth = steady.get("rss_growth_mib_per_1000_objects")
            basis = "steady RSS over the RSS before the burst, warm-up included"
        out["rss_growth_at_most_5_mib_per_1000_objects"] = {
            "objects": steady["objects"],
            "mib_per_1000_objects": growth,
            "basis": basis,
            "met": None if growth is None else growth <= 5,
        }
    return out


def machine() -> dict[str, Any]:
    def run(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return ""

    from vauban.devcluster.build import KWOK_VERSION

    pg_bin = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": run("free", "-g").splitlines()[1] if run("free", "-g") else "",
        "disk_free_gb_for_postgresql": round(shutil.disk_usage(tempfile.gettempdir()).free / 1e9),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "go": run("go", "version"),
        "postgresql": run(str(pg_bin[-1]), "--version") if pg_bin else "",
        "kubernetes": "v1.36.3",
        "kwok": KWOK_VERSION,
        "vauban": __version__,
        "vauban_commit": run("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"),
        # The operator runs from `git archive HEAD`: uncommitted changes are not measured.
        "operator_uncommitted_changes_not_measured": bool(
            run("git", "-C", str(ROOT), "status", "--porcelain", "operator")
        ),
        "provider_sql": fleet_peer.VERSION,
    }


def peer_unavailable(knobs: Knobs) -> str | None:
    """Why the peer cannot run (its binary cannot be built), or None."""
    if not knobs.peer:
        return None
    try:
        fleet_peer.binary()
    except fleet_peer.PeerUnavailable as e:
        log(f"peer skipped: {e}")
        return str(e)
    return None


Attempt = Callable[[str, Callable[[], dict[str, Any]]], dict[str, Any] | None]


def provisioning_round(
    results: dict[str, Any],
    attempt: Attempt,
    work: Path,
    knobs: Knobs,
    n: int,
    repeat: int,
    peer_available: bool,
) -> None:
    """One repeat of the provisioning burst at N: Vauban (then steady state and churn where
    asked), the raw limits, the peer; each phase's failure is recorded, not fatal."""
    largest = max(knobs.sizes)
    runs = results["provisioning"].setdefault(str(n), {})
    # Steady state after the largest burst and after each of BENCH_STEADY_SIZES (a smaller N
    # in the same run: the per-minute figures side by side); churn only after the largest.
    steady = (n == largest or n in knobs.steady_sizes) and repeat == 0 and knobs.steady_seconds > 0
    v = attempt(
        f"vauban burst n={n} #{repeat}",
        lambda: vauban_burst(
            work, knobs, n, steady, n == largest, knobs.second_wave and n == largest and repeat == 0
        ),
    )
    if v is not None:
        if "steady" in v:
            results["steady_by_n"][str(n)] = v["steady"]
            if n == largest:
                results["steady"] = v["steady"]
            del v["steady"]
        if "churn" in v:
            results["churn"] = v.pop("churn")
        if "second_wave" in v:
            results["second_wave"] = v.pop("second_wave")
        runs.setdefault("vauban", []).append(v)
    phases: list[tuple[str, str, Callable[[], dict[str, Any]]]] = []
    if knobs.raw:
        phases += [
            ("raw_sql", "raw sql", lambda: raw_sql(knobs, n)),
            ("raw_api", "raw api", lambda: raw_api(work, n)),
        ]
    if knobs.peer and peer_available:
        phases.append(("peer", "provider-sql burst", lambda: peer_burst(work, knobs, n)))
    for key, what, fn in phases:
        value = attempt(f"{what} n={n} #{repeat}", fn)
        if value is not None:
            runs.setdefault(key, []).append(value)


def main() -> int:
    knobs = Knobs.from_env()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = Path(os.environ.get("BENCH_OUTPUT", RESULTS / "fleet.json"))
    work = Path(tempfile.mkdtemp(prefix="vauban-bench-"))
    log(f"knobs: {knobs}; work folder {work}")
    ensure_binaries()
    global OPERATOR_SOURCE
    OPERATOR_SOURCE = snapshot_operator(work)
    peer_error = peer_unavailable(knobs)
    started = time.time()
    results: dict[str, Any] = {
        "knobs": knobs.__dict__,
        "machine": machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "peer_error": peer_error,
        "provisioning": {},
        "managed": {},
        "steady": None,
        "steady_by_n": {},
        "churn": None,
        "failures": [],
    }

    def attempt(what: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        t = time.monotonic()
        try:
            value = fn()
        except Exception as e:
            log(f"{what} FAILED: {e}")
            results["failures"].append({"what": what, "error": traceback.format_exc()[-3000:]})
            return None
        log(f"{what}: done in {time.monotonic() - t:.0f} s")
        return value

    def save() -> None:
        results["summary"] = summarize(results)
        results["targets"] = targets(results, results["summary"])
        results["elapsed_seconds"] = round(time.time() - started, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")

    largest = max(knobs.sizes) if knobs.sizes else 0
    for repeat in range(max(knobs.repeats, knobs.largest_repeats, knobs.managed_repeats)):
        for n in knobs.sizes:
            if repeat >= (knobs.largest_repeats if n == largest else knobs.repeats):
                continue
            provisioning_round(results, attempt, work, knobs, n, repeat, peer_error is None)
            save()
        for n in [m for m in knobs.managed_sizes if m > 0 and repeat < knobs.managed_repeats]:
            m = attempt(f"managed burst n={n} #{repeat}", lambda n=n: managed_burst(work, knobs, n))
            if m is not None:
                results["managed"].setdefault(str(n), []).append(m)
            save()
    save()
    print(json.dumps({"summary": results["summary"], "targets": results["targets"]}, indent=1))
    try:
        import fleet_chart

        chart = fleet_chart.draw(results, out.with_suffix(".png"))
        log(f"chart: {chart}")
    except ImportError as e:
        log(f"no chart ({e}): pip install -r bench/requirements.txt")
    log(f"results: {out}; logs of each run under {work}")
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
