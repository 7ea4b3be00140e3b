"""Every Prometheus metric Vauban exports, defined once (documented in docs/metrics.md).

One registry per operator, created at start-up and passed around: nothing registers on the
global registry at import time. Labels stay bounded: kind and result are closed sets; the
per-object series carry namespace and name, one series per object, removed with it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from vauban import __version__
from vauban.timefmt import parse_rfc3339


class _Phases(Collector):
    """vauban_objects{kind, phase}, computed at scrape time from the last phase seen."""

    def __init__(self) -> None:
        self.phases: dict[tuple[str, str, str], str] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "vauban_objects", "Vauban objects by kind and phase.", labels=["kind", "phase"]
        )
        counts: dict[tuple[str, str], int] = {}
        for (kind, _, _), phase in self.phases.items():
            counts[(kind, phase)] = counts.get((kind, phase), 0) + 1
        for (kind, phase), count in sorted(counts.items()):
            family.add_metric([kind, phase], count)
        yield family


class _KeyAges(Collector):
    """vauban_key_age_seconds and vauban_key_rotation_period_seconds, per cluster: an age
    set at reconcile time would be stale by the next scrape."""

    def __init__(self) -> None:
        self.created: dict[tuple[str, str], float] = {}
        self.periods: dict[tuple[str, str], float] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.time()
        age = GaugeMetricFamily(
            "vauban_key_age_seconds",
            "Age of the current version of each cluster's key-encryption key.",
            labels=["namespace", "cluster"],
        )
        for (namespace, cluster), created in sorted(self.created.items()):
            age.add_metric([namespace, cluster], now - created)
        yield age
        period = GaugeMetricFamily(
            "vauban_key_rotation_period_seconds",
            "Rotation period of each cluster's key-encryption key, when it has one.",
            labels=["namespace", "cluster"],
        )
        for (namespace, cluster), seconds in sorted(self.periods.items()):
            period.add_metric([namespace, cluster], seconds)
        yield period


@dataclass(slots=True)
class _DatabaseFigures:
    """One database's series. None: the series is absent (not observed yet, or removed)."""

    up: float | None = None
    size_bytes: float | None = None
    connections: float | None = None
    last_success: float | None = None
    last_duration: float | None = None
    last_size: float | None = None
    schedule: float | None = None
    last_verified: float | None = None
    backup_failures: tuple[float, float] | None = None
    """(count, created): a counter exists from 0, so increase() sees the first failure."""
    verification_failures: tuple[float, float] | None = None


_DATABASE_GAUGES = (
    ("up", "vauban_database_up", "1 when the database is Ready, else 0."),
    ("size_bytes", "vauban_database_size_bytes", "Size of the database at the last probe."),
    ("connections", "vauban_database_connections", "Open connections at the last probe."),
    (
        "last_success",
        "vauban_database_last_backup_success_timestamp_seconds",
        "When the latest successful backup finished (Unix time).",
    ),
    (
        "last_duration",
        "vauban_database_last_backup_duration_seconds",
        "How long the latest successful backup took.",
    ),
    (
        "last_size",
        "vauban_database_last_backup_size_bytes",
        "Stored (compressed, encrypted) size of the latest successful backup.",
    ),
    (
        "schedule",
        "vauban_database_backup_schedule_seconds",
        "Nominal interval of the backup schedule: BackupTooOld fires past twice this.",
    ),
    (
        "last_verified",
        "vauban_database_last_verified_backup_timestamp_seconds",
        "When a restore test last passed (Unix time).",
    ),
)
_DATABASE_COUNTERS = (
    ("backup_failures", "vauban_database_backup_failures", "Backups that failed."),
    (
        "verification_failures",
        "vauban_database_restore_verification_failures",
        "Restore tests that failed.",
    ),
)


