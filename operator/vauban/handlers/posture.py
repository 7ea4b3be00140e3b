"""A cluster's security posture at each reconcile: its compliance rules judged against what
the operator observes, the encryption of its volumes, and its key-encryption key (created,
rotated, reported). The decisions are pure (reconcile.compliance, reconcile.keys); this
module gathers the facts and acts on them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vauban import timefmt
from vauban.api.cluster import MANAGED_CLUSTER, ManagedClusterSpec
from vauban.api.common import duration_seconds
from vauban.builders import cnpg
from vauban.builders.keys import KekOwner
from vauban.conditions import ConditionType, DomainCondition, Reason, State, Verdict
from vauban.handlers import keys
from vauban.handlers.context import Context
from vauban.handlers.publish import post_event
from vauban.reconcile import compliance
from vauban.reconcile.keys import ROTATE_KEY_ANNOTATION, rotation_due

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Posture:
    fields: dict[str, Any]
    conditions: list[DomainCondition]
    blocked: Verdict | None = None
    """Set when nothing may be created: volumes that a profile requires encrypted are not."""


async def _storage(ctx: Context, spec: ManagedClusterSpec) -> compliance.StorageEvidence | None:
    if spec.mode != "Managed":
        return None
    wanted = spec.storage.storage_class_name if spec.storage else None
    found = await ctx.kube.storage_class(wanted)
    if found is None:
        return compliance.storage_evidence(wanted, None, None)
    return compliance.storage_evidence(*found)


async def assess(ctx: Context, body: Mapping[str, Any], spec: ManagedClusterSpec) -> Posture:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    storage = await _storage(ctx, spec)
    balancers = (
        await ctx.kube.load_balancers(namespace, f"{cnpg.CNPG_CLUSTER_LABEL}={name}")
        if spec.mode == "Managed"
        else []
    )
    facts = compliance.Facts(
        storage=storage,
        load_balancers=balancers,
        allowed_backup_regions=ctx.settings.allowed_backup_regions,
    )
    judged = compliance.assess(spec, facts)
    conditions = [compliance.encrypted_condition(spec, storage), judged.condition()]
    fields: dict[str, Any] = {
        "compliance": {
            "profile": spec.compliance.profile,
            "rules": [
                {"rule": r.rule, "met": r.met, "evidence": r.evidence[:512]} for r in judged.results
            ],
            "storageClass": storage.storage_class if storage else None,
            "storageEvidence": storage.evidence[:512] if storage else None,
        }
    }
    fields["compliance"] = {k: v for k, v in fields["compliance"].items() if v is not None}
    blocked = None
    if storage is not None and not storage.encrypted and compliance.requires_encryption(spec):
        blocked = Verdict(
            State.STALLED,
            Reason.STORAGE_CLASS_NOT_ENCRYPTED,
            f"Profile {spec.compliance.profile} requires encrypted volumes, and StorageClass "
            f"{storage.storage_class or '(default)'} is not known to encrypt ({storage.evidence}). "
            "Nothing was created: choose an encrypting class in spec.storage.storageClassName, "
            f'or have the platform annotate it {compliance.ENCRYPTED_ANNOTATION}: "true".',
        )
    encryption, key_error = await _key(ctx, body, spec)
    if encryption is not None:
        fields["encryption"] = encryption
    if key_error is not None:
        # Keys are half of encryption at rest (backups): a KEK that cannot be used is said
        # here, without making the database server itself not Ready.
        conditions[0] = DomainCondition(
            ConditionType.ENCRYPTED, "False", key_error.reason, key_error.message
        )
    ctx.metrics.key(
        namespace,
        name,
        created=timefmt.parse_rfc3339((encryption or {}).get("keyCreated")),
        period_seconds=duration_seconds(spec.encryption.rotation_period)
        if spec.encryption.rotation_period
        else None,
    )
    return Posture(fields, conditions, blocked)


async def _key(
    ctx: Context, body: Mapping[str, Any], spec: ManagedClusterSpec
) -> tuple[dict[str, Any] | None, Verdict | None]:
    """The cluster's KEK, once it has backups to protect: created on first need, rotated
    when due, reported."""
    if spec.backup is None:
        return None, None
    meta = body["metadata"]
    owner = KekOwner(meta["namespace"], meta["name"], meta.get("uid", ""))
    previous = (body.get("status") or {}).get("encryption") or {}
    kek = await keys.ensure_kek(ctx, owner, spec.encryption.provider)
    if isinstance(kek, Verdict):
        return previous or None, kek
    token = (meta.get("annotations") or {}).get(ROTATE_KEY_ANNOTATION)
    acted = previous.get("rotationToken")
    last_rotation = previous.get("lastRotation")
    if rotation_due(
        created=kek.created.get(kek.current),
        period=spec.encryption.rotation_period,
        token=token,
        acted_token=acted,
        now=timefmt.now(),
    ):
        rotated = await keys.rotate(ctx, owner, kek)
        if isinstance(rotated, Verdict):
            return previous or None, rotated
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
    created = kek.created.get(kek.current)
    status = {
        "provider": kek.provider,
        "keyId": kek.secret,
        "keyVersion": kek.current,
        "keyCreated": timefmt.rfc3339(created) if created else None,
        "lastRotation": last_rotation,
        "rotationToken": acted,
    }
    return {k: v for k, v in status.items() if v is not None}, None
