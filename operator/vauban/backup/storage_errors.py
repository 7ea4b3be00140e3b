"""How the object store fails, apart from the client that talks to it (vauban.backup.storage):
the operator's handlers tell these apart without loading an S3 client, which an operator
with no backup configured never needs (about 7 MiB of imports, measured)."""

from __future__ import annotations

from datetime import datetime


class StorageError(Exception):
    """The object store could not do what was asked; `reason` is a CamelCase word."""

    reason = "StorageFailed"


class BucketUnreachable(StorageError):
    """Endpoint down, name resolution, TLS, timeouts, or an answer that is not S3's."""

    reason = "BucketUnreachable"


class AccessDenied(StorageError):
    """Wrong credentials, or credentials not allowed to do this on this bucket."""

    reason = "AccessDenied"


class NoSuchBucket(StorageError):
    reason = "NoSuchBucket"


class ObjectNotFound(StorageError):
    reason = "ObjectNotFound"


class ObjectLocked(StorageError):
    """Object Lock forbids deleting the backup yet."""

    reason = "ObjectLocked"

    def __init__(self, location: str, retain_until: datetime | None) -> None:
        self.retain_until = retain_until
        until = f"until {retain_until:%Y-%m-%dT%H:%M:%SZ}" if retain_until else "for now"
        super().__init__(
            f"backup {location} is under Object Lock retention {until}: it cannot be deleted "
            "before then (retention is never bypassed)"
        )


class InvalidManifest(StorageError):
    """A manifest that is not one this code reads, or not at the location it names."""

    reason = "InvalidManifest"


class InvalidEndpoint(StorageError):
    reason = "InvalidEndpoint"
