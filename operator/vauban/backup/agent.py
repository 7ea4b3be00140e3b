"""`vauban agent backup | restore | verify`: the backup data path, run by the operator in Jobs.

Settings come from the environment only (see `vauban.backup.settings`). The outcome is one
JSON line on stdout, also written to /dev/termination-log (Kubernetes' termination message,
which the operator reads), and the exit code tells its kind:

    0 success, 1 interrupted or unforeseen, 2 configuration, 3 storage, 4 integrity,
    5 database, 6 verification mismatch.

Logs go to stderr and never carry a password, a key or a row of the database.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from vauban.backup import interrupt
from vauban.backup.dump import run_backup
from vauban.backup.errors import AgentFailure, VerificationMismatch
from vauban.backup.manifest import Manifest, normalize_location
from vauban.backup.restore import run_restore, run_verify
from vauban.backup.settings import AgentSettings, ConfigurationError
from vauban.backup.storage import ObjectStore
from vauban.backup.storage_errors import InvalidEndpoint, StorageError

logger = logging.getLogger("vauban.agent")

EXIT_STORAGE = 3
EXIT_DATABASE = 5
EXIT_OTHER = 1
TERMINATION_LOG = Path("/dev/termination-log")
TERMINATION_LIMIT = 4096
"""Kubernetes keeps at most 4 KiB of a termination message."""


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    restore_signals = interrupt.install()
    started = time.monotonic()
    operation = str(args.agent_command)
    result: dict[str, Any] = {"operation": operation, "location": args.location}
    try:
        code, outcome = _execute(operation, args)
    except AgentFailure as e:
        code, outcome = e.exit_code, _failed(e.reason, e.message)
        if isinstance(e, VerificationMismatch):
            outcome["differences"] = {
                table: {"manifest": expected, "restored": found}
                for table, (expected, found) in e.differences.items()
            }
    except StorageError as e:
        code = 2 if isinstance(e, InvalidEndpoint) else EXIT_STORAGE
        outcome = _failed(e.reason, str(e))
    except psycopg.Error as e:
        # The server's primary message only: its DETAIL and CONTEXT can quote rows. An error
        # raised by psycopg itself has no server message, and no data in its own.
        primary = e.diag.message_primary or str(e)
        code, outcome = EXIT_DATABASE, _failed("DatabaseError", f"PostgreSQL: {primary}")
    except interrupt.Interrupted as e:
        code, outcome = EXIT_OTHER, _failed("Interrupted", str(e))
    except Exception as e:
        logger.exception("unforeseen failure")
        code, outcome = EXIT_OTHER, _failed("InternalError", f"{type(e).__name__}: {e}")
    finally:
        restore_signals()
    result = {**outcome, **result, "durationSeconds": round(time.monotonic() - started, 3)}
    if code:
        logger.error("%s failed: %s: %s", operation, result["reason"], result["message"])
    _publish(result)
    return code


def _execute(operation: str, args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    settings = AgentSettings.load()
    try:
        location = normalize_location(args.location)
    except ValueError as e:
        raise ConfigurationError("ConfigurationInvalid", str(e)) from None
    store = ObjectStore(
        endpoint=settings.s3_endpoint,
        region=settings.s3_region,
        bucket=settings.s3_bucket,
        access_key_id=settings.access_key_id.get_secret_value(),
        secret_access_key=settings.secret_access_key.get_secret_value(),
        ca_file=settings.ca_bundle,
    )
    if operation == "backup":
        outcome = run_backup(settings, location, store)
        m = outcome.manifest
        lock = {
            "Applied": f" under Object Lock (COMPLIANCE) until {_until(m)}",
            "NotRequested": "",
            "Unsupported": "; Object Lock was asked for but the bucket does not support it: "
            "stored without retention",
        }[outcome.object_lock]
        message = (
            f"backup of {m.database} stored at {location}: {m.dump_bytes} bytes dumped, "
            f"{m.stored_bytes} stored, {len(m.tables)} tables{lock}"
        )
        if not outcome.created:
            message = f"already complete, nothing done: {message}"
        reason = "BackupCompleted" if outcome.created else "BackupExists"
        return 0, _succeeded(reason, message, m, objectLock=outcome.object_lock)
    if operation == "restore":
        manifest = run_restore(settings, location, store)
        database = settings.require_database()
        message = (
            f"restored {location} ({len(manifest.tables)} tables) into {database}, "
            "verified before anything was applied"
        )
        return 0, _succeeded("RestoreCompleted", message, manifest)
    manifest, counts = run_verify(settings, location, store, args.scratch_database)
    message = (
        f"restored {location} into a scratch database: the {len(counts)} tables' row counts "
        "match the manifest"
    )
    return 0, _succeeded("VerificationPassed", message, manifest, tablesChecked=len(counts))


def _until(manifest: Manifest) -> str:
    lock = manifest.object_lock
    return f"{lock.retain_until:%Y-%m-%dT%H:%M:%SZ}" if lock else "-"


def _succeeded(reason: str, message: str, manifest: Manifest, **extra: Any) -> dict[str, Any]:
    return {
        "result": "Succeeded",
        "reason": reason,
        "message": message,
        "manifest": manifest.model_dump(mode="json", by_alias=True),
        **extra,
    }


def _failed(reason: str, message: str) -> dict[str, Any]:
    return {"result": "Failed", "reason": reason, "message": message, "manifest": None}


def termination_message(result: dict[str, Any]) -> str:
    """The result in at most 4 KiB: without the table list and differences if need be, then
    without the manifest (the operator can read it from the bucket), then with the message
    cut."""
    text = json.dumps(result, separators=(",", ":"), ensure_ascii=False)
    if len(text.encode()) <= TERMINATION_LIMIT:
        return text
    compact = {k: v for k, v in result.items() if k != "differences"}
    if compact.get("manifest"):
        compact["manifest"] = {**compact["manifest"], "tables": {}}
        compact["tablesOmitted"] = True
    text = json.dumps(compact, separators=(",", ":"), ensure_ascii=False)
    if len(text.encode()) <= TERMINATION_LIMIT:
        return text
    compact["manifest"] = None
    compact["message"] = str(compact["message"])[:1000]
    return json.dumps(compact, separators=(",", ":"), ensure_ascii=False)


def _publish(result: dict[str, Any]) -> None:
    print(json.dumps(result, separators=(",", ":"), ensure_ascii=False), flush=True)
    if TERMINATION_LOG.exists() and os.access(TERMINATION_LOG, os.W_OK):
        try:
            TERMINATION_LOG.write_text(termination_message(result), encoding="utf-8")
        except OSError as e:
            logger.warning("could not write the termination message: %s", e)
