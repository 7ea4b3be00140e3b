"""The pure decisions the backup handlers act on: a ManagedBackup's outcome from its Job, the
bucket and the ledger; a restore test's result; the restore's next step."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from vauban.api.database import RestoreStatus
from vauban.conditions import Reason, State
from vauban.reconcile.backup import (
    FAILED,
    RUNNING,
    SUCCEEDED,
    BackupAction,
    JobState,
    LedgerEntry,
    agent_result,
    backup_outcome,
    job_failure,
    verification,
)
from vauban.reconcile.restore import (
    ManifestFacts,
    RestoreAction,
    RestoreSource,
    recorded_restore,
    restore_step,
    source_refusal,
)

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
NO_JOB = JobState(exists=False)
RUNNING_JOB = JobState(exists=True, active=True, started="2026-11-29T11:59:00Z")
DONE_JOB = JobState(exists=True, succeeded=True)
FAILED_JOB = JobState(exists=True, failed=True, finished="2026-11-29T11:58:00Z")


def outcome(**overrides: Any) -> Any:
    values: dict[str, Any] = {
        "job": NO_JOB,
        "authentic_manifest": False,
        "bucket_error": None,
        "entry": None,
        "terminal": False,
        **overrides,
    }
    return backup_outcome(**values)


def test_a_running_job_wins_over_everything_else() -> None:
    assert outcome(job=RUNNING_JOB, authentic_manifest=True).action is BackupAction.RUNNING


def test_only_an_authentic_manifest_is_a_success() -> None:
    assert outcome(authentic_manifest=True).action is BackupAction.SUCCEEDED
    assert outcome(job=DONE_JOB, authentic_manifest=True).action is BackupAction.SUCCEEDED
    # The agent's word is not enough.
    assert outcome(job=DONE_JOB).action is BackupAction.JOB_FAILED


def test_an_unreadable_bucket_concludes_nothing() -> None:
    waiting = outcome(bucket_error="timeout")
    assert waiting.action is BackupAction.UNKNOWN
    assert waiting.verdict is not None and waiting.verdict.reason is Reason.BACKUP_NOT_CONFIGURED
    assert waiting.verdict.message == "The bucket cannot be read: timeout."
    # A status already terminal stays as shown.
    assert outcome(bucket_error="timeout", terminal=True).verdict is None
    # A Job that failed did fail, whatever the bucket says.
    assert outcome(job=FAILED_JOB, bucket_error="x").action is BackupAction.JOB_FAILED


def test_the_ledger_explains_a_backup_without_job_or_manifest() -> None:
    at = datetime(2026, 11, 28, tzinfo=UTC)
    failed = outcome(entry=LedgerEntry("b", "job-1", FAILED, at, "Backup failed: disk full"))
    assert failed.action is BackupAction.FAILED and failed.finished == at
    assert failed.verdict is not None and failed.verdict.message == "Backup failed: disk full"
    gone = outcome(entry=LedgerEntry("b", "job-1", SUCCEEDED, at))
    assert gone.verdict is not None and "gone from the bucket" in gone.verdict.message


def test_a_terminal_status_without_records_is_not_evidence() -> None:
    unrecorded = outcome(terminal=True)
    assert unrecorded.action is BackupAction.UNRECORDED
    assert unrecorded.verdict is not None and unrecorded.verdict.state is State.STALLED
    assert outcome().action is BackupAction.START


def test_a_failed_job_says_the_agents_reason_and_a_false_success_is_called_out() -> None:
    message = 'log line\n{"reason": "AccessDenied", "message": "bad key id"}'
    assert agent_result(message) == {"reason": "AccessDenied", "message": "bad key id"}
    assert agent_result("not json") is None and agent_result(None) is None
    verdict = job_failure(replace(FAILED_JOB, message=message))
    assert "AccessDenied: bad key id" in verdict.message
    lied = job_failure(replace(DONE_JOB, message=json.dumps({"result": "Succeeded"})))
    assert lied.reason is Reason.BACKUP_FAILED
    assert "reported success but no authentic manifest" in lied.message


def test_a_restore_test_passes_only_on_the_agents_word_and_a_complete_job() -> None:
    said = json.dumps({"result": "Succeeded", "message": "42 rows"})
    passed = verification(replace(DONE_JOB, message=said), NOW)
    assert (passed.result, passed.message, passed.time) == (
        "Passed",
        "42 rows",
        "2026-11-29T12:00:00Z",
    )
    assert verification(replace(FAILED_JOB, message=said), NOW).result == "Failed"
    killed = verification(FAILED_JOB, NOW)
    assert killed.message == "The restore test failed without a result (killed or deadline)."


def test_the_ledger_settles_a_restore_once() -> None:
    assert recorded_restore(None) is None
    assert recorded_restore({"source": "b", "phase": RUNNING}) is None
    done = recorded_restore({"source": "b", "phase": SUCCEEDED})
    assert done is not None and done.action is RestoreAction.DONE and done.verdict is None
    failed = recorded_restore({"source": "b", "phase": FAILED, "message": "x"})
    assert failed is not None and failed.verdict is not None
    assert failed.verdict.reason is Reason.RESTORE_FAILED
    assert failed.status == RestoreStatus(source="b", phase=FAILED)


def test_restore_steps_follow_the_job() -> None:
    start = restore_step("b", None, NO_JOB, NOW)
    assert start.action is RestoreAction.START_JOB
    assert start.status == RestoreStatus(source="b", phase=RUNNING)
    assert restore_step("b", None, RUNNING_JOB, NOW).action is RestoreAction.WAIT
    done = restore_step("b", None, DONE_JOB, NOW)
    assert done.action is RestoreAction.RECORD_OUTCOME and done.verdict is None
    assert done.record == {"source": "b", "phase": SUCCEEDED, "completedAt": "2026-11-29T12:00:00Z"}
    result = json.dumps({"reason": "IntegrityError", "message": "chunk 3"})
    failed = restore_step("b", None, replace(FAILED_JOB, message=result), NOW)
    assert failed.record == {"source": "b", "phase": FAILED, "message": "IntegrityError: chunk 3"}
    assert failed.status == RestoreStatus(source="b", phase=FAILED)
    assert failed.verdict is not None and failed.verdict.reason is Reason.RESTORE_FAILED
    unexplained = restore_step("b", None, FAILED_JOB, NOW)
    assert unexplained.record is not None and unexplained.record["message"] == "JobFailed: "


SOURCE = RestoreSource(
    name="b",
    namespace="shop",
    database_uid="u1",
    data_key_id="dek-u1",
    location="vauban/shop/orders/u1/job-1",
    entry=LedgerEntry("b", "job-1", SUCCEEDED),
    manifest=ManifestFacts("vauban/shop/orders/u1/job-1", True, "shop", "u1", "dek-u1"),
)


@pytest.mark.parametrize(
    ("source", "state", "reason"),
    [
        (replace(SOURCE, bucket_error="timeout"), State.WAITING, Reason.RESTORING),
        (
            replace(SOURCE, manifest=None, entry=LedgerEntry("b", "job-1", RUNNING)),
            State.WAITING,
            Reason.RESTORING,
        ),
        (replace(SOURCE, manifest=None, entry=None), State.WAITING, Reason.RESTORING),
        # A status claiming success is a reason to refuse, never to restore.
        (
            replace(SOURCE, manifest=None, entry=None, claimed=SUCCEEDED),
            State.STALLED,
            Reason.RESTORE_REFUSED,
        ),
        (
            replace(SOURCE, manifest=None, entry=LedgerEntry("b", "job-1", FAILED, None, "x")),
            State.STALLED,
            Reason.RESTORE_SOURCE_FAILED,
        ),
        (replace(SOURCE, namespace="bank"), State.STALLED, Reason.RESTORE_REFUSED),
    ],
)
def test_a_source_is_refused_or_waited_for(
    source: RestoreSource, state: State, reason: Reason
) -> None:
    refusal = source_refusal(source, "shop")
    assert refusal is not None and (refusal.state, refusal.reason) == (state, reason)
    step = restore_step("b", refusal, NO_JOB, NOW)
    # Pending while the source may still complete; Failed when it never can.
    phase = FAILED if state is State.STALLED else "Pending"
    assert step.verdict == refusal and step.status == RestoreStatus.model_validate(
        {"source": "b", "phase": phase}
    )
    wanted = RestoreAction.STALLED if state is State.STALLED else RestoreAction.WAIT
    assert step.action is wanted


def test_a_matching_source_may_fill_the_database() -> None:
    assert source_refusal(SOURCE, "shop") is None
    refused = source_refusal(SOURCE, "bank")
    assert refused is not None and "namespace shop, not bank" in refused.message
