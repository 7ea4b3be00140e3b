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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from vauban.backup.errors import AgentFailure
from vauban.backup.restore import check_counts, fetch_verified, restore_and_count
from vauban.backup.storage import ObjectStore
from vauban.backup.storage_errors import StorageError
from vauban.custody import (
    Custody,
    Refused,
    check_placement,
    key_records,
    latest_backup,
    open_data_key,
    read_record,
)

logger = logging.getLogger(__name__)


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
        check_placement(record_key, record)
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
