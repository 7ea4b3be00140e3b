"""A switchover asked by a person: whether to carry it out, and what to say of it.

The request is the annotation `vauban.dev/switchover-to: <instance>` on the ManagedCluster;
the operator never writes it (nor anything else of the object but its status). Carrying it
out is what `kubectl cnpg promote` does: CloudNativePG's Cluster status gets the instance as
`targetPrimary` and the phase "Switchover in progress", and CloudNativePG's operator does the
rest (a clean shutdown of the primary, the target promoted once it has replayed all of it).

Each request is carried out once. The operator records the request it acted on in an
annotation of CloudNativePG's Cluster (an object only the operator and CloudNativePG write),
never in status: a status lost or rewritten would otherwise repeat a switchover, and a
primary that moved since (a failover) would be moved back. The record goes when the
annotation goes, so the same instance can be asked for again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from vauban.api.common import ConditionStatus
from vauban.conditions import ConditionType, DomainCondition, Event, Reason
from vauban.timefmt import rfc3339

REQUEST_ANNOTATION = "vauban.dev/switchover-to"
"""On the ManagedCluster, set by a person: the instance (pod) to make the primary."""

RECORD_ANNOTATION = "vauban.dev/switchover-handled"
"""On CloudNativePG's Cluster, written by the operator: the request it carried out."""

HEALTHY_PHASE = "Cluster in healthy state"
SWITCHOVER_PHASE = "Switchover in progress"
"""CloudNativePG's phases (api/v1 PhaseHealthy, PhaseSwitchover)."""

HEALTHY_INSTANCE = "healthy"
"""CloudNativePG's status.instancesStatus key of instances that run and replicate."""


@dataclass(frozen=True)
class Decision:
    """What a reconcile does about the request: promote an instance (or not), the record it
    leaves on CloudNativePG's Cluster (None: no record), and what status and Events say."""

    promote: str | None = None
    record: str | None = None
    condition: DomainCondition | None = None
    event: Event | None = None


def _condition(status: ConditionStatus, reason: Reason, message: str) -> DomainCondition:
    return DomainCondition(ConditionType.SWITCHED_OVER, status, reason, message)


def decide(
    *, name: str, requested: str | None, recorded: str | None, engine: Mapping[str, Any] | None
) -> Decision:
    """`engine` is CloudNativePG's Cluster as stored (None before it exists); `recorded`
    its record annotation."""
    if not requested:
        return Decision()  # and the record, if any, goes: the next request is a new one
    status = (engine or {}).get("status") or {}
    current = status.get("currentPrimary")
    target = status.get("targetPrimary") or current
    phase = status.get("phase") or "starting"
    if requested == recorded:
        return Decision(record=recorded, condition=_since(requested, current, target, phase))
    if engine is None or not current:
        return Decision(
            condition=_condition(
                "Unknown",
                Reason.SWITCHOVER_PENDING,
                f"The switchover to {requested} waits for the cluster's first primary.",
            )
        )
    if requested == current and target == current:
        return Decision(
            record=requested,
            condition=_condition(
                "True",
                Reason.SWITCHOVER_COMPLETED,
                f"{requested} is already the primary: nothing to do.",
            ),
        )
    instances = sorted(
        {pod for pods in (status.get("instancesStatus") or {}).values() for pod in pods or ()}
        | set(status.get("instancesReportedState") or {})
    )
    if requested not in instances:
        return _refused(
            f"{requested} is not an instance of cluster {name} (its instances: "
            f"{', '.join(instances) or 'none yet'})."
        )
    if phase != HEALTHY_PHASE or target != current:
        return Decision(
            condition=_condition(
                "Unknown",
                Reason.SWITCHOVER_PENDING,
                f"The switchover to {requested} waits for CloudNativePG to be healthy (phase: "
                f"{phase}; primary {current}, target {target}).",
            )
        )
    reported = (status.get("instancesReportedState") or {}).get(requested) or {}
    healthy = (status.get("instancesStatus") or {}).get(HEALTHY_INSTANCE) or ()
    if requested not in healthy or reported.get("isPrimary"):
        return _refused(
            f"{requested} is not a ready replica of cluster {name} (CloudNativePG does not "
            "report it healthy and streaming). It is carried out once it is one, unless the "
            "annotation is removed."
        )
    return Decision(
        promote=requested,
        record=requested,
        condition=_condition(
            "Unknown",
            Reason.SWITCHOVER_IN_PROGRESS,
            f"CloudNativePG is switching over from {current} to {requested}.",
        ),
        event=Event(
            "Normal",
            "SwitchoverRequested",
            f"Asked CloudNativePG to switch over from {current} to {requested} (annotation "
            f"{REQUEST_ANNOTATION}): {current} shuts down cleanly, {requested} is promoted "
            "once it has replayed all of its WAL, and clients reconnect through the "
            "read-write Service.",
        ),
    )


def _refused(message: str) -> Decision:
    return Decision(
        condition=_condition(
            "False",
            Reason.SWITCHOVER_REFUSED,
            f"Switchover refused: {message} Nothing was done; fix or remove the annotation "
            f"{REQUEST_ANNOTATION}.",
        )
    )


def _since(requested: str, current: str | None, target: str | None, phase: str) -> DomainCondition:
    """A request carried out earlier: where it stands now."""
    if current == requested:
        return _condition(
            "True", Reason.SWITCHOVER_COMPLETED, f"{requested} is the primary, as requested."
        )
    if target == requested:
        return _condition(
            "Unknown",
            Reason.SWITCHOVER_IN_PROGRESS,
            f"CloudNativePG is switching over from {current} to {requested} ({phase}).",
        )
    return _condition(
        "False",
        Reason.PRIMARY_MOVED,
        f"The switchover to {requested} was carried out; the primary has since moved to "
        f"{current} (a failover). To switch over to {requested} again, remove the annotation "
        f"{REQUEST_ANNOTATION}, then set it again.",
    )


def promotion(engine: Mapping[str, Any], instance: str, now: datetime) -> dict[str, Any]:
    """The merge patch of CloudNativePG's Cluster status that `kubectl cnpg promote` makes
    (internal/cmd/plugin/promote): the target primary, the phase, and its Ready condition
    False while the phase is not healthy. The resourceVersion makes it conditional: a status
    CloudNativePG changed meanwhile is read again rather than overwritten."""
    status = engine.get("status") or {}
    conditions = []
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            flipped = condition.get("status") != "False"
            condition = {
                **condition,
                "status": "False",
                "reason": "ClusterIsNotReady",
                "message": "Cluster Is Not Ready",
                "lastTransitionTime": rfc3339(now)
                if flipped
                else condition.get("lastTransitionTime"),
            }
        conditions.append(condition)
    return {
        "metadata": {"resourceVersion": engine["metadata"]["resourceVersion"]},
        "status": {
            "targetPrimary": instance,
            # RFC 3339 with microseconds, as CloudNativePG writes it (pgTime.GetCurrentTimestamp).
            "targetPrimaryTimestamp": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "phase": SWITCHOVER_PHASE,
            "phaseReason": f"Switching over to {instance}",
            "conditions": conditions,
        },
    }


def retried(requested: str) -> Decision:
    """The promotion met a status CloudNativePG changed meanwhile: decided again at the
    Cluster's next event, which that change is."""
    return Decision(
        condition=_condition(
            "Unknown",
            Reason.SWITCHOVER_PENDING,
            f"The switchover to {requested} waits: CloudNativePG changed the cluster's status "
            "at the same moment; it is decided again on what it wrote.",
        )
    )
