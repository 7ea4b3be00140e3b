from __future__ import annotations

import pytest

from vauban.api.common import Condition
from vauban.api.database import ManagedDatabaseStatus
from vauban.conditions import (
    ConditionType,
    Phase,
    Reason,
    State,
    Verdict,
    kstatus_conditions,
    merge,
)
from vauban.reconcile.status import compute, is_ready, ready_condition, ready_for_generation

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


@pytest.mark.parametrize(
    ("state", "ready", "reconciling", "stalled", "phase"),
    [
        (State.READY, "True", "False", "False", Phase.READY),
        (State.WAITING, "False", "True", "False", Phase.PENDING),
        (State.PROGRESSING, "False", "True", "False", Phase.PROVISIONING),
        (State.STALLED, "False", "False", "True", Phase.FAILED),
    ],
)
def test_kstatus_conditions_follow_the_state(
    state: State, ready: str, reconciling: str, stalled: str, phase: Phase
) -> None:
    verdict = Verdict(state, Reason.CLUSTER_NOT_FOUND, "why")
    got = {c.type: c.status for c in kstatus_conditions(verdict)}
    assert got == {"Ready": ready, "Reconciling": reconciling, "Stalled": stalled}
    assert verdict.phase is phase


def test_transition_time_changes_only_when_status_flips() -> None:
    waiting = kstatus_conditions(Verdict(State.WAITING, Reason.CLUSTER_NOT_FOUND, "a"))
    first = merge([], waiting, generation=1, now=T0)
    assert {c.last_transition_time for c in first} == {T0}

    # Same statuses, new reason and generation: times stay, the rest follows.
    again = kstatus_conditions(Verdict(State.WAITING, Reason.CLUSTER_NOT_READY, "b"))
    second = merge(first, again, generation=2, now=T1)
    assert {c.last_transition_time for c in second} == {T0}
    assert {c.reason for c in second} == {Reason.CLUSTER_NOT_READY}
    assert {c.observed_generation for c in second} == {2}

    ready = merge(second, kstatus_conditions(Verdict.ready("ok")), generation=2, now=T1)
    times = {c.type: c.last_transition_time for c in ready}
    assert times == {"Ready": T1, "Reconciling": T1, "Stalled": T0}


def test_status_is_unchanged_when_the_verdict_is() -> None:
    verdict = Verdict(State.WAITING, Reason.CLUSTER_NOT_FOUND, "missing")
    first = compute(
        None, verdict, generation=3, now=T0, fields=ManagedDatabaseStatus(cluster="ns/c")
    )
    assert first.changed and first.transition
    assert first.status["observedGeneration"] == 3
    assert first.status["phase"] == "Pending"

    second = compute(
        first.status, verdict, generation=3, now=T1, fields=ManagedDatabaseStatus(cluster="ns/c")
    )
    assert not second.changed and not second.transition


def test_new_generation_is_a_change_but_not_a_transition() -> None:
    verdict = Verdict(State.WAITING, Reason.CLUSTER_NOT_FOUND, "missing")
    first = compute(None, verdict, generation=1, now=T0)
    second = compute(first.status, verdict, generation=2, now=T1)
    assert second.changed and not second.transition


def test_other_writers_fields_do_not_count_as_change() -> None:
    verdict = Verdict.ready("fine")
    first = compute(None, verdict, generation=1, now=T0)
    stored = {**first.status, "somebodyElse": {"x": 1}}
    assert not compute(stored, verdict, generation=1, now=T1).changed


def test_cleared_field_is_a_change() -> None:
    verdict = Verdict.ready("fine")
    first = compute(
        None, verdict, generation=1, now=T0, fields=ManagedDatabaseStatus(cluster="a/b")
    )
    cleared = ManagedDatabaseStatus(cluster=None)
    assert compute(first.status, verdict, generation=1, now=T1, fields=cleared).changed


