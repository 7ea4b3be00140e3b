"""The pure parts of the cluster health probe: naming replicas, status.health, when it is
refreshed, CloudNativePG's instances, the connections Event, and the metrics it feeds."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from prometheus_client import generate_latest

from vauban.engines.postgres import probe as probe_module
from vauban.engines.postgres.probe import ServerAddress, _failure, replicas_of
from vauban.engines.postgres.servers import PostgresServers
from vauban.metrics import Metrics
from vauban.reconcile.cluster import (
    MAX_REPLICAS,
    ProbeOutcome,
    ReplicaHealth,
    RunningSetting,
    ServerHealth,
    ServerProbe,
    configuration_pending,
    connections_event,
    external_health,
    health_due,
    health_status,
    managed_health,
    primary_event,
)

NOW = "2026-03-01T12:00:00Z"


def test_replicas_are_named_by_application_name_and_told_apart_when_they_share_it() -> None:
    rows = [
        ("standby1", "10.0.0.2", 101, "streaming", 0.25),
        ("walreceiver", "10.0.0.3", 102, "streaming", None),
        ("walreceiver", None, 103, None, None),
        ("", "10.0.0.5", 104, "catchup", -0.001),
    ]
    assert replicas_of(rows) == (
        ReplicaHealth("standby1", "streaming", 0.25),
        ReplicaHealth("walreceiver@10.0.0.3", "streaming", None),
        ReplicaHealth("walreceiver@103", None, None),
        ReplicaHealth("walreceiver@10.0.0.5", "catchup", 0.0),
    )


@pytest.mark.parametrize(
    ("connections", "limit", "near"),
    [(90, 100, False), (91, 100, True), (100, 100, True), (1, 1, True), (5, None, None)],
)
def test_near_limit_is_over_ninety_percent(
    connections: int, limit: int | None, near: bool | None
) -> None:
    assert ServerHealth(connections=connections, max_connections=limit).near_limit is near


def test_health_status_omits_what_was_not_read_and_is_bounded() -> None:
    replicas = [ReplicaHealth(f"s{i}", "streaming", 1.23456) for i in range(12)]
    status = health_status(
        ServerHealth(connections=3, max_connections=100, in_recovery=False, replicas=replicas),
        NOW,
    )
    assert status == {
        "lastProbeTime": NOW,
        "connections": 3,
        "maxConnections": 100,
        "connectionsNearLimit": False,
        "inRecovery": False,
        "replicas": [
            {"name": f"s{i}", "state": "streaming", "lagSeconds": 1.235}
            for i in range(MAX_REPLICAS)
        ],
    }
    # Nothing readable: only the time of the probe. No standby: an empty list.
    assert health_status(ServerHealth(), NOW) == {"lastProbeTime": NOW}
    assert health_status(ServerHealth(replicas=(), wal_bytes=0), NOW)["replicas"] == []


def test_health_is_read_once_per_interval() -> None:
    """Between two readings status keeps the last one: a reconcile caused by the status
    write itself must not read (and write) again, or status would be written in a loop."""
    now = datetime(2026, 3, 1, 12, 0, 10, tzinfo=UTC)
    assert health_due(None, now, 300)
    assert health_due({"health": {"replicas": []}}, now, 300)
    assert health_due({"health": {"lastProbeTime": "garbage"}}, now, 300)
    assert not health_due({"health": {"lastProbeTime": NOW}}, now, 300)
    assert health_due({"health": {"lastProbeTime": NOW}}, now + timedelta(seconds=290), 300)


def ok(health: ServerHealth | None = None) -> ServerProbe:
    return ServerProbe(ProbeOutcome.OK, version="17.6", role="admin", health=health)


def test_external_health_keeps_the_last_reading_and_drops_it_when_unreachable() -> None:
    previous = {"health": {"lastProbeTime": "2026-03-01T11:59:00Z", "connections": 7}}
    fresh = external_health(previous, ok(ServerHealth(connections=8)), NOW)
    assert fresh == {"lastProbeTime": NOW, "connections": 8}
    assert external_health(previous, ok(), NOW) == previous["health"]
    assert external_health(None, ok(), NOW) is None
    # A server that does not answer has no load to report; stale figures would mislead.
    down = ServerProbe(ProbeOutcome.UNREACHABLE, detail="refused")
    assert external_health(previous, down, NOW) is None
    assert external_health(previous, None, NOW) is None


def cnpg_status(**status: Any) -> dict[str, Any]:
    return {"metadata": {"generation": 1}, "spec": {}, "status": status}


def test_managed_health_maps_cloudnativepg_instances() -> None:
    """CloudNativePG v1.30.1's Cluster status has instancesStatus (pods by status) and
    instancesReportedState (isPrimary, timeline, IP), and no replication lag."""
    engine = cnpg_status(
        currentPrimary="main-1",
        instancesStatus={"healthy": ["main-1", "main-3"], "replicating": ["main-2"]},
        instancesReportedState={
            "main-1": {"isPrimary": True, "timeLineID": 1},
            "main-2": {"isPrimary": False},
            "main-3": {"isPrimary": False},
            "main-4": {"isPrimary": False},
        },
    )
    assert managed_health(engine) == {
        "replicas": [
            {"name": "main-2", "state": "replicating"},
            {"name": "main-3", "state": "healthy"},
            {"name": "main-4"},
        ]
    }
    reported_only = cnpg_status(
        instancesReportedState={"a-1": {"isPrimary": False}, "a-2": {"isPrimary": True}}
    )
    assert managed_health(reported_only) == {"replicas": [{"name": "a-1"}]}
    assert managed_health(cnpg_status(currentPrimary="main-1")) is None
    assert managed_health(cnpg_status(instancesStatus={"healthy": ["main-1"]})) is None


def health(connections: int, near: bool) -> dict[str, Any]:
    return {"connections": connections, "maxConnections": 100, "connectionsNearLimit": near}


def test_connections_event_on_each_change_only() -> None:
    calm, busy = {"health": health(10, False)}, {"health": health(95, True)}
    entered = connections_event(calm, busy["health"])
    assert entered is not None and (entered.type, entered.reason) == (
        "Warning",
        "ConnectionsNearLimit",
    )
    assert "95 client sessions of max_connections 100" in entered.message
    assert connections_event(busy, health(96, True)) is None
    left = connections_event(busy, calm["health"])
    assert left is not None and (left.type, left.reason) == ("Normal", "ConnectionsWithinLimit")
    assert connections_event(None, calm["health"]) is None
    assert connections_event(None, busy["health"]) is not None
    # Nothing read (unreachable, or max_connections unknown): no Event either way.
    assert connections_event(busy, None) is None
    assert connections_event(busy, {"lastProbeTime": NOW}) is None


def samples(metrics: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(metrics.registry).decode()
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def cluster_status(**health: Any) -> dict[str, Any]:
    return {"phase": "Ready", "health": health}


def test_health_metrics_follow_status_and_go_with_the_cluster() -> None:
    metrics = Metrics()
    lag = "vauban_cluster_replication_lag_seconds"
    metrics.observe(
        "ManagedCluster",
        "ns",
        "pg",
        cluster_status(
            connections=4,
            maxConnections=100,
            walBytes=1 << 24,
            replicas=[
                {"name": "a", "state": "streaming", "lagSeconds": 0.5},
                {"name": "b", "state": "streaming", "lagSeconds": 2.0},
                {"name": "c"},
            ],
        ),
    )
    key = (("cluster", "pg"), ("namespace", "ns"))
    assert samples(metrics, "vauban_cluster_connections") == {key: 4}
    assert samples(metrics, "vauban_cluster_max_connections") == {key: 100}
    assert samples(metrics, "vauban_cluster_wal_bytes") == {key: 1 << 24}
    assert samples(metrics, lag) == {
        (("cluster", "pg"), ("namespace", "ns"), ("replica", "a")): 0.5,
        (("cluster", "pg"), ("namespace", "ns"), ("replica", "b")): 2.0,
    }

    # A standby gone, WAL no longer readable: their series go too.
    metrics.observe(
        "ManagedCluster",
        "ns",
        "pg",
        cluster_status(connections=5, replicas=[{"name": "b", "lagSeconds": 3.0}]),
    )
    assert samples(metrics, lag) == {
        (("cluster", "pg"), ("namespace", "ns"), ("replica", "b")): 3.0
    }
    assert samples(metrics, "vauban_cluster_wal_bytes") == {}
    assert samples(metrics, "vauban_cluster_max_connections") == {}

    metrics.forget("ManagedCluster", "ns", "pg")
    for name in ("vauban_cluster_connections", lag, "vauban_cluster_up"):
        assert samples(metrics, name) == {}
    metrics.forget("ManagedCluster", "ns", "never-seen")


@pytest.mark.parametrize(
    ("message", "outcome"),
    [
        (
            'FATAL: password authentication failed for user "app"',
            ProbeOutcome.AUTHENTICATION_FAILED,
        ),
        ('FATAL: role "app" is not permitted to log in', ProbeOutcome.AUTHENTICATION_FAILED),
        ('FATAL: no pg_hba.conf entry for host "10.0.0.1"', ProbeOutcome.AUTHENTICATION_FAILED),
        ('FATAL: too many connections for role "app"', ProbeOutcome.UNREACHABLE),
        ("FATAL: sorry, too many clients already", ProbeOutcome.UNREACHABLE),
        ("FATAL: the database system is starting up", ProbeOutcome.UNREACHABLE),
        ("connection refused", ProbeOutcome.UNREACHABLE),
    ],
)
def test_refusals_that_pass_by_themselves_are_not_bad_credentials(
    message: str, outcome: ProbeOutcome
) -> None:
    got = _failure(psycopg.OperationalError(message))
    assert got.outcome is outcome
    assert got.detail == message


def test_primary_event_on_a_move_only() -> None:
    moved = primary_event({"currentPrimary": "main-1"}, "main-2")
    assert moved is not None and moved.reason == "PrimaryChanged" and moved.type == "Warning"
    assert "from main-1 to main-2" in moved.message
    assert primary_event({"currentPrimary": "main-1"}, "main-1") is None
    # A first primary, or a status wiped: nothing moved that anyone saw.
    assert primary_event(None, "main-1") is None
    assert primary_event({}, "main-1") is None
    assert primary_event({"currentPrimary": "main-1"}, None) is None


@pytest.mark.parametrize(
    ("running", "waiting"),
    [
        # CloudNativePG has not rewritten the files yet: its Ready still speaks of before.
        (RunningSetting("max_connections", "100", True, False), "max_connections is 100, 150"),
        (RunningSetting("max_connections", None, False, False), "max_connections is unset"),
        # In the files, waiting for the rolling restart.
        (RunningSetting("max_connections", "150", False, True), "150 waits for a restart"),
        (RunningSetting("max_connections", "150", True, True), "150 waits for a restart"),
        # Landed: quoting and case are the files' business.
        (RunningSetting("max_connections", "'150'", True, False), None),
    ],
)
def test_configuration_pending_until_the_primary_runs_the_spec(
    running: RunningSetting, waiting: str | None
) -> None:
    verdict = configuration_pending({"max_connections": "150"}, [running])
    if waiting is None:
        assert verdict is None
    else:
        assert verdict is not None and verdict.reason == "ConfigurationPending"
        assert waiting in verdict.message


def test_configuration_pending_ignores_what_the_server_does_not_know() -> None:
    assert configuration_pending({"no_such_parameter": "1"}, []) is None


def test_clusters_adopting_one_server_share_its_load_reading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second cluster of a server, probed within the shared window, logs in itself but
    does not walk the server's databases again; its status says when the figures were
    read. Another admin, or the window past, reads again."""
    reads: list[tuple[str, bool]] = []
    clock = [datetime(2026, 3, 1, 12, 0, tzinfo=UTC)]

    async def probe(
        address: ServerAddress, username: str, password: str, *, health: bool, **_: Any
    ) -> ServerProbe:
        reads.append((username, health))
        load = ServerHealth(connections=len(reads)) if health else None
        return ServerProbe(ProbeOutcome.OK, role=username, health=load)

    monkeypatch.setattr(probe_module, "probe", probe)
    monkeypatch.setattr("vauban.timefmt.now", lambda: clock[0])
    servers = PostgresServers()
    server = ServerAddress("pg.example", 5432, "require")

    def ask(username: str = "admin", *, health: bool = True) -> ServerProbe:
        return asyncio.run(
            servers.probe(server, username, "pw", health=health, health_shared_seconds=150)
        )

    first = ask()
    assert first.health == ServerHealth(connections=1)
    assert health_status(first.health, NOW)["lastProbeTime"] == NOW
    clock[0] += timedelta(seconds=100)
    second = ask()
    assert second.role == "admin" and second.health is not None
    assert second.health.connections == 1
    assert health_status(second.health, NOW)["lastProbeTime"] == "2026-03-01T12:00:00Z"
    assert ask("other").health == ServerHealth(connections=3)
    clock[0] += timedelta(seconds=60)
    assert ask().health == ServerHealth(connections=4)
    assert ask(health=False).health is None
    assert reads == [
        ("admin", True),
        ("admin", False),
        ("other", True),
        ("admin", True),
        ("admin", False),
    ]
