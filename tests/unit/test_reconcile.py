from __future__ import annotations

from functools import partial
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vauban.api.cluster import AllowedNamespaces, LabelSelector, ManagedClusterSpec
from vauban.api.database import ManagedDatabaseSpec, ManagedDatabaseStatus
from vauban.conditions import Reason, State
from vauban.reconcile import cluster as cluster_logic
from vauban.reconcile import database as database_logic
from vauban.reconcile.database import ClusterView
from vauban.reconcile.tenancy import matches, namespace_allowed, needs_namespace_labels


def db(**overrides: Any) -> ManagedDatabaseSpec:
    raw = {"clusterRef": {"name": "main"}, "databaseName": "app", "owner": "app_owner"}
    return ManagedDatabaseSpec.model_validate({**raw, **overrides})


def external(**overrides: Any) -> ManagedClusterSpec:
    raw = {"mode": "External", "external": {"host": "pg", "adminSecretRef": {"name": "admin"}}}
    return ManagedClusterSpec.model_validate({**raw, **overrides})


def view(
    spec: ManagedClusterSpec | None = None, *, ready: bool = True, ns: str = "team"
) -> ClusterView:
    return ClusterView(namespace=ns, name="main", spec=spec or external(), ready=ready)


def test_missing_cluster_is_waiting_not_stalled() -> None:
    verdict = database_logic.assess(namespace="team", spec=db(), cluster=None, namespace_labels={})
    assert (verdict.state, verdict.reason) == (State.WAITING, Reason.CLUSTER_NOT_FOUND)
    assert "team/main" in verdict.message


def test_cluster_ref_namespace_defaults_to_the_database_namespace() -> None:
    assert database_logic.cluster_key("team", db()) == ("team", "main")
    spec = db(clusterRef={"name": "shared", "namespace": "platform"})
    assert database_logic.cluster_key("team", spec) == ("platform", "shared")


def test_cluster_not_ready_is_waiting() -> None:
    verdict = database_logic.assess(
        namespace="team", spec=db(), cluster=view(ready=False), namespace_labels={}
    )
    assert (verdict.state, verdict.reason) == (State.WAITING, Reason.CLUSTER_NOT_READY)


def test_namespace_not_allowed_is_stalled_before_readiness() -> None:
    verdict = database_logic.assess(
        namespace="other",
        spec=db(clusterRef={"name": "main", "namespace": "team"}),
        cluster=view(ready=False),
        namespace_labels={},
    )
    assert (verdict.state, verdict.reason) == (State.STALLED, Reason.NAMESPACE_NOT_ALLOWED)


def test_allowed_by_name_and_by_selector() -> None:
    allowed = AllowedNamespaces(
        names=["a"], selector=LabelSelector.model_validate({"matchLabels": {"tier": "gold"}})
    )
    check = partial(namespace_allowed, cluster_namespace="home", allowed=allowed)
    assert check(namespace="home", namespace_labels={})
    assert check(namespace="a", namespace_labels={})
    assert check(namespace="b", namespace_labels={"tier": "gold"})
    assert not check(namespace="b", namespace_labels={"tier": "iron"})
    assert not namespace_allowed(
        namespace="b", cluster_namespace="home", allowed=None, namespace_labels={"tier": "gold"}
    )
    assert needs_namespace_labels(cluster_namespace="home", allowed=allowed, namespace="b")
    assert not needs_namespace_labels(cluster_namespace="home", allowed=allowed, namespace="a")
    assert not needs_namespace_labels(cluster_namespace="home", allowed=None, namespace="b")


@pytest.mark.parametrize(
    ("expression", "labels", "expected"),
    [
        ({"key": "env", "operator": "In", "values": ["prod", "staging"]}, {"env": "prod"}, True),
        ({"key": "env", "operator": "In", "values": ["prod"]}, {}, False),
        ({"key": "env", "operator": "NotIn", "values": ["prod"]}, {}, True),
        ({"key": "env", "operator": "NotIn", "values": ["prod"]}, {"env": "prod"}, False),
        ({"key": "env", "operator": "Exists"}, {"env": ""}, True),
        ({"key": "env", "operator": "DoesNotExist"}, {"env": "x"}, False),
    ],
)
def test_match_expressions(
    expression: dict[str, Any], labels: dict[str, str], expected: bool
) -> None:
    selector = LabelSelector.model_validate({"matchExpressions": [expression]})
    assert matches(selector, labels) is expected


