"""`vauban agent restore` and `vauban agent verify`.

Nothing reaches the target database before the whole backup is proven intact: the stored
object is downloaded to a private temporary file while its SHA-256 is computed and every
chunk is authenticated (and the plaintext thrown away); only then is it decrypted a second
time, from that file, into pg_restore. Why a file rather than two downloads: a second download
could return different bytes than the first, verified one (a replaced object, a faulty
cache), and the bytes pg_restore reads must be the ones that were verified. The file holds
only ciphertext, about `storedBytes` (give the Job that much scratch space, at TMPDIR); the
plaintext never touches a disk.

pg_restore runs in a single transaction: should it fail anyway, the target is left as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zstandard
from psycopg import sql

from vauban.backup import postgres
from vauban.backup.errors import DatabaseFailure, IntegrityFailure, VerificationMismatch
from vauban.backup.manifest import Manifest, data_key
from vauban.backup.settings import AgentSettings
from vauban.backup.storage import InvalidManifest, ObjectNotFound, ObjectStore
from vauban.crypto import envelope
from vauban.crypto.stream import Decryptor, StreamError

logger = logging.getLogger(__name__)

READ_BLOCK = 1 << 20
SCRATCH_COMMENT = "vauban verify scratch database"
"""Marks a scratch database as the agent's: a later verify may drop it, nobody else's."""


@dataclass(frozen=True)
class VerifiedBackup:
    manifest: Manifest
    path: Path
    """The stored object, downloaded and verified, in a private temporary directory."""

    key: bytes
    """The backup's own key, unwrapped."""


def load_manifest(store: ObjectStore, location: str) -> Manifest:
    store.check_bucket()
    try:
        manifest = store.read_manifest(location)
    except InvalidManifest as e:
        raise IntegrityFailure("IntegrityCheckFailed", str(e)) from None
    if manifest is None:
        raise IntegrityFailure(
            "BackupNotFound", f"no backup at {location}: it has no manifest (absent or unfinished)"
        )
    return manifest


def fetch_verified(
    store: ObjectStore,
    manifest: Manifest,
    data_key_material: bytes,
    data_key_id: str,
    scratch: Path,
) -> VerifiedBackup:
    """Download the backup into `scratch` and prove it whole: size and SHA-256 as recorded,
    the backup key opened by the data key, every chunk authentic, the stream complete."""
    if manifest.data_key_id != data_key_id:
        raise IntegrityFailure(
            "WrongKey",
            f"the backup was encrypted under data key {manifest.data_key_id!r}, and "
            f"VAUBAN_DATA_KEY is {data_key_id!r}",
        )
    try:
        key = envelope.unwrap_key(data_key_material, manifest.wrapped_key, manifest.key_context())
    except envelope.WrongKey as e:
        raise IntegrityFailure("WrongKey", str(e)) from None

    path = scratch / "data"
    sha256 = hashlib.sha256()
    size = 0
    decryptor = Decryptor(key, bytes.fromhex(manifest.backup_id), manifest.chunk_size)
    try:
        with path.open("wb") as out:
            for block in store.iter_object(data_key(manifest.location), READ_BLOCK):
                size += len(block)
                if size > manifest.stored_bytes:
                    raise IntegrityFailure(
                        "IntegrityCheckFailed",
                        f"the stored object is larger than the {manifest.stored_bytes} bytes "
                        "its manifest records",
                    )
                sha256.update(block)
                out.write(block)
                decryptor.update(block)
        if size != manifest.stored_bytes:
            raise IntegrityFailure(
                "IntegrityCheckFailed",
                f"the stored object is truncated: {size} of {manifest.stored_bytes} bytes",
            )
        if sha256.hexdigest() != manifest.sha256:
            raise IntegrityFailure(
                "IntegrityCheckFailed",
                "the stored object's SHA-256 differs from its manifest's: it was altered",
            )
        decryptor.finalize()
    except ObjectNotFound:
        raise IntegrityFailure(
            "IntegrityCheckFailed", f"the backup's data is missing at {data_key(manifest.location)}"
        ) from None
    except StreamError as e:
        raise IntegrityFailure(
            "IntegrityCheckFailed", f"the backup does not authenticate: {e}"
        ) from None
    logger.info("verified %s: %d bytes, %d chunks", manifest.location, size, decryptor.chunks)
    return VerifiedBackup(manifest, path, key)