def test_unreadable_stored_conditions_are_replaced() -> None:
    stored = {"conditions": [{"type": "Ready"}]}  # hand-written, missing required fields
    update = compute(stored, Verdict.ready("ok"), generation=1, now=T0)
    assert update.changed and update.transition
    assert [Condition.model_validate(c).type for c in update.status["conditions"]] == [
        ConditionType.READY,
        ConditionType.RECONCILING,
        ConditionType.STALLED,
    ]


def test_ready_for_generation_needs_ready_written_for_the_current_spec() -> None:
    ready = compute(None, Verdict.ready("fine"), generation=2, now=T0).status
    waiting = compute(
        None, Verdict(State.WAITING, Reason.CLUSTER_NOT_READY, "wait"), generation=2, now=T0
    ).status

    def body(generation: int, status: dict[str, object] | None) -> dict[str, object]:
        return {"metadata": {"generation": generation}, "status": status}

    assert ready_for_generation(body(2, ready))
    assert not ready_for_generation(body(3, ready))  # a newer spec: not judged yet
    assert not ready_for_generation(body(2, waiting))
    assert not ready_for_generation(body(1, None))
    assert is_ready(ready) and not is_ready(waiting) and not is_ready(None)
    condition = ready_condition(waiting)
    assert condition is not None and condition.reason == Reason.CLUSTER_NOT_READY
    assert ready_condition({"conditions": [{"type": "Ready"}]}) is None  # unreadable


def test_lease_acquisition_rules() -> None:
    from datetime import UTC, datetime, timedelta

    from vauban.kube.lease import LeaseState, may_acquire, observe

    wall = datetime(2026, 1, 1, tzinfo=UTC)
    assert may_acquire(None, "a", 0.0)
    assert may_acquire(observe(None, LeaseState(None, None, 15), 0.0), "a", 0.0)
    assert may_acquire(observe(None, LeaseState("a", wall, 15), 0.0), "a", 0.0)
    # Another's Lease expires 15 s after it was last seen to change, on our clock.
    seen = observe(None, LeaseState("b", wall, 15), 100.0)
    assert not may_acquire(seen, "a", 114.0)
    assert may_acquire(observe(seen, LeaseState("b", wall, 15), 115.0), "a", 115.0)
    renewed = observe(seen, LeaseState("b", wall + timedelta(seconds=5), 15), 105.0)
    assert not may_acquire(renewed, "a", 115.0)


def test_a_skewed_wall_clock_never_makes_two_leaders() -> None:
    """The holder's renewTime, an hour behind ours (or ahead), says nothing of expiry: a
    fresh candidate waits a whole duration of no change, whatever the dates."""
    from datetime import UTC, datetime, timedelta

    from vauban.kube.lease import LeaseState, may_acquire, observe

    ours = datetime(2026, 1, 1, 12, tzinfo=UTC)
    for skew in (timedelta(hours=-1), timedelta(hours=1)):
        first = observe(None, LeaseState("b", ours + skew, 15), 0.0)
        assert not may_acquire(first, "a", 1.0)


def test_domain_conditions_are_events_when_they_change_or_start_wrong() -> None:
    from vauban.conditions import ConditionType, DomainCondition, Reason, Verdict
    from vauban.reconcile.status import compute

    healthy = DomainCondition(ConditionType.BACKUP_HEALTHY, "True", Reason.BACKUPS_CURRENT, "")
    failed = DomainCondition(ConditionType.BACKUP_HEALTHY, "False", Reason.BACKUP_FAILED, "")
    wrong = DomainCondition(ConditionType.COMPLIANT, "False", Reason.RULES_UNMET, "")
    ready = Verdict.ready("ok")
    first = compute(None, ready, generation=1, now="t", domain=[healthy, wrong])
    assert first.domain_transitions == (wrong,)
    same = compute(first.status, ready, generation=1, now="t", domain=[healthy, wrong])
    assert same.domain_transitions == ()
    flip = compute(first.status, ready, generation=1, now="t", domain=[failed, wrong])
    assert flip.domain_transitions == (failed,)