@given(st.dictionaries(st.sampled_from("abc"), st.sampled_from("xyz")))
def test_empty_selector_matches_every_namespace(labels: dict[str, str]) -> None:
    assert matches(LabelSelector(), labels)


def managed(**overrides: Any) -> ManagedClusterSpec:
    raw = {"version": "17", "instances": 3, "storage": {"size": "10Gi"}}
    return ManagedClusterSpec.model_validate({**raw, **overrides})


def engine(image: str = "repo/postgresql:17", **status: Any) -> dict[str, Any]:
    return {"metadata": {"generation": 2}, "spec": {"imageName": image}, "status": status}


def assess_managed(spec: ManagedClusterSpec, **kwargs: Any) -> cluster_logic.Assessment:
    return cluster_logic.assess_managed(name="main", namespace="team", spec=spec, **kwargs)


def test_managed_cluster_without_cloudnativepg_is_stalled() -> None:
    got = assess_managed(managed(), engine_installed=False, engine_cluster=None)
    assert (got.verdict.state, got.verdict.reason) == (State.STALLED, Reason.ENGINE_NOT_INSTALLED)
    assert "CloudNativePG" in got.verdict.message
    assert not got.apply


def test_managed_cluster_is_created_then_followed() -> None:
    created = assess_managed(managed(), engine_installed=True, engine_cluster=None)
    assert (created.verdict.state, created.apply) == (State.PROGRESSING, True)

    starting = assess_managed(
        managed(),
        engine_installed=True,
        engine_cluster=engine(phase="Setting up primary", readyInstances=1, instances=3),
    )
    assert starting.verdict.state is State.PROGRESSING
    assert "Setting up primary (1/3" in starting.verdict.message
    assert starting.fields["endpoints"] == {
        "readWrite": "main-rw.team.svc:5432",
        "readOnly": "main-ro.team.svc:5432",
    }

    healthy = engine(
        phase="Cluster in healthy state",
        instances=3,
        readyInstances=3,
        currentPrimary="main-1",
        image="repo/postgresql:17.6",
        conditions=[{"type": "Ready", "status": "True", "observedGeneration": 2}],
    )
    ready = assess_managed(managed(), engine_installed=True, engine_cluster=healthy)
    assert ready.verdict.state is State.READY
    assert ready.fields["currentPrimary"] == "main-1"
    assert ready.fields["version"] == "17.6"


def test_engine_ready_for_an_older_generation_is_not_ready() -> None:
    stale = engine(
        instances=3,
        readyInstances=3,
        conditions=[{"type": "Ready", "status": "True", "observedGeneration": 1}],
    )
    got = assess_managed(managed(), engine_installed=True, engine_cluster=stale)
    assert got.verdict.state is State.PROGRESSING


def test_major_version_change_is_refused_and_nothing_applied() -> None:
    got = assess_managed(
        managed(version="18"), engine_installed=True, engine_cluster=engine("repo/postgresql:17.6")
    )
    assert (got.verdict.state, got.verdict.reason) == (
        State.STALLED,
        Reason.MAJOR_UPGRADE_UNSUPPORTED,
    )
    assert not got.apply
    minor = assess_managed(
        managed(version="17.7"),
        engine_installed=True,
        engine_cluster=engine("repo/postgresql:17.6"),
    )
    assert minor.apply


def external_probe(**overrides: Any) -> cluster_logic.ServerProbe:
    values: dict[str, Any] = {
        "outcome": cluster_logic.ProbeOutcome.OK,
        "version": "15.18",
        "role": "admin",
        "create_role": True,
        "create_db": True,
    }
    return cluster_logic.ServerProbe(**{**values, **overrides})


def assess_external(
    spec: ManagedClusterSpec | None = None,
    keys: set[str] | None = None,
    probe: cluster_logic.ServerProbe | None = None,
) -> cluster_logic.Assessment:
    return cluster_logic.assess_external(
        spec=spec or external(), admin_secret_keys=keys, probe=probe
    )


