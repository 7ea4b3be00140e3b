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

Whose privileges replay a backup. A dump is tenant content: a function called by a CHECK
constraint, a default, an index expression or a trigger runs, during the restore, with the
privileges of the role restoring it. So a restore into a tenant's database runs as the tenant's
login (which switches to its owner role), and a verify never restores as the login it is given
(the cluster's admin): the admin creates a throw-away role that holds nothing and a scratch
database owned by it, then pg_restore and the row counts run in sessions of that role, with
its own password; the admin only creates and drops the two.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import zstandard
from psycopg import sql

from vauban.backup import postgres
from vauban.backup.errors import DatabaseFailure, IntegrityFailure, VerificationMismatch
from vauban.backup.manifest import Manifest, ManifestNotAuthentic, data_key
from vauban.backup.settings import AgentSettings
from vauban.backup.storage import ObjectStore
from vauban.backup.storage_errors import InvalidManifest, ObjectNotFound
from vauban.crypto import envelope
from vauban.crypto.stream import Decryptor, StreamError

logger = logging.getLogger(__name__)

READ_BLOCK = 1 << 20
SCRATCH_COMMENT = "vauban verify scratch database"
"""Marks a scratch database as the agent's: a later verify may drop it, nobody else's."""

SCRATCH_ROLE_COMMENT = "vauban verify scratch role"
"""Marks the throw-away role likewise. Only a superuser or a role with CREATEROLE can comment
on a role, so a tenant cannot make its own role look like one."""

SCRATCH_CONNECTION_LIMIT = 4
"""pg_restore's session and the row count's, with room for a straggler."""


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


def authenticate(
    manifest: Manifest, data_key_material: bytes, data_key_id: str, namespace: str | None
) -> bool:
    """Prove the manifest is this data key's and, when the agent works for a namespace, that
    namespace's: a backup is never restored into another tenant's namespace. Returns whether
    every field is authenticated (format 2) or only the key binding (format 1)."""
    if manifest.data_key_id != data_key_id:
        raise IntegrityFailure(
            "WrongKey",
            f"the backup was encrypted under data key {manifest.data_key_id!r}, and "
            f"VAUBAN_DATA_KEY is {data_key_id!r}",
        )
    # The key binding first: another data key, or a backup moved to another location, is
    # WrongKey; a right key with altered fields is ManifestNotAuthentic.
    try:
        envelope.unwrap_key(data_key_material, manifest.wrapped_key, manifest.key_context())
    except envelope.WrongKey as e:
        raise IntegrityFailure("WrongKey", str(e)) from None
    try:
        complete = manifest.authenticate(data_key_material)
    except ManifestNotAuthentic as e:
        raise IntegrityFailure("ManifestNotAuthentic", str(e)) from None
    if namespace is not None and complete and manifest.namespace != namespace:
        raise IntegrityFailure(
            "WrongNamespace",
            f"the backup belongs to namespace {manifest.namespace!r}, not {namespace!r}: "
            "backups are restored within their namespace only",
        )
    if not complete:
        logger.warning(
            "%s has a format 1 manifest: its tables, dates and object lock are not "
            "authenticated (its data and key are)",
            manifest.location,
        )
    return complete


def fetch_verified(
    store: ObjectStore,
    manifest: Manifest,
    data_key_material: bytes,
    data_key_id: str,
    scratch: Path,
    namespace: str | None = None,
) -> VerifiedBackup:
    """Download the backup into `scratch` and prove it whole: the manifest authentic, size
    and SHA-256 as recorded, the backup key opened by the data key, every chunk authentic,
    the stream complete."""
    authenticate(manifest, data_key_material, data_key_id, namespace)
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


def apply(
    backup: VerifiedBackup,
    database: str,
    pg_restore: Path,
    login: postgres.Login | None = None,
) -> None:
    """pg_restore the verified backup into `database`, in one transaction, as `login` (the
    environment's when None)."""
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
            env=postgres.child_environment(login),
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


@contextlib.contextmanager
def _fetched(
    settings: AgentSettings,
    store: ObjectStore,
    manifest: Manifest,
    agent_key: tuple[bytes, str],
    purpose: str,
) -> Iterator[VerifiedBackup]:
    """The backup, downloaded into a private temporary directory (gone on exit) and proven
    whole with the agent's data key, for the agent's namespace."""
    data_key_material, data_key_id = agent_key
    with tempfile.TemporaryDirectory(prefix=f"vauban-{purpose}-") as scratch:
        yield fetch_verified(
            store,
            manifest,
            data_key_material,
            data_key_id,
            Path(scratch),
            settings.database_namespace,
        )


def run_restore(settings: AgentSettings, location: str, store: ObjectStore) -> Manifest:
    agent_key = settings.key()
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
    with _fetched(settings, store, manifest, agent_key, "restore") as backup:
        logger.info("restoring %s into %s", location, database)
        apply(backup, database, pg_restore)
    return manifest


def run_verify(
    settings: AgentSettings, location: str, store: ObjectStore, scratch_database: str
) -> tuple[Manifest, dict[str, int]]:
    """Restore into a new scratch database, compare row counts with the manifest's, drop it.
    Returns the counts found; VerificationMismatch when they differ."""
    agent_key = settings.key()
    settings.require_database()
    if not 0 < len(scratch_database.encode()) <= 63:
        raise DatabaseFailure("InvalidScratchDatabase", "a database name has 1 to 63 bytes")
    manifest = load_manifest(store, location)
    with _fetched(settings, store, manifest, agent_key, "verify") as backup:
        counts = restore_and_count(backup, scratch_database, settings.pg_bin_dir)
    check_counts(manifest, counts)
    return manifest, counts


def restore_and_count(
    backup: VerifiedBackup, scratch_database: str, pg_bin_dir: str | None
) -> dict[str, int]:
    """Restore a verified backup into a new scratch database owned by a throw-away role,
    count each table's rows, drop both. The admin is the environment's libpq login."""
    # The admin's only session (opened once the backup is proven whole): in the maintenance
    # database (PGDATABASE), never in the scratch one, whose content is the tenant's.
    with postgres.connect(autocommit=True) as admin:
        _, major = postgres.server_version(admin)
        pg_restore = postgres.find_client("pg_restore", major, pg_bin_dir)
        login = _create_scratch(admin, scratch_database)
        try:
            apply(backup, scratch_database, pg_restore, login)
            with postgres.connect(scratch_database, login=login) as conn:
                counts = postgres.table_counts(conn)
            _check_still_powerless(admin, scratch_database)
        finally:
            _drop_scratch(admin, scratch_database)
    return counts


def check_counts(manifest: Manifest, counts: dict[str, int]) -> None:
    """VerificationMismatch unless the restored row counts are the manifest's."""
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


def _marked(admin: postgres.Connection, query: str, name: str, mark: str) -> bool | None:
    """None when the object does not exist; whether it carries `mark` otherwise."""
    row = admin.execute(query, (name,)).fetchone()
    return None if row is None else row[0] == mark


_DATABASE_MARK = (
    "SELECT pg_catalog.shobj_description(oid, 'pg_database')"
    " FROM pg_catalog.pg_database WHERE datname = %s"
)
_ROLE_MARK = (
    "SELECT pg_catalog.shobj_description(oid, 'pg_authid')"
    " FROM pg_catalog.pg_roles WHERE rolname = %s"
)


def _create_scratch(admin: postgres.Connection, name: str) -> postgres.Login:
    """The throw-away role `name` (no attribute, no membership, a random password known only
    to this process) and the scratch database `name` it owns, both marked as the agent's.
    What a killed verify left behind carries the marks and is replaced; anything else of that
    name is refused, never dropped."""
    if _marked(admin, _DATABASE_MARK, name, SCRATCH_COMMENT) is False:
        raise DatabaseFailure(
            "ScratchDatabaseExists",
            f"database {name} exists and is not a scratch database of Vauban: choose "
            "another --scratch-database",
        )
    if _marked(admin, _ROLE_MARK, name, SCRATCH_ROLE_COMMENT) is False:
        raise DatabaseFailure(
            "ScratchRoleExists",
            f"role {name} exists and is not a throw-away role of Vauban: choose another "
            "--scratch-database",
        )
    _drop_scratch(admin, name)
    ident = sql.Identifier(name)
    # NOLOGIN until it is marked and owns its database: no session of it exists before then.
    # INHERIT: its only membership is pg_database_owner's, implicit, in its own database,
    # which gives it the public schema there as a tenant's owner has it in theirs.
    admin.execute(
        sql.SQL(
            "CREATE ROLE {} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT "
            "NOREPLICATION NOBYPASSRLS CONNECTION LIMIT {}"
        ).format(ident, sql.Literal(SCRATCH_CONNECTION_LIMIT))
    )
    admin.execute(
        sql.SQL("COMMENT ON ROLE {} IS {}").format(ident, sql.Literal(SCRATCH_ROLE_COMMENT))
    )
    if not _is_superuser(admin):
        # Before PostgreSQL 16 a non-superuser can only give a database to a role it is a
        # member of. The membership goes from the admin to the throw-away role, never the
        # other way: the role gains nothing from it, and both are dropped together.
        admin.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(ident))
    admin.execute(sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0").format(ident, ident))
    admin.execute(
        sql.SQL("COMMENT ON DATABASE {} IS {}").format(ident, sql.Literal(SCRATCH_COMMENT))
    )
    # A copy of a tenant's data: no other login may even connect.
    admin.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(ident))
    password = secrets.token_urlsafe(32)
    # The server receives a SCRAM verifier, never the password itself (statement logs).
    verifier = admin.pgconn.encrypt_password(password.encode(), name.encode(), b"scram-sha-256")
    admin.execute(
        sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(ident, sql.Literal(verifier.decode()))
    )
    return postgres.Login(name, password)


