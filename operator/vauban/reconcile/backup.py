"""Pure decisions about backups: a ManagedBackup's state from its Job, which backups
retention removes, whether a database's backups are healthy, and schedule arithmetic."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from cronsim import CronSim, CronSimError

from vauban.api.backup import Verification
from vauban.api.common import duration_seconds
from vauban.conditions import ConditionType, DomainCondition, Reason, State, Verdict
from vauban.timefmt import parse_rfc3339, rfc3339

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
    """What retention and health read of one backup: computed from the bucket's
    authenticated manifests and the operator's ledger, never from a ManagedBackup's status
    (which its namespace may be allowed to write)."""

    name: str
    phase: str | None
    finished: datetime | None
    created: datetime | None
    trigger: str | None = None


# --- the ledger ------------------------------------------------------------------------------
#
# What the operator alone records about each backup, as annotations of the data key's Secret in
# its own namespace (the Secret is the database incarnation's: named by its uid): which Job
# (and so which location) a ManagedBackup's backup went to, whether it failed, and its restore
# tests. With the bucket's authenticated manifests, this is the whole truth about backups; a
# ManagedBackup's status only displays it.

LEDGER_PREFIX = "backup.vauban.dev/"
VERIFICATION_PREFIX = "verify.vauban.dev/"
EXPIRED_PREFIX = "expired.vauban.dev/"
"""Marks a ManagedBackup the retention policy is deleting: its stored backup goes with it,
whatever its deletionPolicy says (a tenant can write that, not this record)."""
RESTORE_ANNOTATION = "vauban.dev/restore"
DATABASE_ANNOTATION = "vauban.dev/database"
PURGE_AFTER_ANNOTATION = "vauban.dev/purge-after"
STORE_ANNOTATION = "vauban.dev/store-cluster"


@dataclass(frozen=True)
class LedgerEntry:
    """One ManagedBackup's backup, as the operator recorded it."""

    name: str
    job: str
    state: str
    """Running (its Job was started), Succeeded or Failed."""

    at: datetime | None = None
    message: str = ""

    def annotation(self, backup_uid: str) -> tuple[str, str]:
        value = {"name": self.name, "job": self.job, "state": self.state}
        if self.at is not None:
            value["at"] = rfc3339(self.at)
        if self.message:
            value["message"] = self.message
        return LEDGER_PREFIX + backup_uid, json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True)
class VerificationEntry:
    result: str
    """Passed or Failed."""

    time: str
    message: str

    def annotation(self, backup_uid: str) -> tuple[str, str]:
        value = {"result": self.result, "time": self.time, "message": self.message}
        return VERIFICATION_PREFIX + backup_uid, json.dumps(value, separators=(",", ":"))

    def status(self) -> Verification:
        return Verification.model_validate(
            {"result": self.result, "time": self.time, "message": self.message}
        )


@dataclass(frozen=True)
class Ledger:
    """A database incarnation's ledger: entries and restore tests by ManagedBackup uid."""

    entries: dict[str, LedgerEntry]
    verifications: dict[str, VerificationEntry]
    restore: dict[str, str] | None = None
    """The restore into this database, once it started: source, phase, completedAt."""
    expired: frozenset[str] = frozenset()
    """ManagedBackups the retention policy expired."""


def expiry(backup_uid: str, at: datetime) -> tuple[str, str]:
    """The ledger's mark that the retention policy expired ManagedBackup `backup_uid`."""
    return EXPIRED_PREFIX + backup_uid, json.dumps({"at": rfc3339(at)}, separators=(",", ":"))


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def ledger_of(annotations: Mapping[str, str]) -> Ledger:
    """The ledger in a data key Secret's annotations; entries it cannot read are left out
    (only the operator writes them, so one is unreadable only if damaged by hand)."""
    entries: dict[str, LedgerEntry] = {}
    verifications: dict[str, VerificationEntry] = {}
    restore: dict[str, str] | None = None
    expired: set[str] = set()
    for key, text in annotations.items():
        value = (
            _json_object(text)
            if key.startswith(("backup.", "verify.", "vauban.", "expired."))
            else None
        )
        if value is None:
            continue
        if key.startswith(LEDGER_PREFIX):
            name, job, state = value.get("name"), value.get("job"), value.get("state")
            if (
                isinstance(name, str)
                and isinstance(job, str)
                and state
                in (
                    RUNNING,
                    SUCCEEDED,
                    FAILED,
                )
            ):
                entries[key.removeprefix(LEDGER_PREFIX)] = LedgerEntry(
                    name,
                    job,
                    str(state),
                    parse_rfc3339(value.get("at")),
                    str(value.get("message", "")),
                )
        elif key.startswith(VERIFICATION_PREFIX) and value.get("result") in ("Passed", "Failed"):
            verifications[key.removeprefix(VERIFICATION_PREFIX)] = VerificationEntry(
                str(value["result"]), str(value.get("time", "")), str(value.get("message", ""))
            )
        elif key == RESTORE_ANNOTATION:
            restore = {k: str(v) for k, v in value.items()}
        elif key.startswith(EXPIRED_PREFIX):
            expired.add(key.removeprefix(EXPIRED_PREFIX))
    return Ledger(entries, verifications, restore, frozenset(expired))


