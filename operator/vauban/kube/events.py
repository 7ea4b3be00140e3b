"""Events: one per transition of an object's state, never one per reconcile."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Literal

from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from vauban.api.common import API_VERSION

logger = logging.getLogger(__name__)

REPORTER = "vauban"

EventType = Literal["Normal", "Warning"]


async def post(
    core: client.CoreV1Api,
    *,
    kind: str,
    namespace: str,
    name: str,
    uid: str,
    type_: EventType,
    reason: str,
    message: str,
) -> None:
    """Record an Event on an object. Failing to record one never fails a reconcile: status
    already carries the same information."""
    now = datetime.now(UTC)
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name=f"{name}.", namespace=namespace),
        involved_object=client.V1ObjectReference(
            api_version=API_VERSION, kind=kind, namespace=namespace, name=name, uid=uid
        ),
        type=type_,
        reason=reason,
        message=message[:1024],
        first_timestamp=now,
        last_timestamp=now,
        count=1,
        source=client.V1EventSource(component=REPORTER),
        reporting_component=REPORTER,
        reporting_instance=REPORTER,
    )
    try:
        await core.create_namespaced_event(namespace, event)
    except ApiException as e:
        logger.warning("could not record event %s on %s/%s: %s", reason, namespace, name, e.reason)
