"""Conditions and phase: one pure mapping from a reconcile's verdict to status.

Handlers never set conditions one by one. A reconcile concludes with a `Verdict`; this module
turns it into the kstatus conditions Argo CD and Flux read (`Ready`, `Reconciling`,
`Stalled`), merges them with the domain conditions, keeps `lastTransitionTime` unless a status
flips, and derives the printer-column `phase` from the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from vauban.api.common import Condition, ConditionStatus


class ConditionType(StrEnum):
    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"
    BACKUP_HEALTHY = "BackupHealthy"
    ENCRYPTED = "Encrypted"
    COMPLIANT = "Compliant"
    SWITCHED_OVER = "SwitchedOver"


class Reason(StrEnum):
    """Stable, documented reasons (docs/conditions.md). Never rename one: tools match on them."""

    AVAILABLE = "Available"
    PROVISIONING = "Provisioning"
    CONFIGURATION_PENDING = "ConfigurationPending"
    CLUSTER_NOT_FOUND = "ClusterNotFound"
    CLUSTER_NOT_READY = "ClusterNotReady"
    NAMESPACE_NOT_ALLOWED = "NamespaceNotAllowed"
    NAME_CONFLICT = "NameConflict"
    CONNECTION_LIMIT_TOO_HIGH = "ConnectionLimitTooHigh"
    REGISTRY_UNAVAILABLE = "RegistryUnavailable"
    UNREACHABLE = "Unreachable"
    AUTHENTICATION_FAILED = "AuthenticationFailed"
    SECRET_MISSING = "SecretMissing"  # noqa: S105 - a reason, not a password
    INSUFFICIENT_PRIVILEGES = "InsufficientPrivileges"
    ENGINE_NOT_INSTALLED = "EngineNotInstalled"
    ARCHIVER_NOT_INSTALLED = "ArchiverNotInstalled"
    RECOVERING = "Recovering"
    MAJOR_UPGRADE_UNSUPPORTED = "MajorUpgradeUnsupported"
    VERSION_MISMATCH = "VersionMismatch"
    DELETION_BLOCKED = "DeletionBlocked"
    INVALID_SPEC = "InvalidSpec"
    PROVISIONING_FAILED = "ProvisioningFailed"
    RECONCILE_FAILED = "ReconcileFailed"
    BACKUP_FAILED = "BackupFailed"
    BACKUP_TOO_OLD = "BackupTooOld"
    BACKUPS_CURRENT = "BackupsCurrent"
    NO_BACKUP_YET = "NoBackupYet"
    BACKUP_RUNNING = "BackupRunning"
    BACKUP_COMPLETED = "BackupCompleted"
    BACKUP_NOT_CONFIGURED = "BackupNotConfigured"
    DATABASE_NOT_FOUND = "DatabaseNotFound"
    DATABASE_NOT_READY = "DatabaseNotReady"
    RESTORING = "Restoring"
    RESTORE_FAILED = "RestoreFailed"
    RESTORE_REFUSED = "RestoreRefused"
    RESTORE_SOURCE_FAILED = "RestoreSourceFailed"
    KEY_MISSING = "KeyMissing"
    KEY_PROVIDER_UNAVAILABLE = "KeyProviderUnavailable"
    STORAGE_CLASS_NOT_ENCRYPTED = "StorageClassNotEncrypted"
    STORAGE_CLASS_ENCRYPTED = "StorageClassEncrypted"
    EXTERNAL_STORAGE = "ExternalStorage"
    CLUSTER_NOT_CERTIFIED = "ClusterNotCertified"
    PLACEMENT_ALLOWED = "PlacementAllowed"
    NO_PROFILE = "NoProfile"
    RULES_MET = "RulesMet"
    RULES_UNMET = "RulesUnmet"
    SWITCHOVER_PENDING = "SwitchoverPending"
    SWITCHOVER_IN_PROGRESS = "SwitchoverInProgress"
    SWITCHOVER_COMPLETED = "SwitchoverCompleted"
    SWITCHOVER_REFUSED = "SwitchoverRefused"
    PRIMARY_MOVED = "PrimaryMoved"
    STORAGE_RESIZING = "StorageResizing"
    STORAGE_RESIZE_UNSUPPORTED = "StorageResizeUnsupported"


class State(StrEnum):
    """Where a reconcile left the object."""

    READY = "Ready"
    """Everything the spec asks for exists and works."""

    WAITING = "Waiting"
    """A dependency is missing or not ready; it may appear without anyone acting."""

    PROGRESSING = "Progressing"
    """Vauban is doing the work the spec asks for."""

    STALLED = "Stalled"
    """Vauban cannot go on until a person acts on what the message says."""


class Phase(StrEnum):
    """The printer-column summary of a verdict. Tools read conditions, never this."""

    READY = "Ready"
    PENDING = "Pending"
    PROVISIONING = "Provisioning"
    FAILED = "Failed"


_PHASES = {
    State.READY: Phase.READY,
    State.WAITING: Phase.PENDING,
    State.PROGRESSING: Phase.PROVISIONING,
    State.STALLED: Phase.FAILED,
}


@dataclass(frozen=True)
class Verdict:
    """The conclusion of one reconcile: a state, a CamelCase reason, a message for humans."""

    state: State
    reason: Reason
    message: str

    @classmethod
    def ready(cls, message: str) -> Verdict:
        return cls(State.READY, Reason.AVAILABLE, message)

    @property
    def phase(self) -> Phase:
        return _PHASES[self.state]


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event a decision asks to post on its object: for what a person audits
    (what changed, credentials rotated, a failover), beside the transitions of conditions."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class DomainCondition:
    """A condition beyond kstatus's three, e.g. Compliant or BackupHealthy."""

    type: ConditionType
    status: ConditionStatus
    reason: Reason
    message: str


def kstatus_conditions(verdict: Verdict) -> list[DomainCondition]:
    """Ready, Reconciling and Stalled for a verdict.

    Reconciling and Stalled are "abnormal-true" conditions: kstatus reads them only when True,
    so they stay present as False with the verdict's reason rather than vanishing.
    """

    def flag(on: bool) -> ConditionStatus:
        return "True" if on else "False"

    return [
        DomainCondition(
            ConditionType.READY, flag(verdict.state is State.READY), verdict.reason, verdict.message
        ),
        DomainCondition(
            ConditionType.RECONCILING,
            flag(verdict.state in (State.WAITING, State.PROGRESSING)),
            verdict.reason,
            verdict.message if verdict.state in (State.WAITING, State.PROGRESSING) else "",
        ),
        DomainCondition(
            ConditionType.STALLED,
            flag(verdict.state is State.STALLED),
            verdict.reason,
            verdict.message if verdict.state is State.STALLED else "",
        ),
    ]


def merge(
    previous: list[Condition],
    desired: list[DomainCondition],
    *,
    generation: int,
    now: str,
) -> list[Condition]:
    """The new condition list: `desired` in order, each keeping its previous transition time
    when its status did not change. Conditions not in `desired` are dropped: the list is
    computed whole, so nothing stale lingers."""
    before = {c.type: c for c in previous}
    merged = []
    for want in desired:
        old = before.get(want.type)
        changed = old is None or old.status != want.status
        merged.append(
            Condition(
                type=want.type,
                status=want.status,
                reason=want.reason,
                message=want.message,
                last_transition_time=now if changed or old is None else old.last_transition_time,
                observed_generation=generation,
            )
        )
    return merged


def find(conditions: list[Condition], type_: ConditionType) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def is_true(conditions: list[Condition], type_: ConditionType) -> bool:
    condition = find(conditions, type_)
    return condition is not None and condition.status == "True"
