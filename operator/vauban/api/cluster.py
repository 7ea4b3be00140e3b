"""ManagedCluster: a PostgreSQL server cluster that tenants place databases on.

Managed mode: Vauban renders a CloudNativePG `Cluster` (CloudNativePG brings replication,
failover and rolling updates) and adds tenancy, compliance, keys and backups around it.
External mode: Vauban adopts an existing server it reaches at `external.host`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints

from vauban.api.common import (
    ApiModel,
    Condition,
    CronSchedule,
    DeletionPolicy,
    Duration,
    KindInfo,
    LocalObjectReference,
    NamespaceName,
    ObjectName,
    PrinterColumn,
    Quantity,
    ResourceRequirements,
    SecretKeySelector,
    StatusModel,
    cel,
    validations,
)

# PostgreSQL majors that CloudNativePG's images and Vauban's agent support.
SUPPORTED_MAJORS = ("13", "14", "15", "16", "17", "18")

# Server parameters a tenant may tune. Everything else (archiving, replication, listen
# addresses, file locations, TLS, authentication) is Vauban's or CloudNativePG's to set:
# a tenant changing it could break failover, backups or the security posture.
ALLOWED_PARAMETERS = (
    "max_connections",
    "shared_buffers",
    "effective_cache_size",
    "work_mem",
    "maintenance_work_mem",
    "max_wal_size",
    "min_wal_size",
    "checkpoint_timeout",
    "checkpoint_completion_target",
    "random_page_cost",
    "effective_io_concurrency",
    "default_statistics_target",
    "max_worker_processes",
    "max_parallel_workers",
    "max_parallel_workers_per_gather",
    "max_parallel_maintenance_workers",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "log_min_duration_statement",
    "log_statement",
    "log_lock_waits",
    "track_io_timing",
    "timezone",
    "autovacuum_max_workers",
    "autovacuum_naptime",
    "autovacuum_vacuum_scale_factor",
    "autovacuum_analyze_scale_factor",
    # pgaudit (with pgaudit in sharedPreloadLibraries; CloudNativePG creates the extension in
    # every database once one of them is set): what the hds and secnumcloud profiles require.
    "pgaudit.log",
    "pgaudit.log_catalog",
    "pgaudit.log_parameter",
    "pgaudit.log_relation",
    "pgaudit.log_statement_once",
    "pgaudit.role",
)

# Libraries a managed cluster may preload: those the instance image ships, and only these.
ALLOWED_PRELOAD_LIBRARIES = ("pgaudit",)

Mode = Literal["Managed", "External"]
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
ComplianceProfile = Literal["none", "iso27001", "hds", "secnumcloud"]
KeyProvider = Literal["kubernetes-secret", "kmip", "pkcs11"]

LabelValue = Annotated[
    str,
    StringConstraints(max_length=63, pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"),
]
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
LabelKey = Annotated[
    str, StringConstraints(min_length=1, max_length=317, pattern=LABEL_KEY_PATTERN)
]


class StorageSpec(ApiModel):
    """The persistent volume of each instance."""

    size: Annotated[
        Quantity,
        Field(
            json_schema_extra=validations(
                cel(
                    "quantity(self).compareTo(quantity('1Gi')) >= 0",
                    "storage.size must be at least 1Gi",
                ),
                cel(
                    "quantity(self).compareTo(quantity(oldSelf)) >= 0",
                    "storage.size can grow but never shrink: volumes cannot be made smaller",
                ),
            )
        ),
    ]
    """Size of each instance's volume, at least 1Gi (e.g. 20Gi). It may grow, never shrink."""

    storage_class_name: (
        Annotated[
            ObjectName,
            Field(
                json_schema_extra=validations(
                    cel("self == oldSelf", "storageClassName is immutable")
                )
            ),
        ]
        | None
    ) = None
    """StorageClass of the volumes; the cluster's default class when unset. Immutable."""


