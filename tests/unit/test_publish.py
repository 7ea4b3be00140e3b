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
