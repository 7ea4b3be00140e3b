"""The restore of a new database from a backup, decided purely: whether its source may fill
it, and what the restore does next, given the database's ledger, the source as the records
place it, and the restore Job. The handler gathers these and acts (handlers.backups.restore).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from vauban.api.database import RestoreStatus
from vauban.conditions import Reason, State, Verdict
from vauban.reconcile.backup import (
    FAILED,
    RUNNING,
    SUCCEEDED,
    JobState,
    LedgerEntry,
    agent_result,
    restore_refusal,
)
from vauban.timefmt import rfc3339


@dataclass(frozen=True)
class ManifestFacts:
    """What an authenticated manifest says of itself."""

    location: str
    complete: bool
    """Format 2 or later: it names its namespace and database uid itself."""
    namespace: str | None
    database_uid: str | None
    data_key_id: str


@dataclass(frozen=True)
class RestoreSource:
    """The backup spec.restore names, where the records put it."""

    name: str
    namespace: str
    """The namespace of the database incarnation whose data key opens it."""
    database_uid: str
    data_key_id: str
    location: str
    entry: LedgerEntry | None
    manifest: ManifestFacts | None
    bucket_error: str | None = None
    claimed: str | None = None
    """The phase the source's status shows: only ever a reason to refuse, never to restore."""


def source_refusal(source: RestoreSource, namespace: str) -> Verdict | None:
    """Why `source` may not fill a database of `namespace`, as a verdict (or a reason to
    wait); None when it may."""
    name, manifest, entry = source.name, source.manifest, source.entry
    if source.bucket_error is not None:
        return Verdict(
            State.WAITING,
            Reason.RESTORING,
            f"The bucket cannot be read ({source.bucket_error}); the restore of {name} waits.",
        )
    if manifest is None:
        unstarted = entry is None and source.claimed not in (SUCCEEDED, FAILED)
        if (entry is not None and entry.state == RUNNING) or unstarted:
            return Verdict(
                State.WAITING,
                Reason.RESTORING,
                f"ManagedBackup {name} has not completed; the restore waits for it.",
            )
        if entry is not None and entry.state == FAILED:
            # spec.restore is immutable, so this backup can never come to hold data.
            return Verdict(
                State.STALLED,
                Reason.RESTORE_SOURCE_FAILED,
                f"ManagedBackup {name} failed ({entry.message}): it holds nothing to restore. "
                "Delete this ManagedDatabase and create it again naming a successful backup "
                "(or restore.databaseRef, which takes the latest successful one).",
            )
        return Verdict(
            State.STALLED,
            Reason.RESTORE_REFUSED,
            f"ManagedBackup {name} has no complete backup on record (the operator's ledger and "
            "the bucket's authenticated manifests): nothing to restore. A ManagedBackup's status "
            "is not evidence of a backup.",
        )
    why = restore_refusal(
        location=source.location,
        manifest_location=manifest.location,
        complete=manifest.complete,
        manifest_namespace=manifest.namespace,
        manifest_database_uid=manifest.database_uid,
        manifest_data_key_id=manifest.data_key_id,
        namespace=namespace,
        database_uid=source.database_uid,
        data_key_id=source.data_key_id,
    )
    if source.namespace != namespace:
        why = why or f"the backup belongs to namespace {source.namespace}"
    if why is None:
        return None
    return Verdict(State.STALLED, Reason.RESTORE_REFUSED, f"Restore of {name} refused: {why}.")


class RestoreAction(StrEnum):
    WAIT = "Wait"
    """Not yet: a source to wait for, or the restore Job still running."""
    START_JOB = "StartJob"
    """Create the restore Job (and the agent Secret holding the source's data key)."""
    RECORD_OUTCOME = "RecordOutcome"
    """The Job ended: record its outcome in the ledger, remove the Job and its Secret."""
    DONE = "Done"
    """The ledger says the restore succeeded: the database may be reported Ready."""
    STALLED = "Stalled"
    """It cannot go on without a person: refused, or failed."""


@dataclass(frozen=True)
class RestoreStep:
    action: RestoreAction
    verdict: Verdict | None
    """What the database's status says meanwhile; None once the restore is done."""
    status: RestoreStatus | None
    """status.restore; None while no restore started."""
    record: Mapping[str, str] | None = None
    """For RECORD_OUTCOME: the ledger's restore record to write."""


def recorded_restore(recorded: Mapping[str, str] | None) -> RestoreStep | None:
    """What the ledger's restore record settles: a restore done (or failed) once is never
    run again. None when it settles nothing yet."""
    if recorded is None:
        return None
    source = recorded.get("source", "")
    if recorded.get("phase") == SUCCEEDED:
        done = RestoreStatus(
            source=source, phase=SUCCEEDED, completed_at=recorded.get("completedAt")
        )
        return RestoreStep(RestoreAction.DONE, None, done)
    if recorded.get("phase") == FAILED:
        return RestoreStep(
            RestoreAction.STALLED,
            Verdict(
                State.STALLED,
                Reason.RESTORE_FAILED,
                f"The restore of {source} failed ({recorded.get('message', '')}); "
                "delete and re-create this ManagedDatabase to try again.",
            ),
            RestoreStatus(source=source, phase=FAILED),
        )
    return None


def restore_step(source: str, refusal: Verdict | None, job: JobState, now: datetime) -> RestoreStep:
    """The next step of the restore of backup `source` (its refusal from `source_refusal`),
    given its Job (`job`; its termination message read once it ended)."""
    running = RestoreStatus(source=source, phase=RUNNING)
    if refusal is not None:
        # Nothing started: Pending while the source may still complete, Failed when it
        # never can; the conditions say why.
        if refusal.state is State.STALLED:
            failed = RestoreStatus(source=source, phase=FAILED)
            return RestoreStep(RestoreAction.STALLED, refusal, failed)
        pending = RestoreStatus(source=source, phase="Pending")
        return RestoreStep(RestoreAction.WAIT, refusal, pending)
    restoring = Verdict(State.PROGRESSING, Reason.RESTORING, f"Restoring {source}.")
    if not job.exists:
        return RestoreStep(RestoreAction.START_JOB, restoring, running)
    if not (job.succeeded or job.failed):
        return RestoreStep(RestoreAction.WAIT, restoring, running)
    if job.succeeded:
        done = RestoreStatus(source=source, phase=SUCCEEDED, completed_at=rfc3339(now))
        # The ledger's record has the status's shape, in the same words.
        return RestoreStep(RestoreAction.RECORD_OUTCOME, None, done, done.to_wire())
    result = agent_result(job.message) or {}
    detail = f"{result.get('reason', 'JobFailed')}: {str(result.get('message', ''))[:600]}"
    outcome = {"source": source, "phase": FAILED, "message": detail}
    return RestoreStep(
        RestoreAction.RECORD_OUTCOME,
        Verdict(
            State.STALLED,
            Reason.RESTORE_FAILED,
            f"The restore of {source} failed ({detail}). Nothing was applied if the backup "
            "failed its integrity checks; delete and re-create this ManagedDatabase to try "
            "again.",
        ),
        RestoreStatus(source=source, phase=FAILED),
        outcome,
    )
