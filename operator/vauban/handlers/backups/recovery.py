"""Keep in the bucket what a new Vauban needs to restore a database's backups once this
Kubernetes cluster is lost (see `vauban.backup.recovery`): the database's key record, and,
with the `kubernetes-secret` provider and a recovery key, the KEK versions it needs, sealed
to that key. Written before the database's backup agent is configured, and again whenever it
changes (a KEK rotation re-wraps the data key): a backup in the bucket always has its record.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

from vauban.backup import recovery as documents
from vauban.backup.storage_errors import StorageError
from vauban.builders import backup as build
from vauban.builders import keys as key_secrets
from vauban.crypto import recovery
from vauban.handlers import keys
from vauban.handlers.context import Context
from vauban.reconcile.database import ClusterView

logger = logging.getLogger(__name__)


async def publish(
    ctx: Context,
    cluster: ClusterView,
    database: build.Database,
    store: build.Store,
    key: build.DataKey,
) -> str | None:
    """Write the database's key record (and the escrow of its KEK version) to the bucket
    unless this process already did; None, or why it could not."""
    namespace = ctx.settings.namespace
    stored = await ctx.kube.read_secret(namespace, key_secrets.data_key_secret_name(database.uid))
    kek = await keys.read_kek(
        ctx, key_secrets.KekOwner(cluster.namespace, cluster.name, cluster.uid)
    )
    if stored is None or kek is None:
        return "the data key or the key-encryption key is not recorded yet"
    version = int(stored[key_secrets.KEK_VERSION])
    identity = documents.Identity(namespace=cluster.namespace, name=cluster.name, uid=cluster.uid)
    escrow: str | None = None
    if kek.provider == "kubernetes-secret" and ctx.settings.recovery_public_key:
        escrow = documents.escrow_key(store.prefix, cluster.uid, version)
        problem = await _escrow(ctx, store, identity, kek.secret, version, kek.versions, escrow)
        if problem is not None:
            return problem
    record = documents.KeyRecord(
        cluster=identity,
        database=documents.Identity(
            namespace=database.namespace, name=database.name, uid=database.uid
        ),
        data_key_id=key.key_id,
        wrapped_data_key=key_secrets.decode(stored[key_secrets.WRAPPED_KEY]),
        kek=documents.KekReference(
            provider=kek.provider,
            id=kek.secret,
            version=version,
            ref=None if kek.provider == "kubernetes-secret" else kek.versions.get(version),
            escrow=escrow,
        ),
    ).sealed(key.material)
    body = record.to_json()
    where = documents.key_record_key(store.database_prefix(database))
    memo = ("KeyRecord", store.bucket, where)
    printed = hashlib.sha256(body).hexdigest()
    if ctx.applied.get(memo) == printed:
        return None
    try:
        await asyncio.to_thread(ctx.buckets(store).put_bytes, where, body, None)
    except StorageError as e:
        return f"the key record cannot be written to the bucket: {e}"
    ctx.applied[memo] = printed
    return None


async def escrow_current(
    ctx: Context, owner: key_secrets.KekOwner, kek: keys.Kek, store: build.Store
) -> str | None:
    """Escrow the cluster's current KEK version, when it is held in a Secret and the operator
    has a recovery key: at its creation and after each rotation, before any data key is
    recorded in the bucket under it. None, or why it could not."""
    if kek.provider != "kubernetes-secret" or not ctx.settings.recovery_public_key:
        return None
    identity = documents.Identity(namespace=owner.namespace, name=owner.name, uid=owner.uid)
    where = documents.escrow_key(store.prefix, owner.uid, kek.current)
    return await _escrow(ctx, store, identity, kek.secret, kek.current, kek.versions, where)


async def _escrow(
    ctx: Context,
    store: build.Store,
    cluster: documents.Identity,
    kek_id: str,
    version: int,
    versions: dict[int, str],
    where: str,
) -> str | None:
    """Seal KEK `version` to the recovery key and store it at `where`, unless already there
    (sealed to this recovery key)."""
    text = ctx.settings.recovery_public_key
    assert text is not None
    recipient = recovery.public_key(text)
    fingerprint = recovery.fingerprint(recipient)
    memo = ("KekEscrow", store.bucket, where)
    if ctx.applied.get(memo) == fingerprint:
        return None
    try:
        found = await asyncio.to_thread(ctx.buckets(store).read_small, where)
        if found is not None and _sealed_to(found, fingerprint):
            ctx.applied[memo] = fingerprint
            return None
        material = key_secrets.decode(versions[version])
        escrow = documents.escrow_kek(recipient, cluster, kek_id, version, material)
        await asyncio.to_thread(ctx.buckets(store).put_bytes, where, escrow.to_json(), None)
    except StorageError as e:
        return f"the key-encryption key cannot be escrowed in the bucket: {e}"
    except KeyError:
        return f"key-encryption key {kek_id} has no version {version}"
    logger.info("escrowed %s version %d to recovery key %s", kek_id, version, fingerprint)
    ctx.applied[memo] = fingerprint
    return None


def _sealed_to(found: bytes, fingerprint: str) -> bool:
    try:
        return documents.KekEscrow.model_validate_json(found).recipient == fingerprint
    except ValueError:
        return False


async def forget(ctx: Context, store: build.Store, database: build.Database) -> None:
    """Crypto-shredding: the key record goes with the data key, or the HSM-held KEK (or
    the escrowed one) would still open the backups. StorageError when the bucket refuses."""
    where = documents.key_record_key(store.database_prefix(database))
    await asyncio.to_thread(ctx.buckets(store).delete_object, where)
    ctx.applied.pop(("KeyRecord", store.bucket, where), None)