class _DatabaseSeries(Collector):
    """Every per-database series, from one small record per database, written out at
    scrape time. prometheus_client's labelled metrics keep an object with a lock per series
    (ten per database with backups): at fleet scale, the largest part of what the operator
    keeps per database after kopf's."""

    def __init__(self) -> None:
        self.figures: dict[tuple[str, str], _DatabaseFigures] = {}

    def of(self, namespace: str, database: str) -> _DatabaseFigures:
        figures = self.figures.get((namespace, database))
        if figures is None:
            figures = self.figures[(namespace, database)] = _DatabaseFigures()
        return figures

    def clear(self, namespace: str, database: str, fields: Iterable[str]) -> None:
        figures = self.figures.get((namespace, database))
        if figures is None:
            return
        for name in fields:
            setattr(figures, name, None)
        if all(getattr(figures, name) is None for name in figures.__slots__):
            del self.figures[(namespace, database)]

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        labels = ["namespace", "database"]
        rows = sorted(self.figures.items())
        for field_name, metric, documentation in _DATABASE_GAUGES:
            gauge = GaugeMetricFamily(metric, documentation, labels=labels)
            for key, figures in rows:
                value = getattr(figures, field_name)
                if value is not None:
                    gauge.add_metric(list(key), value)
            yield gauge
        for field_name, metric, documentation in _DATABASE_COUNTERS:
            counter = CounterMetricFamily(metric, documentation, labels=labels)
            for key, figures in rows:
                pair = getattr(figures, field_name)
                if pair is not None:
                    counter.add_metric(list(key), pair[0], created=pair[1])
            yield counter


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        Info("vauban_build", "The running operator.", registry=r).info({"version": __version__})
        self.reconciles = Counter(
            "vauban_reconcile",
            "Reconciles by kind, handler (reconcile, finalize, agent_job) and result (success, "
            "error).",
            ["kind", "handler", "result"],
            registry=r,
        )
        self.reconcile_seconds = Histogram(
            "vauban_reconcile_duration_seconds",
            "Time spent in one reconcile.",
            ["kind", "handler"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.cluster_up = Gauge(
            "vauban_cluster_up",
            "1 when the cluster is Ready, else 0.",
            ["namespace", "cluster"],
            registry=r,
        )
        self.cluster_ready_instances = Gauge(
            "vauban_cluster_ready_instances",
            "Instances ready to serve (mode Managed).",
            ["namespace", "cluster"],
            registry=r,
        )
        # Cluster health (status.health), at the last probe.
        self.cluster_connections = Gauge(
            "vauban_cluster_connections",
            "Client sessions on the server at the last probe.",
            ["namespace", "cluster"],
            registry=r,
        )
        self.cluster_max_connections = Gauge(
            "vauban_cluster_max_connections",
            "The server's max_connections.",
            ["namespace", "cluster"],
            registry=r,
        )
        self.cluster_wal_bytes = Gauge(
            "vauban_cluster_wal_bytes",
            "Size of pg_wal at the last probe.",
            ["namespace", "cluster"],
            registry=r,
        )
        self.cluster_replication_lag = Gauge(
            "vauban_cluster_replication_lag_seconds",
            "Replay lag of each standby at the last probe.",
            ["namespace", "cluster", "replica"],
            registry=r,
        )
        self._lagging: dict[tuple[str, str], set[str]] = {}
        self.api_errors = Counter(
            "vauban_api_errors",
            "Failed requests to the Kubernetes API: `kopf` (its watches and patches, each "
            "failed attempt), `heartbeat` (the operator's own check every few seconds).",
            ["client"],
            registry=r,
        )
        self.api_up = Gauge(
            "vauban_api_up",
            "1 while the Kubernetes API answered the operator's last heartbeat.",
            registry=r,
        )
        self._phases = _Phases()
        r.register(self._phases)
        self._keys = _KeyAges()
        r.register(self._keys)
        self._databases = _DatabaseSeries()
        r.register(self._databases)

    @contextlib.contextmanager
    def reconcile(
        self,
        kind: str,
        handler: str = "reconcile",
        *,
        waiting: tuple[type[BaseException], ...] = (),
    ) -> Iterator[None]:
        """Count and time one run of a handler of `kind`. Exceptions of the `waiting` types
        ask to be called again later (a finalizer waiting for databases to go): not errors."""
        started = time.perf_counter()
        try:
            yield
        except waiting:
            self.reconciles.labels(kind, handler, "success").inc()
            raise
        except BaseException:
            self.reconciles.labels(kind, handler, "error").inc()
            raise
        else:
            self.reconciles.labels(kind, handler, "success").inc()
        finally:
            self.reconcile_seconds.labels(kind, handler).observe(time.perf_counter() - started)

    def observe(self, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Record what a reconcile concluded (called with every computed status)."""
        self._phases.phases[(kind, namespace, name)] = str(status.get("phase", "Unknown"))
        up = 1.0 if status.get("phase") == "Ready" else 0.0
        if kind == "ManagedCluster":
            self.cluster_up.labels(namespace, name).set(up)
            if status.get("readyInstances") is not None:
                self.cluster_ready_instances.labels(namespace, name).set(status["readyInstances"])
            self._observe_health(namespace, name, status.get("health") or {})
        elif kind == "ManagedDatabase":
            figures = self._databases.of(namespace, name)
            figures.up = up
            if status.get("sizeBytes") is not None:
                figures.size_bytes = float(status["sizeBytes"])
            if status.get("connections") is not None:
                figures.connections = float(status["connections"])

    def _observe_health(self, namespace: str, name: str, health: Mapping[str, Any]) -> None:
        """Cluster health series: set from status.health, removed where it has no value."""
        for gauge, key in (
            (self.cluster_connections, "connections"),
            (self.cluster_max_connections, "maxConnections"),
            (self.cluster_wal_bytes, "walBytes"),
        ):
            if health.get(key) is not None:
                gauge.labels(namespace, name).set(health[key])
            else:
                with contextlib.suppress(KeyError):
                    gauge.remove(namespace, name)
        lags = {
            str(r["name"]): float(r["lagSeconds"])
            for r in health.get("replicas") or ()
            if r.get("lagSeconds") is not None
        }
        for instance in self._lagging.pop((namespace, name), set()) - lags.keys():
            with contextlib.suppress(KeyError):
                self.cluster_replication_lag.remove(namespace, name, instance)
        for instance, lag in lags.items():
            self.cluster_replication_lag.labels(namespace, name, instance).set(lag)
        if lags:
            self._lagging[(namespace, name)] = set(lags)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        """Drop an object's series once it is gone."""
        self._phases.phases.pop((kind, namespace, name), None)
        if kind != "ManagedCluster":
            self._databases.clear(namespace, name, ("up", "size_bytes", "connections"))
            return
        self._observe_health(namespace, name, {})
        self.key(namespace, name, created=None, period_seconds=None)
        for gauge in (self.cluster_up, self.cluster_ready_instances):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name)

    def backups(
        self,
        namespace: str,
        database: str,
        *,
        last_success: datetime | None,
        last_verified: datetime | None,
        schedule_seconds: float | None,
        last: Mapping[str, Any] | None,
    ) -> None:
        """Record a database's backup state, as its reconcile computed it."""
        figures = self._databases.of(namespace, database)
        # The failure counters exist from 0, so increase() sees a database's first failure.
        now = time.time()
        figures.backup_failures = figures.backup_failures or (0.0, now)
        figures.verification_failures = figures.verification_failures or (0.0, now)
        if last_success is not None:
            figures.last_success = last_success.timestamp()
        if last_verified is not None:
            figures.last_verified = last_verified.timestamp()
        if schedule_seconds is not None:
            figures.schedule = schedule_seconds
        status = (last or {}).get("status") or {}
        if status.get("sizeBytes") is not None:
            figures.last_size = float(status["sizeBytes"])
        started = parse_rfc3339(status.get("startedAt"))
        finished = parse_rfc3339(status.get("finishedAt"))
        if started is not None and finished is not None:
            figures.last_duration = (finished - started).total_seconds()

    def key(
        self,
        namespace: str,
        cluster: str,
        *,
        created: datetime | None,
        period_seconds: float | None,
    ) -> None:
        """Record a cluster's key-encryption key: its age is computed at each scrape."""
        if created is None:
            self._keys.created.pop((namespace, cluster), None)
        else:
            self._keys.created[(namespace, cluster)] = created.timestamp()
        if period_seconds is None:
            self._keys.periods.pop((namespace, cluster), None)
        else:
            self._keys.periods[(namespace, cluster)] = period_seconds

    def backup_failed(self, namespace: str, database: str) -> None:
        figures = self._databases.of(namespace, database)
        count, created = figures.backup_failures or (0.0, time.time())
        figures.backup_failures = (count + 1, created)

    def verification_failed(self, namespace: str, database: str) -> None:
        figures = self._databases.of(namespace, database)
        count, created = figures.verification_failures or (0.0, time.time())
        figures.verification_failures = (count + 1, created)

    def forget_backups(self, namespace: str, database: str) -> None:
        self._databases.clear(
            namespace,
            database,
            (
                "last_success",
                "last_duration",
                "last_size",
                "schedule",
                "last_verified",
                "backup_failures",
                "verification_failures",
            ),
        )