def apply(backup: VerifiedBackup, database: str, pg_restore: Path) -> None:
    """pg_restore the verified backup into `database`, in one transaction."""
    manifest = backup.manifest
    command = [
        str(pg_restore),
        "--single-transaction",
        "--exit-on-error",
        # Ownership and grants are the target's: Vauban's owner role, not the source's roles
        # (which the target server may not have).
        "--no-owner",
        "--no-privileges",
        "--no-password",
        f"--dbname={database}",
    ]
    decryptor = Decryptor(backup.key, bytes.fromhex(manifest.backup_id), manifest.chunk_size)
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    written = 0
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=postgres.child_environment(),
        )
        assert process.stdin is not None
        try:
            with backup.path.open("rb") as source:
                while block := source.read(READ_BLOCK):
                    plain = decompressor.decompress(decryptor.update(block))
                    written += len(plain)
                    process.stdin.write(plain)
                plain = decompressor.decompress(decryptor.finalize())
                written += len(plain)
                process.stdin.write(plain)
            if written != manifest.dump_bytes or not decompressor.eof:
                # Cannot happen to a verified file short of a bug or a changed disk; killing
                # pg_restore before end of input rolls its transaction back.
                raise IntegrityFailure(
                    "IntegrityCheckFailed",
                    f"the dump decompressed to {written} bytes, not {manifest.dump_bytes}",
                )
            process.stdin.close()
        except BrokenPipeError:
            pass  # pg_restore stopped reading: its exit status says why
        except BaseException:
            postgres.terminate(process)
            raise
        finally:
            if not process.stdin.closed:
                with contextlib.suppress(BrokenPipeError):
                    process.stdin.close()
        if process.wait() != 0:
            raise DatabaseFailure(
                "RestoreFailed",
                f"pg_restore failed, nothing was restored: {postgres.errors_only(stderr)}",
            )


def run_restore(settings: AgentSettings, location: str, store: ObjectStore) -> Manifest:
    data_key_material, data_key_id = settings.key()
    database = settings.require_database()
    manifest = load_manifest(store, location)
    with postgres.connect() as conn:
        _, major = postgres.server_version(conn)
        found = postgres.user_objects(conn)
    if found:
        raise DatabaseFailure(
            "TargetNotEmpty",
            f"database {database} is not empty ({', '.join(found)}): restore only into an "
            "empty database",
        )
    pg_restore = postgres.find_client("pg_restore", major, settings.pg_bin_dir)
    with tempfile.TemporaryDirectory(prefix="vauban-restore-") as scratch:
        backup = fetch_verified(store, manifest, data_key_material, data_key_id, Path(scratch))
        logger.info("restoring %s into %s", location, database)
        apply(backup, database, pg_restore)
    return manifest


def run_verify(
    settings: AgentSettings, location: str, store: ObjectStore, scratch_database: str
) -> tuple[Manifest, dict[str, int]]:
    """Restore into a new scratch database, compare row counts with the manifest's, drop it.
    Returns the counts found; VerificationMismatch when they differ."""
    data_key_material, data_key_id = settings.key()
    settings.require_database()
    if not 0 < len(scratch_database.encode()) <= 63:
        raise DatabaseFailure("InvalidScratchDatabase", "a database name has 1 to 63 bytes")
    manifest = load_manifest(store, location)
    with tempfile.TemporaryDirectory(prefix="vauban-verify-") as scratch:
        backup = fetch_verified(store, manifest, data_key_material, data_key_id, Path(scratch))
        with postgres.connect(autocommit=True) as admin:
            _, major = postgres.server_version(admin)
            pg_restore = postgres.find_client("pg_restore", major, settings.pg_bin_dir)
            _create_scratch(admin, scratch_database)
            try:
                apply(backup, scratch_database, pg_restore)
                with postgres.connect(scratch_database) as conn:
                    counts = postgres.table_counts(conn)
            finally:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(scratch_database)
                    )
                )
    differences = {
        table: (manifest.tables.get(table), counts.get(table))
        for table in sorted(manifest.tables.keys() | counts.keys())
        if manifest.tables.get(table) != counts.get(table)
    }
    if differences:
        shown = ", ".join(
            f"{table}: {expected} expected, {found} restored"
            for table, (expected, found) in list(differences.items())[:10]
        )
        raise VerificationMismatch(
            f"{len(differences)} of {len(manifest.tables)} tables differ after restore: {shown}",
            differences,
        )
    return manifest, counts


def _create_scratch(admin: postgres.Connection, name: str) -> None:
    row = admin.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
        (name,),
    ).fetchone()
    if row is not None:
        if row[0] != SCRATCH_COMMENT:
            raise DatabaseFailure(
                "ScratchDatabaseExists",
                f"database {name} exists and is not a scratch database of Vauban: choose "
                "another --scratch-database",
            )
        # Left by a verify that was killed before it could clean up.
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
    admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    admin.execute(
        sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(name), sql.Literal(SCRATCH_COMMENT)
        )
    )