class ExternalServer(ApiModel):
    """How Vauban reaches an existing PostgreSQL server it adopts."""

    host: Annotated[
        str,
        StringConstraints(
            min_length=1,
            max_length=253,
            pattern=r"^([a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?)*"
            r"|[0-9a-fA-F:]+)$",
        ),
    ]
    """DNS name or IP address of the server."""

    port: Annotated[int, Field(ge=1, le=65535)] = 5432
    """TCP port of the server."""

    admin_secret_ref: LocalObjectReference
    """Secret (type kubernetes.io/basic-auth, keys `username` and `password`) of a role that
    may create roles and databases. Read by the operator only; never copied elsewhere."""

    ssl_mode: SslMode = "verify-full"
    """libpq sslmode used to reach the server. verify-full checks the certificate and the host
    name against `caSecretRef`; weaker modes are for servers on a trusted network only."""

    ca_secret_ref: SecretKeySelector | None = None
    """CA certificate (PEM) that signed the server's certificate, for verify-ca and verify-full."""


class PostgresConfiguration(ApiModel):
    """PostgreSQL server configuration."""

    parameters: Annotated[
        dict[str, Annotated[str, StringConstraints(max_length=256)]],
        Field(
            max_length=len(ALLOWED_PARAMETERS),
            json_schema_extra=validations(
                cel(
                    f"self.all(k, k in {list(ALLOWED_PARAMETERS)!r})",
                    "only these parameters may be set: " + ", ".join(ALLOWED_PARAMETERS),
                ),
            ),
        ),
    ] = Field(default_factory=dict)
    """Server parameters (postgresql.conf), from an allow-list of tuning parameters."""

    shared_preload_libraries: Annotated[
        list[Literal[ALLOWED_PRELOAD_LIBRARIES]],  # type: ignore[valid-type]
        Field(
            max_length=len(ALLOWED_PRELOAD_LIBRARIES),
            json_schema_extra={"x-kubernetes-list-type": "set"},
        ),
    ] = Field(default_factory=list)
    """Libraries loaded at server start (mode Managed; a change restarts the instances, one
    at a time): `pgaudit`, for audit logging set by the `pgaudit.*` parameters."""


class ObjectStore(ApiModel):
    """An S3-compatible bucket that receives backups."""

    bucket: Annotated[
        str,
        StringConstraints(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$"),
    ]
    """Bucket name."""

    endpoint: (
        Annotated[str, StringConstraints(max_length=512, pattern=r"^https?://[^\s]+$")] | None
    ) = None
    """URL of the S3 endpoint; the provider's default when unset."""

    region: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9-]+$")]
    """Region of the bucket. Compliance profiles restrict which regions are allowed."""

    prefix: Annotated[
        str, StringConstraints(max_length=256, pattern=r"^[A-Za-z0-9!_.*'()/-]*$")
    ] = ""
    """Key prefix under which this cluster's backups are stored."""

    credentials_secret_ref: LocalObjectReference
    """Secret with keys `accessKeyId` and `secretAccessKey` for the bucket."""

    object_lock_days: Annotated[int, Field(ge=1, le=3650)] | None = None
    """Make each backup undeletable for this many days (S3 Object Lock, compliance mode):
    not even stolen credentials can remove it. Needs a bucket created with Object Lock;
    without it, backups are written unlocked and their status says so. Retention cannot
    remove a backup before its lock ends."""


class RetentionPolicy(ApiModel):
    """How long backups are kept. A backup is deleted once it breaks either rule."""

    keep_last: Annotated[int, Field(ge=1, le=1000)] | None = None
    """Keep at most this many successful backups."""

    max_age: Duration | None = None
    """Delete backups older than this (e.g. 30d)."""


class ClusterBackupPolicy(ApiModel):
    """Backup defaults of the cluster; databases inherit them unless they set their own."""

    object_store: ObjectStore
    """Where backups of this cluster's databases are written."""

    schedule: CronSchedule | None = None
    """Default schedule of database backups (cron, in UTC), e.g. `0 2 * * *`."""

    retention: RetentionPolicy | None = None
    """Default retention of database backups."""

    import_: Annotated[BackupImport | None, Field(alias="import")] = None
    """Adopt the backups another Vauban left in this object store (disaster recovery): each
    database's backups found there become ManagedBackups of its namespace, restorable with
    restore.databaseRef as usual. See docs/security.md."""


