"""Turn a verdict into written status and, on a transition, an Event."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import ValidationError

from vauban import timefmt
from vauban.api.common import ApiModel, KindInfo, StatusModel
from vauban.conditions import DomainCondition, Reason, State, Verdict
from vauban.handlers.context import Context
from vauban.kube import events
from vauban.reconcile import status as status_
from vauban.settings import FINALIZER

logger = logging.getLogger(__name__)

SpecT = TypeVar("SpecT", bound=ApiModel)


def snapshot(body: Mapping[str, Any]) -> dict[str, Any]:
    """What a reconcile reads of an object, for the indices that let an object be reconciled
    outside of its own events (when its cluster changes, or at a re-check)."""
    meta = body["metadata"]
    return {
        "metadata": {
            k: meta[k]
            for k in (
                "name",
                "namespace",
                "uid",
                "generation",
                "creationTimestamp",
                "deletionTimestamp",
                "annotations",
            )
            if k in meta
        },
        "spec": dict(body.get("spec", {})),
        "status": dict(body.get("status", {})),
    }


def awaiting_finalizer(body: Mapping[str, Any]) -> Verdict | None:
    """Nothing is created for an object before kopf has put Vauban's finalizer on it:
    deleted right after creation, it would otherwise skip its deletion policy (a volume to
    retain collected, a database to drop left behind). kopf adds it at the object's first
    event; its arrival is the next event."""
    if FINALIZER in (body["metadata"].get("finalizers") or []):
        return None
    return Verdict(
        State.PROGRESSING,
        Reason.PROVISIONING,
        "Preparing: waiting for Vauban's finalizer before creating anything.",
    )


def invalid_spec(error: ValidationError) -> Verdict:
    """A spec the CRD schema let through but the operator cannot accept (e.g. written before
    a stricter schema). The message names fields and problems, never the values: a value may
    be something its author did not mean to publish."""
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in error.errors()
    )
    return Verdict(State.STALLED, Reason.INVALID_SPEC, f"spec is invalid: {problems}")


def unexpected(error: Exception) -> Verdict:
    """A reconcile that failed for a reason no rule foresaw (the apiserver refusing a write,
    a bug): a condition says so, instead of a traceback in the logs being the only signal.
    The message has the error's kind and HTTP status, never its body, which may echo an
    object."""
    detail = type(error).__name__
    status = getattr(error, "status", None)
    if isinstance(status, int):
        detail += f" (HTTP {status} {getattr(error, 'reason', '') or ''})".replace(" )", ")")
    return Verdict(
        State.WAITING,
        Reason.RECONCILE_FAILED,
        f"Reconcile failed with {detail}; retrying with backoff. The operator's log has the "
        "details.",
    )


async def parse_spec(
    ctx: Context, kind: KindInfo, model: type[SpecT], body: Mapping[str, Any]
) -> SpecT | None:
    """The object's spec, or None once an InvalidSpec status says why it does not parse."""
    try:
        return model.model_validate(body.get("spec", {}))
    except ValidationError as e:
        await publish(ctx, kind, body, invalid_spec(e))
        return None


async def publish(
    ctx: Context,
    kind: KindInfo,
    body: Mapping[str, Any],
    verdict: Verdict,
    *,
    fields: StatusModel | None = None,
    domain: Sequence[DomainCondition] = (),
    fold_into: events.ObjectRef | None = None,
    fresh: bool = False,
) -> None:
    """Write the status `verdict` implies, with what the reconcile observed (`fields`, the
    kind's status model), and an Event on a transition, only if the stored status differs.
    `fold_into`: the object on which the same Event of many objects in a burst is folded
    (a database's cluster).

    The body a handler got may be stale (a re-check's, or a dependent's copy from an index),
    so a change seen against it is confirmed against the object as stored now — a read,
    never a write, and only when something seems to have changed. `fresh`: the body is the
    envelope's own read, under the lock, and this process writes the object's status only
    under it: the read would return the same status. Callers hold the object's lock
    (`Context.locks`).
    """
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    generation = int(meta.get("generation", 0))

    def update_from(status: Mapping[str, Any] | None) -> status_.StatusUpdate:
        return status_.compute(
            status,
            verdict,
            generation=generation,
            now=timefmt.now_rfc3339(),
            fields=fields,
            domain=domain,
        )

    first = update_from(body.get("status"))
    ctx.metrics.observe(kind.kind, namespace, name, first.status)
    if not first.changed:
        return
    update = first
    if not fresh:
        stored = await ctx.kube.read(kind, namespace, name)
        if stored is None or stored["metadata"].get("generation", 0) > generation:
            return  # gone, or its spec changed since: the next event reconciles it
        update = update_from(stored.get("status"))
        if not update.changed:
            return
    await ctx.kube.apply_status(kind, namespace, name, update.status)
    if update.transition:
        logger.info("%s %s/%s: %s (%s)", kind.kind, namespace, name, verdict.state, verdict.reason)
        await post_event(
            ctx,
            kind,
            body,
            "Warning" if verdict.state is State.STALLED else "Normal",
            verdict.reason,
            verdict.message,
            fold_into=fold_into,
        )
    for condition in update.domain_transitions:
        await post_event(
            ctx,
            kind,
            body,
            "Warning" if condition.status == "False" else "Normal",
            condition.reason,
            condition.message,
            fold_into=fold_into,
        )


async def refresh(
    ctx: Context, kind: KindInfo, body: Mapping[str, Any], fields: StatusModel
) -> None:
    """Write figures a probe measured (a database's size and sessions) into the status of an
    object that is otherwise unchanged: no condition moves, no Event. The status is taken
    as stored now, under the object's lock, so nothing a reconcile wrote meanwhile is lost."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    async with ctx.locks.hold((kind.kind, namespace, name)):
        stored = await ctx.kube.read(kind, namespace, name)
        if (
            stored is None
            or stored["metadata"].get("deletionTimestamp")
            or stored["metadata"].get("generation") != meta.get("generation")
        ):
            return  # gone, going, or changed: its own reconcile writes its status
        status = kind.status.parse(stored.get("status"))
        updated = status.merged(fields)
        if updated.to_wire() == status.to_wire():
            return
        await ctx.kube.apply_status(kind, namespace, name, updated.to_wire())


async def post_event(
    ctx: Context,
    kind: KindInfo,
    body: Mapping[str, Any],
    type_: events.EventType,
    reason: str,
    message: str,
    *,
    fold_into: events.ObjectRef | None = None,
) -> None:
    """An Event on the object: for transitions, and for actions a person audits (what was
    created, credentials rotated). Messages never carry secrets."""
    meta = body["metadata"]
    await ctx.kube.post_event(
        kind=kind.kind,
        namespace=meta["namespace"],
        name=meta["name"],
        uid=meta.get("uid", ""),
        type_=type_,
        reason=reason,
        message=message,
        fold_into=fold_into,
    )
