"""ManagedDatabase: a tenant's database on a ManagedCluster, with its owner role and the
Secret an application mounts to reach it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints

from vauban.api.common import (
    NOT_PG_RESERVED,
    PG_IDENTIFIER,
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
    StatusModel,
    cel,
    validations,
)

# Extensions a tenant may create: contrib extensions PostgreSQL marks trusted (a database
# owner may create them without superuser) that neither reach the network nor the server's
# files. Vauban creates them with the tenant's own login, so an extension that is not trusted
# could not be created anyway; anything else needs a platform decision, not a tenant's YAML.
ALLOWED_EXTENSIONS = (
    "btree_gin",
    "btree_gist",
    "citext",
    "cube",
    "fuzzystrmatch",
    "hstore",
    "intarray",
    "isn",
    "lo",
    "ltree",
    "pg_trgm",
    "pgcrypto",
    "seg",
    "tablefunc",
    "tcn",
    "tsm_system_rows",
    "tsm_system_time",
    "unaccent",
    "uuid-ossp",
)

# Names PostgreSQL, CloudNativePG or Vauban itself use: a tenant must never be handed one of
# them. Names starting with pg_ (PostgreSQL's) and vauban (Vauban's registry database and
# role, and the scratch objects of restore tests) are refused by prefix.
RESERVED_DATABASES = ("postgres", "template0", "template1")
RESERVED_ROLES = (
    "postgres",
    "public",
    "none",
    "current_role",
    "current_user",
    "session_user",
    "information_schema",
    "streaming_replica",
    "cnpg_pooler_pgbouncer",
)
NOT_VAUBAN_RESERVED = cel(
    "!self.startsWith('vauban')", "names starting with vauban are reserved by Vauban"
)

DataClassification = Literal["public", "internal", "confidential", "health"]
Extension = Literal[ALLOWED_EXTENSIONS]  # type: ignore[valid-type]


class ClusterReference(ApiModel):
    """The ManagedCluster a database lives on."""

    name: ObjectName
    """Name of the ManagedCluster."""

    namespace: NamespaceName | None = None
    """Namespace of the ManagedCluster; the database's own namespace when unset. The cluster's
    spec.allowedNamespaces must admit the database's namespace."""


class DatabaseRetention(ApiModel):
    """How long this database's backups are kept; the cluster's retention when unset."""

    keep_last: Annotated[int, Field(ge=1, le=1000)] | None = None
    """Keep at most this many successful backups."""

    max_age: Duration | None = None
    """Delete backups older than this (e.g. 30d)."""


class BackupVerification(ApiModel):
    """A periodic proof that backups restore: the latest backup is restored into a scratch
    database and its row counts compared with the backup's manifest."""

    schedule: CronSchedule
    """When to run the restore test (cron, in UTC)."""


class DatabaseBackup(ApiModel):
    """Backups of this database, to the cluster's object store."""

    schedule: CronSchedule | None = None
    """When to back up (cron, in UTC), e.g. `0 2 * * *`; the cluster's schedule when unset."""

    retention: DatabaseRetention | None = None
    """How long backups are kept."""

    verify: BackupVerification | None = None
    """Periodic restore test of the latest backup."""

    final_backup: bool = False
    """Take one last backup when the ManagedDatabase is deleted."""

    retain_after_deletion_days: Annotated[int, Field(ge=0, le=3650)] = 30
    """Days the backups of a deleted database are kept before they are purged."""


class CredentialsPolicy(ApiModel):
    """How the tenant's credentials are rotated. A rotation never breaks running
    applications: a new login role goes into the Secret, and the previous one keeps working
    for the grace period before it is revoked."""

    rotation_period: Duration | None = None
    """Rotate this often (e.g. 90d); only on request when unset (annotation
    vauban.dev/rotate-credentials)."""

    grace_period: Duration = "1h"
    """How long the previous credentials keep working after a rotation."""