class BackupImport(ApiModel):
    """Backups to adopt from the object store, as a new cluster's after the loss of the one
    that made them."""

    prefix: Annotated[
        str, StringConstraints(max_length=256, pattern=r"^[A-Za-z0-9!_.*'()/-]*$")
    ] = ""
    """Only the databases under this key prefix, within objectStore.prefix (e.g. a
    namespace's name); every one when empty. The objectStore (bucket and prefix) must be the
    lost cluster's."""


# An instant, RFC 3339 with a time zone (e.g. 2026-12-06T07:30:00Z).
Timestamp = Annotated[
    str,
    StringConstraints(
        max_length=40,
        pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
        r"(Z|[+-][0-9]{2}:[0-9]{2})$",
    ),
]


class ClusterRestore(ApiModel):
    """Where a new cluster's data comes from: another cluster's continuous archive (its base
    backups and WAL), replayed up to a point in time."""

    from_cluster: Annotated[
        str,
        StringConstraints(min_length=1, max_length=50, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
    ]
    """The ManagedCluster of this namespace whose archive is recovered. Its archive is found
    in this cluster's spec.backup.objectStore, where that cluster wrote it; the cluster itself
    may be gone."""

    target_time: Timestamp | None = None
    """Recover up to this instant (RFC 3339): transactions committed after it are not
    replayed. The end of the archive when unset."""


class EncryptionSpec(ApiModel):
    """Keys of the cluster: backups are encrypted with a data key per database, wrapped by a
    key-encryption key held by the key provider."""

    provider: Annotated[
        KeyProvider,
        Field(
            json_schema_extra=validations(
                cel(
                    "self == oldSelf",
                    "encryption.provider is immutable: existing data keys are wrapped by the "
                    "first provider's key",
                )
            )
        ),
    ] = "kubernetes-secret"
    """Key provider. kubernetes-secret keeps the key-encryption key in a Secret of the
    operator's namespace; kmip keeps it in the platform's key manager (an HSM speaking KMIP);
    pkcs11 keeps it on the platform's HSM token, through its PKCS#11 module. The operator must
    be configured for kmip and pkcs11. Immutable."""

    rotation_period: Duration | None = None
    """Rotate the key-encryption key this often (e.g. 90d); never when unset."""


class ComplianceSpec(ApiModel):
    """The compliance profile the cluster must meet."""

    profile: ComplianceProfile = "none"
    """none, iso27001, hds (Hébergeur de Données de Santé) or secnumcloud. Each profile implies
    concrete rules (TLS, encrypted storage, allowed backup regions...) reported in the
    Compliant condition."""


class LabelSelectorRequirement(ApiModel):
    """A label selector requirement, as in metav1.LabelSelectorRequirement."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.operator in ['In', 'NotIn'] ? size(self.values) > 0 : size(self.values) == 0",
                "values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist",
            ),
        )
    )

    key: LabelKey
    """The label key the selector applies to."""

    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How the key relates to the values."""

    values: Annotated[list[LabelValue], Field(max_length=64)] = Field(default_factory=list)
    """Values for In and NotIn."""


class LabelSelector(ApiModel):
    """Selects namespaces by their labels; requirements are ANDed. An empty selector, which
    would admit every namespace, is refused: name the namespaces, or a label only the
    platform sets (whoever may label a namespace may otherwise place databases here)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "(has(self.matchLabels) && size(self.matchLabels) > 0)"
                " || (has(self.matchExpressions) && size(self.matchExpressions) > 0)",
                "an empty selector would admit every namespace: give matchLabels or "
                "matchExpressions",
            ),
        )
    )

    match_labels: Annotated[
        dict[str, LabelValue],
        Field(
            max_length=32,
            json_schema_extra=validations(
                cel(
                    f"self.all(k, k.size() <= 317 && k.matches({LABEL_KEY_PATTERN!r}))",
                    "matchLabels keys must be label keys: [prefix/]name",
                )
            ),
        ),
    ] = Field(default_factory=dict)
    """Labels a namespace must carry, each with the given value."""

    match_expressions: Annotated[list[LabelSelectorRequirement], Field(max_length=16)] = Field(
        default_factory=list
    )
    """Requirements a namespace's labels must meet."""


class TenantConnectionLimit(ApiModel):
    """How many sessions each tenant login may hold, so that no tenant can take every slot
    of the server from the others and from the operator."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            # has(): the CRD's own default ({}) is checked before its fields are defaulted.
            cel(
                "!has(self.default) || !has(self.maximum) || self.default <= self.maximum",
                "default must not exceed maximum",
            ),
        )
    )

    default: Annotated[int, Field(ge=1, le=10000)] = 20
    """For a ManagedDatabase that sets no spec.connectionLimit."""

    maximum: Annotated[int, Field(ge=1, le=10000)] = 100
    """The most a ManagedDatabase may ask for; a database asking for more is refused
    (ConnectionLimitTooHigh), nothing is changed."""


class AllowedNamespaces(ApiModel):
    """Namespaces whose ManagedDatabases may use this cluster, besides the cluster's own."""

    names: Annotated[list[NamespaceName], Field(max_length=256)] = Field(default_factory=list)
    """Namespaces allowed by name."""

    selector: LabelSelector | None = None
    """Namespaces allowed by their labels."""


class ManagedClusterSpec(ApiModel):
    """Desired state of a ManagedCluster."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.mode == 'External' ? has(self.external) : !has(self.external)",
                "mode External needs spec.external (host, adminSecretRef); "
                "mode Managed must not set it",
            ),
            cel(
                "self.mode == 'External' || has(self.storage)",
                "mode Managed needs spec.storage.size",
            ),
            cel(
                "self.mode == 'External' || has(self.version)",
                "mode Managed needs spec.version (the PostgreSQL major version, e.g. '17')",
            ),
            cel(
                "self.mode == 'Managed' || (self.instances == 1 && !has(self.storage)"
                " && !has(self.resources) && !has(self.postgresql))",
                "instances, storage, resources and postgresql apply to mode Managed only: "
                "an external server's topology and configuration are its own",
            ),
            cel(
                "!has(self.restore) || (self.mode == 'Managed' && has(self.backup))",
                "spec.restore needs mode Managed and spec.backup (the object store that holds "
                "the archive, where this cluster archives too)",
            ),
            cel(
                "has(self.restore) == has(oldSelf.restore)",
                "spec.restore is set when the cluster is created, never later: a running "
                "cluster cannot be replaced by a recovery",
            ),
        )
    )

    engine: Annotated[
        Literal["postgresql"],
        Field(json_schema_extra=validations(cel("self == oldSelf", "engine is immutable"))),
    ] = "postgresql"
    """Database engine. Only postgresql today."""

    mode: Annotated[
        Mode, Field(json_schema_extra=validations(cel("self == oldSelf", "mode is immutable")))
    ] = "Managed"
    """Managed: Vauban runs the server through CloudNativePG. External: Vauban adopts an
    existing server. Immutable."""

    version: (
        Annotated[
            str,
            StringConstraints(pattern=r"^(" + "|".join(SUPPORTED_MAJORS) + r")(\.[0-9]{1,3})?$"),
        ]
        | None
    ) = None
    """PostgreSQL version: a major (e.g. 17) or major.minor (e.g. 17.6). Required for mode
    Managed; for mode External the version the server must run, checked when set."""

    instances: Annotated[int, Field(ge=1, le=9)] = 1
    """Number of instances (one primary, the rest streaming replicas). Mode Managed only."""

    storage: StorageSpec | None = None
    """Persistent storage of each instance. Required for mode Managed."""

    resources: ResourceRequirements | None = None
    """CPU and memory of each instance. Mode Managed only."""

    postgresql: PostgresConfiguration | None = None
    """PostgreSQL configuration. Mode Managed only."""

    external: ExternalServer | None = None
    """Connection to the adopted server. Required for mode External, forbidden otherwise."""

    backup: ClusterBackupPolicy | None = None
    """Where and how often databases on this cluster are backed up. Mode Managed: the
    cluster's WAL and base backups are archived there too (point-in-time recovery)."""

    restore: Annotated[
        ClusterRestore | None,
        Field(json_schema_extra=validations(cel("self == oldSelf", "spec.restore is immutable"))),
    ] = None
    """Create the cluster from another cluster's archive, to a point in time (mode
    Managed). Immutable."""

    encryption: EncryptionSpec = Field(
        default_factory=EncryptionSpec, json_schema_extra={"default": {}}
    )
    """Key management of the cluster's backups."""

    compliance: ComplianceSpec = Field(
        default_factory=ComplianceSpec, json_schema_extra={"default": {}}
    )
    """The compliance profile the cluster is held to."""

    allowed_namespaces: AllowedNamespaces | None = None
    """Namespaces besides the cluster's own whose ManagedDatabases may use it. Only the
    cluster's own namespace when unset."""

    tenant_connection_limit: TenantConnectionLimit = Field(
        default_factory=TenantConnectionLimit, json_schema_extra={"default": {}}
    )
    """Default and maximum of each tenant login's connection limit on this cluster."""

    deletion_policy: DeletionPolicy = "Retain"
    """What deleting the ManagedCluster does to its data: Retain keeps volumes and the
    superuser Secret for re-adoption; Delete removes them."""

    deletion_protection: bool = False
    """When true, deleting the ManagedCluster is refused."""


class Endpoints(StatusModel):
    """Where clients connect."""

    read_write: str | None = None
    """host:port of the primary."""

    read_only: str | None = None
    """host:port of the replicas, for read-only traffic."""


class ReplicaStatus(StatusModel):
    """A standby of the cluster."""

    name: Annotated[str, StringConstraints(max_length=253)]
    """The standby's application_name (mode External) or pod name (mode Managed)."""

    state: Annotated[str, StringConstraints(max_length=32)] | None = None
    """Mode External: pg_stat_replication.state (streaming, catchup...). Mode Managed:
    CloudNativePG's status of the instance (healthy, replicating, failed)."""

    lag_seconds: Annotated[float, Field(ge=0)] | None = None
    """Replay lag in seconds (mode External; 0 when caught up). Absent when the admin role
    may not see it (it needs pg_monitor), and in mode Managed, where CloudNativePG's exporter
    reports it as cnpg_pg_replication_lag."""


class ClusterHealth(StatusModel):
    """The server's load at the last probe. Fields the admin role may not read are absent."""

    last_probe_time: Annotated[str, StringConstraints(max_length=32)] | None = None
    """When the load of an external server shown here was read (RFC 3339); refreshed once
    per probe interval, by this cluster's probe or, on a server several clusters adopt with
    the same admin, by another's shortly before."""

    connections: Annotated[int, Field(ge=0)] | None = None
    """Client sessions open on the server."""

    max_connections: Annotated[int, Field(ge=0)] | None = None
    """The server's max_connections."""

    connections_near_limit: bool | None = None
    """True while client sessions exceed 90 % of max_connections (an Event
    ConnectionsNearLimit marks the change). The cluster stays Ready."""

    in_recovery: bool | None = None
    """True when the server is a standby (pg_is_in_recovery)."""

    replicas: Annotated[list[ReplicaStatus], Field(max_length=9)] | None = None
    """The standbys (at most 9), with their state and replay lag."""

    wal_bytes: Annotated[int, Field(ge=0)] | None = None
    """Size of pg_wal; needs superuser or pg_monitor."""

    databases_bytes: Annotated[int, Field(ge=0)] | None = None
    """Total size of the server's databases; reported when the admin role may read every
    database (CONNECT on each, or pg_monitor)."""


class ContinuousArchivingStatus(StatusModel):
    """Point-in-time recovery of the whole cluster, as CloudNativePG reports it."""

    archiving: bool | None = None
    """Whether WAL archiving works (CloudNativePG's ContinuousArchiving condition)."""

    message: Annotated[str, StringConstraints(max_length=512)] | None = None
    """CloudNativePG's explanation, when archiving fails."""

    first_recoverability_point: str | None = None
    """The earliest time the cluster can be recovered to (RFC 3339)."""

    last_successful_backup: str | None = None
    """When the last base backup succeeded (RFC 3339)."""


class RecoveryStatus(StatusModel):
    """What a cluster made by spec.restore was recovered from, and to when."""

    from_cluster: Annotated[str, StringConstraints(max_length=63)]
    """The cluster whose archive was replayed."""

    archive: Annotated[str, StringConstraints(max_length=1024)]
    """Where that archive is (s3://bucket/prefix...)."""

    target_time: str | None = None
    """The instant recovery stopped at (RFC 3339); the end of the archive when unset."""

    recovered: bool
    """Whether the recovery is over (CloudNativePG runs the recovered primary)."""


class EncryptionStatus(StatusModel):
    """The cluster's key-encryption key (KEK), which wraps the data key of each database."""

    provider: KeyProvider
    """Key provider holding the KEK."""

    key_id: Annotated[str, StringConstraints(max_length=253)]
    """Id of the KEK (the Secret recording its versions in the operator's namespace)."""

    key_version: Annotated[int, Field(ge=1)]
    """Current version; older ones are kept while data keys or backups need them."""

    key_created: str | None = None
    """When the current version was made (RFC 3339): the key's age."""

    last_rotation: str | None = None
    """When the KEK was last rotated (RFC 3339)."""

    rotation_token: Annotated[str, StringConstraints(max_length=253)] | None = None
    """The vauban.dev/rotate-key token last acted on."""

    survives_cluster_loss: bool | None = None
    """Whether the backups can be restored once this Kubernetes cluster is lost: the KEK is
    held by an HSM (kmip, pkcs11), or escrowed to the platform's recovery key (see
    docs/security.md)."""

    recovery: Annotated[str, StringConstraints(max_length=512)] | None = None
    """How the KEK is recovered after the loss of this Kubernetes cluster, or why it cannot
    be."""


class RuleStatus(StatusModel):
    """One rule of the compliance profile."""

    rule: Annotated[str, StringConstraints(max_length=64)]
    """The rule's id, e.g. encrypted-storage."""

    met: bool
    """Whether the cluster meets it."""

    evidence: Annotated[str, StringConstraints(max_length=512)]
    """What the judgement rests on."""


class ComplianceStatus(StatusModel):
    """The compliance profile, judged."""

    profile: ComplianceProfile
    """The profile the rules come from."""

    rules: Annotated[list[RuleStatus], Field(max_length=16)] = Field(default_factory=list)
    """Each rule of the profile."""

    storage_class: Annotated[str, StringConstraints(max_length=253)] | None = None
    """The StorageClass of the volumes (mode Managed)."""

    storage_evidence: Annotated[str, StringConstraints(max_length=512)] | None = None
    """Why the StorageClass is, or is not, considered encrypting."""


class ImportRefusal(StatusModel):
    """A database whose backups were not adopted, and why."""

    record: Annotated[str, StringConstraints(max_length=1024)]
    """The key record's object key in the bucket."""

    reason: Annotated[str, StringConstraints(max_length=64)]
    message: Annotated[str, StringConstraints(max_length=512)]


class BackupImportStatus(StatusModel):
    """Backups adopted from the object store (disaster recovery)."""

    databases: Annotated[int, Field(ge=0)] = 0
    """Databases whose backups were adopted."""

    backups: Annotated[int, Field(ge=0)] = 0
    """ManagedBackups made for them, in their own namespaces."""

    refused: Annotated[list[ImportRefusal], Field(max_length=32)] = Field(default_factory=list)


class AuditStatus(StatusModel):
    """Whether the server runs pgaudit, as the operator's admin session last saw it."""

    pgaudit: bool
    """pgaudit is loaded (shared_preload_libraries)."""

    log: Annotated[str, StringConstraints(max_length=256)] | None = None
    """pgaudit.log: the statement classes it logs (`none`: nothing)."""


class ManagedClusterStatus(StatusModel):
    """Observed state of a ManagedCluster."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The .metadata.generation this status was computed from."""

    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(default_factory=list)
    """Ready, Reconciling and Stalled (kstatus), plus domain conditions."""

    phase: Annotated[str, StringConstraints(max_length=32)] | None = None
    """One-word summary of the conditions, for `kubectl get`. Read conditions, not this."""

    version: Annotated[str, StringConstraints(max_length=64)] | None = None
    """PostgreSQL version the server runs."""

    instances: Annotated[int, Field(ge=0)] | None = None
    """Number of instances observed."""

    ready_instances: Annotated[int, Field(ge=0)] | None = None
    """Number of instances ready to serve."""

    current_primary: Annotated[str, StringConstraints(max_length=253)] | None = None
    """Name of the instance that is primary."""

    endpoints: Endpoints | None = None
    """Where clients connect."""

    health: ClusterHealth | None = None
    """Load of the server and its replicas, from the last probe (mode External) or from
    CloudNativePG's status (mode Managed)."""

    continuous_archiving: ContinuousArchivingStatus | None = None
    """CloudNativePG's WAL archiving and base backups (mode Managed with spec.backup)."""

    recovery: RecoveryStatus | None = None
    """What the cluster was recovered from (spec.restore)."""

    encryption: EncryptionStatus | None = None
    """The key-encryption key: its id and version, never its material."""

    audit: AuditStatus | None = None
    """Whether the server runs pgaudit: read at each probe of an external server, and of a
    managed one whose profile requires audit logging."""

    compliance: ComplianceStatus | None = None
    """Each rule of the compliance profile, met or not, with its evidence."""

    backup_import: BackupImportStatus | None = None
    """What spec.backup.import adopted from the object store, and what it refused."""


# Cluster names become Service names (`<name>-rw`, `<name>-ro`) and pod names, which must stay
# DNS labels: leave room for the suffixes.
MANAGED_CLUSTER = KindInfo(
    kind="ManagedCluster",
    plural="managedclusters",
    short_names=("mdbc",),
    description=(
        "A PostgreSQL server Vauban runs databases on: mode Managed renders a CloudNativePG "
        "Cluster (instances, storage, resources, parameters), mode External adopts an existing "
        "server through an admin Secret. It holds what its databases share: the object store "
        "backups go to, the key-encryption key that wraps their data keys, the compliance "
        "profile judged against it, and which namespaces may place databases on it. Tenants "
        "create ManagedDatabases that reference it."
    ),
    spec=ManagedClusterSpec,
    status=ManagedClusterStatus,
    printer_columns=(
        PrinterColumn("Engine", "string", ".spec.engine"),
        PrinterColumn("Version", "string", ".spec.version"),
        PrinterColumn("Instances", "integer", ".spec.instances"),
        PrinterColumn("Size", "string", ".spec.storage.size", "Volume size of each instance."),
        PrinterColumn.ready(),
        PrinterColumn.reason(),
        PrinterColumn.phase(),
        PrinterColumn(
            "Primary", "string", ".status.currentPrimary", "The primary instance.", priority=1
        ),
        PrinterColumn(
            "Endpoint",
            "string",
            ".status.endpoints.readWrite",
            "Where clients connect to write.",
            priority=1,
        ),
        PrinterColumn(
            "Last Backup",
            "date",
            ".status.continuousArchiving.lastSuccessfulBackup",
            "CloudNativePG's last successful base backup.",
            priority=1,
        ),
        PrinterColumn.age(),
    ),
    object_rules=(
        cel(
            "size(self.metadata.name) <= 50",
            "a ManagedCluster name must be at most 50 characters: "
            "it prefixes Service and pod names",
        ),
        cel(
            "!has(self.spec.restore) || self.spec.restore.fromCluster != self.metadata.name",
            "spec.restore.fromCluster names another cluster: a cluster cannot be recovered "
            "from its own archive",
        ),
    ),
)
