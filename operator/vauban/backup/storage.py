"""The object store holding backups: any S3-compatible service (AWS, Ceph RGW, MinIO,
Scality, versitygw...), reached with the MinIO client.

Why MinIO's client and not boto3: botocore requires python-dateutil < 3 while the Kubernetes
client Vauban pins (37) requires >= 3, so the two cannot be installed together. MinIO's client
is typed, small (urllib3 underneath, whose timeouts and retries we set), streams multipart
uploads from any `read()` and aborts them on error, and speaks Object Lock.

Every failure leaves as a `StorageError` whose message is for people and never carries a
credential. Timeouts are short and retries few: an unreachable bucket fails in seconds.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import NoReturn, Protocol
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import COMPLIANCE
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.retention import Retention
from pydantic import ValidationError
from urllib3.exceptions import (
    HTTPError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    SSLError,
)
from urllib3.exceptions import TimeoutError as HTTPTimeout

from vauban.backup.manifest import (
    DATA,
    MANIFEST,
    Manifest,
    ObjectLock,
    data_key,
    manifest_key,
    normalize_location,
)
from vauban.backup.storage_errors import (
    AccessDenied,
    BucketUnreachable,
    InvalidEndpoint,
    InvalidManifest,
    NoSuchBucket,
    ObjectLocked,
    ObjectNotFound,
    StorageError,
)

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 60.0
MIN_PART_SIZE = 5 << 20
"""S3's smallest multipart part (all parts but the last)."""

_DENIED = {
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
}
_NO_LOCK = {
    "ObjectLockConfigurationNotFoundError",
    "NoSuchObjectLockConfiguration",
    "NotImplemented",
    "InvalidRequest",
}


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _endpoint(endpoint: str | None, region: str) -> tuple[str, bool]:
    """(host[:port], secure) for MinIO's client: a URL (`https://s3.example:9000`), or a bare
    host (HTTPS), or nothing (AWS's regional endpoint)."""
    if not endpoint:
        return f"s3.{region}.amazonaws.com", True
    url = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    if url.scheme not in ("http", "https") or not url.hostname:
        raise InvalidEndpoint(
            f"invalid object store endpoint {endpoint!r}: expected https://host[:port]"
        )
    if url.path.strip("/") or url.query or url.username or url.password:
        raise InvalidEndpoint(
            f"the object store endpoint must be a scheme, a host and a port, without path, "
            f"query or credentials (got {url.scheme}://{url.hostname}...)"
        )
    return url.netloc, url.scheme == "https"


