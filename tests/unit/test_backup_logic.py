"""Pure backup decisions: retention, BackupHealthy, schedules, a Job's outcome, and the
manifests of the agent's Jobs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from vauban.builders import backup as build
from vauban.reconcile import backup as logic
from vauban.reconcile.backup import BackupRecord

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def record(name: str, phase: str, hours_ago: float) -> BackupRecord:
    finished = NOW - timedelta(hours=hours_ago)
    return BackupRecord(name, phase, finished, finished)


def test_keep_last_removes_the_oldest_successes() -> None:
    backups = [record(f"b{i}", "Succeeded", i) for i in range(5)]
    assert logic.expired(backups, keep_last=2, max_age=None, now=NOW) == ["b2", "b3", "b4"]


def test_max_age_never_removes_the_newest_success() -> None:
    backups = [record("old", "Succeeded", 100), record("older", "Succeeded", 200)]
    assert logic.expired(backups, keep_last=None, max_age="1d", now=NOW) == ["older"]


def test_failed_and_running_backups() -> None:
    backups = [
        record("ok", "Succeeded", 1),
        record("f1", "Failed", 2),
        record("f2", "Failed", 3),
        BackupRecord("running", "Running", None, NOW),
    ]
    assert logic.expired(backups, keep_last=1, max_age=None, now=NOW) == ["f2"]


def test_no_rules_remove_nothing() -> None:
    backups = [record(f"b{i}", "Succeeded", i) for i in range(3)]
    assert logic.expired(backups, keep_last=None, max_age=None, now=NOW) == []


def test_health_after_a_failure() -> None:
    condition = logic.health(
        [record("ok", "Succeeded", 5), record("bad", "Failed", 1)],
        schedule="0 * * * *",
        database_created=NOW - timedelta(days=1),
        now=NOW,
    )
    assert (condition.status, condition.reason) == ("False", "BackupFailed")
    assert "bad" in condition.message


@pytest.mark.parametrize(
    ("hours_ago", "status", "reason"),
    [
        (0.5, "True", "BackupsCurrent"),
        (1.5, "True", "BackupsCurrent"),
        (3, "False", "BackupTooOld"),
    ],
)
def test_health_against_an_hourly_schedule(hours_ago: float, status: str, reason: str) -> None:
    condition = logic.health(
        [record("ok", "Succeeded", hours_ago)],
        schedule="0 * * * *",
        database_created=NOW - timedelta(days=1),
        now=NOW,
    )
    assert (condition.status, condition.reason) == (status, reason)


def test_a_young_database_has_no_backup_yet() -> None:
    condition = logic.health(
        [], schedule="0 2 * * *", database_created=NOW - timedelta(hours=1), now=NOW
    )
    assert (condition.status, condition.reason) == ("Unknown", "NoBackupYet")
    old = logic.health([], schedule="0 2 * * *", database_created=NOW - timedelta(days=3), now=NOW)
    assert (old.status, old.reason) == ("False", "BackupTooOld")


def test_schedules() -> None:
    assert logic.interval("@daily", NOW) == timedelta(days=1)
    assert logic.interval("*/15 * * * *", NOW) == timedelta(minutes=15)
    # At 12:00 the 12:00 run has only just started: the two runs before it are 11:00, 10:00.
    assert logic.overdue_since("0 * * * *", NOW) == NOW - timedelta(hours=2)
    assert logic.schedule_error("0 2 * * *") is None
    assert logic.schedule_error("99 * * * *") is not None


def test_job_state_and_failure_message() -> None:
    assert not logic.job_state(None, None).exists
    failed = logic.job_state(
        {"status": {"conditions": [{"type": "Failed", "status": "True"}]}}, None
    )
    assert failed.failed and not failed.succeeded
    verdict = logic.failure_verdict(failed, {"reason": "AccessDenied", "message": "bad key id"})
    assert verdict.reason == "BackupFailed" and "AccessDenied: bad key id" in verdict.message


DATABASE = build.Database("team-a", "orders", "0b5a7f4e-1111-2222-3333-444455556666")
STORE = build.Store("backups", "eu-west-3", "http://127.0.0.1:7070", "vauban/", "AK", "SK")


def test_the_store_prefix_is_per_database_uid() -> None:
    assert STORE.database_prefix(DATABASE) == f"vauban/team-a/orders/{DATABASE.uid}"


def test_agent_secret_carries_libpq_and_store_environment() -> None:
    secret = build.agent_secret(
        name="s",
        namespace="vauban-system",
        database=DATABASE,
        operation="backup",
        login=build.AgentLogin("127.0.0.1", 5432, "u", "p", "orders", "require", "PEM"),
        store=STORE,
        key=build.DataKey("dek-x", b"k" * 32),
    )
    values = build.secret_values(secret)
    assert values["PGHOST"] == "127.0.0.1" and values["PGPASSWORD"] == "p"
    assert values["VAUBAN_S3_ENDPOINT"] == "http://127.0.0.1:7070"
    assert values["PGSSLROOTCERT"] == build.CA_PATH and values[build.CA_KEY] == "PEM"
    assert values["VAUBAN_DATA_KEY_ID"] == "dek-x"


def test_backup_job_takes_its_location_from_its_name() -> None:
    run = build.AgentRun("backup", DATABASE, "s", "img", location_prefix="p/x")
    job = build.job(run, name="backup-abc", namespace="vauban-system", backup="nightly")
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert job["spec"]["backoffLimit"] == 0
    assert container["args"] == ["agent", "backup", "--location", "$(VAUBAN_LOCATION)"]
    env = {e["name"]: e for e in container["env"]}
    assert env["VAUBAN_LOCATION"]["value"] == "p/x/$(VAUBAN_JOB_NAME)"
    assert "fieldRef" in env["VAUBAN_JOB_NAME"]["valueFrom"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert job["metadata"]["annotations"][build.BACKUP_ANNOTATION] == "nightly"
    # OpenShift's restricted-v2 SCC assigns the ids, and refuses a pod that names others.
    assigned = build.AgentRun(
        "backup", DATABASE, "s", "img", location_prefix="p", platform_ids=True
    )
    context = build.job(assigned, name="backup-abc", namespace="vauban-system")["spec"]["template"][
        "spec"
    ]["securityContext"]
    assert context == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert job["spec"]["template"]["metadata"]["labels"][build.AGENT_POD_LABEL] == "true"


def test_cronjob_forbids_overlapping_runs() -> None:
    run = build.AgentRun("backup", DATABASE, "s", "img", location_prefix="p")
    cronjob = build.cronjob(run, name="backup-x", namespace="ns", schedule="0 2 * * *")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert cronjob["spec"]["timeZone"] == "Etc/UTC"
    assert len(build.cronjob_name(DATABASE, "backup")) <= 52


def test_scheduled_backup_names_fit_in_63_characters() -> None:
    name = build.scheduled_backup_name("d" * 80, "backup-uid-29876543")
    assert len(name) <= 63 and name.endswith("-29876543")


# -- the ledger: what decides, instead of a ManagedBackup's status --------------------------


def _ledger(**entries: logic.LedgerEntry) -> logic.Ledger:
    return logic.ledger_of(dict(e.annotation(uid) for uid, e in entries.items()))


def test_the_ledger_round_trips_through_annotations() -> None:
    entry = logic.LedgerEntry("nightly-1", "backup-u-1", logic.FAILED, NOW, "AccessDenied: no")
    verification = logic.VerificationEntry("Passed", "2026-11-29T12:00:00Z", "counts match")
    annotations = dict(
        [entry.annotation("uid-1"), verification.annotation("uid-1"), logic.expiry("uid-1", NOW)]
    )
    annotations["vauban.dev/database"] = "shop/orders"
    annotations[logic.EXPIRED_PREFIX + "uid-4"] = "{not json"
    annotations[logic.LEDGER_PREFIX + "uid-2"] = "{not json"
    annotations[logic.LEDGER_PREFIX + "uid-3"] = '{"name": "x", "job": "j", "state": "Owned"}'
    ledger = logic.ledger_of(annotations)
    assert ledger.entries == {"uid-1": entry}
    assert ledger.verifications == {"uid-1": verification}
    assert ledger.restore is None
    # Retention's mark: the stored backup goes with the object whatever its deletionPolicy.
    assert ledger.expired == {"uid-1"}


def test_records_come_from_the_ledger_and_the_bucket_only() -> None:
    ledger = _ledger(
        u1=logic.LedgerEntry("ok", "job-1", logic.RUNNING),
        u2=logic.LedgerEntry("failed", "job-2", logic.FAILED, NOW - timedelta(hours=1)),
        u3=logic.LedgerEntry("gone", "job-3", logic.SUCCEEDED, NOW - timedelta(hours=2)),
        u4=logic.LedgerEntry("running", "job-4", logic.RUNNING),
    )
    backups = [(f"u{i}", name, NOW) for i, name in enumerate(("ok", "failed", "gone"), 1)]
    backups += [("u4", "running", NOW), ("u5", "unknown", NOW)]
    found = logic.records(backups, ledger, {"job-1": NOW})
    assert [(r.name, r.phase) for r in found] == [
        ("ok", "Succeeded"),
        ("failed", "Failed"),
        # Recorded as succeeded, but no longer in the bucket: not a success any more.
        ("gone", "Failed"),
        ("running", "Running"),
        # "unknown" is not in this incarnation's ledger: it counts for nothing here.
    ]


def test_purge_due_reads_dates_it_can_and_never_guesses() -> None:
    secrets = {
        "vauban-dek-live": {"vauban.dev/database": "shop/orders"},
        "vauban-dek-empty": {"vauban.dev/database": "shop/a", "vauban.dev/purge-after": ""},
        "vauban-dek-bad": {"vauban.dev/database": "shop/b", "vauban.dev/purge-after": "soon"},
        "vauban-dek-later": {
            "vauban.dev/database": "shop/c",
            "vauban.dev/purge-after": "2026-12-01T00:00:00Z",
        },
        "vauban-dek-due": {
            "vauban.dev/database": "shop/d",
            "vauban.dev/purge-after": "2026-11-01T00:00:00Z",
            "vauban.dev/store-cluster": "platform/pg",
        },
        "vauban-dek-ownerless": {"vauban.dev/purge-after": "2026-11-01T00:00:00Z"},
        "other-due": {
            "vauban.dev/database": "shop/e",
            "vauban.dev/purge-after": "2026-11-01T00:00:00Z",
        },
    }
    assert logic.purge_due(secrets, prefix="vauban-dek-", now=NOW) == [
        logic.Purge("vauban-dek-due", "due", "shop", "d", "platform/pg")
    ]
    # The clock is the caller's: the same records, later, make another one due.
    later = logic.purge_due(secrets, prefix="vauban-dek-", now=NOW + timedelta(days=3))
    assert sorted(p.database for p in later) == ["c", "d"]


def _refusal(**overrides: object) -> str | None:
    values: dict[str, object] = {
        "location": "vauban/shop/orders/u1/backup-1",
        "manifest_location": "vauban/shop/orders/u1/backup-1",
        "complete": True,
        "manifest_namespace": "shop",
        "manifest_database_uid": "u1",
        "manifest_data_key_id": "dek-u1",
        "namespace": "shop",
        "database_uid": "u1",
        "data_key_id": "dek-u1",
        **overrides,
    }
    return logic.restore_refusal(**values)  # type: ignore[arg-type]


def test_a_restore_is_authorized_only_within_the_namespace_and_for_the_key() -> None:
    assert _refusal() is None
    assert "namespace bank" in str(_refusal(manifest_namespace="bank"))
    assert "another database" in str(_refusal(manifest_database_uid="u2"))
    assert "data key dek-u2" in str(_refusal(manifest_data_key_id="dek-u2"))
    assert "another location" in str(_refusal(manifest_location="vauban/bank/x/u9/backup-1"))
    # Format 1 carries no namespace: its authenticated location and key decide.
    assert _refusal(complete=False, manifest_namespace=None, manifest_database_uid=None) is None