def test_external_cluster_waits_for_its_secret() -> None:
    missing = assess_external()
    assert (missing.verdict.state, missing.verdict.reason) == (State.WAITING, Reason.SECRET_MISSING)
    incomplete = assess_external(keys={"username"})
    assert (incomplete.verdict.state, incomplete.verdict.reason) == (
        State.STALLED,
        Reason.SECRET_MISSING,
    )
    assert "password" in incomplete.verdict.message


KEYS = {"username", "password"}


@pytest.mark.parametrize(
    ("probe", "state", "reason"),
    [
        (
            cluster_logic.ServerProbe(cluster_logic.ProbeOutcome.UNREACHABLE, "refused"),
            State.WAITING,
            Reason.UNREACHABLE,
        ),
        (
            cluster_logic.ServerProbe(cluster_logic.ProbeOutcome.AUTHENTICATION_FAILED, "no"),
            State.STALLED,
            Reason.AUTHENTICATION_FAILED,
        ),
        (external_probe(create_role=False), State.STALLED, Reason.INSUFFICIENT_PRIVILEGES),
        (external_probe(create_role=False, superuser=True), State.READY, Reason.AVAILABLE),
        (external_probe(), State.READY, Reason.AVAILABLE),
    ],
)
def test_external_probe_outcomes(
    probe: cluster_logic.ServerProbe, state: State, reason: Reason
) -> None:
    got = assess_external(keys=KEYS, probe=probe)
    assert (got.verdict.state, got.verdict.reason) == (state, reason)
    assert got.fields["endpoints"] == {"readWrite": "pg:5432"}


@pytest.mark.parametrize(
    ("version", "ok"), [("15", True), ("15.18", True), ("15.17", False), ("17", False)]
)
def test_external_version_must_match_when_set(version: str, ok: bool) -> None:
    got = assess_external(external(version=version), KEYS, external_probe())
    assert (got.verdict.state is State.READY) is ok
    if not ok:
        assert got.verdict.reason is Reason.VERSION_MISMATCH


def test_resync_is_due_after_the_interval_and_spread_over_its_last_quarter() -> None:
    keys = [("ManagedDatabase", "tenant", f"d{i}") for i in range(400)]
    assert not any(database_logic.resync_due(k, 2699, 3600) for k in keys)
    assert all(database_logic.resync_due(k, 3600, 3600) for k in keys)
    # A fleet reconciled together is not resynced together.
    halfway = sum(database_logic.resync_due(k, 3150, 3600) for k in keys)
    assert 0.3 * len(keys) < halfway < 0.7 * len(keys)
    assert database_logic.resync_due(keys[0], 3300, 3600) == database_logic.resync_due(
        keys[0], 3300, 3600
    )


GB = 10**9


