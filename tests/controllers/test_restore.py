"""A new database filled from a backup before it is Ready: the restore state machine,
one step per reconcile (start the Job, wait, record its outcome, done), decided by
reconcile/restore.py and recorded in the operator's ledger, never in status."""

from __future__ import annotations

import json

from controllers.world import World
from vauban.api.database import MANAGED_DATABASE


def _backed_up(world: World) -> None:
    world.external_cluster(backup=True)
    world.database(backup={})
    world.reconcile_database()
    world.backup("nightly")
    world.reconcile_backup("nightly")
    [job] = world.agent_jobs("backup")
    world.finish_job(job)
    world.job_event(job)


def _restoring(world: World) -> str:
    world.database("copy", restore={"backupRef": {"name": "nightly"}})
    world.reconcile_database("copy")
    [job] = world.agent_jobs("restore")
    return job


def test_a_restore_runs_once_before_the_database_is_ready(world: World) -> None:
    _backed_up(world)

    job = _restoring(world)

    ready = world.ready(MANAGED_DATABASE, "copy")
    assert (ready["status"], ready["reason"]) == ("False", "Restoring")
    assert "RestoreStarted" in world.kube.events_of("copy")
    world.reconcile_database("copy")  # the Job still runs: nothing new
    assert world.agent_jobs("restore") == [job]

    world.finish_job(job)
    world.job_event(job)
    status = world.reconcile_database("copy")

    assert world.ready(MANAGED_DATABASE, "copy")["status"] == "True"
    assert (status["restore"]["source"], status["restore"]["phase"]) == ("nightly", "Succeeded")
    assert "Restored" in world.kube.events_of("copy")
    # The restore's Secret (it holds the source's data key) and Job are gone, and a later
    # reconcile does not restore again.
    uid = world.kube.get(MANAGED_DATABASE, "shop", "copy")["metadata"]["uid"]
    assert (world.settings.namespace, f"vauban-restore-{uid}") not in world.kube.secrets
    world.reconcile_database("copy")
    assert world.agent_jobs("restore") == []


def test_a_failed_restore_stalls_the_database_with_the_agents_reason(world: World) -> None:
    _backed_up(world)
    job = _restoring(world)
    result = {"reason": "RestoreFailed", "message": "pg_restore: out of disk"}

    world.finish_job(job, succeed=False, message=json.dumps(result))
    world.job_event(job)
    world.reconcile_database("copy")
    world.reconcile_database("copy")

    ready = world.ready(MANAGED_DATABASE, "copy")
    assert (ready["status"], ready["reason"]) == ("False", "RestoreFailed")
    assert world.status(MANAGED_DATABASE, "copy")["conditions"][2]["status"] == "True"
    assert world.agent_jobs("restore") == []


def test_a_source_that_is_not_a_backup_of_this_namespace_is_waited_for(world: World) -> None:
    world.external_cluster(backup=True)

    world.database("copy", restore={"backupRef": {"name": "missing"}})
    world.reconcile_database("copy")

    assert world.ready(MANAGED_DATABASE, "copy")["status"] == "False"
    assert world.agent_jobs("restore") == []
