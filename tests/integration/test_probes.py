"""Health probes of external clusters against real PostgreSQL servers on 127.0.0.1: the load
in status.health and in the operator's metrics, the ConnectionsNearLimit Event, a real
streaming replica's lag, and the tenant login check.

The module has a server of its own, with a small max_connections (so that a handful of
sessions bring it near its limit) and replication allowed on its private socket."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from support.kube import (
    KubeCtl,
    OperatorProcess,
    eventually,
    external_cluster,
    with_reason,
)
from vauban.devcluster.postgres import PostgresServer
from vauban.engines.postgres.probe import ServerAddress, check_login, probe
from vauban.reconcile.cluster import ProbeOutcome, ServerProbe

pytestmark = pytest.mark.usefixtures("operator")

MAX_CONNECTIONS = 20


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    pg = PostgresServer()
    with (pg.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write(f"max_connections = {MAX_CONNECTIONS}\nsuperuser_reserved_connections = 0\n")
    with (pg.data / "pg_hba.conf").open("a", encoding="utf-8") as hba:
        hba.write("local replication all trust\n")
    pg.start()
    yield pg
    pg.destroy()


@pytest.fixture
def admin(kube: KubeCtl, namespace: str, server: PostgresServer) -> str:
    """A role that may create roles and databases, and nothing more (no pg_monitor), in the
    Secret `admin`."""
    name, password = f"admin_{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    server.create_role(name, password, "CREATEROLE", "CREATEDB")
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/basic-auth",
            "metadata": {"name": "admin", "namespace": namespace},
            "stringData": {"username": name, "password": password},
        }
    )
    return name


def grant_monitor(server: PostgresServer, role: str) -> None:
    with server.superuser() as conn:
        conn.execute(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(role)))


def adopted(kube: KubeCtl, namespace: str, server: PostgresServer) -> dict[str, Any]:
    kube.apply(external_cluster(namespace, "legacy", server.port))
    return eventually(
        lambda: with_reason(kube, "managedcluster", "legacy", namespace, "Available"),
        what="adopted",
    )


def health_where(
    kube: KubeCtl, namespace: str, check: Any, *, timeout: float = 30
) -> dict[str, Any]:
    """status.health once `check(health)` holds (the suite probes every 2 s)."""

    def probe() -> dict[str, Any] | None:
        health = kube.get("managedcluster", "legacy", namespace)["status"].get("health") or {}
        return health if check(health) else None

    return eventually(probe, timeout=timeout, what="status.health")


def cluster_events(kube: KubeCtl, namespace: str, reason: str) -> list[dict[str, Any]]:
    return [
        e
        for e in kube.get_list("events", namespace)
        if e["involvedObject"]["name"] == "legacy" and e["reason"] == reason
    ]


def test_load_in_status_and_metrics(
    kube: KubeCtl,
    namespace: str,
    server: PostgresServer,
    admin: str,
    operator: OperatorProcess,
) -> None:
    adopted(kube, namespace, server)
    health = health_where(kube, namespace, lambda h: "connections" in h)
    # At least the probe's own session; what the role may not read is absent, not an error.
    assert health["connections"] >= 1
    assert health["maxConnections"] == MAX_CONNECTIONS
    assert health["connectionsNearLimit"] is False
    assert health["inRecovery"] is False
    assert health["replicas"] == []
    assert "walBytes" not in health
    assert health["lastProbeTime"].endswith("Z")

    labels = {"namespace": namespace, "cluster": "legacy"}
    assert (operator.metric("vauban_cluster_connections", **labels) or 0) >= 1
    assert operator.metric("vauban_cluster_max_connections", **labels) == MAX_CONNECTIONS
    assert operator.metric("vauban_cluster_wal_bytes", **labels) is None

    # Read again once per probe interval (2 s here), not at each reconcile that the status
    # write itself causes: a few writes in 5 s, not a loop.
    versions, deadline = set(), time.monotonic() + 5
    while time.monotonic() < deadline:
        versions.add(kube.get("managedcluster", "legacy", namespace)["metadata"]["resourceVersion"])
        time.sleep(0.2)
    assert len(versions) <= 5

    # With pg_monitor the role may read the WAL directory and every database's size.
    grant_monitor(server, admin)
    health = health_where(kube, namespace, lambda h: "walBytes" in h and "databasesBytes" in h)
    assert health["walBytes"] > 0 and health["databasesBytes"] > 0
    eventually(lambda: (operator.metric("vauban_cluster_wal_bytes", **labels) or 0) > 0)

    # The probe never failed the cluster, and a deleted cluster's series go with it.
    assert with_reason(kube, "managedcluster", "legacy", namespace, "Available")
    kube.run("delete", "managedcluster", "legacy", "-n", namespace, "--wait=true")
    eventually(
        lambda: operator.metric("vauban_cluster_max_connections", **labels) is None,
        what="series removed",
    )
    assert operator.metric("vauban_cluster_connections", **labels) is None


def test_connections_near_the_limit(
    kube: KubeCtl, namespace: str, server: PostgresServer, admin: str
) -> None:
    """Over 90 % of max_connections: a Warning Event and a flag in status, while the cluster
    stays Ready (it still serves); an Event again once sessions are back under."""
    adopted(kube, namespace, server)
    health_where(kube, namespace, lambda h: h.get("connectionsNearLimit") is False)
    busy = 18  # with the probe's own session: 19 of 20, 95 %
    with contextlib.ExitStack() as sessions:
        for _ in range(busy):
            sessions.enter_context(server.superuser())
        near = health_where(kube, namespace, lambda h: h.get("connectionsNearLimit") is True)
        assert near["connections"] > 0.9 * MAX_CONNECTIONS
        events = eventually(lambda: cluster_events(kube, namespace, "ConnectionsNearLimit"))
        assert events[0]["type"] == "Warning"
        assert f"of max_connections {MAX_CONNECTIONS}" in events[0]["message"]
        assert with_reason(kube, "managedcluster", "legacy", namespace, "Available")

    health_where(kube, namespace, lambda h: h.get("connectionsNearLimit") is False)
    eventually(lambda: cluster_events(kube, namespace, "ConnectionsWithinLimit"))
    assert len(cluster_events(kube, namespace, "ConnectionsNearLimit")) == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def standby_of(primary: PostgresServer, name: str) -> Iterator[int]:
    """A streaming replica of `primary` (pg_basebackup -R), on 127.0.0.1, named `name`
    (cluster_name becomes its application_name on the primary). Yields its port."""
    data, port = primary.root / f"standby-{name}", free_port()
    as_user = primary._as_user  # as root, PostgreSQL runs as its package's user
    subprocess.run(
        [
            *as_user,
            str(primary.bindir / "pg_basebackup"),
            f"--pgdata={data}",
            f"--host={primary.root}",
            f"--port={primary.port}",
            "--username=postgres",
            "--write-recovery-conf",
            "--wal-method=stream",
            "--checkpoint=fast",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    with (primary.root / f"standby-{name}.log").open("ab") as log:
        process = subprocess.Popen(
            [
                *as_user,
                str(primary.bindir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                str(primary.root),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"cluster_name={name}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield port
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def in_recovery(server: PostgresServer, port: int) -> bool | None:
    try:
        with psycopg.connect(
            host=str(server.root), port=port, user="postgres", dbname="postgres"
        ) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    except psycopg.OperationalError:
        return None
    return None if row is None else bool(row[0])


def test_streaming_replica_and_its_lag(
    kube: KubeCtl,
    namespace: str,
    server: PostgresServer,
    admin: str,
    operator: OperatorProcess,
) -> None:
    grant_monitor(server, admin)  # replay_lag and state are for pg_read_all_stats
    adopted(kube, namespace, server)
    lag = {"namespace": namespace, "cluster": "legacy", "replica": "standby1"}
    with standby_of(server, "standby1") as port:
        health = health_where(
            kube,
            namespace,
            lambda h: [r for r in h.get("replicas", []) if r.get("state") == "streaming"],
        )
        [replica] = health["replicas"]
        assert replica["name"] == "standby1"
        assert 0 <= replica["lagSeconds"] < 60

        def lag_sample() -> tuple[float] | None:
            # A replica that has caught up lags 0.0 seconds, which is falsy: wrapped.
            value = operator.metric("vauban_cluster_replication_lag_seconds", **lag)
            return None if value is None else (value,)

        [value] = eventually(lag_sample, what="the lag's series")
        assert 0 <= value < 60
        assert eventually(lambda: in_recovery(server, port), what="standby up")
    # The standby stopped: gone from status and from the metrics.
    health_where(kube, namespace, lambda h: h.get("replicas") == [])
    eventually(
        lambda: operator.metric("vauban_cluster_replication_lag_seconds", **lag) is None,
        what="lag series removed",
    )


def test_tenant_login_check(server: PostgresServer) -> None:
    """The check a ManagedDatabase can make with its tenant's Secret: refused credentials are
    told apart from a login that is merely at its connection limit."""
    name, password = f"app_{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    server.create_role(name, password)
    address = ServerAddress("127.0.0.1", server.port, "disable")

    def check(secret: str = password) -> ServerProbe:
        return asyncio.run(check_login(address, name, secret, "postgres"))

    assert check().outcome is ProbeOutcome.OK
    wrong = check("not-the-password")
    assert wrong.outcome is ProbeOutcome.AUTHENTICATION_FAILED
    assert "not-the-password" not in wrong.detail
    role = sql.Identifier(name)
    with server.superuser() as conn:
        conn.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT 0").format(role))
    busy = check()
    assert busy.outcome is ProbeOutcome.UNREACHABLE and "too many connections" in busy.detail
    with server.superuser() as conn:
        conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN CONNECTION LIMIT -1").format(role))
    assert check().outcome is ProbeOutcome.AUTHENTICATION_FAILED


def test_a_server_that_never_answers_times_out() -> None:
    """A port that accepts connections and never speaks (a hung server, a black-holing
    proxy) costs the probe its deadline, not the reconcile forever."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = ServerAddress("127.0.0.1", listener.getsockname()[1], "disable")
        started = time.monotonic()
        got = asyncio.run(probe(address, "admin", "secret", connect_timeout=1, health=True))
    assert got.outcome is ProbeOutcome.UNREACHABLE
    assert time.monotonic() - started < 2 * 1 + 3 + 1
