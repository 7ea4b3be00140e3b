"""ManagedCluster handlers."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import kopf
from pydantic import ValidationError

from vauban import timefmt
from vauban.api.cluster import MANAGED_CLUSTER, ManagedClusterSpec, ManagedClusterStatus
from vauban.builders import cnpg
from vauban.conditions import Reason, State, Verdict
from vauban.engines.postgres.probe import ServerAddress
from vauban.handlers import posture as posture_
from vauban.handlers.backups import imports
from vauban.handlers.context import NEVER, Context, ObjectKey, fingerprint
from vauban.handlers.envelope import Envelope
from vauban.handlers.publish import (
    awaiting_finalizer,
    parse_spec,
    post_event,
    publish,
)
from vauban.reconcile import storage, switchover
from vauban.reconcile.cluster import (
    ADMIN_SECRET_KEYS,
    BARMAN_CRD,
    CNPG_CRD,
    Assessment,
    assess_external,
    assess_managed,
    configuration_pending,
    connections_event,
    external_health,
    health_due,
    primary_event,
)
from vauban.reconcile.compliance import ServerAudit, ServerTls
from vauban.reconcile.database import ABANDON_ANNOTATION, ClusterView
from vauban.reconcile.status import is_ready, ready_condition, ready_for_generation


def view_of(body: Mapping[str, Any]) -> ClusterView:
    """The cached view of a cluster that databases resolve their clusterRef against."""
    meta = body["metadata"]
    try:
        spec: ManagedClusterSpec | None = ManagedClusterSpec.model_validate(body.get("spec", {}))
    except ValidationError:
        spec = None
    status = body.get("status")
    ready_now = ready_condition(status)
    ready = is_ready(status) or storage.serves(ready_now.reason if ready_now else None)
    return ClusterView(
        namespace=meta["namespace"],
        name=meta["name"],
        spec=spec,
        ready=ready,
        uid=meta.get("uid", ""),
        abandon_server_objects=(meta.get("annotations") or {}).get(ABANDON_ANNOTATION) == "true",
    )


def _owner(body: Mapping[str, Any]) -> cnpg.Owner:
    meta = body["metadata"]
    return cnpg.Owner(name=meta["name"], namespace=meta["namespace"], uid=meta.get("uid", ""))


ENVELOPE = Envelope(MANAGED_CLUSTER)


async def reconcile(ctx: Context, body: Mapping[str, Any], *, unless_settled: bool = False) -> None:
    """`unless_settled`: for a watch event, which may have come while the reconcile that
    caused it still held the lock (`settled`)."""
    # Read fresh under the lock: a stale copy (an index's, a waiting reconcile's) of a
    # cluster already gone would re-create the CloudNativePG Cluster it owned.
    await ENVELOPE.run(
        ctx,
        body,
        functools.partial(_reconcile, ctx),
        still_wanted=(lambda fresh: not settled(ctx, fresh)) if unless_settled else None,
    )


async def _reconcile(ctx: Context, body: Mapping[str, Any]) -> None:
    spec = await parse_spec(ctx, MANAGED_CLUSTER, ManagedClusterSpec, body)
    if spec is None:
        return
    owner = _owner(body)
    storage = await posture_.storage(ctx, spec)
    blocked = posture_.blocked(spec, storage)
    if blocked is not None:
        assessment = Assessment(blocked)
        server = ServerTls.not_observed("nothing runs: the StorageClass does not encrypt")
        audit = ServerAudit.not_observed("nothing runs: the StorageClass does not encrypt")
    elif spec.mode == "Managed":
        requested = (body["metadata"].get("annotations") or {}).get(switchover.REQUEST_ANNOTATION)
        assessment = await _reconcile_managed(ctx, owner, spec, awaiting_finalizer(body), requested)
        assessment, server, audit = await _observe_primary(ctx, owner, spec, assessment)
    else:
        assessment, server, audit = await _assess_external(
            ctx, owner.namespace, spec, body.get("status")
        )
    if (seen := posture_.audit_fields(audit)) is not None:
        assessment = replace(assessment, fields={**assessment.fields, "audit": seen})
    posture = await posture_.assess(ctx, body, spec, storage, server, audit)
    imported = await imports.reconcile(ctx, body, spec)
    await publish(
        ctx,
        MANAGED_CLUSTER,
        body,
        assessment.verdict,
        fields=ManagedClusterStatus.model_validate(
            {
                **assessment.fields,
                **({"backupImport": imported} if imported is not None else {}),
            }
        ).merged(posture.status),
        domain=[*posture.conditions, *assessment.conditions],
    )
    for event in (
        connections_event(body.get("status"), assessment.fields.get("health")),
        primary_event(body.get("status"), assessment.fields.get("currentPrimary")),
        *assessment.events,
    ):
        if event is not None:
            await post_event(ctx, MANAGED_CLUSTER, body, event.type, event.reason, event.message)
    key = ENVELOPE.key(body)
    ctx.reconciled[key] = time.monotonic()
    ctx.requests_seen[key] = _requests(body)
    # Failures that wait for a person (or for software to be installed) back off; a server
    # that does not answer is asked again at every re-check, so that its return is seen
    # within one re-check interval (one connection attempt per cluster).
    if assessment.verdict.reason in _COSTLY_FAILURES:
        ctx.backoff.failed(key)
    else:
        ctx.backoff.succeeded(key)


async def _observe_primary(
    ctx: Context, owner: cnpg.Owner, spec: ManagedClusterSpec, assessment: Assessment
) -> tuple[Assessment, ServerTls, ServerAudit]:
    """What CloudNativePG's word (Ready) does not say, asked of a ready cluster's primary:
    whether it runs spec.postgresql.parameters yet, and, for a profile that wants them, TLS
    and pgaudit."""
    tls = posture_.wants(spec, "tls-required")
    audit = posture_.wants(spec, "audit-logging")
    parameters = spec.postgresql.parameters if spec.postgresql else {}
    if assessment.verdict.state is not State.READY:
        why = "the cluster is not ready"
        return assessment, ServerTls.not_observed(why), ServerAudit.not_observed(why)
    if not tls and not parameters and not audit:
        return (
            assessment,
            ServerTls.not_observed("not asked"),
            ServerAudit.not_observed("not asked"),
        )
    found = await posture_.managed_probe(
        ctx, owner.namespace, owner.name, tls=tls, parameters=sorted(parameters), audit=audit
    )
    pending = (
        configuration_pending(parameters, found.settings)
        if found is not None and found.settings is not None
        else None
    )
    if pending is not None:
        assessment = replace(assessment, verdict=pending)
    return (
        assessment,
        posture_.server_tls(found) if tls else ServerTls.not_observed("not asked"),
        posture_.server_audit(found) if audit else ServerAudit.not_observed("not asked"),
    )


_COSTLY_FAILURES = (
    Reason.AUTHENTICATION_FAILED,
    Reason.INSUFFICIENT_PRIVILEGES,
    Reason.VERSION_MISMATCH,
    Reason.ENGINE_NOT_INSTALLED,
)


def settled(ctx: Context, body: Mapping[str, Any]) -> bool:
    """Whether a watch event can be let pass: the cluster is Ready for its current spec, was
    reconciled by this process within the probe interval, and carries the annotations it
    had then. The event of Vauban's own status write is such an event: reconciling it
    logged in to the server once more per probe, for nothing new."""
    return (
        ready_for_generation(body)
        and not due(ctx, body)
        and ctx.requests_seen.get(ENVELOPE.key(body)) == _requests(body)
    )


def _requests(body: Mapping[str, Any]) -> str:
    return fingerprint(body["metadata"].get("annotations") or {})


def due(ctx: Context, body: Mapping[str, Any]) -> bool:
    """Whether the periodic re-check should reconcile this cluster now: when not ready (after
    any backoff), and when ready once per probe interval."""
    key = ENVELOPE.key(body)
    if not is_ready(body.get("status")):
        return ctx.backoff.due(key)
    elapsed = time.monotonic() - ctx.reconciled.get(key, NEVER)
    return elapsed >= ctx.settings.probe_interval_seconds


async def _reconcile_managed(
    ctx: Context,
    owner: cnpg.Owner,
    spec: ManagedClusterSpec,
    unprepared: Verdict | None,
    requested: str | None,
) -> Assessment:
    installed = await ctx.kube.crd_exists(CNPG_CRD)
    # Read fresh before any write: the major-version guard must see what really runs.
    existing = (
        await ctx.kube.read_custom(
            cnpg.CNPG_GROUP, cnpg.CNPG_VERSION, cnpg.CNPG_PLURAL, owner.namespace, owner.name
        )
        if installed
        else None
    )

    archiver = spec.backup is not None and installed and await ctx.kube.crd_exists(BARMAN_CRD)
    # The plugin's recovery window of a running cluster's archive, read for its status.
    archive_store = (
        await ctx.kube.read_custom(
            cnpg.BARMAN_GROUP,
            cnpg.BARMAN_VERSION,
            cnpg.BARMAN_PLURAL,
            owner.namespace,
            cnpg.archive_store_name(owner.name),
        )
        if archiver and existing is not None
        else None
    )

    def assess(engine_cluster: Mapping[str, Any] | None) -> Assessment:
        return assess_managed(
            name=owner.name,
            namespace=owner.namespace,
            spec=spec,
            engine_installed=installed,
            engine_cluster=engine_cluster,
            archiver_installed=archiver,
            archive_store=archive_store,
        )

    assessment = assess(existing)
    if not assessment.apply:
        return assessment
    if unprepared is not None:
        return Assessment(unprepared)
    # Read before create: a create refused with 409 at every reconcile is a write attempt.
    superuser = cnpg.superuser_secret(owner)
    if await ctx.kube.read_secret(owner.namespace, superuser["metadata"]["name"]) is None:
        await ctx.kube.create_secret_if_absent(superuser)
    await _archive_stores(ctx, owner, spec)
    assert spec.storage is not None  # the CRD's CEL rules guarantee it for mode Managed
    running = ((existing or {}).get("spec") or {}).get("storage", {}).get("size")
    grows = running is not None and storage.quantity(spec.storage.size) > storage.quantity(running)
    expandable = await ctx.kube.volume_expansion(spec.storage.storage_class_name) if grows else None
    size = storage.size_to_render(spec.storage.size, running, expandable)
    rendered = spec.model_copy(update={"storage": spec.storage.model_copy(update={"size": size})})
    desired = cnpg.cluster(owner, rendered, image_repository=ctx.settings.postgres_image_repository)
    applied = existing
    if existing is None or _changed(ctx, desired):
        applied = await ctx.kube.apply_custom(cnpg.CNPG_PLURAL, desired)
        _applied(ctx, desired, None if applied is None else applied["metadata"].get("generation"))
    await _scheduled_base_backups(ctx, owner, spec)
    policy = cnpg.network_policy(
        owner,
        spec,
        operator_namespaces=(ctx.settings.namespace, ctx.settings.cloudnativepg_namespace),
        metrics_from=ctx.settings.instance_metrics_from,
    )
    if _changed(ctx, policy):
        _applied(ctx, policy, await ctx.kube.apply_network_policy(policy))
    if existing is None and applied is not None:
        assessment = assess(applied)
    engine, switch = await _switchover(ctx, owner, requested, applied)
    if engine is not applied and engine is not None:
        assessment = assess(engine)  # promoted: CloudNativePG's phase is the switchover
    conditions = (switch.condition,) if switch.condition is not None else ()
    events = (switch.event,) if switch.event is not None else ()
    if size != spec.storage.size:
        assert running is not None
        verdict = storage.resize_unsupported(
            spec.storage.size, running, spec.storage.storage_class_name, expandable
        )
        return replace(assessment, verdict=verdict, conditions=conditions, events=events)
    if assessment.verdict.state is State.READY:
        claims = await ctx.kube.volume_claims(
            owner.namespace, f"{cnpg.CNPG_CLUSTER_LABEL}={owner.name}"
        )
        short = storage.growing(
            spec.storage.size,
            [storage.Claim(str(c["name"]), c["request"], c["capacity"]) for c in claims],
        )
        if short is not None:
            assessment = replace(assessment, verdict=short)
    return replace(assessment, conditions=conditions, events=events)


async def _switchover(
    ctx: Context, owner: cnpg.Owner, requested: str | None, engine: Mapping[str, Any] | None
) -> tuple[Mapping[str, Any] | None, switchover.Decision]:
    """Carries out a switchover request (reconcile.switchover decides); CloudNativePG's
    Cluster as it is afterwards."""
    annotations = ((engine or {}).get("metadata") or {}).get("annotations") or {}
    recorded = annotations.get(switchover.RECORD_ANNOTATION)
    decision = switchover.decide(
        name=owner.name, requested=requested, recorded=recorded, engine=engine
    )
    if engine is None:
        return engine, decision
    key = (cnpg.CNPG_GROUP, cnpg.CNPG_VERSION, cnpg.CNPG_PLURAL, owner.namespace, owner.name)
    if decision.promote is not None:
        promoted = await ctx.kube.patch_custom_status(
            *key, switchover.promotion(engine, decision.promote, timefmt.now())
        )
        if promoted is None:
            return engine, switchover.retried(decision.promote)
        engine = promoted
    # Recorded after the promotion: a record lost between the two is made good by the next
    # reconcile, which finds the request in effect (targetPrimary) and records it then.
    if decision.record != recorded:
        await ctx.kube.annotate_custom(*key, {switchover.RECORD_ANNOTATION: decision.record})
    return engine, decision


# The cluster is reconciled at every status change of its CloudNativePG Cluster (a dozen
# while its instances start), and each apply of unchanged objects was a write. What this
# process applied is remembered with the generation the apply left; an edit by someone else
# bumps the generation, its event (`rendered_object_event`) drops the record, and the
# reconcile that event triggers applies again.


def _rendered_key(body: Mapping[str, Any]) -> ObjectKey:
    return (str(body["kind"]), body["metadata"]["namespace"], body["metadata"]["name"])


def _changed(ctx: Context, desired: Mapping[str, Any]) -> bool:
    recorded = ctx.rendered.get(_rendered_key(desired))
    return recorded is None or recorded[0] != fingerprint(desired)


def _applied(ctx: Context, desired: Mapping[str, Any], generation: int | None) -> None:
    """`generation`: what the apply left; None when the object was gone again at once."""
    if generation is None:
        ctx.rendered.pop(_rendered_key(desired), None)
    else:
        ctx.rendered[_rendered_key(desired)] = (fingerprint(desired), generation)


def rendered_object_event(ctx: Context, event: str, body: Mapping[str, Any]) -> None:
    """An event of an object Vauban renders: unless it is the echo of Vauban's own apply,
    the next reconcile applies again."""
    key = _rendered_key(body)
    recorded = ctx.rendered.get(key)
    if recorded is not None and (
        event == "DELETED" or recorded[1] != body["metadata"].get("generation")
    ):
        del ctx.rendered[key]


async def _archive_stores(ctx: Context, owner: cnpg.Owner, spec: ManagedClusterSpec) -> None:
    """The plugin's ObjectStores the Cluster names, applied before it: the archive it writes
    (spec.backup) and the one it recovers from (spec.restore)."""
    if spec.backup is None:
        return
    stores = [cnpg.archive_store(owner, spec.backup)]
    if spec.restore is not None:
        stores.append(cnpg.recovery_store(owner, spec.restore, spec.backup))
    for store in stores:
        if _changed(ctx, store):
            applied = await ctx.kube.apply_custom(cnpg.BARMAN_PLURAL, store)
            _applied(ctx, store, None if applied is None else applied["metadata"].get("generation"))


async def _scheduled_base_backups(
    ctx: Context, owner: cnpg.Owner, spec: ManagedClusterSpec
) -> None:
    """CloudNativePG's ScheduledBackup follows spec.backup.schedule; once per process, a
    cluster without a schedule has any leftover one removed (a schedule taken out of the
    spec while the operator was down)."""
    name = cnpg.scheduled_backup_name(owner)
    memo = ("ScheduledBackup", owner.namespace, name)
    schedule = spec.backup.schedule if spec.backup else None
    if schedule is not None:
        await ctx.kube.apply_custom("scheduledbackups", cnpg.scheduled_backup(owner, schedule))
        ctx.applied[memo] = schedule
    elif ctx.applied.get(memo) != "":
        await ctx.kube.delete_custom_object(
            cnpg.CNPG_GROUP, cnpg.CNPG_VERSION, "scheduledbackups", owner.namespace, name
        )
        ctx.applied[memo] = ""


async def _assess_external(
    ctx: Context, namespace: str, spec: ManagedClusterSpec, previous: Mapping[str, Any] | None
) -> tuple[Assessment, ServerTls, ServerAudit]:
    """The server's assessment, what its probe saw of TLS (read when the profile has the
    rule, in the probe's own session) and of pgaudit (always: one cheap query, and what an
    adopted server runs is worth saying whatever the profile)."""
    external = spec.external
    assert external is not None
    credentials = await ctx.kube.read_secret(namespace, external.admin_secret_ref.name)
    usable = credentials is not None and all(k in credentials for k in ADMIN_SECRET_KEYS)
    server_probe = None
    if credentials is not None and usable:
        ca_pem = None
        if external.ca_secret_ref is not None:
            ca = await ctx.kube.read_secret(namespace, external.ca_secret_ref.name) or {}
            ca_pem = ca.get(external.ca_secret_ref.key)
            if ca_pem is None:
                missing = Verdict(
                    State.WAITING,
                    Reason.SECRET_MISSING,
                    f"Secret {external.ca_secret_ref.name} (spec.external.caSecretRef) "
                    f"does not exist or lacks the key {external.ca_secret_ref.key}.",
                )
                why = "no CA to verify it with"
                return (
                    Assessment(missing),
                    ServerTls.not_observed(why),
                    ServerAudit.not_observed(why),
                )
        server_probe = await ctx.servers.probe(
            ServerAddress(external.host, external.port, external.ssl_mode, ca_pem),
            credentials["username"],
            credentials["password"],
            health=health_due(previous, timefmt.now(), ctx.settings.probe_interval_seconds),
            # Another cluster on the same server read its load within half an interval.
            health_shared_seconds=ctx.settings.probe_interval_seconds / 2,
            tls=posture_.wants(spec, "tls-required"),
            audit=True,
        )
    assessment = assess_external(
        spec=spec,
        admin_secret_keys=None if credentials is None else credentials.keys(),
        probe=server_probe,
    )
    health = external_health(previous, server_probe, timefmt.now_rfc3339())
    fields = {**assessment.fields, "health": health}
    return (
        replace(assessment, fields=fields),
        posture_.server_tls(server_probe),
        posture_.server_audit(server_probe),
    )


async def finalize(
    ctx: Context, body: Mapping[str, Any], dependents: Iterable[Mapping[str, Any]]
) -> None:
    """Before a ManagedCluster goes: refuse while databases use it, and keep what
    deletionPolicy Retain keeps."""
    owner = _owner(body)
    users = sorted(f"{d['metadata']['namespace']}/{d['metadata']['name']}" for d in dependents)
    if users:
        message = (
            f"Deletion waits: {len(users)} ManagedDatabase(s) still use this cluster "
            f"({', '.join(users[:10])}). Delete them first."
        )
        await publish(
            ctx, MANAGED_CLUSTER, body, Verdict(State.STALLED, Reason.DELETION_BLOCKED, message)
        )
        raise kopf.TemporaryError(message, delay=ctx.settings.recheck_interval_seconds)
    try:
        spec = ManagedClusterSpec.model_validate(body.get("spec", {}))
    except ValidationError:
        return  # nothing was ever created for a spec that never parsed
    if spec.mode != "Managed" or spec.deletion_policy != "Retain":
        return  # Delete: the garbage collector removes what the cluster owned
    retained = {cnpg.RETAINED_LABEL: owner.name}
    engine = await ctx.kube.read_custom(
        cnpg.CNPG_GROUP, cnpg.CNPG_VERSION, cnpg.CNPG_PLURAL, owner.namespace, owner.name
    )
    if engine is not None:
        await ctx.kube.release_claims(
            owner.namespace,
            f"{cnpg.CNPG_CLUSTER_LABEL}={owner.name}",
            engine["metadata"]["uid"],
            retained,
        )
    await ctx.kube.release_secrets(
        owner.namespace, f"{cnpg.CLUSTER_LABEL}={owner.name}", owner.uid, retained
    )
