from __future__ import annotations

from pydantic import ValidationError

from vauban.api.database import ManagedDatabaseSpec
from vauban.conditions import Reason, State
from vauban.handlers.publish import invalid_spec, snapshot


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