class ObjectStore:
    """One bucket of an S3-compatible store, seen as a set of backups."""

    def __init__(
        self,
        endpoint: str | None,
        region: str,
        bucket: str,
        access_key_id: str,
        secret_access_key: str,
        ca_file: str | None = None,
    ) -> None:
        host, secure = _endpoint(endpoint, region)
        self.endpoint = f"{'https' if secure else 'http'}://{host}"
        self.bucket = bucket
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_SECONDS, read=READ_TIMEOUT_SECONDS),
            retries=urllib3.Retry(
                total=2,
                connect=2,
                read=1,
                backoff_factor=0.3,
                # Agents of one schedule start together; their retries should not.
                backoff_jitter=0.3,
                status_forcelist=(500, 502, 503, 504),
            ),
            maxsize=4,
            cert_reqs="CERT_REQUIRED",
            ca_certs=ca_file or certifi.where(),
        )
        self._client = Minio(
            host,
            access_key=access_key_id,
            secret_key=secret_access_key,
            secure=secure,
            region=region,
            http_client=http,
        )

    # -- what the operator calls ------------------------------------------------------------

    def read_manifest(self, location: str) -> Manifest | None:
        """The backup's manifest; None when it has none (it does not exist). InvalidManifest
        when it is not one this code reads, or names another location."""
        data = self.read_small(manifest_key(location))
        if data is None:
            return None
        try:
            manifest = Manifest.from_json(data)
        except ValidationError as e:
            fields = ", ".join(sorted({".".join(map(str, err["loc"])) for err in e.errors()}))
            raise InvalidManifest(
                f"{manifest_key(location)} is not a valid manifest ({fields or 'not JSON'})"
            ) from None
        if manifest.location != normalize_location(location):
            raise InvalidManifest(
                f"{manifest_key(location)} names another location: {manifest.location}"
            )
        return manifest

    def list_manifests(self, prefix: str) -> list[Manifest]:
        """Every backup under `prefix`, oldest first. A manifest that cannot be read (not
        Vauban's, another format, or not at the location it names) is logged and skipped,
        so one stray file does not hide every other backup."""
        with self._translate():
            keys = [
                o.object_name
                for o in self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
                if o.object_name is not None and o.object_name.endswith(f"/{MANIFEST}")
            ]
        manifests = []
        for key in keys:
            try:
                manifest = self.read_manifest(key.removesuffix(f"/{MANIFEST}"))
            except InvalidManifest as e:
                logger.warning("skipping a backup: %s", e)
                continue
            if manifest is not None:
                manifests.append(manifest)
        return sorted(manifests, key=lambda m: m.started_at)

    def locations(self, prefix: str) -> list[str]:
        """Every backup location under `prefix` that holds a manifest or data, readable or
        not: what purging a database's backups must delete."""
        with self._translate():
            names = [
                o.object_name
                for o in self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
                if o.object_name is not None
            ]
        found = {
            name.rsplit("/", 1)[0]
            for name in names
            if name.endswith((f"/{MANIFEST}", f"/{DATA}")) and "/" in name
        }
        return sorted(found)

    def delete_backup(self, location: str) -> None:
        """Delete a backup: its manifest first (so a half-deleted backup is never listed),
        then its data, every version of each. Deleting what is already gone succeeds.
        ObjectLocked if retention forbids it, before anything is deleted."""
        try:
            manifest = self.read_manifest(location)
        except InvalidManifest:
            manifest = None  # garbage is deleted too; the data's own retention still holds
        now = datetime.now(UTC)
        lock = manifest.object_lock if manifest else None
        if lock is not None and lock.retain_until > now:
            raise ObjectLocked(location, lock.retain_until)
        # A bucket's default retention locks objects the manifest knows nothing about.
        data_lock = self._retention(data_key(location))
        if data_lock is not None and data_lock > now:
            raise ObjectLocked(location, data_lock)
        for key in (manifest_key(location), data_key(location)):
            self._delete_versions(location, key)

    def object_lock_supported(self) -> bool:
        """Whether the bucket has Object Lock enabled (it can only be enabled at creation)."""
        try:
            with self._translate():
                self._client.get_object_lock_config(self.bucket)
        except StorageError as e:
            if isinstance(e.__cause__, S3Error) and e.__cause__.code in _NO_LOCK:
                return False
            raise
        except ValueError:
            # The bucket answered with a lock configuration MinIO's client cannot parse (a Rule
            # without DefaultRetention, as versitygw sends): lock is enabled.
            return True
        return True

    def abort_stale_uploads(self, prefix: str, started_before: datetime) -> list[str]:
        """Abort the multipart uploads under `prefix` started before `started_before`: an
        agent aborts its own upload on every failure it sees, but not when the store itself
        was down at that moment (the abort cannot reach it), nor when it was killed before
        learning the upload's id. Their parts would otherwise be kept, and billed, forever.
        Only uploads of a backup's data object are touched: a bucket may be shared. Returns
        the keys aborted."""
        aborted = []
        key_marker: str | None = None
        upload_marker: str | None = None
        with self._translate():
            while True:
                # MinIO's client lists multipart uploads only through this (stable, if
                # underscored) method; its public API dropped incomplete-upload listing.
                page = self._client._list_multipart_uploads(
                    self.bucket,
                    prefix=prefix,
                    key_marker=key_marker,
                    upload_id_marker=upload_marker,
                )
                for upload in page.uploads:
                    initiated, upload_id = upload.initiated_time, upload.upload_id
                    if (
                        upload_id
                        and str(upload.object_name).endswith(f"/{DATA}")
                        and initiated is not None
                        and initiated < started_before
                    ):
                        self._client._abort_multipart_upload(
                            self.bucket, upload.object_name, upload_id
                        )
                        aborted.append(str(upload.object_name))
                if not page.is_truncated:
                    return aborted
                key_marker, upload_marker = page.next_key_marker, page.next_upload_id_marker

    # -- what the agent calls ---------------------------------------------------------------

    def check_bucket(self) -> None:
        """Raise the StorageError that explains why the bucket cannot be used, if any."""
        with self._translate():
            exists = self._client.bucket_exists(self.bucket)
        if not exists:
            raise NoSuchBucket(f"the bucket {self.bucket} does not exist at {self.endpoint}")

    def put_stream(
        self, key: str, stream: Readable, part_size: int, lock: ObjectLock | None
    ) -> None:
        """Upload what `stream` yields (length unknown) by multipart upload, one part in
        memory at a time. An exception (from the store or from `stream.read`) aborts the
        multipart upload, so nothing is left behind, and propagates."""
        with self._translate():
            self._client.put_object(
                self.bucket,
                key,
                stream,  # type: ignore[arg-type]  # MinIO only calls read()
                length=-1,
                part_size=max(part_size, MIN_PART_SIZE),
                # One part in flight: a failure surfaces at once, not after the whole dump,
                # and memory stays at one part. The producer overlaps with the upload.
                num_parallel_uploads=1,
                retention=_retention(lock),
            )

    def put_bytes(self, key: str, data: bytes, lock: ObjectLock | None) -> None:
        with self._translate():
            self._client.put_object(
                self.bucket,
                key,
                io.BytesIO(data),
                length=len(data),
                content_type="application/json",
                retention=_retention(lock),
            )

    def keys_ending(self, prefix: str, suffix: str) -> list[str]:
        """Every object key under `prefix` that ends with `suffix`, sorted."""
        with self._translate():
            return sorted(
                o.object_name
                for o in self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
                if o.object_name is not None and o.object_name.endswith(suffix)
            )

    def delete_object(self, key: str) -> None:
        """Delete every version of one object (a key record, an escrowed key); what is
        already gone succeeds."""
        self._delete_versions(key, key)

    def iter_object(self, key: str, block: int = 1 << 20) -> Iterator[bytes]:
        """An object's bytes, block by block; ObjectNotFound when there is no such object."""
        with self._translate():
            response = self._client.get_object(self.bucket, key)
            try:
                yield from response.stream(block)
            finally:
                response.close()
                response.release_conn()

    def read_small(self, key: str) -> bytes | None:
        """A small object's bytes (a manifest, a key record); None when it does not exist."""
        try:
            with self._translate():
                response = self._client.get_object(self.bucket, key)
                try:
                    return response.read()
                finally:
                    response.close()
                    response.release_conn()
        except ObjectNotFound:
            return None

    # -- internals --------------------------------------------------------------------------

    def _retention(self, key: str) -> datetime | None:
        try:
            with self._translate():
                retention = self._client.get_object_retention(self.bucket, key)
        except ObjectNotFound:
            return None
        except StorageError as e:
            if isinstance(e.__cause__, S3Error) and e.__cause__.code in _NO_LOCK:
                return None
            raise
        return retention.retain_until_date if retention else None

    def _delete_versions(self, location: str, key: str) -> None:
        # In a versioned bucket (any bucket with Object Lock) a plain DELETE only hides the
        # object behind a delete marker; deleting each version by id removes the data.
        for _ in range(100):
            try:
                with self._translate():
                    version = self._client.stat_object(self.bucket, key).version_id
            except ObjectNotFound:
                return
            try:
                with self._translate():
                    self._client.remove_object(self.bucket, key, version_id=version)
            except AccessDenied:
                until = self._retention(key)
                if until is not None and until > datetime.now(UTC):
                    raise ObjectLocked(location, until) from None
                raise
        raise StorageError(f"{key} still has versions after 100 deletions")

    @contextlib.contextmanager
    def _translate(self) -> Iterator[None]:
        """MinIO's and urllib3's exceptions as StorageErrors (the original as __cause__)."""
        try:
            yield
        except S3Error as e:
            self._raise_s3(e)
        except ServerError as e:
            raise BucketUnreachable(
                f"the object store at {self.endpoint} failed (HTTP {e.status_code})"
            ) from e
        except InvalidResponseError as e:
            raise BucketUnreachable(
                f"the endpoint {self.endpoint} did not answer as an S3 object store"
            ) from e
        except HTTPError as e:
            raise BucketUnreachable(
                f"cannot reach the object store at {self.endpoint}: {_cause(e)}"
            ) from e

    def _raise_s3(self, error: S3Error) -> NoReturn:
        code = error.code or "Unknown"
        if code in _DENIED:
            raise AccessDenied(
                f"the object store at {self.endpoint} refused access to bucket {self.bucket} "
                f"({code}): check the access key, the secret and the bucket's policy"
            ) from error
        if code == "NoSuchBucket":
            raise NoSuchBucket(
                f"the bucket {self.bucket} does not exist at {self.endpoint}"
            ) from error
        if code in ("NoSuchKey", "NoSuchVersion"):
            raise ObjectNotFound(f"{error.object_name} does not exist") from error
        raise StorageError(
            f"the object store at {self.endpoint} answered {code}: {error.message}"
        ) from error


def _retention(lock: ObjectLock | None) -> Retention | None:
    if lock is None:
        return None
    if lock.mode != "COMPLIANCE":
        raise ValueError("backups are only written with COMPLIANCE retention")
    return Retention(COMPLIANCE, lock.retain_until)


def _cause(error: HTTPError) -> str:
    """What went wrong, in words, from urllib3's exception (which wraps the first cause)."""
    reason = error.reason if isinstance(error, MaxRetryError) else error
    if isinstance(reason, NameResolutionError):
        return "its name does not resolve"
    if isinstance(reason, SSLError):
        return f"TLS failed ({reason}); check AWS_CA_BUNDLE"
    if isinstance(reason, NewConnectionError):
        return "connection refused or no route to it"
    if isinstance(reason, HTTPTimeout):
        return "timed out"
    return type(reason).__name__
