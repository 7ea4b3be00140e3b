"""The whole status of an object, computed from a verdict: the only shape the operator writes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from vauban.api.common import Condition, StatusModel
from vauban.conditions import (
    ConditionType,
    DomainCondition,
    Verdict,
    find,
    is_true,
    kstatus_conditions,
    merge,
)

_CONDITIONS = TypeAdapter(list[Condition])


@dataclass(frozen=True)
class StatusUpdate:
    """The status to write and what changed since the previous one."""

    status: dict[str, Any]
    changed: bool
    """Whether anything differs: when False, no write is needed."""

    transition: bool
    """Whether the Ready condition changed status or reason: that is what an Event reports."""

    domain_transitions: tuple[DomainCondition, ...] = ()
    """Domain conditions whose status or reason changed: each is an Event too."""


def previous_conditions(previous: Mapping[str, Any] | None) -> list[Condition]:
    """Conditions of a stored status; an unreadable list (written by hand) counts as empty."""
    try:
        return _CONDITIONS.validate_python((previous or {}).get("conditions") or [])
    except ValidationError:
        return []


def ready_condition(status: Mapping[str, Any] | None) -> Condition | None:
    """The Ready condition of a stored status; None when it has none (or none readable)."""
    return find(previous_conditions(status), ConditionType.READY)


def is_ready(status: Mapping[str, Any] | None) -> bool:
    """Whether a stored status says Ready, for whatever generation it was written."""
    return is_true(previous_conditions(status), ConditionType.READY)


def ready_for_generation(body: Mapping[str, Any]) -> bool:
    """Whether the stored status says Ready for the object's spec as it is now: written for
    its current generation. A status of an older spec says nothing of this one."""
    status = body.get("status") or {}
    return status.get("observedGeneration") == body["metadata"].get("generation") and is_ready(
        status
    )


def compute(
    previous: Mapping[str, Any] | None,
    verdict: Verdict,
    *,
    generation: int,
    now: str,
    fields: StatusModel | None = None,
    domain: Sequence[DomainCondition] = (),
) -> StatusUpdate:
    """The status for `verdict`; `fields` the kind's status model with what the reconcile
    observed (its conditions and observedGeneration are computed here; a phase it sets
    replaces the verdict's), `domain` the conditions beyond kstatus's (BackupHealthy...)."""
    before = previous_conditions(previous)
    conditions = merge(
        before, [*kstatus_conditions(verdict), *domain], generation=generation, now=now
    )
    observed = fields.to_wire() if fields is not None else {}
    status: dict[str, Any] = {
        **observed,
        "observedGeneration": generation,
        "conditions": [c.model_dump(by_alias=True, exclude_none=True) for c in conditions],
        "phase": observed.get("phase") or verdict.phase.value,
    }
    new_ready, old_ready = (
        conditions[0],
        next((c for c in before if c.type == ConditionType.READY), None),
    )
    transition = old_ready is None or (old_ready.status, old_ready.reason) != (
        new_ready.status,
        new_ready.reason,
    )
    old = previous or {}
    # Every field of the kind's model counts, so a field no longer observed is a change;
    # fields the model does not know (another writer's) are theirs to keep.
    keys = set(status) | (
        {f.alias or k for k, f in type(fields).model_fields.items()} if fields else set()
    )
    changed = any(old.get(k) != status.get(k) for k in keys)
    # A domain condition's change is an Event; its first value only when it says something
    # is wrong (a new database is not announced Compliant, nor BackupHealthy Unknown).
    previous_by_type = {c.type: (c.status, c.reason) for c in before}
    flipped = tuple(
        d
        for d in domain
        if (d.type in previous_by_type or d.status == "False")
        and previous_by_type.get(d.type) != (d.status, d.reason.value)
    )
    return StatusUpdate(
        status=status, changed=changed, transition=transition, domain_transitions=flipped
    )
