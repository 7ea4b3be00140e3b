"""Day-2 decisions on a managed cluster: a switchover on request, a storage growth."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from vauban.conditions import ConditionType, Reason, State
from vauban.reconcile import storage, switchover


def engine(
    *,
    current: str = "main-1",
    target: str | None = None,
    phase: str = switchover.HEALTHY_PHASE,
    healthy: tuple[str, ...] = ("main-1", "main-2"),
    failed: tuple[str, ...] = (),
) -> dict[str, Any]:
    """CloudNativePG's Cluster as its operator reports a 2-instance cluster."""
    instances = {*healthy, *failed}
    return {
        "metadata": {"name": "main", "resourceVersion": "42"},
        "status": {
            "currentPrimary": current,
            "targetPrimary": target or current,
            "phase": phase,
            "instancesStatus": {"healthy": list(healthy), **({"failed": list(failed)})},
            "instancesReportedState": {
                pod: {"isPrimary": pod == current, "timeLineID": 1} for pod in sorted(instances)
            },
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "ClusterIsReady",
                    "message": "Cluster is Ready",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                },
                {"type": "ContinuousArchiving", "status": "True", "reason": "Ok"},
            ],
        },
    }


def decide(requested: str | None, recorded: str | None = None, **state: Any) -> Any:
    return switchover.decide(
        name="main", requested=requested, recorded=recorded, engine=engine(**state)
    )


def test_a_request_to_a_ready_replica_promotes_it_once() -> None:
    first = decide("main-2")
    assert first.promote == "main-2" and first.record == "main-2"
    assert first.condition is not None and first.condition.type is ConditionType.SWITCHED_OVER
    assert first.condition.reason is Reason.SWITCHOVER_IN_PROGRESS
    assert first.event is not None and first.event.reason == "SwitchoverRequested"
    assert "from main-1 to main-2" in first.event.message
    # Once recorded, CloudNativePG's progress is reported, never asked again.
    during = decide(
        "main-2", "main-2", target="main-2", phase=switchover.SWITCHOVER_PHASE, healthy=("main-2",)
    )
    assert during.promote is None and during.event is None
    assert during.condition and during.condition.reason is Reason.SWITCHOVER_IN_PROGRESS
    done = decide("main-2", "main-2", current="main-2")
    assert done.promote is None and done.record == "main-2"
    assert done.condition and (done.condition.status, done.condition.reason) == (
        "True",
        Reason.SWITCHOVER_COMPLETED,
    )


def test_a_primary_moved_since_is_not_moved_back() -> None:
    """A failover after the switchover: the request was carried out, it is not repeated."""
    later = decide("main-2", "main-2", current="main-1")
    assert later.promote is None and later.record == "main-2"
    assert later.condition and later.condition.reason is Reason.PRIMARY_MOVED
    assert later.condition.status == "False"
    assert "remove the annotation" in later.condition.message


def test_no_request_clears_the_record_so_the_next_one_is_new() -> None:
    assert decide(None, "main-2") == switchover.Decision()
    assert decide("", "main-2").record is None


def test_the_primary_already_asked_for_is_recorded_without_a_promotion() -> None:
    found = decide("main-1")
    assert found.promote is None and found.record == "main-1" and found.event is None
    assert found.condition and found.condition.status == "True"


@pytest.mark.parametrize(
    ("requested", "state", "says"),
    [
        ("main-9", {}, "main-9 is not an instance of cluster main (its instances: main-1, main-2)"),
        ("main-2", {"healthy": ("main-1",), "failed": ("main-2",)}, "not a ready replica"),
    ],
)
def test_a_request_that_cannot_be_carried_out_is_refused(
    requested: str, state: dict[str, Any], says: str
) -> None:
    refused = decide(requested, **state)
    assert refused.promote is None and refused.record is None
    assert refused.condition is not None
    assert (refused.condition.status, refused.condition.reason) == (
        "False",
        Reason.SWITCHOVER_REFUSED,
    )
    assert says in refused.condition.message and "Nothing was done" in refused.condition.message