class RestoreSource(ApiModel):
    """Where a new database's content comes from. Exactly one of backupRef or databaseRef."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.backupRef) != has(self.databaseRef)",
                "set exactly one of restore.backupRef and restore.databaseRef",
            ),
        )
    )

    backup_ref: LocalObjectReference | None = None
    """A ManagedBackup in this namespace to restore."""

    database_ref: LocalObjectReference | None = None
    """A ManagedDatabase in this namespace whose latest successful backup is restored."""


class ManagedDatabaseSpec(ApiModel):
    """Desired state of a ManagedDatabase."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.restore) == has(oldSelf.restore)"
                " && (!has(self.restore) || self.restore == oldSelf.restore)",
                "restore is immutable: it applies when the database is created",
            ),
        )
    )

    cluster_ref: Annotated[
        ClusterReference,
        Field(json_schema_extra=validations(cel("self == oldSelf", "clusterRef is immutable"))),
    ]
    """The ManagedCluster this database lives on. Immutable: moving a database is a backup
    and a restore."""

    database_name: Annotated[
        str,
        PG_IDENTIFIER,
        Field(
            json_schema_extra=validations(
                NOT_PG_RESERVED,
                NOT_VAUBAN_RESERVED,
                cel("self == oldSelf", "databaseName is immutable"),
                cel(
                    f"!(self in {list(RESERVED_DATABASES)!r})",
                    "databaseName must not be one of " + ", ".join(RESERVED_DATABASES),
                ),
            )
        ),
    ]
    """Name of the database in PostgreSQL: lower-case letters, digits and _, at most 63
    characters. Immutable."""

    owner: Annotated[
        str,
        PG_IDENTIFIER,
        Field(
            json_schema_extra=validations(
                NOT_PG_RESERVED,
                NOT_VAUBAN_RESERVED,
                cel("self == oldSelf", "owner is immutable"),
                cel(
                    f"!(self in {list(RESERVED_ROLES)!r})",
                    "owner must not be one of " + ", ".join(RESERVED_ROLES),
                ),
            )
        ),
    ]
    """Role that owns the database; its credentials go into the Secret
    `<metadata.name>-credentials`. Vauban creates it: a role that exists on the server and
    was not created by Vauban for this very ManagedDatabase is refused. Immutable."""

    extensions: Annotated[
        list[Extension],
        Field(
            max_length=len(ALLOWED_EXTENSIONS), json_schema_extra={"x-kubernetes-list-type": "set"}
        ),
    ] = Field(default_factory=list)
    """Extensions to create in the database, from an allow-list; removing one drops it."""

    connection_limit: Annotated[int, Field(ge=1, le=10000)] | None = None
    """Most concurrent connections of each of the tenant's login roles; the cluster's
    spec.tenantConnectionLimit.default when unset, and never above its maximum."""

    credentials: CredentialsPolicy = Field(
        default_factory=CredentialsPolicy, json_schema_extra={"default": {}}
    )
    """Rotation of the credentials in the Secret `<metadata.name>-credentials`."""

    deletion_policy: DeletionPolicy = "Retain"
    """What deleting the ManagedDatabase does: Retain keeps the database and revokes the
    tenant's logins; Delete drops the database and its roles."""

    deletion_protection: bool = False
    """When true, deleting the ManagedDatabase is refused."""

    backup: DatabaseBackup | None = None
    """Backups of this database."""

    restore: RestoreSource | None = None
    """Create the database from a backup instead of empty. Immutable."""

    data_classification: DataClassification = "internal"
    """Sensitivity of the data: public, internal, confidential or health. Health data may only
    be placed on a cluster whose compliance profile is hds or secnumcloud."""


class CredentialsStatus(StatusModel):
    """Where the tenant's credentials are and when they last changed."""

    secret_name: Annotated[str, StringConstraints(max_length=253)] | None = None
    """Secret holding the credentials, in the database's namespace."""

    username: Annotated[str, StringConstraints(max_length=63)] | None = None
    """The login role in the Secret (it inherits the owner role)."""

    retiring: Annotated[
        list[Annotated[str, StringConstraints(max_length=63)]], Field(max_length=16)
    ] = Field(default_factory=list)
    """Former login roles that keep working until retireAfter, then are revoked."""

    retire_after: str | None = None
    """When the retiring login roles are revoked (RFC 3339)."""

    last_rotation: str | None = None
    """When the credentials were last rotated (RFC 3339)."""

    rotation_token: Annotated[str, StringConstraints(max_length=253)] | None = None
    """The vauban.dev/rotate-credentials token last acted on."""

    accepted: bool | None = None
    """Whether the server accepted the Secret's credentials at the last full reconcile: on
    each change, and once per resync interval (mode External: Vauban logs in as the tenant,
    as an application would)."""


class BackupStatus(StatusModel):
    """The database's backups, summarised; each one is a ManagedBackup."""

    schedule: Annotated[str, StringConstraints(max_length=128)] | None = None
    """The schedule in effect (the database's, else the cluster's), cron in UTC."""

    last_backup: Annotated[str, StringConstraints(max_length=63)] | None = None
    """The latest successful ManagedBackup."""

    last_backup_time: str | None = None
    """When it finished (RFC 3339)."""

    last_verified_backup: Annotated[str, StringConstraints(max_length=63)] | None = None
    """The latest ManagedBackup a restore test passed on."""

    last_verified_time: str | None = None
    """When that restore test finished (RFC 3339)."""

    data_key_id: Annotated[str, StringConstraints(max_length=253)] | None = None
    """Id of the database's data key (never the key itself)."""


