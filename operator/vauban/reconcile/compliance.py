"""Compliance profiles as concrete, checkable rules. Pure: a cluster's spec and the facts the
operator observed (its StorageClass, its Services, its NetworkPolicy read back, what the server
says of TLS, its databases' backups...) in, each rule met or not — with the evidence — out.
The same results feed the `Compliant` condition and the auditors' report.

A fact that could not be observed (a view the admin role may not read, a server not running
yet) is said in the evidence as "not observable: why"; the rule is then judged on what could
be seen, never failed for the missing view alone.

Profiles are cumulative: hds holds every iso27001 rule, secnumcloud every hds rule.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from vauban.api.backup import ManagedBackupStatus
from vauban.api.cluster import ComplianceProfile, ManagedClusterSpec
from vauban.conditions import ConditionType, DomainCondition, Reason
from vauban.reconcile.backup import (
    FAILED,
    SUCCEEDED,
    BackupRecord,
    last_success,
    overdue_since,
    schedule_error,
)
from vauban.timefmt import parse_rfc3339, rfc3339

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
    "backups-succeeding",
    "network-policy",
    "encrypted-storage",
    "backup-region",
    "no-load-balancer",
    "external-key-manager",
    "backups-survive-cluster-loss",
    "audit-logging",
]

_DESCRIPTIONS: dict[RuleId, str] = {
    "tls-required": "the server refuses connections without TLS; the operator verifies it",
    "backups-configured": "backups go to an object store, encrypted with per-database keys",
    "backups-succeeding": "each database's latest backup succeeded, none missed two runs",
    "network-policy": "a NetworkPolicy admits only the allowed namespaces (default deny)",
    "encrypted-storage": "volumes come from a StorageClass that encrypts them",
    "backup-region": "the backup bucket is in a region the platform allows",
    "no-load-balancer": "no Service of type LoadBalancer exposes the cluster",
    "external-key-manager": "keys are held by a key manager (KMIP, a PKCS#11 HSM), not in Secrets",
    "backups-survive-cluster-loss": "backups can be restored elsewhere once this Kubernetes "
    "cluster is lost: the key-encryption key is in an HSM or escrowed to a recovery key",
    "audit-logging": "pgaudit is loaded and logs statement classes (pgaudit.log is not none)",
}

_ISO27001: tuple[RuleId, ...] = (
    "tls-required",
    "backups-configured",
    "backups-succeeding",
    "network-policy",
)
_HDS: tuple[RuleId, ...] = (
    *_ISO27001,
    "encrypted-storage",
    "backup-region",
    "no-load-balancer",
    "backups-survive-cluster-loss",
    "audit-logging",
)
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


# --- TLS on the server ---------------------------------------------------------------------

_PLAIN_CAPABLE = ("host", "hostnossl", "hostnogssenc")
"""pg_hba connection types that can match a TCP connection without TLS. `hostssl` needs TLS,
`hostgssenc` GSSAPI encryption, `local` is the Unix socket."""


@dataclass(frozen=True)
class HbaRule:
    """One rule of pg_hba_file_rules, in file order."""

    line: int
    type: str
    databases: tuple[str, ...]
    users: tuple[str, ...]
    address: str | None
    netmask: str | None
    method: str

    @property
    def where(self) -> str:
        if self.address is None or self.netmask is None:
            return self.address or ""
        return f"{self.address}/{_prefix_length(self.netmask)}"

    def __str__(self) -> str:
        fields = (self.type, ",".join(self.databases), ",".join(self.users), self.where)
        return f"line {self.line}: " + " ".join(f for f in (*fields, self.method) if f)

    @property
    def families(self) -> frozenset[int]:
        """The IP versions this rule can match: both for `all`, a host name, samehost..."""
        if self.address is None or self.netmask is None:
            return frozenset((4, 6))
        try:
            return frozenset((ipaddress.ip_address(self.address).version,))
        except ValueError:
            return frozenset((4, 6))

    @property
    def rejects_all_plain(self) -> frozenset[int]:
        """The IP versions of which this rule rejects every connection it can see without TLS
        (`hostnossl all all all reject`, or `0.0.0.0/0` and `::/0`): later rules never see
        them."""
        if (
            self.type not in _PLAIN_CAPABLE
            or self.method != "reject"
            or self.databases != ("all",)
            or self.users != ("all",)
        ):
            return frozenset()
        if self.address == "all":
            return frozenset((4, 6))
        if self.netmask is not None and _prefix_length(self.netmask) == 0:
            return self.families
        return frozenset()


def _prefix_length(netmask: str) -> int | str:
    try:
        return bin(int(ipaddress.ip_address(netmask))).count("1")
    except ValueError:
        return netmask


@dataclass(frozen=True)
class ServerTls:
    """What the server says of TLS, read through the operator's admin session. None where
    it could not be read, and `unobservable` says why."""

    ssl: bool | None = None
    hba: tuple[HbaRule, ...] | None = None
    unobservable: str = ""

    @classmethod
    def not_observed(cls, why: str) -> ServerTls:
        return cls(unobservable=why)


def plain_text_rules(hba: Sequence[HbaRule]) -> tuple[list[HbaRule], HbaRule | None]:
    """The rules that accept a connection without TLS, in file order (first match wins:
    those behind a rule rejecting every such connection are never reached), and the
    rejecting rule that shadowed at least one accepting rule, if any."""
    covered: frozenset[int] = frozenset()
    accepting: list[HbaRule] = []
    shadow: HbaRule | None = None
    rejecting: HbaRule | None = None
    for rule in hba:
        if rule.type not in _PLAIN_CAPABLE:
            continue
        if rule.method == "reject":
            if rule.rejects_all_plain - covered:
                covered |= rule.rejects_all_plain
                rejecting = rule
        elif rule.families <= covered:
            shadow = shadow or rejecting
        else:
            accepting.append(rule)
    return accepting, shadow


def _listed(items: Sequence[object], at_most: int = 3) -> str:
    shown = ", ".join(str(i) for i in items[:at_most])
    return shown + (f" (+{len(items) - at_most} more)" if len(items) > at_most else "")


def _tls(spec: ManagedClusterSpec, server: ServerTls | None) -> tuple[bool, list[str]]:
    met, seen = True, []
    if spec.external is not None:
        mode = spec.external.ssl_mode
        met = mode in ("verify-full", "verify-ca")
        seen.append(f"sslMode is {mode}")
    server = server or ServerTls.not_observed("not read")
    if server.ssl is None:
        return met, [*seen, f"server not observable: {server.unobservable}"]
    met = met and server.ssl
    seen.append("ssl is on" if server.ssl else "ssl is off")
    if server.hba is None:
        return met, [*seen, f"pg_hba not observable: {server.unobservable}"]
    accepting, shadow = plain_text_rules(server.hba)
    if accepting:
        return False, [*seen, f"pg_hba accepts connections without TLS at {_listed(accepting)}"]
    note = f" ({shadow} comes first)" if shadow is not None else ""
    return met, [*seen, f"pg_hba: no rule accepts a connection without TLS{note}"]


_AUDIT_SPEC_MISSING = (
    "spec.postgresql needs sharedPreloadLibraries [pgaudit] and parameters pgaudit.log "
    "(e.g. 'ddl,role')"
)


@dataclass(frozen=True)
class ServerAudit:
    """Whether the server runs pgaudit, read through the operator's admin session: the
    library defines its settings (pgaudit.log, superuser context) only once loaded, so a
    defined pgaudit.log is the proof, readable without a superuser's privileges."""

    loaded: bool | None = None
    log: str | None = None
    """pgaudit.log: the statement classes logged (`none`: nothing)."""
    unobservable: str = ""

    @classmethod
    def not_observed(cls, why: str) -> ServerAudit:
        return cls(unobservable=why)


