"""Pure decisions about backups: a ManagedBackup's state from its Job, which backups
retention removes, whether a database's backups are healthy, and schedule arithmetic."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cronsim import CronSim, CronSimError

from vauban.api.common import duration_seconds
from vauban.conditions import ConditionType, DomainCondition, Reason, State, Verdict
from vauban.reconcile.database import parse_time

SUCCEEDED, FAILED, RUNNING, PENDING = "Succeeded", "Failed", "Running", "Pending"

# CronJob's macros, which cronsim does not read.
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def _cron(schedule: str, start: datetime, *, reverse: bool = False) -> CronSim:
    return CronSim(_MACROS.get(schedule, schedule), start, reverse=reverse)


def schedule_error(schedule: str) -> str | None:
    """Why a cron schedule is not one (the CRD only checks its shape), or None."""
    try:
        _cron(schedule, datetime(2000, 1, 1))
    except CronSimError as e:
        return str(e)
    return None


def interval(schedule: str, now: datetime) -> timedelta:
    """The time between the next two runs: a schedule's nominal period."""
    runs = _cron(schedule, now)
    first = next(runs)
    return next(runs) - first


def overdue_since(schedule: str, now: datetime) -> datetime:
    """The run before the previous one: a database with no successful backup since then has
    missed two runs (the issue's "older than twice the schedule", for irregular schedules
    too)."""
    runs = _cron(schedule, now, reverse=True)
    next(runs)
    return next(runs)


@dataclass(frozen=True)
class BackupRecord:
    """What retention and health read of one ManagedBackup."""

    name: str
    phase: str | None
    finished: datetime | None
    created: datetime | None
    trigger: str | None = None

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> BackupRecord:
        status = body.get("status") or {}
        meta = body["metadata"]
        return cls(
            name=meta["name"],
            phase=status.get("phase"),
            finished=_time(status.get("finishedAt")),
            created=_time(meta.get("creationTimestamp")),
            trigger=status.get("trigger"),
        )


def _time(value: Any) -> datetime | None:
    return parse_time(str(value)) if value else None


def expired(
    backups: Sequence[BackupRecord],
    *,
    keep_last: int | None,
    max_age: str | None,
    now: datetime,
) -> list[str]:
    """Names of the backups retention removes: beyond the `keep_last` newest, or finished
    longer than `max_age` ago. The newest successful backup is never removed, whatever the
    rules say: a database whose backups stopped keeps its last one. Failed backups follow the
    same rules among themselves; running ones are never touched."""
    doomed: list[str] = []
    for phase in (SUCCEEDED, FAILED):
        done = sorted(
            (b for b in backups if b.phase == phase and b.finished is not None),
            key=lambda b: b.finished or now,
            reverse=True,
        )
        for position, backup in enumerate(done):
            if phase == SUCCEEDED and position == 0:
                continue
            too_many = keep_last is not None and position >= keep_last
            too_old = (
                max_age is not None
                and backup.finished is not None
                and now - backup.finished > timedelta(seconds=duration_seconds(max_age))
            )
            if too_many or too_old:
                doomed.append(backup.name)
    return doomed


def last_success(backups: Sequence[BackupRecord]) -> BackupRecord | None:
    done = [b for b in backups if b.phase == SUCCEEDED and b.finished is not None]
    return max(done, key=lambda b: b.finished or datetime.min, default=None)


def health(
    backups: Sequence[BackupRecord],
    *,
    schedule: str | None,
    database_created: datetime | None,
    now: datetime,
) -> DomainCondition:
    """BackupHealthy: False when the latest finished backup failed, or when the last success
    is older than two scheduled runs; Unknown until a first backup exists, while the
    database is younger than that."""
    finished = [b for b in backups if b.phase in (SUCCEEDED, FAILED) and b.finished]
    latest = max(finished, key=lambda b: b.finished or datetime.min, default=None)
    success = last_success(backups)
    if latest is not None and latest.phase == FAILED:
        return DomainCondition(
            ConditionType.BACKUP_HEALTHY,
            "False",
            Reason.BACKUP_FAILED,
            f"The latest backup, ManagedBackup {latest.name}, failed; its status says why.",
        )
    if schedule is not None:
        deadline = overdue_since(schedule, now)
        young = database_created is not None and database_created > deadline
        if success is None or (success.finished is not None and success.finished < deadline):
            if success is None and young:
                return DomainCondition(
                    ConditionType.BACKUP_HEALTHY,
                    "Unknown",
                    Reason.NO_BACKUP_YET,
                    f"No backup has completed yet; the schedule is {schedule} (UTC).",
                )
            since = "never" if success is None else f"last at {_rfc3339(success.finished)}"
            return DomainCondition(
                ConditionType.BACKUP_HEALTHY,
                "False",
                Reason.BACKUP_TOO_OLD,
                f"No successful backup in the last two scheduled runs ({since}; schedule "
                f"{schedule} UTC). Check the ManagedBackups of this database.",
            )
    if success is None:
        return DomainCondition(
            ConditionType.BACKUP_HEALTHY,
            "Unknown",
            Reason.NO_BACKUP_YET,
            "No backup has completed yet"
            + ("." if schedule else ": there is no schedule; create a ManagedBackup."),
        )
    return DomainCondition(
        ConditionType.BACKUP_HEALTHY,
        "True",
        Reason.BACKUPS_CURRENT,
        f"Last successful backup: ManagedBackup {success.name} at {_rfc3339(success.finished)}.",
    )


def _rfc3339(value: datetime | None) -> str:
    assert value is not None
    return value.replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class JobState:
    """What a backup's Job says, read from the Job and its pod."""

    exists: bool
    active: bool = False
    succeeded: bool = False
    failed: bool = False
    started: str | None = None
    finished: str | None = None
    message: str | None = None
    """The agent's termination message (its JSON result), when the pod has one."""


def job_state(job: Mapping[str, Any] | None, termination_message: str | None) -> JobState:
    if job is None:
        return JobState(exists=False)
    status = job.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    return JobState(
        exists=True,
        active=bool(status.get("active")),
        succeeded=conditions.get("Complete") == "True",
        failed=conditions.get("Failed") == "True",
        started=status.get("startTime"),
        finished=status.get("completionTime")
        or next(
            (
                c.get("lastTransitionTime")
                for c in status.get("conditions") or []
                if c.get("type") == "Failed"
            ),
            None,
        ),
        message=termination_message,
    )


def failure_verdict(job: JobState, result: Mapping[str, Any] | None) -> Verdict:
    """A failed backup, explained with the agent's own reason and message when it left
    them (its messages never carry secrets), else with what the Job says."""
    if result is not None and result.get("reason"):
        detail = f"{result.get('reason')}: {str(result.get('message', ''))[:600]}"
    elif job.exists:
        detail = "the agent's Job failed without a result (killed, out of memory, or deadline)"
    else:
        detail = "the agent's Job disappeared before it finished"
    return Verdict(
        State.STALLED,
        Reason.BACKUP_FAILED,
        f"Backup failed: {detail}. Nothing partial is listed: a backup without its manifest "
        "does not exist. Create a new ManagedBackup once the cause is fixed.",
    )
