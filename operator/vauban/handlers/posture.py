"""A cluster's security posture at each reconcile: its compliance rules judged against what
the operator observes, the encryption of its volumes, and its key-encryption key (created,
rotated, reported). The decisions are pure (reconcile.compliance, reconcile.keys); this
module gathers the facts and acts on them.

The facts are read only for the rules of the cluster's profile: its StorageClass, its
LoadBalancer Services and its NetworkPolicy from the apiserver, its databases and their
ManagedBackups from the operator's indices, and what the server says of TLS through the
admin session (the external probe's, or one probe of a ready managed cluster's primary).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vauban import timefmt
from vauban.api.cluster import (
    MANAGED_CLUSTER,
    ComplianceStatus,
    EncryptionStatus,
    ManagedClusterSpec,
    ManagedClusterStatus,
    RuleStatus,
)
from vauban.api.common import duration_seconds
from vauban.builders import cnpg
from vauban.builders.keys import KekOwner
from vauban.conditions import ConditionType, DomainCondition, Reason, State, Verdict
from vauban.crypto import recovery
from vauban.engines.postgres.probe import ServerAddress
from vauban.handlers import keys
from vauban.handlers.backups.recovery import escrow_current
from vauban.handlers.backups.store import store_of
from vauban.handlers.context import Bodies, Context
from vauban.handlers.databases import stored
from vauban.handlers.publish import post_event
from vauban.reconcile import compliance
from vauban.reconcile.cluster import ProbeOutcome, ServerProbe
from vauban.reconcile.keys import ROTATE_KEY_ANNOTATION, rotation_due

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Posture:
    status: ManagedClusterStatus
    """What the cluster's status says of it: compliance, and its key-encryption key."""

    conditions: list[DomainCondition]


async def storage(ctx: Context, spec: ManagedClusterSpec) -> compliance.StorageEvidence | None:
    """The StorageClass of a managed cluster's volumes, judged; None for an external one."""
    if spec.mode != "Managed":
        return None
    wanted = spec.storage.storage_class_name if spec.storage else None
    found = await ctx.kube.storage_class(wanted)
    if found is None:
        return compliance.storage_evidence(wanted, None, None)
    return compliance.storage_evidence(*found)


def blocked(spec: ManagedClusterSpec, storage: compliance.StorageEvidence | None) -> Verdict | None:
    """Set when nothing may be created: volumes that a profile requires encrypted are not."""
    if storage is None or storage.encrypted or not compliance.requires_encryption(spec):
        return None
    return Verdict(
        State.STALLED,
        Reason.STORAGE_CLASS_NOT_ENCRYPTED,
        f"Profile {spec.compliance.profile} requires encrypted volumes, and StorageClass "
        f"{storage.storage_class or '(default)'} is not known to encrypt ({storage.evidence}). "
        "Nothing was created: choose an encrypting class in spec.storage.storageClassName, "
        f'or have the platform annotate it {compliance.ENCRYPTED_ANNOTATION}: "true".',
    )


def wants(spec: ManagedClusterSpec, rule: compliance.RuleId) -> bool:
    """Whether the cluster's profile holds `rule`: its facts are read only then."""
    return rule in compliance.rules_of(spec.compliance.profile)


def _unseen(server_probe: ServerProbe | None) -> str | None:
    """Why a probe saw nothing of the server, if it did not."""
    if server_probe is None:
        return "no usable admin Secret"
    if server_probe.outcome is not ProbeOutcome.OK:
        return f"{server_probe.outcome.value}: {server_probe.detail}"
    return None


def server_tls(server_probe: ServerProbe | None) -> compliance.ServerTls:
    """What a probe asked with `tls` saw; why nothing was seen otherwise."""
    why = _unseen(server_probe)
    if why is not None or server_probe is None:
        return compliance.ServerTls.not_observed(why or "")
    return server_probe.tls or compliance.ServerTls.not_observed("not asked")


