"""spec.backup.import: a new cluster adopts the backups a lost one left in the bucket.

For each key record under the import's prefix (see `vauban.backup.recovery`), the data key is
opened with the key custody that survived (the HSM, or the recovery private key the security
officers put, for the time of the recovery, in the Secret VAUBAN_RECOVERY_KEY_SECRET), and
everything is proven as `vauban.custody` says. The operator then records the data key as it
records its own: a data key Secret for the lost database's uid, naming its namespace and name
(from the authenticated record), wrapped by this cluster's KEK. Each authenticated backup
becomes a ManagedBackup (deletionPolicy Retain) of that namespace, with its ledger entry. From
there, restore.databaseRef restores it as any backup: into the same namespace only, since the
records name it and the manifest's authenticated namespace must match.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from vauban import custody, timefmt
from vauban.api.backup import MANAGED_BACKUP
from vauban.api.cluster import MANAGED_CLUSTER, ManagedClusterSpec
from vauban.api.database import MANAGED_DATABASE
from vauban.backup.manifest import Manifest
from vauban.backup.storage_errors import StorageError
from vauban.builders import backup as build
from vauban.builders import keys as key_secrets
from vauban.conditions import Verdict
from vauban.crypto import recovery
from vauban.handlers import keys
from vauban.handlers.backups.ledger import write_ledger
from vauban.handlers.backups.store import store_of
from vauban.handlers.context import Context
from vauban.handlers.publish import post_event
from vauban.kms import KeyProvider, KeyProviderError
from vauban.reconcile.backup import (
    DATABASE_ANNOTATION,
    STORE_ANNOTATION,
    SUCCEEDED,
    LedgerEntry,
    ledger_of,
)

logger = logging.getLogger(__name__)

IMPORTED_ANNOTATION = "vauban.dev/imported-from"
"""On an adopted data key's Secret: the key record it was adopted from."""

PRIVATE_KEY = "privateKey"
MAX_REFUSALS = 32


def _refused(record: str, reason: str, message: str) -> dict[str, Any]:
    return {"record": record, "reason": reason, "message": message[:512]}


async def _recovery_key(ctx: Context) -> X25519PrivateKey | None:
    values = await ctx.kube.read_secret(ctx.settings.namespace, ctx.settings.recovery_key_secret)
    text = (values or {}).get(PRIVATE_KEY)
    if not text:
        return None
    try:
        return recovery.private_key(text)
    except recovery.InvalidRecoveryKey as e:
        logger.error("the recovery key Secret is unusable: %s", e)
        return None


async def reconcile(
    ctx: Context, body: Mapping[str, Any], spec: ManagedClusterSpec
) -> dict[str, Any] | None:
    """Adopt what spec.backup.import names; status.backupImport (None without an import)."""
    policy = spec.backup
    if policy is None or policy.import_ is None:
        return None
    meta = body["metadata"]
    owner = key_secrets.KekOwner(meta["namespace"], meta["name"], meta.get("uid", ""))
    store = await store_of(ctx, owner.namespace, policy.object_store)
    if isinstance(store, str):
        return {"refused": [_refused("", "BackupNotConfigured", store)]}
    kek = await keys.ensure_kek(ctx, owner, spec.encryption.provider)
    if isinstance(kek, Verdict):
        return {"refused": [_refused("", kek.reason, kek.message)]}
    provider = keys.provider_of(ctx, kek.provider)
    if isinstance(provider, Verdict):
        return {"refused": [_refused("", provider.reason, provider.message)]}
    held = custody.Custody(
        await _recovery_key(ctx),
        {name: p for name, p in ctx.key_providers.items() if name != "kubernetes-secret"},
    )
    search = "/".join(p for p in (store.prefix.strip("/"), policy.import_.prefix.strip("/")) if p)
    try:
        records = await asyncio.to_thread(custody.key_records, ctx.buckets(store), search)
    except StorageError as e:
        return {"refused": [_refused(search, e.reason, f"the bucket cannot be listed: {e}")]}
    adoption = Adoption(ctx, owner, store, kek, provider, held)
    databases = backups = 0
    refused: list[dict[str, Any]] = []
    for record_key in records:
        try:
            adopted = await adoption.adopt(record_key)
        except custody.Refused as e:
            refused.append(_refused(record_key, e.reason, e.message))
            continue
        except StorageError as e:
            refused.append(_refused(record_key, e.reason, str(e)))
            continue
        if adopted is not None:
            databases, backups = databases + 1, backups + adopted
    found = {"databases": databases, "backups": backups, "refused": refused[:MAX_REFUSALS]}
    await _tell(ctx, body, found)
    return found