def _is_superuser(admin: postgres.Connection) -> bool:
    row = admin.execute("SELECT pg_catalog.current_setting('is_superuser')").fetchone()
    return row is not None and row[0] == "on"


def _check_still_powerless(admin: postgres.Connection, name: str) -> None:
    """A tripwire: the throw-away role still has no attribute and no membership after the
    tenant's content ran as it. Nothing it is allowed could change that; if it did, the
    verification fails loudly instead of passing."""
    row = admin.execute(
        "SELECT r.rolsuper OR r.rolcreaterole OR r.rolcreatedb OR r.rolreplication"
        " OR r.rolbypassrls OR EXISTS (SELECT FROM pg_catalog.pg_auth_members m"
        " WHERE m.member = r.oid)"
        " FROM pg_catalog.pg_roles r WHERE r.rolname = %s",
        (name,),
    ).fetchone()
    if row is None or row[0]:
        raise DatabaseFailure(
            "ScratchRoleEscalated",
            f"the throw-away role {name} gained a privilege during the restore: the backup "
            "is not trusted",
        )


def _drop_scratch(admin: postgres.Connection, name: str) -> None:
    """Drop the scratch database and the throw-away role, if they exist and carry the
    agent's marks (a caller checked them); their sessions are ended first."""
    ident = sql.Identifier(name)
    if _marked(admin, _ROLE_MARK, name, SCRATCH_ROLE_COMMENT):
        admin.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(ident))
    if _marked(admin, _DATABASE_MARK, name, SCRATCH_COMMENT):
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(ident))
    if _marked(admin, _ROLE_MARK, name, SCRATCH_ROLE_COMMENT):
        admin.execute(
            "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity"
            " WHERE usename = %s",
            (name,),
        )
        admin.execute(sql.SQL("DROP ROLE {}").format(ident))