def server_audit(server_probe: ServerProbe | None) -> compliance.ServerAudit:
    """What a probe asked with `audit` saw; why nothing was seen otherwise."""
    why = _unseen(server_probe)
    if why is not None or server_probe is None:
        return compliance.ServerAudit.not_observed(why or "")
    return server_probe.audit or compliance.ServerAudit.not_observed("not asked")


def audit_fields(audit: compliance.ServerAudit) -> dict[str, Any] | None:
    """status.audit, when the server was seen."""
    if audit.loaded is None:
        return None
    return {"pgaudit": audit.loaded, **({"log": audit.log[:256]} if audit.log is not None else {})}


async def managed_probe(
    ctx: Context,
    namespace: str,
    name: str,
    *,
    tls: bool,
    parameters: Sequence[str],
    audit: bool = False,
) -> ServerProbe | None:
    """One probe of a managed cluster's primary, as the superuser CloudNativePG creates for
    Vauban, with TLS verified against the cluster's CA; None without that Secret."""
    login = await ctx.kube.read_secret(namespace, cnpg.superuser_secret_name(name)) or {}
    if "username" not in login or "password" not in login:
        return None
    ca = await ctx.kube.read_secret(namespace, cnpg.ca_secret_name(name)) or {}
    address = ServerAddress(
        cnpg.primary_host(name, namespace), cnpg.POSTGRES_PORT, "verify-full", ca.get("ca.crt")
    )
    return await ctx.servers.probe(
        address, login["username"], login["password"], tls=tls, parameters=parameters, audit=audit
    )


async def _network_policy(
    ctx: Context, body: Mapping[str, Any], spec: ManagedClusterSpec
) -> compliance.PolicyFacts | None:
    meta = body["metadata"]
    if spec.mode != "Managed" or not wants(spec, "network-policy"):
        return None
    owner = cnpg.Owner(meta["name"], meta["namespace"], meta.get("uid", ""))
    name = cnpg.network_policy_name(owner.name)
    spec_found = await ctx.kube.network_policy_spec(owner.namespace, name)
    # Missing: before anything was created (a first reconcile, a blocked cluster), or gone.
    instances = spec_found is not None or (
        await ctx.kube.read_custom(
            cnpg.CNPG_GROUP, cnpg.CNPG_VERSION, cnpg.CNPG_PLURAL, owner.namespace, owner.name
        )
        is not None
    )
    return compliance.PolicyFacts(
        name=name,
        namespace=owner.namespace,
        pod_labels=cnpg.instance_labels(owner),
        spec=spec_found,
        instances=instances,
    )


def database_backups(
    spec: ManagedClusterSpec, databases: Iterable[Mapping[str, Any]], backups: Bodies
) -> list[compliance.DatabaseBackups]:
    """The cluster's provisioned databases, each with its ManagedBackups."""
    schedule = spec.backup.schedule if spec.backup else None
    return [
        compliance.database_backups(
            db, backups.get((db["metadata"]["namespace"], db["metadata"]["name"]), ()), schedule
        )
        for db in databases
        # One refused by the cluster was never created: it has no backups to judge.
        if stored.provisioned(db) and not db["metadata"].get("deletionTimestamp")
    ]


def _databases(
    ctx: Context, namespace: str, name: str, spec: ManagedClusterSpec
) -> list[compliance.DatabaseBackups] | None:
    """From the operator's indices; None before they are handed over."""
    databases, backups = ctx.indices.databases_by_cluster, ctx.indices.backups_by_database
    if not wants(spec, "backups-succeeding") or databases is None or backups is None:
        return None
    return database_backups(spec, databases.get((namespace, name), ()), backups)