@pytest.mark.parametrize(
    ("before", "measured", "moved"),
    [
        ({"sizeBytes": GB, "connections": 2}, {"sizeBytes": GB, "connections": 2}, False),
        (
            {"sizeBytes": GB, "connections": 2},
            {"sizeBytes": GB + GB // 100, "connections": 2},
            False,
        ),
        ({"sizeBytes": GB, "connections": 2}, {"sizeBytes": GB + GB // 99, "connections": 2}, True),
        ({"sizeBytes": GB, "connections": 2}, {"sizeBytes": GB - GB // 99, "connections": 2}, True),
        ({"sizeBytes": GB, "connections": 2}, {"sizeBytes": GB, "connections": 3}, True),
        # A new database's first growth (7.47 to 7.63 MB, measured) is not worth a write.
        ({"sizeBytes": 7471619, "connections": 0}, {"sizeBytes": 7634279, "connections": 0}, False),
        ({"sizeBytes": 7471619, "connections": 0}, {"sizeBytes": 8600000, "connections": 0}, True),
        ({"connections": 0}, {"sizeBytes": 1000, "connections": 0}, True),
        ({"sizeBytes": 1000, "connections": 0}, {"sizeBytes": None, "connections": 0}, True),
        ({}, {"sizeBytes": None, "connections": 0}, True),
    ],
)
def test_usage_is_written_when_it_moved(
    before: dict[str, int], measured: dict[str, int | None], moved: bool
) -> None:
    assert (
        database_logic.usage_moved(
            ManagedDatabaseStatus.model_validate(before),
            ManagedDatabaseStatus.model_validate(measured),
        )
        is moved
    )


def test_a_full_reconcile_keeps_the_usage_status_has_unless_it_moved() -> None:
    shown = ManagedDatabaseStatus(size_bytes=7471619, size="7.1 MiB", connections=0)
    grown = ManagedDatabaseStatus(size_bytes=7634279, size="7.3 MiB", connections=0)
    kept = database_logic.usage_to_write(shown, grown)
    assert (kept.size_bytes, kept.size, kept.connections) == (7471619, "7.1 MiB", 0)
    # Unchanged, the status the reconcile computes is the one stored: no write.
    assert ManagedDatabaseStatus().merged(shown).merged(kept) == shown
    busy = grown.model_copy(update={"connections": 3})
    assert database_logic.usage_to_write(shown, busy) == busy
    unread = ManagedDatabaseStatus(size_bytes=None, size=None, connections=None)
    assert database_logic.usage_to_write(shown, unread) == unread


BACKUP = {
    "objectStore": {"bucket": "backups", "region": "fr-par", "credentialsSecretRef": {"name": "s3"}}
}


def test_archiving_without_the_barman_cloud_plugin_is_stalled_before_anything_is_created() -> None:
    got = assess_managed(
        managed(backup=BACKUP),
        engine_installed=True,
        engine_cluster=None,
        archiver_installed=False,
    )
    assert (got.verdict.state, got.verdict.reason) == (
        State.STALLED,
        Reason.ARCHIVER_NOT_INSTALLED,
    )
    assert "objectstores.barmancloud.cnpg.io" in got.verdict.message
    assert not got.apply


def test_a_recovery_says_what_it_replays_then_that_it_is_over() -> None:
    wanted = managed(
        backup=BACKUP, restore={"fromCluster": "orders", "targetTime": "2026-12-06T07:00:00Z"}
    )
    replaying = assess_managed(
        wanted,
        engine_installed=True,
        engine_cluster=engine(phase="Setting up primary", readyInstances=0, instances=0),
    )
    assert (replaying.verdict.state, replaying.verdict.reason) == (
        State.PROGRESSING,
        Reason.RECOVERING,
    )
    assert "cluster orders up to 2026-12-06T07:00:00Z" in replaying.verdict.message
    assert replaying.fields["recovery"] == {
        "fromCluster": "orders",
        "archive": "s3://backups/team/orders/wal-archive",
        "targetTime": "2026-12-06T07:00:00Z",
        "recovered": False,
    }
    replicas_joining = assess_managed(
        wanted,
        engine_installed=True,
        engine_cluster=engine(phase="Creating replica", readyInstances=1, instances=2),
    )
    assert replicas_joining.verdict.reason is Reason.PROVISIONING
    assert replicas_joining.fields["recovery"]["recovered"] is True
    plain = assess_managed(managed(), engine_installed=True, engine_cluster=engine())
    assert plain.fields["recovery"] is None


def test_clusters_adopting_one_server_share_its_bound_of_sessions() -> None:
    """The bound of concurrent reconciles is the server's max_connections: two
    ManagedClusters adopting the same host and port share it; another port, a cluster of
    no parsable spec or a managed cluster are each their own server."""
    a, b = view(ns="team-a"), view(ns="team-b")
    assert a.server == b.server == ("external", "pg:5432")
    other_port = external(external={"host": "pg", "port": 5433, "adminSecretRef": {"name": "a"}})
    assert view(other_port).server != a.server
    unparsable = ClusterView(namespace="team", name="main", spec=None, ready=False)
    assert unparsable.server == ("team", "main")
    managed = ManagedClusterSpec.model_validate({"mode": "Managed"})
    assert ClusterView(namespace="team", name="main", spec=managed, ready=True).server == (
        "team",
        "main",
    )