def _audit(spec: ManagedClusterSpec, audit: ServerAudit | None) -> tuple[bool, str]:
    audit = audit or ServerAudit.not_observed("not read")
    if audit.loaded is None:
        if spec.external is not None:
            return True, f"pgaudit not observable: {audit.unobservable}"
        # Judged on the spec, which the server runs once it is up.
        postgresql = spec.postgresql
        log = postgresql.parameters.get("pgaudit.log", "none") if postgresql else "none"
        preloaded = postgresql is not None and "pgaudit" in postgresql.shared_preload_libraries
        met = preloaded and log.strip().lower() not in ("", "none")
        return met, (
            f"pgaudit not observable ({audit.unobservable}); spec: "
            + (f"pgaudit preloaded, pgaudit.log = {log}" if met else _AUDIT_SPEC_MISSING)
        )
    if not audit.loaded:
        return False, "pgaudit is not loaded: " + (
            "add pgaudit to shared_preload_libraries"
            if spec.external is not None
            else _AUDIT_SPEC_MISSING
        )
    if audit.log is None or audit.log.strip().lower() in ("", "none"):
        return False, "pgaudit is loaded but pgaudit.log is none: nothing is logged"
    return True, f"pgaudit is loaded; pgaudit.log = {audit.log}"


# --- the NetworkPolicy, read back ------------------------------------------------------------


