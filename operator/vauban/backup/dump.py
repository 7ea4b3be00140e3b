"""`vauban agent backup`: pg_dump → zstd → AES-256-GCM chunks → S3 multipart upload, then the
manifest. Nothing is held whole in memory or written to disk; a failure anywhere aborts the
upload and writes no manifest, so a failed backup leaves nothing that looks like one."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import queue
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import psycopg
import zstandard

from vauban.backup import interrupt, postgres
from vauban.backup.errors import DatabaseFailure
from vauban.backup.manifest import Manifest, ObjectLock, data_key, key_context, manifest_key
from vauban.backup.settings import AgentSettings
from vauban.backup.storage import MIN_PART_SIZE, ObjectStore
from vauban.crypto import envelope
from vauban.crypto.stream import DEFAULT_CHUNK_SIZE, Encryptor

logger = logging.getLogger(__name__)

ZSTD_LEVEL = 3
ZSTD_WORKERS = 1
"""zstd compresses in a worker thread of its own, as the `zstd` command does by default:
reading pg_dump and encrypting overlap with it, and the producer hands it jobs of a few MiB
instead of waiting on each 1 MiB block. Measured at 5 GB: 8 % less time and 2 s less CPU;
it keeps about 40 MiB of jobs in flight, whatever the database's size."""
READ_BLOCK = 1 << 20
PIPE_SIZE = 1 << 20
QUEUE_CHUNKS = 8
"""Encrypted chunks (~1 MiB each) the producer may run ahead of the upload: about one part,
so it keeps compressing while a part is sent, and memory stays bounded."""

MAX_PARTS = 9000
"""Below S3's 10,000 parts per upload, with room for a dump larger than the database."""


@dataclass(frozen=True)
class BackupOutcome:
    manifest: Manifest
    created: bool
    """False when the location already held a complete backup (a retried Job)."""

    object_lock: str
    """"Applied", "NotRequested", or "Unsupported" (asked for, but the bucket has none)."""