class RestoreStatus(StatusModel):
    """The restore that filled this database at creation."""

    source: Annotated[str, StringConstraints(max_length=63)]
    """The ManagedBackup restored."""

    phase: Literal["Pending", "Running", "Succeeded", "Failed"]
    """Where the restore is: Pending while its source is not complete yet."""

    completed_at: str | None = None
    """When it succeeded (RFC 3339)."""


class ServiceBinding(StatusModel):
    """servicebinding.io's Provisioned Service duck type: binders (the Service Binding
    operator, Spring Cloud Bindings, Quarkus) find the Secret to project from here."""

    name: Annotated[str, StringConstraints(max_length=253)]
    """The Secret, in the database's namespace, whose keys describe the connection
    (`type: postgresql`, `host`, `port`, `database`, `username`, `password`, ...)."""


class ManagedDatabaseStatus(StatusModel):
    """Observed state of a ManagedDatabase."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The .metadata.generation this status was computed from."""

    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(default_factory=list)
    """Ready, Reconciling and Stalled (kstatus), plus domain conditions."""

    phase: Annotated[str, StringConstraints(max_length=32)] | None = None
    """One-word summary of the conditions, for `kubectl get`. Read conditions, not this."""

    cluster: Annotated[str, StringConstraints(max_length=317)] | None = None
    """The resolved cluster, as namespace/name."""

    extensions: Annotated[
        list[Annotated[str, StringConstraints(max_length=63)]], Field(max_length=64)
    ] = Field(default_factory=list)
    """Extensions Vauban created in the database (only these are dropped when removed from
    the spec)."""

    credentials: CredentialsStatus | None = None
    """The tenant's credentials."""

    binding: ServiceBinding | None = None
    """The credentials Secret, once written, as servicebinding.io binders look for it."""

    size_bytes: Annotated[int, Field(ge=0)] | None = None
    """Size of the database, from the last probe; rewritten when it moved by more than 1 %
    and more than 1 MiB (the metric has every probe's figure)."""

    size: Annotated[str, StringConstraints(max_length=16)] | None = None
    """sizeBytes as a person reads it (e.g. 1.5 GiB), for `kubectl get`."""

    connections: Annotated[int, Field(ge=0)] | None = None
    """Open connections to the database, from the last probe."""

    backup: BackupStatus | None = None
    """Backups of the database."""

    restore: RestoreStatus | None = None
    """The restore that filled the database at creation, when spec.restore asks for one."""


MANAGED_DATABASE = KindInfo(
    kind="ManagedDatabase",
    plural="manageddatabases",
    short_names=("mdb",),
    description=(
        "A tenant's PostgreSQL database on a ManagedCluster: the database, its owner role, "
        "the extensions it asks for, and the Secret `<name>-credentials` an application mounts "
        "to reach it (rotated on a period or on request). It carries its own backup schedule, "
        "retention and restore tests (each backup a ManagedBackup, encrypted with a data key "
        "of its own), and can be created from a backup."
    ),
    spec=ManagedDatabaseSpec,
    status=ManagedDatabaseStatus,
    printer_columns=(
        PrinterColumn("Cluster", "string", ".spec.clusterRef.name"),
        PrinterColumn("Database", "string", ".spec.databaseName"),
        PrinterColumn("Size", "string", ".status.size", "Size of the database, last probed."),
        PrinterColumn.ready(),
        PrinterColumn.reason(),
        PrinterColumn.phase(),
        PrinterColumn(
            "Connections",
            "integer",
            ".status.connections",
            "Open connections, last probed.",
            priority=1,
        ),
        PrinterColumn(
            "Last Backup",
            "date",
            ".status.backup.lastBackupTime",
            "When the last successful backup finished.",
            priority=1,
        ),
        PrinterColumn(
            "Verified",
            "date",
            ".status.backup.lastVerifiedTime",
            "When a backup last passed its restore test.",
            priority=1,
        ),
        PrinterColumn.age(),
    ),
    object_rules=(
        cel(
            "size(self.metadata.name) <= 241",
            "a ManagedDatabase name must be at most 241 characters: "
            "its Secret is named <name>-credentials",
        ),
    ),
)