@dataclass(frozen=True)
class PolicyFacts:
    """The NetworkPolicy Vauban renders for a managed cluster, as the apiserver has it."""

    name: str
    namespace: str
    pod_labels: Mapping[str, str]
    """Labels every instance pod of the cluster carries."""

    spec: Mapping[str, Any] | None
    """The policy's spec (wire form); None when it does not exist."""

    instances: bool = True
    """Whether CloudNativePG's Cluster exists: before it does, nothing runs to protect."""


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether a label selector (wire form) matches `labels`; an empty one matches all."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, values = e.get("key"), e.get("values") or []
        matched = {
            "In": labels.get(key) in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }.get(e.get("operator"), False)
        if not matched:
            return False
    return True


def _described(selector: Mapping[str, Any]) -> str:
    terms = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for e in selector.get("matchExpressions") or []:
        values = ",".join(e.get("values") or [])
        terms.append(f"{e.get('key')} {e.get('operator')}" + (f" ({values})" if values else ""))
    return "namespaces labelled " + " and ".join(terms) if terms else "every namespace"


def admitted(namespace: str, ingress: Iterable[Mapping[str, Any]]) -> tuple[list[str], bool]:
    """What an ingress policy's rules admit, said for a person (namespaces by name first),
    and whether a rule admits every source (no `from`: any pod, any address)."""
    names: set[str] = set()
    others: list[str] = []
    everyone = False
    for rule in ingress:
        peers = rule.get("from") or []
        everyone = everyone or not peers
        for peer in peers:
            if "ipBlock" in peer:
                others.append(f"addresses {peer['ipBlock'].get('cidr')}")
                continue
            selector = peer.get("namespaceSelector")
            if selector is None:
                names.add(namespace)
                continue
            by_name = [
                e
                for e in selector.get("matchExpressions") or []
                if e.get("key") == "kubernetes.io/metadata.name" and e.get("operator") == "In"
            ]
            if by_name and len(by_name) == len(selector.get("matchExpressions") or []):
                names.update(v for e in by_name for v in e.get("values") or [])
            else:
                others.append(_described(selector))
    listed = [", ".join(sorted(names))] if names else []
    return listed + sorted(set(others)), everyone


def _network_policy(policy: PolicyFacts | None) -> tuple[bool, str]:
    if policy is None:
        return False, "NetworkPolicy not read"
    if policy.spec is None and not policy.instances:
        return True, f"NetworkPolicy {policy.name} not created yet: no instance exists"
    if policy.spec is None:
        return False, f"NetworkPolicy {policy.name} not found"
    spec = policy.spec
    faults = []
    if "Ingress" not in (spec.get("policyTypes") or []):
        faults.append("its policyTypes lack Ingress")
    if not selects(spec.get("podSelector"), policy.pod_labels):
        faults.append("it does not select the instance pods")
    sources, everyone = admitted(policy.namespace, spec.get("ingress") or [])
    if everyone:
        faults.append("a rule admits every source")
    if faults:
        return False, f"NetworkPolicy {policy.name}: " + "; ".join(faults)
    return True, (
        f"NetworkPolicy {policy.name}: Ingress, selects the instance pods; admits "
        + ("from namespaces " + "; ".join(sources) if sources else "nothing")
    )


# --- backups, as they went ------------------------------------------------------------------


@dataclass(frozen=True)
class DatabaseBackups:
    """One database of the cluster and its ManagedBackups."""

    name: str
    """namespace/name."""

    schedule: str | None
    """The schedule in effect: the database's, else the cluster's."""

    created: datetime | None
    backups: Sequence[BackupRecord]


def database_backups(
    database: Mapping[str, Any],
    backups: Iterable[Mapping[str, Any]],
    cluster_schedule: str | None,
) -> DatabaseBackups:
    """A ManagedDatabase and its ManagedBackups as the apiserver has them. The backups'
    phase and finish time come from their status: observation, fit for a report (the
    database's own BackupHealthy is decided from the ledger and the bucket)."""
    meta = database["metadata"]
    own = ((database.get("spec") or {}).get("backup") or {}).get("schedule")
    return DatabaseBackups(
        name=f"{meta['namespace']}/{meta['name']}",
        schedule=own or cluster_schedule,
        created=parse_rfc3339(meta.get("creationTimestamp")),
        backups=tuple(
            _backup_record(b) for b in backups if not b["metadata"].get("deletionTimestamp")
        ),
    )


def _backup_record(backup: Mapping[str, Any]) -> BackupRecord:
    status = ManagedBackupStatus.parse(backup.get("status"))
    return BackupRecord(
        name=str(backup["metadata"]["name"]),
        phase=status.phase,
        finished=parse_rfc3339(status.finished_at),
        created=parse_rfc3339(backup["metadata"].get("creationTimestamp")),
    )


