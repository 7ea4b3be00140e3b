"""What the operator's records say about a database's backups, and where they put one.

A ManagedBackup's status may be written by its namespace (a tenant's Role with `vauban.dev`
resources `*` includes `*/status`): it displays, it never decides. Every decision that starts,
restores, decrypts or deletes comes from what the operator alone controls: the live
ManagedDatabase's identity (namespace, name, uid), the data key Secret the operator made for
that uid (whose annotations name the database and hold the ledger, see
`vauban.reconcile.backup`), the operator's Jobs, and the bucket's manifests, authenticated with
the data key. A backup's location is derived from that identity and the Job's name, never read
from status; so is everything a status shows, which a wiped or forged status is rebuilt from.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vauban.backup.manifest import Manifest
from vauban.backup.storage_errors import StorageError
from vauban.builders import backup as build
from vauban.builders.keys import data_key_id, data_key_secret_name
from vauban.conditions import Reason, State, Verdict
from vauban.handlers import keys
from vauban.handlers.backups.store import backup_policy_of, read_authentic, store_of
from vauban.handlers.context import Context
from vauban.reconcile.backup import (
    DATABASE_ANNOTATION,
    FAILED,
    STORE_ANNOTATION,
    Ledger,
    LedgerEntry,
    ledger_of,
)

logger = logging.getLogger(__name__)

JOB_ANNOTATION = "vauban.dev/job"


def database_of(body: Mapping[str, Any]) -> build.Database:
    meta = body["metadata"]
    return build.Database(meta["namespace"], meta["name"], meta.get("uid", ""))


@dataclass(frozen=True)
class Incarnation:
    """One incarnation of a ManagedDatabase (one uid) as the operator recorded it: the data
    key Secret it made for that uid names the database, holds the key (unwrapped with the uid
    as its context, so a key moved to another database's Secret does not open) and the
    ledger of its backups."""

    database: build.Database
    key: build.DataKey
    ledger: Ledger


DEK_SECRET_PREFIX = data_key_secret_name("")


async def incarnation(ctx: Context, namespace: str, name: str, uid: str) -> Incarnation | Verdict:
    """The incarnation `uid` of ManagedDatabase `namespace/name`, if the operator's record
    says that is whose it is."""
    found = await ctx.kube.read_secret_and_annotations(
        ctx.settings.namespace, data_key_secret_name(uid)
    )
    if found is None:
        return Verdict(
            State.STALLED,
            Reason.KEY_MISSING,
            f"The data key of ManagedDatabase {name} (uid {uid}) no longer exists: the "
            "database was deleted and its data key destroyed (crypto-shredding), or its "
            "retention after deletion ran out.",
        )
    values, annotations = found
    if annotations.get(DATABASE_ANNOTATION) != f"{namespace}/{name}":
        return Verdict(
            State.STALLED,
            Reason.RESTORE_REFUSED,
            f"The data key of uid {uid} was not made for ManagedDatabase {namespace}/{name}.",
        )
    key = await keys.unwrap_data_key(ctx, values, uid)
    if isinstance(key, Verdict):
        return key
    if key.key_id != data_key_id(uid):
        return Verdict(
            State.STALLED,
            Reason.RESTORE_REFUSED,
            f"The data key Secret of uid {uid} holds another key ({key.key_id}).",
        )
    return Incarnation(build.Database(namespace, name, uid), key, ledger_of(annotations))


async def incarnation_uids(ctx: Context, namespace: str, name: str) -> list[str]:
    """The uids of every incarnation of `namespace/name` whose data key still exists."""
    found = await ctx.kube.secret_annotations(ctx.settings.namespace, "vauban.dev/key=dek")
    return sorted(
        secret.removeprefix(DEK_SECRET_PREFIX)
        for secret, marks in found.items()
        if marks.get(DATABASE_ANNOTATION) == f"{namespace}/{name}"
        and secret.startswith(DEK_SECRET_PREFIX)
    )


async def write_ledger(
    ctx: Context, database: build.Database, values: Mapping[str, str | None]
) -> None:
    """Write to (None: remove from) the ledger of `database`'s incarnation."""
    await ctx.kube.annotate_secret(
        ctx.settings.namespace, data_key_secret_name(database.uid), dict(values)
    )


def location_of(store: build.Store, database: build.Database, job: str) -> str:
    """Where the backup a Job makes is stored: under its database's incarnation."""
    return f"{store.database_prefix(database)}/{job}"


_JOB_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _derived_job(body: Mapping[str, Any]) -> str:
    """A ManagedBackup's Job when the ledger has none for it yet: named after its uid, or,
    for a scheduled run recorded before the ledger existed, the Job its annotation names.
    The annotation is the tenant's to write, but it only picks a name under this database's
    own prefix (a single path segment)."""
    meta = body["metadata"]
    annotated = str((meta.get("annotations") or {}).get(JOB_ANNOTATION) or "")
    return annotated if _JOB_NAME.match(annotated) else build.job_name(meta.get("uid", ""))


@dataclass(frozen=True)
class Placement:
    """Where a ManagedBackup's backup is, per the records: its incarnation, its Job, its
    ledger entry (None before its Job started), and its manifest once complete."""

    incarnation: Incarnation
    store: build.Store
    job: str
    entry: LedgerEntry | None
    manifest: Manifest | None
    bucket_error: str | None = None
    """Why the manifest could not be looked for: unknown is not absent."""

    @property
    def location(self) -> str:
        return location_of(self.store, self.incarnation.database, self.job)


async def database_store(
    ctx: Context, namespace: str, name: str, live: Mapping[str, Any] | None
) -> build.Store | Verdict:
    """The object store of database `namespace/name`'s cluster: the live database's, or the
    one recorded on its data key when it was deleted."""
    if live is not None:
        ref = (live.get("spec") or {}).get("clusterRef") or {}
        cluster_namespace, cluster_name = ref.get("namespace") or namespace, ref.get("name", "")
    else:
        found = await ctx.kube.secret_annotations(ctx.settings.namespace, "vauban.dev/key=dek")
        refs = [
            marks.get(STORE_ANNOTATION, "")
            for marks in found.values()
            if marks.get(DATABASE_ANNOTATION) == f"{namespace}/{name}"
        ]
        cluster_namespace, _, cluster_name = next((r for r in refs if r), "").partition("/")
        if not cluster_name:
            return Verdict(
                State.WAITING, Reason.DATABASE_NOT_FOUND, f"ManagedDatabase {name} does not exist."
            )
    policy = await backup_policy_of(ctx, cluster_namespace, cluster_name)
    if policy is None:
        return Verdict(
            State.STALLED,
            Reason.BACKUP_NOT_CONFIGURED,
            f"The ManagedCluster of ManagedDatabase {name} has no spec.backup.objectStore: "
            "there is nowhere to store a backup. Ask the platform team to configure one.",
        )
    store = await store_of(ctx, cluster_namespace, policy.object_store)
    if isinstance(store, str):
        return Verdict(State.WAITING, Reason.BACKUP_NOT_CONFIGURED, f"Cannot back up: {store}.")
    return store


async def place(
    ctx: Context,
    body: Mapping[str, Any],
    database_name: str,
    live: Mapping[str, Any] | None,
    store: build.Store,
) -> Placement | Verdict:
    """Where the records put ManagedBackup `body` (of database `database_name`, whose live
    object is `live` if it exists): the incarnation whose ledger has it, else (a backup not
    started yet, or recorded before the ledger existed) the one whose bucket prefix holds a
    manifest at its derived Job, else the live database's."""
    meta = body["metadata"]
    namespace, backup_uid = meta["namespace"], meta.get("uid", "")
    live_meta = (live or {}).get("metadata") or {}
    live_uid = live_meta.get("uid")
    uids = [live_uid] if live_uid else []
    created = str(meta.get("creationTimestamp", ""))
    if not live_uid or created < str(live_meta.get("creationTimestamp", "")):
        # Older than the live database (or it is gone): it may be an earlier incarnation's.
        uids += [u for u in await incarnation_uids(ctx, namespace, database_name) if u != live_uid]
    found: list[Incarnation] = []
    first_problem: Verdict | None = None
    for uid in uids:
        current = await incarnation(ctx, namespace, database_name, uid)
        if (
            isinstance(current, Verdict)
            and uid == live_uid
            and current.reason == Reason.KEY_MISSING
        ):
            # Made at its first reconcile with backups on: not yet.
            current = Verdict(
                State.WAITING,
                Reason.DATABASE_NOT_READY,
                f"ManagedDatabase {database_name} has no data key yet (made once it is Ready).",
            )
        if isinstance(current, Verdict):
            first_problem = first_problem or current
            continue
        found.append(current)
        entry = current.ledger.entries.get(backup_uid)
        if entry is not None:
            manifest = None
            if entry.state != FAILED:
                location = location_of(store, current.database, entry.job)
                try:
                    manifest = await asyncio.to_thread(
                        read_authentic, ctx, store, location, current.key
                    )
                except StorageError as e:
                    return Placement(current, store, entry.job, entry, None, str(e))
            return Placement(current, store, entry.job, entry, manifest)
    job = _derived_job(body)
    for current in found:
        location = location_of(store, current.database, job)
        try:
            manifest = await asyncio.to_thread(read_authentic, ctx, store, location, current.key)
        except StorageError as e:
            # Only looking for a backup made before the ledger: one not started yet goes
            # ahead, and its Job reports what the bucket says.
            logger.info("cannot look for a backup at %s: %s", location, e)
            manifest = None
        if manifest is not None or current.database.uid == live_uid:
            return Placement(current, store, job, None, manifest)
    if first_problem is not None:
        return first_problem
    return Verdict(
        State.STALLED,
        Reason.KEY_MISSING,
        f"No data key of ManagedDatabase {database_name} exists: it never had a backup here, "
        "or it was deleted and its data key destroyed (crypto-shredding), or its retention "
        "after deletion ran out. Its backups cannot be read.",
    )
