"""The ManagedDatabase's reconcile as kopf and the re-check call it: the envelope (the
object's lock, a fresh read, a slot on its server), the verdict on its cluster and
namespace, then provisioning or suspension, and the status published; and which events and
re-checks may pass without a reconcile (`settled`, `due`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from vauban import timefmt
from vauban.api.cluster import MANAGED_CLUSTER
from vauban.api.database import MANAGED_DATABASE, ManagedDatabaseSpec, ManagedDatabaseStatus
from vauban.conditions import (
    ConditionType,
    DomainCondition,
    Reason,
    State,
    Verdict,
    is_true,
)
from vauban.handlers.context import NEVER, Context
from vauban.handlers.databases import provision, stored, suspension
from vauban.handlers.databases.connection import tell_cluster
from vauban.handlers.envelope import Envelope
from vauban.handlers.publish import awaiting_finalizer, parse_spec, publish
from vauban.kube.events import ObjectRef
from vauban.reconcile import compliance
from vauban.reconcile.database import (
    ROTATE_ANNOTATION,
    ClusterView,
    assess,
    cluster_key,
    cluster_key_of,
    connection_limit,
    resync_due,
    timers_wake_at,
)
from vauban.reconcile.status import ready_for_generation
from vauban.reconcile.tenancy import needs_namespace_labels


async def reconcile(
    ctx: Context,
    body: Mapping[str, Any],
    clusters: Mapping[tuple[str, str], Iterable[ClusterView]],
    backups: provision.Index,
    *,
    only_if_due: bool = False,
) -> None:
    """`backups`: the ManagedBackups of each database. `only_if_due`: for the periodic
    re-check, whose copy of the object may predate a reconcile that made it not due any
    more."""
    # Read fresh under the lock: a reconcile that waited must see what the previous one
    # wrote (a rotation done twice would cut the grace period of the first).
    await _envelope(ctx, clusters).run(
        ctx,
        body,
        lambda fresh: _reconcile(ctx, fresh, clusters, backups),
        still_wanted=(lambda fresh: due(ctx, fresh)) if only_if_due else None,
    )


def _envelope(ctx: Context, clusters: Mapping[tuple[str, str], Iterable[ClusterView]]) -> Envelope:
    """A bounded number of databases of one server reconcile at a time: a burst of a
    thousand would otherwise exhaust its max_connections ("too many clients"), and hold a
    thousand bodies in memory while they wait. A waiting reconcile holds nothing: the object
    is read when its turn comes."""

    def server_slot(body: Mapping[str, Any]) -> AbstractAsyncContextManager[object]:
        key = cluster_key_of(body)
        if key is None:
            return contextlib.nullcontext()
        cluster = next(iter(clusters.get(key, ())), None)
        return ctx.server_slots[cluster.server if cluster is not None else key]

    return Envelope(
        MANAGED_DATABASE, kept=stored.kept, around=lambda _: ctx.memory.busy(), within=server_slot
    )


async def _reconcile(
    ctx: Context,
    body: Mapping[str, Any],
    clusters: Mapping[tuple[str, str], Iterable[ClusterView]],
    backups: provision.Index,
) -> None:
    spec = await parse_spec(ctx, MANAGED_DATABASE, ManagedDatabaseSpec, body)
    if spec is None:
        return
    namespace = body["metadata"]["namespace"]
    key = cluster_key(namespace, spec)
    cluster = next(iter(clusters.get(key, ())), None)
    verdict = await _assess(ctx, namespace, spec, cluster)
    # What the server's record said last stays displayed while it cannot be read (a cluster
    # not ready): display only, every decision reads the record itself.
    fields = stored.kept(body.get("status") or {}).merged(
        ManagedDatabaseStatus(cluster="/".join(key))
    )
    domain: list[DomainCondition] = []
    if cluster is not None and cluster.spec is not None:
        placement = compliance.placement(cluster.spec.compliance.profile, spec.data_classification)
        domain.append(placement)
        # A database already provisioned keeps serving: the condition says what is wrong.
        if placement.status == "False" and not stored.provisioned(body):
            verdict = Verdict(State.STALLED, placement.reason, placement.message)
    if verdict.state is State.PROGRESSING and cluster is not None and cluster.spec is not None:
        limit = connection_limit(spec, cluster.spec)
        if isinstance(limit, Verdict):
            verdict = limit
        elif awaiting_finalizer(body) is not None:
            # Nothing is written either: kopf's finalizer is a write that is about to bring
            # the next event, and the status of that reconcile says all there is to say.
            return
        else:
            verdict, provisioned, backup_conditions = await provision.provision(
                ctx, body, spec, cluster, cluster.spec, limit, backups
            )
            fields = fields.merged(provisioned)
            domain += backup_conditions
    elif verdict.reason is Reason.NAMESPACE_NOT_ALLOWED and cluster and cluster.spec:
        verdict = await suspension.refused(ctx, body, spec, cluster, cluster.spec, verdict)
    await publish(
        ctx,
        MANAGED_DATABASE,
        body,
        verdict,
        fields=fields,
        domain=domain,
        fold_into=_fold_into(cluster),
        fresh=True,
    )
    await _after(ctx, body, cluster, verdict)


def _fold_into(cluster: ClusterView | None) -> ObjectRef | None:
    """Where a burst of the same transition on many databases of one cluster (all Ready
    after a mass creation, all Unreachable when their server goes) is told in one Event:
    on the cluster, if it lives beside its databases (vauban.kube.events.Recorder)."""
    if cluster is None or not cluster.uid:
        return None
    return ObjectRef(MANAGED_CLUSTER.kind, cluster.namespace, cluster.name, cluster.uid)


async def _assess(
    ctx: Context, namespace: str, spec: ManagedDatabaseSpec, cluster: ClusterView | None
) -> Verdict:
    """The verdict on the database's cluster and namespace, the namespace's labels read only
    where the cluster admits namespaces by label."""
    labels: Mapping[str, str] = {}
    if (
        cluster is not None
        and cluster.spec is not None
        and needs_namespace_labels(
            cluster_namespace=cluster.namespace,
            allowed=cluster.spec.allowed_namespaces,
            namespace=namespace,
        )
    ):
        labels = await ctx.kube.namespace_labels(namespace)
    return assess(namespace=namespace, spec=spec, cluster=cluster, namespace_labels=labels)


async def _after(
    ctx: Context, body: Mapping[str, Any], cluster: ClusterView | None, verdict: Verdict
) -> None:
    """This process's bookkeeping of a reconcile done: the cluster told of a server that
    seems gone, the time of the reconcile, the backoff."""
    if (
        cluster is not None
        and cluster.ready
        and verdict.reason in (Reason.UNREACHABLE, Reason.CLUSTER_NOT_READY)
    ):
        await tell_cluster(ctx, cluster)
    key_of_me = stored.key(body)
    ctx.reconciled[key_of_me] = time.monotonic()
    # Only failures that cost a connection back off; waiting on Kubernetes objects is cheap
    # and must notice a fix (a namespace labelled) within one re-check interval.
    if verdict.reason in (Reason.UNREACHABLE, Reason.PROVISIONING_FAILED):
        ctx.backoff.failed(key_of_me)
    else:
        ctx.backoff.succeeded(key_of_me)


def settled(ctx: Context, body: Mapping[str, Any]) -> bool:
    """Whether a watch event can be let pass: the object is Ready for its current spec and
    rotation request, and was reconciled by this process within the probe interval. The
    events of Vauban's own status writes are such events; reconciling them again would
    re-read the server and, with a session count that moved, write status again.

    The first event, before kopf's finalizer, is not let pass although its reconcile only
    waits for the finalizer: it waits for a slot on the server first, and so spreads
    kopf's finalizer patches over the burst. Let pass, a burst of a thousand had all its
    finalizers patched at once and a thousand second events waiting for a slot, each with
    its event in kopf's worker: 31 MiB more at the burst's peak (N = 1000), for one read
    less per database."""
    credentials = stored.status(body).credentials
    token = (body["metadata"].get("annotations") or {}).get(ROTATE_ANNOTATION)
    return (
        ready_for_generation(body)
        and token == (credentials.rotation_token if credentials else None)
        and not due(ctx, body)
    )


def _rotation_period(body: Mapping[str, Any]) -> str | None:
    try:
        spec = ManagedDatabaseSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        return None  # its reconcile says InvalidSpec
    return spec.credentials.rotation_period


@dataclass(frozen=True, slots=True)
class _Timers:
    """What `due` reads of an object's status and spec."""

    ready: bool
    wake_at: datetime | None


def _timers(body: Mapping[str, Any]) -> _Timers:
    if isinstance(body, stored.IndexEntry) and isinstance(body.derived, _Timers):
        return body.derived
    status = stored.status(body)
    timers = _Timers(
        ready=is_true(status.conditions, ConditionType.READY),
        wake_at=timers_wake_at(status.credentials, _rotation_period(body)),
    )
    if isinstance(body, stored.IndexEntry):
        body.derived = timers
    return timers


def due(ctx: Context, body: Mapping[str, Any]) -> bool:
    """Whether the periodic re-check should reconcile this database now."""
    key = stored.key(body)
    timers = _timers(body)
    if not timers.ready:
        return ctx.backoff.due(key)
    if timers.wake_at is not None and timefmt.now() >= timers.wake_at:
        return True
    return resync_due(
        key, time.monotonic() - ctx.reconciled.get(key, NEVER), ctx.settings.resync_interval_seconds
    )