class _EncryptedDump:
    """pg_dump's output, compressed and encrypted, as the file-like object the upload reads.

    A thread reads pg_dump, hands it to zstd's own worker (ZSTD_WORKERS) and encrypts what
    comes out (zstd, AES and SHA-256 release the GIL), so that work overlaps the upload
    instead of alternating with it. Its queue is bounded: when the upload is slower, pg_dump
    waits on its pipe."""

    def __init__(self, source: IO[bytes], encryptor: Encryptor, on_eof: Callable[[], None]) -> None:
        self.dump_bytes = 0
        self.stored_bytes = 0
        self._sha256 = hashlib.sha256()
        self._source = source
        self._encryptor = encryptor
        self._on_eof = on_eof
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(QUEUE_CHUNKS)
        self._stop = threading.Event()
        self._buffer = bytearray()
        self._finished = False
        self._thread = threading.Thread(target=self._produce, name="dump-producer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Let the producer go (call once its source is closed, or it may wait on it)."""
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def sha256(self) -> str:
        assert self._finished, "the stream is not finished"
        return self._sha256.hexdigest()

    def read(self, size: int = -1, /) -> bytes:
        while not self._finished and (size < 0 or len(self._buffer) < size):
            # MinIO reads between requests: where a stop is safe (see interrupt.deferred).
            interrupt.check()
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is None:
                self._finished = True
            elif isinstance(item, BaseException):
                self._finished = True
                raise item
            else:
                self._buffer += item
        if size < 0 or size > len(self._buffer):
            size = len(self._buffer)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _produce(self) -> None:
        try:
            self._emit(self._encryptor.header)
            compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=ZSTD_WORKERS)
            stream = compressor.compressobj()
            while block := self._source.read(READ_BLOCK):
                self.dump_bytes += len(block)
                for chunk in self._encryptor.update(stream.compress(block)):
                    self._emit(chunk)
            for chunk in self._encryptor.update(stream.flush()):
                self._emit(chunk)
            self._emit(self._encryptor.finalize())
            # Only a dump that pg_dump finished successfully may complete the upload.
            self._on_eof()
            self._put(None)
        except Exception as e:  # handed to the reading thread, which aborts the upload
            self._put(e)

    def _emit(self, chunk: bytes) -> None:
        self._sha256.update(chunk)
        self.stored_bytes += len(chunk)
        self._put(chunk)

    def _put(self, item: bytes | BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue


def part_size_for(database_bytes: int) -> int:
    """A part size that keeps a dump of this database within MAX_PARTS parts (a dump is
    rarely larger than the database's files), from 8 MiB, in whole MiB."""
    mib = 1 << 20
    wanted = max(8 * mib, MIN_PART_SIZE, -(-database_bytes // MAX_PARTS))
    return -(-wanted // mib) * mib


def run_backup(settings: AgentSettings, location: str, store: ObjectStore) -> BackupOutcome:
    data_key_material, data_key_id = settings.key()
    database = settings.require_database()
    store.check_bucket()
    existing = store.read_manifest(location)
    if existing is not None:
        logger.info("a complete backup is already at %s: nothing to do", location)
        return BackupOutcome(
            existing,
            created=False,
            object_lock="Applied" if existing.object_lock else "NotRequested",
        )

    started = datetime.now(UTC)
    lock: ObjectLock | None = None
    lock_state = "NotRequested"
    if settings.object_lock_days:
        if store.object_lock_supported():
            # Whole seconds: S3 keeps retention dates to the second.
            retain_until = started.replace(microsecond=0) + timedelta(
                days=settings.object_lock_days
            )
            lock = ObjectLock(mode="COMPLIANCE", retain_until=retain_until)
            lock_state = "Applied"
        else:
            lock_state = "Unsupported"
            logger.warning(
                "VAUBAN_OBJECT_LOCK_DAYS is set but bucket %s has no Object Lock: "
                "storing without retention",
                store.bucket,
            )

    backup_id = uuid.uuid4().hex
    backup_key = envelope.generate_key()
    wrapped = envelope.wrap_key(
        data_key_material, backup_key, key_context(location, data_key_id, backup_id)
    )
    encryptor = Encryptor(backup_key, bytes.fromhex(backup_id), DEFAULT_CHUNK_SIZE)

    with postgres.connect() as conn:
        version, major = postgres.server_version(conn)
        pg_dump = postgres.find_client("pg_dump", major, settings.pg_bin_dir)
        part_size = part_size_for(postgres.database_size(conn))
        conn.rollback()
        # Row counts and the dump read one snapshot: this transaction exports it and stays
        # open until pg_dump is done with it.
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        snapshot = str(row[0])
        logger.info(
            "dumping %s (PostgreSQL %s) with %s to %s", database, version, pg_dump, location
        )
        # The row counts scan every table: on this session, in the same snapshot, while
        # pg_dump reads it, instead of before it starts. The upload completes only once
        # they are known, so a failed count aborts it like a failed pg_dump.
        with ThreadPoolExecutor(1, thread_name_prefix="row-counts") as counting:
            counts = counting.submit(postgres.table_counts, conn)
            # From the first part to the manifest, a stop waits for a point where it is safe
            # (between parts), so an upload is always either aborted or completed.
            with interrupt.deferred():
                try:
                    stored = _dump_and_upload(
                        store,
                        location,
                        pg_dump,
                        database,
                        snapshot,
                        encryptor,
                        part_size,
                        lock,
                        before_completing=counts.result,
                    )
                except BaseException:
                    # Do not wait for the scans of a backup that already failed.
                    conn.cancel_safe()
                    raise
                manifest = Manifest(
                    backup_id=backup_id,
                    location=location,
                    database=database,
                    server_version=version,
                    started_at=started,
                    finished_at=datetime.now(UTC),
                    dump_bytes=stored.dump_bytes,
                    stored_bytes=stored.stored_bytes,
                    sha256=stored.sha256,
                    chunk_size=DEFAULT_CHUNK_SIZE,
                    data_key_id=data_key_id,
                    wrapped_key=wrapped,
                    tables=counts.result(),
                    object_lock=lock,
                    namespace=settings.database_namespace,
                    managed_database=settings.managed_database,
                    database_uid=settings.database_uid,
                ).sealed(data_key_material)
                # Last: from now on the backup exists.
                store.put_bytes(manifest_key(location), manifest.to_json(), lock)
        conn.rollback()
    return BackupOutcome(manifest, created=True, object_lock=lock_state)


def _dump_and_upload(
    store: ObjectStore,
    location: str,
    pg_dump: Path,
    database: str,
    snapshot: str,
    encryptor: Encryptor,
    part_size: int,
    lock: ObjectLock | None,
    before_completing: Callable[[], object],
) -> _EncryptedDump:
    command = [
        str(pg_dump),
        "--format=custom",
        # zstd compresses the whole stream, better and faster than pg_dump's gzip per table.
        "--compress=0",
        f"--snapshot={snapshot}",
        # A table held by an exclusive lock fails the dump instead of stalling it for hours.
        "--lock-wait-timeout=300s",
        "--no-password",
        f"--dbname={database}",
    ]
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=postgres.child_environment(),
        )
        assert process.stdout is not None
        with contextlib.suppress(OSError):
            # A pipe of 1 MiB instead of 64 KiB: pg_dump and the producer wake each other
            # sixteen times less often. Linux lets any process ask up to pipe-max-size.
            fcntl.fcntl(process.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)

        def dump_succeeded() -> None:
            if process.wait() != 0:
                raise DatabaseFailure(
                    "DumpFailed", f"pg_dump failed: {postgres.errors_only(stderr)}"
                )
            before_completing()

        stream = _EncryptedDump(process.stdout, encryptor, dump_succeeded)
        stream.start()
        try:
            store.put_stream(data_key(location), stream, part_size, lock)
        finally:
            # On failure, pg_dump is killed first, so the producer reading it can end.
            postgres.terminate(process)
            stream.stop()
            process.stdout.close()
    return stream