async def assess(
    ctx: Context,
    body: Mapping[str, Any],
    spec: ManagedClusterSpec,
    storage: compliance.StorageEvidence | None,
    server: compliance.ServerTls,
    audit: compliance.ServerAudit | None = None,
) -> Posture:
    """`storage`: as `storage` found it; `server`: what the server said of TLS; `audit`:
    whether it runs pgaudit."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    balancers = (
        await ctx.kube.load_balancers(namespace, f"{cnpg.CNPG_CLUSTER_LABEL}={name}")
        if spec.mode == "Managed"
        else []
    )
    facts = compliance.Facts(
        storage=storage,
        load_balancers=balancers,
        allowed_backup_regions=ctx.settings.allowed_backup_regions,
        server=server,
        network_policy=await _network_policy(ctx, body, spec),
        databases=_databases(ctx, namespace, name, spec),
        recovery_key=recovery_key(ctx),
        now=timefmt.now(),
        audit=audit,
    )
    judged = compliance.assess(spec, facts)
    conditions = [compliance.encrypted_condition(spec, storage), judged.condition()]
    judgement = ComplianceStatus(
        profile=spec.compliance.profile,
        rules=[
            RuleStatus(rule=r.rule, met=r.met, evidence=r.evidence[:512]) for r in judged.results
        ],
        storage_class=storage.storage_class if storage else None,
        storage_evidence=storage.evidence[:512] if storage else None,
    )
    encryption, key_error = await _key(ctx, body, spec)
    if key_error is not None:
        # Keys are half of encryption at rest (backups): a KEK that cannot be used is said
        # here, without making the database server itself not Ready.
        conditions[0] = DomainCondition(
            ConditionType.ENCRYPTED, "False", key_error.reason, key_error.message
        )
    ctx.metrics.key(
        namespace,
        name,
        created=timefmt.parse_rfc3339(encryption.key_created if encryption else None),
        period_seconds=duration_seconds(spec.encryption.rotation_period)
        if spec.encryption.rotation_period
        else None,
    )
    return Posture(ManagedClusterStatus(compliance=judgement, encryption=encryption), conditions)


async def _key(
    ctx: Context, body: Mapping[str, Any], spec: ManagedClusterSpec
) -> tuple[EncryptionStatus | None, Verdict | None]:
    """The cluster's KEK, once it has backups to protect: created on first need, rotated
    when due, reported."""
    if spec.backup is None:
        return None, None
    meta = body["metadata"]
    owner = KekOwner(meta["namespace"], meta["name"], meta.get("uid", ""))
    previous = ManagedClusterStatus.parse(body.get("status")).encryption
    kek = await keys.ensure_kek(ctx, owner, spec.encryption.provider)
    if isinstance(kek, Verdict):
        return previous, kek
    token = (meta.get("annotations") or {}).get(ROTATE_KEY_ANNOTATION)
    acted = previous.rotation_token if previous else None
    last_rotation = previous.last_rotation if previous else None
    if rotation_due(
        created=kek.created.get(kek.current),
        period=spec.encryption.rotation_period,
        token=token,
        acted_token=acted,
        now=timefmt.now(),
    ):
        rotated = await keys.rotate(ctx, owner, kek)
        if isinstance(rotated, Verdict):
            return previous, rotated
        kek, acted, last_rotation = rotated, token or acted, timefmt.now_rfc3339()
        await post_event(
            ctx,
            MANAGED_CLUSTER,
            body,
            "Normal",
            "KeyRotated",
            f"Key-encryption key {kek.secret} is now at version {kek.current}; data keys are "
            "re-wrapped, backups untouched and still restorable.",
        )
    store = await store_of(ctx, owner.namespace, spec.backup.object_store)
    unescrowed = None if isinstance(store, str) else await escrow_current(ctx, owner, kek, store)
    if unescrowed is not None:
        # Said again, and in status, by each database whose key record waits for it.
        logger.warning("%s/%s: %s", owner.namespace, owner.name, unescrowed)
    created = kek.created.get(kek.current)
    survives, how = compliance.recovery(spec, recovery_key(ctx))
    status = EncryptionStatus.model_validate(
        {
            "provider": kek.provider,
            "keyId": kek.secret,
            "keyVersion": kek.current,
            "keyCreated": timefmt.rfc3339(created) if created else None,
            "lastRotation": last_rotation,
            "rotationToken": acted,
            "survivesClusterLoss": survives,
            "recovery": how,
        }
    )
    return status, None


def recovery_key(ctx: Context) -> str | None:
    """Fingerprint of the operator's recovery public key, if it has one."""
    text = ctx.settings.recovery_public_key
    return recovery.fingerprint(recovery.public_key(text)) if text else None
