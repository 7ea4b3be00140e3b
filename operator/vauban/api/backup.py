"""ManagedBackup: one backup of one ManagedDatabase, as an object a tenant can list, create
on demand (GitOps-friendly: no imperative annotation) and delete."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from vauban.api.common import (
    ApiModel,
    Condition,
    KindInfo,
    LocalObjectReference,
    PrinterColumn,
    StatusModel,
    cel,
    validations,
)

BackupTrigger = Literal["OnDemand", "Scheduled", "Final", "Imported"]
VerificationResult = Literal["Passed", "Failed"]

Timestamp = Annotated[str, StringConstraints(max_length=64)]


class ManagedBackupSpec(ApiModel):
    """A backup of one ManagedDatabase: a logical dump, compressed and encrypted with the
    database's data key, stored in the cluster's object store."""

    database_ref: Annotated[
        LocalObjectReference,
        Field(
            json_schema_extra=validations(cel("self == oldSelf", "databaseRef is immutable")),
        ),
    ]
    """The ManagedDatabase, in this namespace, to back up. Immutable."""

    deletion_policy: Literal["Delete", "Retain"] = "Retain"
    """What deleting this object does to the stored backup: Retain (the default) leaves it in
    the bucket, so a GitOps prune of a backup declared in Git erases nothing; Delete removes
    it, a deliberate request. Backups the retention policy expires are removed from the
    bucket whatever this says; backups of a ManagedDatabase being deleted are kept for its
    backup.retainAfterDeletionDays. The operator's own backups (Scheduled, Final) say Delete:
    retention owns them."""

    deletion_protection: bool = False
    """When true, deleting the ManagedBackup is refused, by a person, a GitOps prune or the
    retention policy alike (which then keeps it past its limits)."""


class BackupLocation(StatusModel):
    """Where the backup is stored."""

    bucket: Annotated[str, StringConstraints(max_length=63)]
    """Bucket of the cluster's object store."""

    key: Annotated[str, StringConstraints(max_length=1024)]
    """Key prefix holding `data` (the encrypted dump) and `manifest.json`."""


class Verification(StatusModel):
    """The last restore test of this backup."""

    result: VerificationResult
    """Passed when the restored row counts match the manifest."""

    time: Timestamp
    """When the test finished (RFC 3339)."""

    message: Annotated[str, StringConstraints(max_length=1024)] = ""
    """What was compared, or what differed."""


class ManagedBackupStatus(StatusModel):
    """Observed state of the backup."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The .metadata.generation the status was computed from."""

    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(default_factory=list)
    """Ready (the backup is stored and complete), Reconciling, Stalled (it failed)."""

    phase: Annotated[str, StringConstraints(max_length=32)] | None = None
    """Pending, Running, Succeeded or Failed; tools read conditions, people read this."""

    trigger: BackupTrigger | None = None
    """OnDemand (created by a person or a tool), Scheduled (by the database's schedule),
    Final (taken when the database was deleted) or Imported (adopted from the bucket by a
    cluster's backup.import)."""

    job: Annotated[str, StringConstraints(max_length=63)] | None = None
    """The Job, in the operator's namespace, that runs the backup agent."""

    started_at: Timestamp | None = None
    """When the dump started (RFC 3339)."""

    finished_at: Timestamp | None = None
    """When the backup was complete in the bucket (RFC 3339)."""

    location: BackupLocation | None = None
    """Where the backup is stored."""

    size_bytes: Annotated[int, Field(ge=0)] | None = None
    """Stored (compressed and encrypted) size."""

    size: Annotated[str, StringConstraints(max_length=16)] | None = None
    """sizeBytes as a person reads it (e.g. 1.5 GiB), for `kubectl get`."""

    dump_bytes: Annotated[int, Field(ge=0)] | None = None
    """Size of the dump before compression."""

    sha256: Annotated[str, StringConstraints(max_length=64)] | None = None
    """SHA-256 of the stored object, checked before every restore."""

    data_key_id: Annotated[str, StringConstraints(max_length=253)] | None = None
    """Id of the data key the backup is encrypted with (never the key itself)."""

    server_version: Annotated[str, StringConstraints(max_length=64)] | None = None
    """PostgreSQL version of the server that was dumped."""

    tables: Annotated[int, Field(ge=0)] | None = None
    """Number of tables in the backup; their row counts are in the manifest."""

    retain_until: Timestamp | None = None
    """Object Lock retention: nobody can delete the stored backup before this time."""

    verification: Verification | None = None
    """The last restore test of this backup."""


MANAGED_BACKUP = KindInfo(
    kind="ManagedBackup",
    plural="managedbackups",
    short_names=("mbk",),
    description=(
        "One backup of one ManagedDatabase: a logical dump, compressed and encrypted with the "
        "database's data key, stored in its cluster's object store. Create one to back up on "
        "demand; the database's schedule creates them too. Its status says where it is stored, "
        "its size and checksum, and the result of its last restore test. Restore it by "
        "creating a ManagedDatabase with spec.restore.backupRef."
    ),
    spec=ManagedBackupSpec,
    status=ManagedBackupStatus,
    printer_columns=(
        PrinterColumn("Database", "string", ".spec.databaseRef.name"),
        PrinterColumn("Trigger", "string", ".status.trigger"),
        PrinterColumn.phase(),
        PrinterColumn.reason(),
        PrinterColumn("Size", "string", ".status.size", "Stored (compressed, encrypted) size."),
        PrinterColumn("Verified", "string", ".status.verification.result"),
        PrinterColumn(
            "Finished",
            "date",
            ".status.finishedAt",
            "When the backup was complete in the bucket.",
            priority=1,
        ),
        PrinterColumn(
            "Location", "string", ".status.location.key", "Key prefix in the bucket.", priority=1
        ),
        PrinterColumn.age(),
    ),
    object_rules=(
        cel(
            "size(self.metadata.name) <= 63",
            "a ManagedBackup name must be at most 63 characters: it labels its Job",
        ),
    ),
)
