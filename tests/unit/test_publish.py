from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from vauban import timefmt
from vauban.api.database import ManagedDatabaseSpec
from vauban.conditions import Reason, State
from vauban.handlers.databases import lifecycle, stored
from vauban.handlers.publish import invalid_spec, snapshot
from vauban.reconcile import compliance
from vauban.reconcile.database import ROTATE_ANNOTATION, cluster_key_of
from vauban.reconcile.status import ready_for_generation


def test_invalid_spec_names_fields_but_never_values() -> None:
    secret_looking = "hunter2-do-not-print"
    try:
        ManagedDatabaseSpec.model_validate(
            {"clusterRef": {"name": "main"}, "databaseName": secret_looking, "owner": "o"}
        )
    except ValidationError as e:
        verdict = invalid_spec(e)
    else:  # pragma: no cover
        raise AssertionError("the spec should not validate")
    assert (verdict.state, verdict.reason) == (State.STALLED, Reason.INVALID_SPEC)
    assert "databaseName" in verdict.message
    assert secret_looking not in verdict.message


def test_snapshot_keeps_what_a_reconcile_reads() -> None:
    body = {
        "metadata": {
            "name": "a",
            "namespace": "n",
            "uid": "u",
            "generation": 2,
            "managedFields": [{"manager": "x"}],
            "annotations": {"k": "v"},
        },
        "spec": {"x": 1},
        "status": {"phase": "Ready"},
    }
    assert snapshot(body) == {
        "metadata": {
            "name": "a",
            "namespace": "n",
            "uid": "u",
            "generation": 2,
            "annotations": {"k": "v"},
        },
        "spec": {"x": 1},
        "status": {"phase": "Ready"},
    }


def test_unexpected_errors_become_a_condition_without_their_body() -> None:
    from vauban.handlers.publish import unexpected

    class ApiLikeError(Exception):
        status = 422
        reason = "Unprocessable Entity"

    verdict = unexpected(ApiLikeError('{"data": {"password": "cGFzcw=="}}'))
    assert (verdict.state, verdict.reason) == (State.WAITING, Reason.RECONCILE_FAILED)
    assert "ApiLikeError (HTTP 422 Unprocessable Entity)" in verdict.message
    assert "password" not in verdict.message
    assert "(HTTP" not in unexpected(ValueError("x")).message


def test_nothing_is_created_before_the_finalizer() -> None:
    from vauban.handlers.publish import awaiting_finalizer

    fresh = {"metadata": {"name": "a", "namespace": "n"}}
    waiting = awaiting_finalizer(fresh)
    assert waiting is not None and waiting.state is State.PROGRESSING
    guarded = {"metadata": {"name": "a", "namespace": "n", "finalizers": ["vauban.dev/finalizer"]}}
    assert awaiting_finalizer(guarded) is None


def _database_body(*, ready: bool, generation: int = 3) -> dict[str, Any]:
    message = "A long human message about what happened and what to do next. " * 4
    return {
        "metadata": {
            "name": "inventory",
            "namespace": "shop",
            "uid": "u-1",
            "generation": generation,
            "creationTimestamp": "2026-12-01T10:00:00Z",
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": '{"spec": {}}' * 50,
                ROTATE_ANNOTATION: "token-2",
            },
        },
        "spec": {
            "clusterRef": {"name": "shared"},
            "databaseName": "inventory",
            "owner": "inventory_owner",
            "backup": {"schedule": "0 3 * * *"},
        },
        "status": {
            "observedGeneration": 3,
            "phase": "Ready" if ready else "Provisioning",
            "conditions": [
                {
                    "type": kind,
                    "status": status,
                    "reason": "Because",
                    "message": message,
                    "lastTransitionTime": "2026-12-01T10:00:05Z",
                    "observedGeneration": 3,
                }
                for kind, status in (
                    ("Ready", "True" if ready else "False"),
                    ("Reconciling", "False" if ready else "True"),
                    ("Stalled", "False"),
                    ("BackupHealthy", "True"),
                )
            ],
            "credentials": {"secretName": "inventory-app", "username": "inventory_owner"},
            "binding": {"name": "inventory-app"},
            "sizeBytes": 7_600_000,
            "size": "7.2Mi",
            "connections": 2,
            "cluster": "shop/shared",
        },
    }


@pytest.mark.parametrize(
    ("ready", "generation"), [(True, 3), (False, 3), (True, 4)], ids=["ready", "not", "stale"]
)
def test_a_database_index_entry_answers_as_its_body_does(ready: bool, generation: int) -> None:
    """The index keeps a few fields per database; every decision taken from the index
    (readiness for the current spec, credentials' timers, the usage read, the compliance
    report, the cluster's turn) must read the same from them as from the whole body."""
    body = _database_body(ready=ready, generation=generation)
    assert stored.status(body).binding is not None  # the whole status parses
    ManagedDatabaseSpec.model_validate(body["spec"])  # and the spec
    entry = stored.index_entry(body)
    assert ready_for_generation(entry) == ready_for_generation(body)
    assert stored.status(entry).credentials == stored.status(body).credentials
    assert stored.provisioned(entry) and stored.key(entry) == stored.key(body)
    for field in ("sizeBytes", "size", "connections", "phase", "observedGeneration"):
        assert stored.status(entry).to_wire()[field] == body["status"][field]
    assert cluster_key_of(entry) == cluster_key_of(body)
    assert compliance.database_backups(entry, [], None) == compliance.database_backups(
        body, [], None
    )
    ctx = _due_context(stored.key(body))
    recent = timefmt.rfc3339(timefmt.now() - timedelta(days=1))
    for rotation, rotation_due in ((None, False), ("2026-01-01T00:00:00Z", True), (recent, False)):
        body["spec"]["credentials"] = {"rotationPeriod": "30d"}
        body["status"]["credentials"]["lastRotation"] = rotation
        entry = stored.index_entry(body)
        for _ in range(2):  # the second answer is the entry's derived one
            assert lifecycle.due(ctx, entry) == lifecycle.due(ctx, body)
        # Not ready: due when its backoff allows (here, always); ready: when its timer is.
        assert lifecycle.due(ctx, entry) == (rotation_due or not ready)


def _due_context(key: tuple[str, str, str]) -> Any:
    """What `due` reads of the context: reconciled just now (no resync due), backoff over."""
    return SimpleNamespace(
        reconciled={key: time.monotonic()},
        backoff=SimpleNamespace(due=lambda key: True),
        settings=SimpleNamespace(resync_interval_seconds=3600.0),
    )


def test_a_database_index_entry_leaves_out_what_no_decision_reads() -> None:
    entry = stored.index_entry(_database_body(ready=True))
    assert "managedFields" not in entry["metadata"]
    assert entry["metadata"]["annotations"] == {ROTATE_ANNOTATION: "token-2"}
    assert [c["type"] for c in entry["status"]["conditions"]] == ["Ready"]
    assert "binding" not in entry["status"]
    assert "message" not in entry["status"]["conditions"][0]


def test_a_database_index_entry_holds_none_of_its_events_own_keys() -> None:
    """Each watch event is parsed with its own copy of every key: an entry holding the
    event's dicts kept them alive, a kibibyte per database. Its keys are the interned ones."""
    event = json.loads(json.dumps(_database_body(ready=True)))
    entry = stored.index_entry(event)

    def keys(value: Any) -> Iterator[str]:
        if isinstance(value, dict):
            for k, v in value.items():
                yield k
                yield from keys(v)
        elif isinstance(value, list):
            for v in value:
                yield from keys(v)

    assert all(k is sys.intern(k) for k in keys(entry))
