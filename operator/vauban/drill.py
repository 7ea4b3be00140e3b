"""A recovery drill: from a bucket and the key custody alone, with no Kubernetes at all, open
and restore each database's latest backup into a scratch database, and say per database what
was found, decrypted, restored, counted, and how long it took.

Key custody is what survives the loss of the Kubernetes cluster: the platform's recovery
private key (for KEKs of the `kubernetes-secret` provider, escrowed in the bucket), or the
HSM itself (kmip, pkcs11), reached with the operator's own provider settings. Nothing else
is read: no Secret, no status, no record of the old cluster.

Everything a drill opens is proven before use (see `vauban.backup.recovery`): the key record
by its MAC under the data key it leads to, each manifest by its own MAC, and the manifest's
identity (namespace, ManagedDatabase, uid) against the record's. A backup that fails any of
it is reported with the reason, and nothing of it is restored.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import ValidationError

from vauban.backup.errors import AgentFailure
from vauban.backup.manifest import Manifest, ManifestNotAuthentic
from vauban.backup.recovery import (
    KEY_RECORD,
    KekEscrow,
    KeyRecord,
    RecordNotAuthentic,
    escrow_context,
)
from vauban.backup.restore import check_counts, fetch_verified, restore_and_count
from vauban.backup.storage import ObjectStore, StorageError
from vauban.builders.keys import data_key_context
from vauban.crypto import envelope, recovery
from vauban.kms import KeyProvider, KeyProviderError, WrongKey

logger = logging.getLogger(__name__)


class Refused(AgentFailure):
    """This backup cannot be opened with the custody given, or is not what it claims."""

    exit_code = 4


@dataclass(frozen=True)
class Custody:
    """What opens the key-encryption keys once the Kubernetes cluster is gone."""

    recovery_key: X25519PrivateKey | None = None
    providers: Mapping[str, KeyProvider] = field(default_factory=dict)
    """HSM-backed providers (kmip, pkcs11), configured like the operator's."""


@dataclass
class DatabaseResult:
    namespace: str
    name: str
    uid: str
    cluster: str
    record: str
    """The key record's object key."""

    found: bool = False
    decrypted: bool = False
    restored: bool = False
    location: str | None = None
    finished_at: str | None = None
    stored_bytes: int | None = None
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    reason: str | None = None
    message: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "uid": self.uid,
            "cluster": self.cluster,
            "found": self.found,
            "decrypted": self.decrypted,
            "restored": self.restored,
            "location": self.location,
            "backupFinishedAt": self.finished_at,
            "storedBytes": self.stored_bytes,
            "tables": len(self.rows),
            "rows": sum(self.rows.values()),
            "rowsPerTable": self.rows,
            "seconds": round(self.seconds, 3),
            "reason": self.reason,
            "message": self.message,
        }


def key_records(store: ObjectStore, prefix: str) -> list[str]:
    """The object keys of every key record under `prefix`."""
    return store.keys_ending(prefix.strip("/") + "/" if prefix.strip("/") else "", f"/{KEY_RECORD}")


def read_record(store: ObjectStore, key: str) -> KeyRecord:
    data = store.read_small(key)
    if data is None:
        raise Refused("BackupNotFound", f"no key record at {key}")
    try:
        return KeyRecord.model_validate_json(data)
    except ValidationError:
        raise Refused("KeyRecordInvalid", f"{key} is not a key record this Vauban reads") from None


def _kek_from_escrow(store: ObjectStore, record: KeyRecord, private: X25519PrivateKey) -> bytes:
    kek = record.kek
    if kek.escrow is None:
        raise Refused(
            "NotEscrowed",
            f"the key-encryption key {kek.id} v{kek.version} was never escrowed to a recovery "
            "key: its backups did not survive the loss of their cluster",
        )
    data = store.read_small(kek.escrow)
    if data is None:
        raise Refused("NotEscrowed", f"the escrow {kek.escrow} is missing from the bucket")
    try:
        escrow = KekEscrow.model_validate_json(data)
    except ValidationError:
        raise Refused("EscrowInvalid", f"{kek.escrow} is not a KEK escrow") from None
    mine = recovery.fingerprint(private.public_key())
    if escrow.recipient != mine:
        raise Refused(
            "WrongRecoveryKey",
            f"{kek.id} v{kek.version} is sealed to recovery key {escrow.recipient}, and the "
            f"key given is {mine}",
        )
    try:
        return recovery.open_sealed(
            private, escrow.sealed, escrow_context(record.cluster.uid, kek.id, kek.version)
        )
    except recovery.NotSealedToThisKey as e:
        raise Refused("WrongRecoveryKey", f"{kek.id} v{kek.version}: {e}") from None


def open_data_key(store: ObjectStore, record: KeyRecord, custody: Custody) -> bytes:
    """The record's data key, unwrapped by its KEK (from the escrow or the HSM), and the
    record proven written with it. Refused otherwise, with the reason."""
    kek, context = record.kek, data_key_context(record.database.uid)
    try:
        if kek.provider == "kubernetes-secret":
            if custody.recovery_key is None:
                raise Refused(
                    "NoRecoveryKey",
                    f"{kek.id} was a kubernetes-secret KEK: the recovery private key is needed",
                )
            material = _kek_from_escrow(store, record, custody.recovery_key)
            data_key = envelope.unwrap_key(material, record.wrapped_data_key, context)
        else:
            provider = custody.providers.get(kek.provider)
            if provider is None or kek.ref is None:
                raise Refused(
                    "KeyProviderNotConfigured",
                    f"{kek.id} v{kek.version} is held by a {kek.provider} HSM this drill is "
                    "not configured for",
                )
            data_key = provider.unwrap(kek.ref, record.wrapped_data_key, context)
    except (envelope.WrongKey, WrongKey):
        raise Refused(
            "WrongKey",
            f"{kek.id} v{kek.version} does not open the data key of "
            f"{record.database.namespace}/{record.database.name}",
        ) from None
    except KeyProviderError as e:
        raise Refused("KeyProviderUnavailable", f"the {kek.provider} HSM: {e}") from None
    try:
        record.authenticate(data_key)
    except RecordNotAuthentic as e:
        raise Refused("KeyRecordNotAuthentic", str(e)) from None
    return data_key


