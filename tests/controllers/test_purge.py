"""A deleted database's backups: a final backup first if asked, its schedules stopped, and
its data key destroyed at once (crypto-shredding) or kept for retainAfterDeletionDays,
after which its backups, their ManagedBackups and the key are purged."""

from __future__ import annotations

from datetime import timedelta

import kopf
import pytest

from controllers.world import NAMESPACE, World
from vauban import timefmt
from vauban.api.backup import MANAGED_BACKUP


def _with_a_backup(world: World, **backup: object) -> str:
    world.external_cluster(backup=True)
    uid = str(
        world.database(deletionPolicy="Delete", backup={"schedule": "0 2 * * *", **backup})[
            "metadata"
        ]["uid"]
    )
    world.reconcile_database()
    world.backup("nightly")
    world.reconcile_backup("nightly")
    [job] = world.agent_jobs("backup")
    world.finish_job(job)
    world.job_event(job)
    return uid


def test_no_retention_days_destroys_the_data_key_at_once(world: World) -> None:
    uid = _with_a_backup(world, retainAfterDeletionDays=0)

    world.delete_database()

    namespace = world.settings.namespace
    assert (namespace, f"vauban-dek-{uid}") not in world.kube.secrets
    assert (namespace, f"backup-{uid}") not in world.kube.cronjobs
    assert (namespace, f"vauban-backup-{uid}") not in world.kube.secrets
    assert world.kube.events_of("inventory")[-1] == "DataKeyDestroyed"


def test_backups_are_kept_for_their_retention_then_purged(world: World) -> None:
    uid = _with_a_backup(world, retainAfterDeletionDays=7)
    [bucket] = world.buckets.buckets.values()
    dek = (world.settings.namespace, f"vauban-dek-{uid}")

    world.delete_database()
    world.purge_expired(timefmt.now() + timedelta(days=6))

    assert dek in world.kube.secrets and bucket.manifests
    assert (MANAGED_BACKUP.plural, NAMESPACE, "nightly") in world.kube.objects

    world.purge_expired(timefmt.now() + timedelta(days=8))

    assert dek not in world.kube.secrets
    assert bucket.manifests == {}
    assert (MANAGED_BACKUP.plural, NAMESPACE, "nightly") not in world.kube.objects


def test_a_final_backup_is_taken_before_the_database_goes(world: World) -> None:
    _with_a_backup(world, finalBackup=True)

    with pytest.raises(kopf.TemporaryError):
        world.delete_database()

    final = world.status(MANAGED_BACKUP, "inventory-final")
    assert final["phase"] == "Running"
    assert "inventory" in world.server.databases  # nothing dropped before it is done
    [job] = [j for j in world.agent_jobs("backup") if j == final["job"]]
    world.finish_job(job)
    world.job_event(job)
    world.delete_database()
    assert world.status(MANAGED_BACKUP, "inventory-final")["phase"] == "Succeeded"
    assert "inventory" not in world.server.databases
