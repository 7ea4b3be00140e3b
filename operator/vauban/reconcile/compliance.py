"""Compliance profiles as concrete, checkable rules. Pure: a cluster's spec and the facts the
operator observed (its StorageClass, its Services...) in, each rule met or not — with the
evidence — out. The same results feed the `Compliant` condition and the auditors' report.

Profiles are cumulative: hds holds every iso27001 rule, secnumcloud every hds rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from vauban.api.cluster import ComplianceProfile, ManagedClusterSpec
from vauban.conditions import ConditionType, DomainCondition, Reason

ENCRYPTED_ANNOTATION = "vauban.dev/encrypted"

_RANK: dict[str, int] = {"none": 0, "iso27001": 1, "hds": 2, "secnumcloud": 3}

# StorageClass parameters by which CSI drivers say their volumes are encrypted.
_ENCRYPTION_PARAMETERS = {
    "encrypted": ("true",),  # AWS EBS, Ceph RBD, Longhorn
    "csi.storage.k8s.io/encrypted": ("true",),
}
_KEY_PARAMETERS = ("kmsKeyId", "disk-encryption-kms-key", "diskEncryptionSetID", "encryptionKMSID")

RuleId = Literal[
    "tls-required",
    "backups-configured",
    "network-policy",
    "encrypted-storage",
    "backup-region",
    "no-load-balancer",
    "external-key-manager",
]

_DESCRIPTIONS: dict[RuleId, str] = {
    "tls-required": "connections use TLS with a verified server certificate",
    "backups-configured": "backups go to an object store, encrypted with per-database keys",
    "network-policy": "a NetworkPolicy admits only the allowed namespaces (default deny)",
    "encrypted-storage": "volumes come from a StorageClass that encrypts them",
    "backup-region": "the backup bucket is in a region the platform allows",
    "no-load-balancer": "no Service of type LoadBalancer exposes the cluster",
    "external-key-manager": "keys are held by a key manager (KMIP, a PKCS#11 HSM), not in Secrets",
}

_ISO27001: tuple[RuleId, ...] = ("tls-required", "backups-configured", "network-policy")
_HDS: tuple[RuleId, ...] = (*_ISO27001, "encrypted-storage", "backup-region", "no-load-balancer")
_PROFILE_RULES: dict[str, tuple[RuleId, ...]] = {
    "none": (),
    "iso27001": _ISO27001,
    "hds": _HDS,
    "secnumcloud": (*_HDS, "external-key-manager"),
}


def rules_of(profile: str) -> tuple[RuleId, ...]:
    return _PROFILE_RULES[profile]


def certifies(profile: str, required: str) -> bool:
    """Whether a cluster of `profile` may hold what `required` demands (stricter is fine)."""
    return _RANK[profile] >= _RANK[required]


@dataclass(frozen=True)
class StorageEvidence:
    """Whether a StorageClass encrypts its volumes, and why we think so."""

    storage_class: str | None
    encrypted: bool
    evidence: str


def storage_evidence(
    name: str | None,
    annotations: Mapping[str, str] | None,
    parameters: Mapping[str, str] | None,
) -> StorageEvidence:
    """Judge a StorageClass (None: it does not exist, or no default class)."""
    if name is None or annotations is None:
        return StorageEvidence(name, False, "the StorageClass does not exist")
    if annotations.get(ENCRYPTED_ANNOTATION) == "true":
        return StorageEvidence(name, True, f'annotation {ENCRYPTED_ANNOTATION}: "true"')
    for key, values in _ENCRYPTION_PARAMETERS.items():
        if (parameters or {}).get(key, "").lower() in values:
            return StorageEvidence(name, True, f'parameter {key}: "true"')
    for key in _KEY_PARAMETERS:
        if (parameters or {}).get(key):
            return StorageEvidence(name, True, f"parameter {key} names an encryption key")
    return StorageEvidence(
        name,
        False,
        f'neither the annotation {ENCRYPTED_ANNOTATION}: "true" nor a known CSI encryption '
        "parameter",
    )


@dataclass(frozen=True)
class Facts:
    """What the operator observed about a cluster, beyond its spec."""

    storage: StorageEvidence | None = None
    """None for an external cluster (its storage is not Kubernetes')."""

    load_balancers: Sequence[str] = ()
    allowed_backup_regions: Sequence[str] = ()
    """Regions the platform allows for hds and secnumcloud backups; any when empty."""


@dataclass(frozen=True)
class RuleResult:
    rule: RuleId
    met: bool
    evidence: str

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self.rule]