def _overdue(db: DatabaseBackups, now: datetime) -> str | None:
    """Why a scheduled database has gone two runs without a successful backup, or None."""
    if db.schedule is None:
        return None
    if schedule_error(db.schedule) is not None:
        return f"{db.name} (schedule {db.schedule!r} is not a cron schedule)"
    deadline = overdue_since(db.schedule, now)
    success = last_success(db.backups)
    if success is None:
        young = db.created is not None and db.created > deadline
        return None if young else f"{db.name} (never)"
    if success.finished is not None and success.finished < deadline:
        return f"{db.name} (last at {rfc3339(success.finished)})"
    return None


def _backups_succeeding(
    spec: ManagedClusterSpec, databases: Sequence[DatabaseBackups] | None, now: datetime | None
) -> tuple[bool, str]:
    if spec.backup is None:
        return False, "no spec.backup.objectStore: nothing is backed up"
    if databases is None:
        return True, "not observable: the databases were not read yet"
    if not databases:
        return True, "no databases yet"
    failed, overdue, never = [], [], []
    oldest: tuple[datetime, str] | None = None
    for db in sorted(databases, key=lambda d: d.name):
        done = [b for b in db.backups if b.phase in (SUCCEEDED, FAILED) and b.finished]
        latest = max(done, key=lambda b: b.finished or datetime.min, default=None)
        if latest is not None and latest.phase == FAILED:
            failed.append(f"{db.name} (ManagedBackup {latest.name})")
        if now is not None and (late := _overdue(db, now)) is not None:
            overdue.append(late)
        success = last_success(db.backups)
        if success is None or success.finished is None:
            never.append(db.name)
        elif oldest is None or success.finished < oldest[0]:
            oldest = (success.finished, f"{db.name} (ManagedBackup {success.name})")
    counted = f"{len(databases)} database(s)"
    if failed or overdue:
        faults = [f"latest backup failed: {_listed(failed)}"] if failed else []
        if overdue:
            faults.append(f"no successful backup in two scheduled runs: {_listed(overdue)}")
        return False, f"{counted}: " + "; ".join(faults)
    said = [f"{counted}, none whose latest backup failed or that missed two scheduled runs"]
    if oldest is not None:
        said.append(f"oldest last success: {oldest[1]} at {rfc3339(oldest[0])}")
    if never:
        said.append(f"no backup yet: {_listed(never)}")
    return True, "; ".join(said)


@dataclass(frozen=True)
class Facts:
    """What the operator observed about a cluster, beyond its spec."""

    storage: StorageEvidence | None = None
    """None for an external cluster (its storage is not Kubernetes')."""

    load_balancers: Sequence[str] = ()
    allowed_backup_regions: Sequence[str] = ()
    """Regions the platform allows for hds and secnumcloud backups; any when empty."""

    server: ServerTls | None = None
    """What the server said of TLS; None when it was not asked."""

    network_policy: PolicyFacts | None = None
    """The managed cluster's NetworkPolicy, read back; None when it was not read."""

    databases: Sequence[DatabaseBackups] | None = None
    """The cluster's databases and their backups; None when they were not read."""

    recovery_key: str | None = None
    """Fingerprint of the platform's recovery public key, when the operator has one."""
    audit: ServerAudit | None = None
    """Whether the server runs pgaudit; None when it was not asked."""

    now: datetime | None = None


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
        met, seen = _tls(spec, facts.server)
        return RuleResult(rule, met, "; ".join(seen))
    if rule == "backups-configured":
        return RuleResult(
            rule,
            backup is not None,
            f"bucket {backup.object_store.bucket}" if backup else "no spec.backup.objectStore",
        )
    if rule == "backups-succeeding":
        return RuleResult(rule, *_backups_succeeding(spec, facts.databases, facts.now))
    if rule == "network-policy":
        if spec.external is not None:
            return RuleResult(rule, True, "external server: its network is the provider's")
        return RuleResult(rule, *_network_policy(facts.network_policy))
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
    if rule == "backups-survive-cluster-loss":
        return RuleResult(rule, *recovery(spec, facts.recovery_key))
    if rule == "audit-logging":
        return RuleResult(rule, *_audit(spec, facts.audit))
    provider = spec.encryption.provider
    return RuleResult(rule, provider in ("kmip", "pkcs11"), f"key provider is {provider}")


def recovery(spec: ManagedClusterSpec, recovery_key: str | None) -> tuple[bool, str]:
    """Whether the cluster's backups survive the loss of this Kubernetes cluster, and how."""
    provider = spec.encryption.provider
    if spec.backup is None:
        return False, "no backups"
    if provider in ("kmip", "pkcs11"):
        return True, f"the key-encryption key is held by the {provider} HSM, outside Kubernetes"
    if recovery_key is not None:
        return True, (
            f"the key-encryption key is escrowed in the bucket, sealed to recovery key "
            f"{recovery_key}"
        )
    return False, (
        "the key-encryption key is only in a Secret of this Kubernetes cluster and no "
        "recovery key is configured: the backups do not survive the loss of the cluster"
    )


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