def records(
    backups: Sequence[tuple[str, str, datetime | None]],
    ledger: Ledger,
    finished: Mapping[str, datetime],
) -> list[BackupRecord]:
    """The backups of one database incarnation: `backups` are its ManagedBackups (uid, name,
    creation), `finished` the finish time of each authenticated manifest in its prefix of
    the bucket, by Job. A ManagedBackup the ledger does not know is not this incarnation's
    (or not started): it does not count."""
    found = []
    for uid, name, created in backups:
        entry = ledger.entries.get(uid)
        if entry is None:
            continue
        at: datetime | None
        if entry.job in finished:
            phase, at = SUCCEEDED, finished[entry.job]
        elif entry.state == FAILED:
            phase, at = FAILED, entry.at
        else:
            # Recorded as succeeded but gone from the bucket (deleted there), or running.
            phase, at = (FAILED, entry.at) if entry.state == SUCCEEDED else (RUNNING, None)
        found.append(BackupRecord(name, phase, at, created))
    return found


@dataclass(frozen=True)
class Purge:
    """A deleted database's data key whose retention ended: its backups go, then the key."""

    secret: str
    database_uid: str
    namespace: str
    database: str
    cluster: str
    """`namespace/name` of the ManagedCluster whose bucket holds the backups; empty when the
    database's cluster was already gone when it was deleted."""


def purge_due(
    secrets: Mapping[str, Mapping[str, str]], *, prefix: str, now: datetime
) -> list[Purge]:
    """The data key Secrets (name -> annotations) whose `purge-after` date has passed. Keys of
    live databases carry no date; a date or an owner that cannot be read is never due
    (nothing is destroyed on a guess)."""
    due = []
    for name, marks in sorted(secrets.items()):
        when = parse_rfc3339(marks.get(PURGE_AFTER_ANNOTATION))
        owner = marks.get(DATABASE_ANNOTATION, "")
        namespace, _, database = owner.partition("/")
        if when is None or when > now or not name.startswith(prefix) or not database:
            continue
        due.append(
            Purge(
                name,
                name.removeprefix(prefix),
                namespace,
                database,
                marks.get(STORE_ANNOTATION, ""),
            )
        )
    return due


def restore_refusal(
    *,
    location: str,
    manifest_location: str,
    complete: bool,
    manifest_namespace: str | None,
    manifest_database_uid: str | None,
    manifest_data_key_id: str,
    namespace: str,
    database_uid: str,
    data_key_id: str,
) -> str | None:
    """Why a backup may not be restored into a database of `namespace`, or None. The backup
    was found at `location` (derived from the source's namespace, name and uid, which the data
    key's own record names) and its manifest authenticated with that uid's data key; this
    checks that everything the manifest says agrees (format 2 says the namespace and uid
    itself; format 1 only binds the location and the data key's id)."""
    if manifest_location != location:
        return f"the backup's manifest names another location ({manifest_location})"
    if manifest_data_key_id != data_key_id:
        return f"the backup was made with data key {manifest_data_key_id}, not {data_key_id}"
    if complete and manifest_namespace != namespace:
        return f"the backup belongs to namespace {manifest_namespace}, not {namespace}"
    if complete and manifest_database_uid != database_uid:
        return "the backup was made for another database than its data key's"
    return None


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
            since = "never" if success is None else f"last at {_finished_at(success)}"
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
        f"Last successful backup: ManagedBackup {success.name} at {_finished_at(success)}.",
    )


