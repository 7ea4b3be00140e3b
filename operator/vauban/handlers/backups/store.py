"""The clusters' buckets: where a cluster's backups go (with the credentials of its Secret),
and the manifests there that authenticate with a data key — the only proof a backup is
complete."""

from __future__ import annotations

import logging

from vauban import timefmt
from vauban.api.backup import ManagedBackupStatus
from vauban.api.cluster import MANAGED_CLUSTER, ClusterBackupPolicy, ManagedClusterSpec, ObjectStore
from vauban.api.common import human_size
from vauban.backup.manifest import Manifest, ManifestNotAuthentic
from vauban.backup.storage_errors import InvalidManifest
from vauban.builders import backup as build
from vauban.handlers.context import Context

logger = logging.getLogger(__name__)


async def backup_policy_of(
    ctx: Context, cluster_namespace: str, cluster_name: str
) -> ClusterBackupPolicy | None:
    """The backup policy of ManagedCluster `cluster_namespace/cluster_name`: None when the
    cluster is gone, its spec does not parse, or it configures no backups."""
    cluster = await ctx.kube.read(MANAGED_CLUSTER, cluster_namespace, cluster_name)
    try:
        spec = ManagedClusterSpec.model_validate((cluster or {}).get("spec") or {})
    except ValueError:
        return None
    return spec.backup


async def store_of(ctx: Context, cluster_namespace: str, spec: ObjectStore) -> build.Store | str:
    """The cluster's object store with its credentials, or why it cannot be used."""
    ref = spec.credentials_secret_ref.name
    values = await ctx.kube.read_secret(cluster_namespace, ref)
    if values is None or "accessKeyId" not in values or "secretAccessKey" not in values:
        return (
            f"the object store's credentials Secret {cluster_namespace}/{ref} is missing or "
            "lacks accessKeyId and secretAccessKey"
        )
    return build.Store(
        bucket=spec.bucket,
        region=spec.region,
        endpoint=spec.endpoint,
        prefix=spec.prefix,
        access_key_id=values["accessKeyId"],
        secret_access_key=values["secretAccessKey"],
        object_lock_days=spec.object_lock_days,
    )


def _authentic(manifest: Manifest, key: build.DataKey) -> bool:
    if manifest.data_key_id != key.key_id:
        return False
    try:
        manifest.authenticate(key.material)
    except ManifestNotAuthentic as e:
        logger.warning("ignoring a backup: %s", e)
        return False
    return True


def read_authentic(
    ctx: Context, store: build.Store, location: str, key: build.DataKey
) -> Manifest | None:
    """The manifest at `location` if it exists and authenticates with `key` (blocking)."""
    try:
        manifest = ctx.buckets(store).read_manifest(location)
    except InvalidManifest as e:
        logger.warning("ignoring a backup: %s", e)
        return None
    return manifest if manifest is not None and _authentic(manifest, key) else None


def list_authentic(
    ctx: Context, store: build.Store, database: build.Database, key: build.DataKey
) -> dict[str, Manifest]:
    """The authenticated backups of one incarnation, by Job (blocking)."""
    prefix = store.database_prefix(database) + "/"
    return {
        m.location.rsplit("/", 1)[-1]: m
        for m in ctx.buckets(store).list_manifests(prefix)
        if m.location.startswith(prefix) and _authentic(m, key)
    }


def manifest_status(manifest: Manifest) -> ManagedBackupStatus:
    """What a ManagedBackup's status shows of its authenticated manifest."""
    return ManagedBackupStatus(
        started_at=timefmt.rfc3339(manifest.started_at),
        finished_at=timefmt.rfc3339(manifest.finished_at),
        size_bytes=manifest.stored_bytes,
        size=human_size(manifest.stored_bytes),
        dump_bytes=manifest.dump_bytes,
        sha256=manifest.sha256,
        data_key_id=manifest.data_key_id,
        server_version=manifest.server_version,
        tables=len(manifest.tables),
        retain_until=(
            timefmt.rfc3339(manifest.object_lock.retain_until) if manifest.object_lock else None
        ),
    )