def test_a_busy_cluster_makes_the_request_wait() -> None:
    """A failover under way: the request waits, it is neither refused nor recorded."""
    busy = decide("main-2", phase="Failing over", target="main-2", current="main-1")
    assert busy.promote is None and busy.record is None
    assert busy.condition and busy.condition.reason is Reason.SWITCHOVER_PENDING
    assert busy.condition.status == "Unknown"
    assert (
        switchover.decide(name="main", requested="main-2", recorded=None, engine=None).promote
        is None
    )


def test_the_promotion_is_what_kubectl_cnpg_promote_writes() -> None:
    now = datetime(2026, 12, 6, 7, 0, 1, 250000, tzinfo=UTC)
    patch = switchover.promotion(engine(), "main-2", now)
    assert patch["metadata"] == {"resourceVersion": "42"}, "conditional on what was read"
    status = patch["status"]
    assert status["targetPrimary"] == "main-2"
    assert status["targetPrimaryTimestamp"] == "2026-12-06T07:00:01.250000Z"
    assert status["phase"] == "Switchover in progress"
    assert status["phaseReason"] == "Switching over to main-2"
    ready, archiving = status["conditions"]
    assert (ready["status"], ready["reason"]) == ("False", "ClusterIsNotReady")
    assert ready["lastTransitionTime"] == "2026-12-06T07:00:01Z"
    assert archiving == {"type": "ContinuousArchiving", "status": "True", "reason": "Ok"}


@pytest.mark.parametrize(
    ("text", "value"),
    [("10Gi", 10 * 2**30), ("1G", 10**9), ("1073741824", 2**30), ("1e3", 1000), ("1.5Ki", 1536)],
)
def test_quantities(text: str, value: int) -> None:
    assert storage.quantity(text) == value


def test_growth_is_rendered_where_volumes_can_expand_and_held_where_not() -> None:
    assert storage.size_to_render("20Gi", "10Gi", expandable=True) == "20Gi"
    assert storage.size_to_render("20Gi", "10Gi", expandable=False) == "10Gi"
    assert storage.size_to_render("20Gi", "10Gi", expandable=None) == "10Gi", "no such class"
    assert storage.size_to_render("20Gi", None, expandable=None) == "20Gi", "a new cluster"
    assert storage.size_to_render("10240Mi", "10Gi", expandable=False) == "10240Mi", "same size"


def test_a_growth_the_class_cannot_take_stalls_but_the_cluster_still_serves() -> None:
    verdict = storage.resize_unsupported("20Gi", "10Gi", "standard", expandable=False)
    assert (verdict.state, verdict.reason) == (State.STALLED, Reason.STORAGE_RESIZE_UNSUPPORTED)
    assert "StorageClass standard does not allow volume expansion" in verdict.message
    assert "volumes of 10Gi" in verdict.message
    assert storage.serves(verdict.reason) and not storage.serves(Reason.PROVISIONING)


def test_volumes_smaller_than_asked_are_reported_growing() -> None:
    claims = [
        storage.Claim("main-2", "20Gi", "10Gi"),
        storage.Claim("main-1", "20Gi", "20Gi"),
    ]
    verdict = storage.growing("20Gi", claims)
    assert verdict is not None and verdict.reason is Reason.STORAGE_RESIZING
    assert verdict.state is State.PROGRESSING
    assert verdict.message == "Growing the volumes to 20Gi: main-2 has 10Gi."
    # A static volume larger than its claim holds the size asked for.
    assert storage.growing("20Gi", [storage.Claim("main-1", "1Gi", "100Gi")]) is None


def test_databases_still_count_on_a_cluster_held_back_from_growing() -> None:
    from vauban.handlers.cluster import view_of

    def body(reason: str, status: str = "False") -> dict[str, Any]:
        ready = {"type": "Ready", "status": status, "reason": reason, "message": "",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}  # fmt: skip
        return {
            "metadata": {"name": "main", "namespace": "db", "uid": "u"},
            "spec": {"version": "17", "storage": {"size": "1Gi"}},
            "status": {"conditions": [ready]},
        }

    assert view_of(body("StorageResizeUnsupported")).ready
    assert not view_of(body("Provisioning")).ready
    assert view_of(body("Available", "True")).ready