def authentic_backups(
    manifests: Iterable[Manifest], record: KeyRecord, data_key: bytes
) -> list[Manifest]:
    """The manifests written with this data key for this very database (format 2: every
    field authenticated), oldest first. Any other is skipped, and logged."""
    found = []
    for manifest in manifests:
        try:
            complete = manifest.data_key_id == record.data_key_id and manifest.authenticate(
                data_key
            )
        except ManifestNotAuthentic as e:
            logger.warning("skipping a backup: %s", e)
            continue
        identity = (manifest.namespace, manifest.managed_database, manifest.database_uid)
        wanted = (record.database.namespace, record.database.name, record.database.uid)
        if not complete or identity != wanted:
            logger.warning(
                "skipping %s: not an authenticated backup of %s", manifest.location, wanted
            )
            continue
        found.append(manifest)
    return sorted(found, key=lambda m: m.finished_at)


def latest_backup(
    store: ObjectStore, record_key: str, record: KeyRecord, data_key: bytes
) -> Manifest:
    prefix = record_key.removesuffix(KEY_RECORD)
    found = authentic_backups(store.list_manifests(prefix), record, data_key)
    if not found:
        raise Refused(
            "BackupNotFound",
            f"no authenticated backup of {record.database.namespace}/{record.database.name} "
            f"under {prefix}",
        )
    return found[-1]


def drill_one(
    store: ObjectStore, record_key: str, custody: Custody, pg_bin_dir: str | None
) -> DatabaseResult:
    started = time.monotonic()
    try:
        record = read_record(store, record_key)
    except Refused as e:
        return DatabaseResult("?", "?", "?", "?", record_key, reason=e.reason, message=e.message)
    database = record.database
    result = DatabaseResult(
        database.namespace,
        database.name,
        database.uid,
        f"{record.cluster.namespace}/{record.cluster.name}",
        record_key,
    )
    try:
        data_key = open_data_key(store, record, custody)
        own = f"/{database.namespace}/{database.name}/{database.uid}/{KEY_RECORD}"
        if not f"/{record_key}".endswith(own):
            # Authentic, but another database's record copied here: what is under this
            # prefix is not its to open.
            raise Refused(
                "KeyRecordMisplaced",
                f"{record_key} is the key record of {database.namespace}/{database.name} "
                f"(uid {database.uid}), which lives elsewhere",
            )
        manifest = latest_backup(store, record_key, record, data_key)
        result.found = True
        result.location = manifest.location
        result.finished_at = manifest.finished_at.isoformat()
        result.stored_bytes = manifest.stored_bytes
        with tempfile.TemporaryDirectory(prefix="vauban-drill-") as scratch:
            backup = fetch_verified(
                store, manifest, data_key, record.data_key_id, Path(scratch), database.namespace
            )
            result.decrypted = True
            result.rows = restore_and_count(backup, scratch_name(database.uid), pg_bin_dir)
        check_counts(manifest, result.rows)
        result.restored = True
        result.reason, result.message = (
            "Restored",
            (
                f"restored {manifest.location} into a scratch database: {len(result.rows)} tables, "
                f"{sum(result.rows.values())} rows, as the manifest records"
            ),
        )
    except AgentFailure as e:
        result.reason, result.message = e.reason, e.message
    except StorageError as e:
        result.reason, result.message = e.reason, str(e)
    except psycopg.Error as e:
        # The server's primary message only: its detail can quote rows.
        result.reason = "DatabaseError"
        result.message = f"PostgreSQL: {e.diag.message_primary or type(e).__name__}"
    result.seconds = time.monotonic() - started
    return result


def scratch_name(uid: str) -> str:
    return f"vauban_drill_{uid.replace('-', '')[:32]}"


def run(
    store: ObjectStore, prefix: str, custody: Custody, pg_bin_dir: str | None = None
) -> dict[str, Any]:
    """Drill every database whose key record is under `prefix`; the report."""
    started = time.monotonic()
    store.check_bucket()
    results = [drill_one(store, key, custody, pg_bin_dir) for key in key_records(store, prefix)]
    return {
        "bucket": store.bucket,
        "prefix": prefix,
        "databases": [r.as_dict() for r in results],
        "summary": {
            "databases": len(results),
            "restored": sum(r.restored for r in results),
            "failed": sum(not r.restored for r in results),
            "storedBytes": sum(r.stored_bytes or 0 for r in results),
            "seconds": round(time.monotonic() - started, 3),
        },
    }


def markdown(report: Mapping[str, Any]) -> str:
    summary = report["summary"]
    lines = [
        "# Vauban recovery drill",
        "",
        f"Bucket {report['bucket']}, prefix {report['prefix'] or '(all)'}: "
        f"{summary['restored']} of {summary['databases']} databases restored in "
        f"{summary['seconds']} s.",
        "",
        "| Database | Cluster | Found | Decrypted | Restored | Tables | Rows | Seconds | Outcome |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in report["databases"]:
        cells = [
            f"{d['namespace']}/{d['name']}",
            d["cluster"],
            "yes" if d["found"] else "no",
            "yes" if d["decrypted"] else "no",
            "yes" if d["restored"] else "**no**",
            d["tables"],
            d["rows"],
            d["seconds"],
            f"{d['reason']}: {d['message']}",
        ]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
