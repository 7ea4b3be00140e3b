from __future__ import annotations

from functools import partial
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vauban.api.cluster import AllowedNamespaces, LabelSelector, ManagedClusterSpec
from vauban.api.database import ManagedDatabaseSpec
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


def test_managed_cluster_without_cloudnativepg_is_stalled() -> None:
    spec = ManagedClusterSpec.model_validate({"version": "17", "storage": {"size": "10Gi"}})
    verdict = cluster_logic.assess(
        spec=spec,
        observed=cluster_logic.ClusterObservation(engine_installed=False, admin_secret_keys=None),
    )
    assert (verdict.state, verdict.reason) == (State.STALLED, Reason.ENGINE_NOT_INSTALLED)
    assert "CloudNativePG" in verdict.message


def test_external_cluster_waits_for_its_secret() -> None:
    missing = cluster_logic.assess(
        spec=external(),
        observed=cluster_logic.ClusterObservation(engine_installed=False, admin_secret_keys=None),
    )
    assert (missing.state, missing.reason) == (State.WAITING, Reason.SECRET_MISSING)
    incomplete = cluster_logic.assess(
        spec=external(),
        observed=cluster_logic.ClusterObservation(
            engine_installed=False, admin_secret_keys={"username"}
        ),
    )
    assert (incomplete.state, incomplete.reason) == (State.STALLED, Reason.SECRET_MISSING)
    assert "password" in incomplete.message
