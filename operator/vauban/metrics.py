"""Every Prometheus metric Vauban exports, defined once (documented in docs/metrics.md).

One registry per operator, created at start-up and passed around: nothing registers on the
global registry at import time. Labels stay bounded: kind and result are closed sets; the
per-object series carry namespace and name, one series per object, removed with it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from vauban import __version__


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


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        Info("vauban_build", "The running operator.", registry=r).info({"version": __version__})
        self.reconciles = Counter(
            "vauban_reconcile",
            "Reconciles by kind and result (success, error).",
            ["kind", "result"],
            registry=r,
        )
        self.reconcile_seconds = Histogram(
            "vauban_reconcile_duration_seconds",
            "Time spent in one reconcile.",
            ["kind"],
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
            ["namespace", "cluster", "instance"],
            registry=r,
        )
        self._lagging: dict[tuple[str, str], set[str]] = {}
        self.database_up = Gauge(
            "vauban_database_up",
            "1 when the database is Ready, else 0.",
            ["namespace", "database"],
            registry=r,
        )
        self.database_size = Gauge(
            "vauban_database_size_bytes",
            "Size of the database at the last probe.",
            ["namespace", "database"],
            registry=r,
        )
        self.database_connections = Gauge(
            "vauban_database_connections",
            "Open connections at the last probe.",
            ["namespace", "database"],
            registry=r,
        )
        self._phases = _Phases()
        r.register(self._phases)

    @contextlib.contextmanager
    def reconcile(self, kind: str) -> Iterator[None]:
        """Count and time one reconcile of `kind`."""
        started = time.perf_counter()
        try:
            yield
        except BaseException:
            self.reconciles.labels(kind, "error").inc()
            raise
        else:
            self.reconciles.labels(kind, "success").inc()
        finally:
            self.reconcile_seconds.labels(kind).observe(time.perf_counter() - started)

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
            self.database_up.labels(namespace, name).set(up)
            if status.get("sizeBytes") is not None:
                self.database_size.labels(namespace, name).set(status["sizeBytes"])
            if status.get("connections") is not None:
                self.database_connections.labels(namespace, name).set(status["connections"])

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
        if kind == "ManagedCluster":
            self._observe_health(namespace, name, {})
        gauges = (
            (self.cluster_up, self.cluster_ready_instances)
            if kind == "ManagedCluster"
            else (self.database_up, self.database_size, self.database_connections)
        )
        for gauge in gauges:
            try:
                gauge.remove(namespace, name)
            except KeyError:
                continue