def _finished_at(backup: BackupRecord) -> str:
    assert backup.finished is not None, "last_success returns finished backups only"
    return rfc3339(backup.finished)


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


def agent_result(message: str | None) -> dict[str, Any] | None:
    """The agent's JSON result from a termination message; None when there is none."""
    if not message:
        return None
    try:
        parsed = json.loads(message.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    return parsed if isinstance(parsed, dict) else None


class BackupAction(StrEnum):
    """What a ManagedBackup's reconcile does next, from its records and its Job."""

    RUNNING = "Running"
    """Its Job runs: recorded in the ledger if it is not yet, shown Running."""
    SUCCEEDED = "Succeeded"
    """Its manifest is in the bucket and authentic: the only proof of a backup."""
    UNKNOWN = "Unknown"
    """The bucket cannot be read: nothing is concluded (a verdict only while not terminal)."""
    JOB_FAILED = "JobFailed"
    """Its Job ended without an authentic manifest: the Job's result says why."""
    FAILED = "Failed"
    """The ledger says it failed, or its Job and backup are gone."""
    UNRECORDED = "Unrecorded"
    """A finished status the records do not back: its status alone is not evidence."""
    START = "Start"
    """Nothing started yet: its Job is created (once its database is Ready)."""


@dataclass(frozen=True)
class BackupOutcome:
    action: BackupAction
    verdict: Verdict | None = None
    finished: datetime | None = None
    """When it failed, for FAILED: the ledger's time."""


def backup_outcome(
    *,
    job: JobState,
    authentic_manifest: bool,
    bucket_error: str | None,
    entry: LedgerEntry | None,
    terminal: bool,
) -> BackupOutcome:
    """A ManagedBackup's outcome from what the operator alone controls: its Job (`job`, read
    without its termination message), its manifest in the bucket, the ledger's `entry`.
    `terminal`: its status already shows Succeeded or Failed."""
    if job.exists and not (job.succeeded or job.failed):
        return BackupOutcome(BackupAction.RUNNING)
    if authentic_manifest:
        return BackupOutcome(BackupAction.SUCCEEDED)
    if bucket_error is not None and not job.failed:
        verdict = Verdict(
            State.WAITING,
            Reason.BACKUP_NOT_CONFIGURED,
            f"The bucket cannot be read: {bucket_error}.",
        )
        return BackupOutcome(BackupAction.UNKNOWN, None if terminal else verdict)
    if job.exists:
        return BackupOutcome(BackupAction.JOB_FAILED)
    if entry is not None:
        why = (
            entry.message
            if entry.state == FAILED
            else "Backup failed: its Job disappeared, or its backup is gone from the bucket."
        )
        return BackupOutcome(
            BackupAction.FAILED, Verdict(State.STALLED, Reason.BACKUP_FAILED, why), entry.at
        )
    if terminal:
        return BackupOutcome(
            BackupAction.UNRECORDED,
            Verdict(
                State.STALLED,
                Reason.BACKUP_FAILED,
                "No record of this backup: neither the bucket nor the operator's ledger holds "
                "it. Create a new ManagedBackup.",
            ),
        )
    return BackupOutcome(BackupAction.START)


def job_failure(job: JobState) -> Verdict:
    """Why a backup whose Job ended left no authentic manifest, `job` read with its
    termination message."""
    verdict = failure_verdict(job, agent_result(job.message))
    if not job.succeeded:
        return verdict
    return Verdict(
        verdict.state,
        verdict.reason,
        "Backup failed: the agent reported success but no authentic manifest exists at its "
        "location.",
    )


def verification(job: JobState, now: datetime) -> VerificationEntry:
    """A restore test's result from its finished Job, read with its termination message."""
    result = agent_result(job.message) or {}
    passed = job.succeeded and result.get("result") == "Succeeded"
    message = str(result.get("message") or "")[:900] or (
        "Restored into a scratch database; row counts match the manifest."
        if passed
        else "The restore test failed without a result (killed or deadline)."
    )
    return VerificationEntry("Passed" if passed else "Failed", rfc3339(now), message)