async def _tell(ctx: Context, body: Mapping[str, Any], found: Mapping[str, Any]) -> None:
    """Events for what changed since the status last said: more adopted, other refusals."""
    before = (body.get("status") or {}).get("backupImport") or {}
    if found["databases"] > before.get("databases", 0):
        await post_event(
            ctx,
            MANAGED_CLUSTER,
            body,
            "Normal",
            "BackupsImported",
            f"Backups of {found['databases']} databases adopted from the bucket "
            f"({found['backups']} ManagedBackups); restore them with restore.databaseRef.",
        )
    if found["refused"] and found["refused"] != before.get("refused"):
        shown = "; ".join(f"{r['record']}: {r['reason']}" for r in found["refused"][:5])
        await post_event(
            ctx,
            MANAGED_CLUSTER,
            body,
            "Warning",
            "ImportRefused",
            f"{len(found['refused'])} databases' backups not adopted: {shown}",
        )


def imported_backup_name(database: str, job: str) -> str:
    """The ManagedBackup of an adopted backup: its database's name and a digest of its Job's,
    within 63 characters, the same at every reconcile."""
    digest = hashlib.sha256(job.encode()).hexdigest()[:10]
    return f"{database[:43].rstrip('-.')}-imported-{digest}"


class Adoption:
    """One import's means: the cluster, its bucket, its KEK and provider, the custody."""

    def __init__(
        self,
        ctx: Context,
        owner: key_secrets.KekOwner,
        store: build.Store,
        kek: keys.Kek,
        provider: KeyProvider,
        held: custody.Custody,
    ) -> None:
        self.ctx, self.owner, self.store = ctx, owner, store
        self.kek, self.provider, self.held = kek, provider, held

    async def adopt(self, record_key: str) -> int | None:
        """How many backups of the record's database are adopted; None for a record of this
        cluster's own. Refused when it cannot be proven or placed."""
        memo = ("BackupImport", self.owner.uid, record_key)
        if (done := self.ctx.applied.get(memo)) is not None:
            return int(done)
        objects = self.ctx.buckets(self.store)
        record = await asyncio.to_thread(custody.read_record, objects, record_key)
        if record.cluster.uid == self.owner.uid:
            return None
        data_key = await asyncio.to_thread(custody.open_data_key, objects, record, self.held)
        custody.check_placement(record_key, record)
        database = build.Database(
            record.database.namespace, record.database.name, record.database.uid
        )
        prefix = self.store.database_prefix(database)
        if f"{prefix}/key.json" != record_key:
            raise custody.Refused(
                "KeyRecordMisplaced",
                f"{record_key} is not under this cluster's objectStore.prefix "
                f"{self.store.prefix!r}: give the new cluster the lost one's prefix",
            )
        manifests = await asyncio.to_thread(
            lambda: custody.authentic_backups(
                objects.list_manifests(prefix + "/"), record, data_key
            )
        )
        if not await self.ctx.kube.namespace_exists(database.namespace):
            raise custody.Refused(
                "NamespaceNotFound",
                f"namespace {database.namespace} does not exist on this cluster: create it "
                "(as on the lost cluster), and the import goes on",
            )
        live = await self.ctx.kube.read(MANAGED_DATABASE, database.namespace, database.name)
        if live is not None and live["metadata"].get("uid") != database.uid:
            # Its ManagedBackups would be newer than it, so taken for its own (to be made).
            raise custody.Refused(
                "DatabaseExists",
                f"ManagedDatabase {database.namespace}/{database.name} already exists here: "
                "delete it, let the import adopt the backups, then create it again with "
                "restore.databaseRef",
            )
        ledger = await self._data_key_secret(record_key, database, data_key)
        if ledger is None:
            return None
        adopted = 0
        for manifest in manifests:
            adopted += await self._backup(database, manifest, ledger)
        self.ctx.applied[memo] = str(adopted)
        logger.info("%d backups of %s adopted from %s", adopted, database, record_key)
        return adopted

    async def _data_key_secret(
        self, record_key: str, database: build.Database, data_key: bytes
    ) -> set[str] | None:
        """The jobs already in the adopted data key's ledger, after recording the data key
        (wrapped by this cluster's KEK) if it was not yet; None when the uid's data key is
        this operator's own (a database of this cluster)."""
        namespace = self.ctx.settings.namespace
        name = key_secrets.data_key_secret_name(database.uid)
        found = await self.ctx.kube.read_secret_and_annotations(namespace, name)
        if found is None:
            try:
                wrapped = await asyncio.to_thread(
                    self.provider.wrap,
                    self.kek.current_ref,
                    data_key,
                    key_secrets.data_key_context(database.uid),
                )
            except KeyProviderError as e:
                raise custody.Refused("KeyProviderUnavailable", str(e)) from None
            body = key_secrets.data_key_secret(
                namespace=namespace,
                cluster_uid=self.owner.uid,
                database=f"{database.namespace}/{database.name}",
                database_uid=database.uid,
                kek=self.kek.secret,
                kek_version=self.kek.current,
                wrapped=wrapped,
                created=timefmt.now_rfc3339(),
            )
            body["metadata"]["annotations"][IMPORTED_ANNOTATION] = record_key
            body["metadata"]["annotations"][STORE_ANNOTATION] = (
                f"{self.owner.namespace}/{self.owner.name}"
            )
            await self.ctx.kube.create_secret_if_absent(body)
            found = await self.ctx.kube.read_secret_and_annotations(namespace, name)
            assert found is not None
        _, annotations = found
        if annotations.get(IMPORTED_ANNOTATION) != record_key:
            if annotations.get(DATABASE_ANNOTATION) == f"{database.namespace}/{database.name}":
                return None
            raise custody.Refused(
                "KeyConflict",
                f"a data key for uid {database.uid} exists here for another database: "
                "nothing adopted",
            )
        return {entry.job for entry in ledger_of(annotations).entries.values()}

    async def _backup(self, database: build.Database, manifest: Manifest, done: set[str]) -> int:
        """1 once the backup has its ManagedBackup and ledger entry, 0 if it cannot."""
        job = manifest.location.rsplit("/", 1)[-1]
        if job in done:
            return 1
        name = imported_backup_name(database.name, job)
        await self.ctx.kube.create_custom(
            MANAGED_BACKUP.plural,
            build.managed_backup(
                name=name,
                namespace=database.namespace,
                database=database.name,
                trigger="Imported",
                job=job,
                retain=True,
            ),
        )
        found = await self.ctx.kube.read(MANAGED_BACKUP, database.namespace, name)
        if (
            found is None
            or (found.get("spec") or {}).get("databaseRef", {}).get("name") != database.name
        ):
            logger.warning("ManagedBackup %s/%s is not the import's", database.namespace, name)
            return 0
        # The ledger binds the ManagedBackup to this very backup (its Job, so its location).
        entry = LedgerEntry(name, job, SUCCEEDED, manifest.finished_at, "imported from the bucket")
        key, value = entry.annotation(found["metadata"].get("uid", ""))
        await write_ledger(self.ctx, database, {key: value})
        return 1
