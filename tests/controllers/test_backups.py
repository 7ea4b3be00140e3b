"""Backups as whole reconciles: a ManagedBackup's Job started and its outcome read from
what the operator alone controls (the Job, the bucket's authenticated manifest, the
ledger); scheduled runs recorded; retention; BackupHealthy."""

from __future__ import annotations

import json

from controllers.world import BUCKET, NAMESPACE, World
from vauban.api.backup import MANAGED_BACKUP
from vauban.api.database import MANAGED_DATABASE
from vauban.builders import backup as build


def _ready_database(world: World) -> str:
    world.external_cluster(backup=True)
    uid = str(world.database(backup={"schedule": "0 2 * * *"})["metadata"]["uid"])
    world.reconcile_database()
    return uid


def test_a_ready_database_gets_its_data_key_agent_secret_and_schedule(world: World) -> None:
    uid = _ready_database(world)

    namespace = world.settings.namespace
    assert (namespace, f"vauban-dek-{uid}") in world.kube.secrets
    assert (namespace, f"vauban-backup-{uid}") in world.kube.secrets
    assert world.kube.cronjobs[(namespace, f"backup-{uid}")]["spec"]["schedule"] == "0 2 * * *"
    healthy = world.status(MANAGED_DATABASE, "inventory")["conditions"][-1]
    assert (healthy["type"], healthy["reason"]) == ("BackupHealthy", "NoBackupYet")


def test_an_on_demand_backup_runs_its_job_then_succeeds_from_its_manifest(world: World) -> None:
    uid = _ready_database(world)
    world.backup("now")

    running = world.reconcile_backup("now")

    assert running["phase"] == "Running"
    [job] = world.agent_jobs("backup")
    assert running["location"] == {
        "bucket": BUCKET,
        "key": f"{NAMESPACE}/inventory/{uid}/{job}",
    }
    world.finish_job(job)
    world.job_event(job)
    done = world.status(MANAGED_BACKUP, "now")
    assert done["phase"] == "Succeeded"
    assert done["dataKeyId"] == f"dek-{uid}" and done["tables"] == 1
    assert world.agent_jobs("backup") == []  # recorded, so deleted
    status = world.reconcile_database()
    healthy = status["conditions"][-1]
    assert (healthy["type"], healthy["status"]) == ("BackupHealthy", "True")
    assert status["backup"]["lastBackup"] == "now"


def test_a_failed_job_is_explained_with_the_agents_reason(world: World) -> None:
    _ready_database(world)
    world.backup("now")
    world.reconcile_backup("now")
    [job] = world.agent_jobs("backup")
    result = {"reason": "DumpFailed", "message": "pg_dump: permission denied"}

    world.finish_job(job, succeed=False, message=json.dumps(result))
    world.job_event(job)

    status = world.status(MANAGED_BACKUP, "now")
    ready = status["conditions"][0]
    assert status["phase"] == "Failed"
    assert ready["reason"] == "BackupFailed"
    assert "DumpFailed: pg_dump: permission denied" in ready["message"]


def test_a_success_without_an_authentic_manifest_is_a_failure(world: World) -> None:
    _ready_database(world)
    world.backup("now")
    world.reconcile_backup("now")
    [job] = world.agent_jobs("backup")

    world.finish_job(job, manifest=False)
    world.job_event(job)

    status = world.status(MANAGED_BACKUP, "now")
    assert status["phase"] == "Failed"
    assert "no authentic manifest" in status["conditions"][0]["message"]


def test_a_manifest_not_sealed_with_the_data_key_is_not_a_backup(world: World) -> None:
    _ready_database(world)
    world.backup("now")
    world.reconcile_backup("now")
    [job] = world.agent_jobs("backup")
    world.finish_job(job)
    [bucket] = world.buckets.buckets.values()
    [(location, manifest)] = bucket.manifests.items()
    bucket.manifests[location] = manifest.sealed(b"\1" * 32)

    world.job_event(job)

    assert world.status(MANAGED_BACKUP, "now")["phase"] == "Failed"


def test_a_scheduled_run_is_recorded_as_a_managed_backup_once(world: World) -> None:
    uid = _ready_database(world)
    world.cron_run(f"backup-{uid}", f"backup-{uid[:8]}-29000000")
    job = f"backup-{uid[:8]}-29000000"

    world.job_event(job)
    world.job_event(job)

    name = build.scheduled_backup_name("inventory", job)
    backups = [k for k in world.kube.objects if k[0] == MANAGED_BACKUP.plural]
    assert backups == [(MANAGED_BACKUP.plural, NAMESPACE, name)]
    assert world.status(MANAGED_BACKUP, name)["trigger"] == "Scheduled"
    world.finish_job(job)
    world.job_event(job)
    assert world.status(MANAGED_BACKUP, name)["phase"] == "Succeeded"


def test_retention_deletes_the_oldest_backups_beyond_keep_last(world: World) -> None:
    _ready_database(world)  # the cluster keeps the last 2
    for name in ("b1", "b2", "b3"):
        world.backup(name)
        world.reconcile_backup(name)
        [job] = world.agent_jobs("backup")
        world.finish_job(job)
        world.job_event(job)

    world.reconcile_database()

    kept = sorted(k[2] for k in world.kube.objects if k[0] == MANAGED_BACKUP.plural)
    assert kept == ["b2", "b3"]


def test_a_restore_test_of_the_latest_backup_is_recorded_on_it(world: World) -> None:
    world.external_cluster(backup=True)
    uid = world.database(backup={"schedule": "0 2 * * *", "verify": {"schedule": "0 4 * * 0"}})[
        "metadata"
    ]["uid"]
    world.reconcile_database()
    world.backup("nightly")
    world.reconcile_backup("nightly")
    [job] = world.agent_jobs("backup")
    world.finish_job(job)
    world.job_event(job)
    world.reconcile_database()  # points the restore test at the latest backup
    verify = f"verify-{uid[:8]}-29000000"
    world.cron_run(f"verify-{uid}", verify)
    result = {"result": "Succeeded", "message": "3 tables, row counts match"}

    world.finish_job(verify, message=json.dumps(result))
    owner = world.job_event(verify)

    assert owner == (NAMESPACE, "inventory")
    verification = world.status(MANAGED_BACKUP, "nightly")["verification"]
    assert (verification["result"], verification["message"]) == (
        "Passed",
        "3 tables, row counts match",
    )
    assert world.agent_jobs("verify") == []
    status = world.reconcile_database()
    assert status["backup"]["lastVerifiedBackup"] == "nightly"