@dataclass(frozen=True)
class Assessment:
    profile: ComplianceProfile
    results: tuple[RuleResult, ...] = field(default_factory=tuple)

    @property
    def unmet(self) -> list[RuleResult]:
        return [r for r in self.results if not r.met]

    def condition(self) -> DomainCondition:
        if self.profile == "none":
            return DomainCondition(
                ConditionType.COMPLIANT, "True", Reason.NO_PROFILE, "No compliance profile."
            )
        unmet = self.unmet
        if not unmet:
            return DomainCondition(
                ConditionType.COMPLIANT,
                "True",
                Reason.RULES_MET,
                f"All {len(self.results)} rules of profile {self.profile} are met.",
            )
        return DomainCondition(
            ConditionType.COMPLIANT,
            "False",
            Reason.RULES_UNMET,
            f"Profile {self.profile}: {len(unmet)} rule(s) unmet: "
            + "; ".join(f"{r.rule} ({r.evidence})" for r in unmet),
        )


def _check(rule: RuleId, spec: ManagedClusterSpec, facts: Facts) -> RuleResult:
    backup = spec.backup
    if rule == "tls-required":
        if spec.external is None:
            return RuleResult(rule, True, "managed clusters accept TLS connections only")
        mode = spec.external.ssl_mode
        return RuleResult(rule, mode in ("verify-full", "verify-ca"), f"sslMode is {mode}")
    if rule == "backups-configured":
        return RuleResult(
            rule,
            backup is not None,
            f"bucket {backup.object_store.bucket}" if backup else "no spec.backup.objectStore",
        )
    if rule == "network-policy":
        if spec.external is not None:
            return RuleResult(rule, True, "external server: its network is the provider's")
        return RuleResult(rule, True, "Vauban renders an ingress NetworkPolicy for the pods")
    if rule == "encrypted-storage":
        if facts.storage is None:
            return RuleResult(rule, True, "external server: not on Kubernetes volumes")
        return RuleResult(
            rule,
            facts.storage.encrypted,
            f"StorageClass {facts.storage.storage_class or '(default)'}: {facts.storage.evidence}",
        )
    if rule == "backup-region":
        if backup is None:
            return RuleResult(rule, False, "no backups")
        region = backup.object_store.region
        allowed = not facts.allowed_backup_regions or region in facts.allowed_backup_regions
        return RuleResult(
            rule,
            allowed,
            f"region {region}"
            + ("" if allowed else f" is not one of {', '.join(facts.allowed_backup_regions)}"),
        )
    if rule == "no-load-balancer":
        return RuleResult(
            rule,
            not facts.load_balancers,
            "none" if not facts.load_balancers else ", ".join(facts.load_balancers),
        )
    provider = spec.encryption.provider
    return RuleResult(rule, provider in ("kmip", "pkcs11"), f"key provider is {provider}")


def assess(spec: ManagedClusterSpec, facts: Facts) -> Assessment:
    profile = spec.compliance.profile
    return Assessment(profile, tuple(_check(r, spec, facts) for r in rules_of(profile)))


def encrypted_condition(
    spec: ManagedClusterSpec, storage: StorageEvidence | None
) -> DomainCondition:
    """`Encrypted`: whether the cluster's volumes are encrypted at rest (backups always are)."""
    if storage is None:
        return DomainCondition(
            ConditionType.ENCRYPTED,
            "Unknown",
            Reason.EXTERNAL_STORAGE,
            "External server: encryption of its disks is the provider's; backups are "
            "encrypted by Vauban.",
        )
    if storage.encrypted:
        return DomainCondition(
            ConditionType.ENCRYPTED,
            "True",
            Reason.STORAGE_CLASS_ENCRYPTED,
            f"StorageClass {storage.storage_class}: {storage.evidence}.",
        )
    return DomainCondition(
        ConditionType.ENCRYPTED,
        "False",
        Reason.STORAGE_CLASS_NOT_ENCRYPTED,
        f"StorageClass {storage.storage_class or '(default)'} is not known to encrypt: "
        f"{storage.evidence}.",
    )


def requires_encryption(spec: ManagedClusterSpec) -> bool:
    return "encrypted-storage" in rules_of(spec.compliance.profile)


def placement(cluster_profile: str, data_classification: str) -> DomainCondition:
    """`Compliant` of a database: health data only on an hds (or stricter) cluster."""
    if data_classification == "health" and not certifies(cluster_profile, "hds"):
        return DomainCondition(
            ConditionType.COMPLIANT,
            "False",
            Reason.CLUSTER_NOT_CERTIFIED,
            f"dataClassification health needs a cluster with compliance profile hds or "
            f"secnumcloud; this cluster's is {cluster_profile}. Nothing was created: move the "
            "database to a certified cluster.",
        )
    return DomainCondition(
        ConditionType.COMPLIANT,
        "True",
        Reason.PLACEMENT_ALLOWED,
        f"{data_classification} data is allowed on a {cluster_profile} cluster.",
    )
