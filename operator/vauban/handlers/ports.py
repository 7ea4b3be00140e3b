"""The handlers' ports: what a reconcile needs of the world outside the process, as small
Protocols. `vauban run` plugs in the real adapters (vauban.kube, vauban.engines.postgres,
vauban.backup.storage, vauban.kms); tests/controllers plugs in-memory fakes into the same
`Context`, and drives whole reconciles without a server.

Each port lists only what the handlers call: a method added to an adapter is not part of
the port until a handler needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol

from psycopg import sql

from vauban.api.common import KindInfo
from vauban.backup.manifest import Manifest, ObjectLock
from vauban.builders.backup import Store
from vauban.engines.postgres.catalog import AdminCredentials, Usage
from vauban.engines.postgres.plan import Catalog
from vauban.engines.postgres.probe import ServerAddress
from vauban.kms import KeyProvider
from vauban.kube.client import Credentials
from vauban.kube.events import EventType, ObjectRef
from vauban.kube.watch import DeletionListener
from vauban.reconcile.cluster import ServerProbe
from vauban.reconcile.records import DatabaseRecord, Rotation

__all__ = [
    "AdminSession",
    "Bucket",
    "BucketOpener",
    "DatabaseServers",
    "KeyProvider",
    "KubeApi",
    "TenantSession",
]


class KubeApi(Protocol):
    """The apiserver, as the handlers use it: reads, server-side applies, creates that tell
    whether they created, deletes that ignore what is gone, and Events."""

    # Vauban's own kinds and other custom objects
    async def read(self, kind: KindInfo, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def list_all(self, kind: KindInfo) -> list[dict[str, Any]]: ...
    async def apply_status(
        self, kind: KindInfo, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None: ...
    async def read_custom(
        self, group: str, version: str, plural: str, namespace: str, name: str
    ) -> dict[str, Any] | None: ...
    async def apply_custom(self, plural: str, body: Mapping[str, Any]) -> dict[str, Any] | None: ...
    async def create_custom(self, plural: str, body: Mapping[str, Any]) -> bool: ...
    async def delete_custom(self, kind: KindInfo, namespace: str, name: str) -> None: ...
    async def delete_custom_object(
        self, group: str, version: str, plural: str, namespace: str, name: str
    ) -> None: ...
    async def crd_exists(self, name: str) -> bool: ...

    # Secrets
    async def apply_secret(self, body: Mapping[str, Any]) -> None: ...
    async def create_secret_if_absent(self, body: Mapping[str, Any]) -> bool: ...
    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None: ...
    async def read_secret_and_owners(
        self, namespace: str, name: str
    ) -> tuple[dict[str, str], frozenset[str]] | None: ...
    async def read_secret_and_annotations(
        self, namespace: str, name: str
    ) -> tuple[dict[str, str], dict[str, str]] | None: ...
    async def update_secret_values(
        self, namespace: str, name: str, values: Mapping[str, str]
    ) -> None: ...
    async def annotate_secret(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None: ...
    async def secret_annotations(
        self, namespace: str, selector: str
    ) -> dict[str, dict[str, str]]: ...
    async def watch_secret_deletions(
        self, namespace: str | None, selector: str, listener: DeletionListener
    ) -> None: ...
    async def delete_secret(self, namespace: str, name: str) -> None: ...
    async def release_secrets(
        self, namespace: str, selector: str, owner_uid: str, labels: Mapping[str, str]
    ) -> list[str]: ...

    # Jobs and CronJobs of the backup agent
    async def create_job(self, body: Mapping[str, Any]) -> bool: ...
    async def read_job(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def delete_job(self, namespace: str, name: str) -> None: ...
    async def termination_message(self, namespace: str, job: str) -> str | None: ...
    async def apply_cronjob(self, body: Mapping[str, Any]) -> None: ...
    async def delete_cronjob(self, namespace: str, name: str) -> None: ...

    # What a cluster renders or is judged on
    async def apply_network_policy(self, body: Mapping[str, Any]) -> int | None: ...
    async def network_policy_spec(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def release_claims(
        self, namespace: str, selector: str, owner_uid: str, labels: Mapping[str, str]
    ) -> list[str]: ...
    async def volume_expansion(self, name: str | None) -> bool | None: ...
    async def volume_claims(self, namespace: str, selector: str) -> list[dict[str, str | None]]: ...
    async def patch_custom_status(
        self,
        group: str,
        version: str,
        plural: str,
        namespace: str,
        name: str,
        patch: Mapping[str, Any],
    ) -> dict[str, Any] | None: ...
    async def annotate_custom(
        self,
        group: str,
        version: str,
        plural: str,
        namespace: str,
        name: str,
        annotations: Mapping[str, str | None],
    ) -> None: ...
    async def storage_class(
        self, name: str | None
    ) -> tuple[str, dict[str, str], dict[str, str]] | None: ...
    async def load_balancers(self, namespace: str, selector: str) -> list[str]: ...
    async def namespace_labels(self, name: str) -> dict[str, str]: ...
    async def namespace_exists(self, name: str) -> bool: ...

    async def credentials(self) -> Credentials:
        """For kopf's watchers to reach the apiserver as the operator does."""
        ...

    async def post_event(
        self,
        *,
        kind: str,
        namespace: str,
        name: str,
        uid: str,
        type_: EventType,
        reason: str,
        message: str,
        fold_into: ObjectRef | None = None,
    ) -> None:
        """An Event on the object; one of a burst of the same Event on objects of the same
        `fold_into` may be folded into one on it (vauban.kube.events.Recorder)."""
        ...


class AdminSession(Protocol):
    """One admin session on a server's registry database: the catalog read, statements run
    (engines.postgres.plan computes them), usage, and the registry of what Vauban created."""

    async def catalog(self, database: str, roles: Collection[str]) -> Catalog: ...
    async def run(self, statements: Sequence[sql.Composed]) -> None: ...
    async def usage(self, databases: Collection[str], logins: Collection[str] = ()) -> Usage: ...
    async def password_verifier(self, role: str, password: str) -> str: ...

    async def record_of(self, uid: str) -> DatabaseRecord | None: ...
    async def holder_of(self, database: str, owner: str) -> tuple[str, str, str] | None: ...
    async def claim(self, record: DatabaseRecord) -> None: ...
    async def add_login(self, uid: str, role: str, generation: int) -> None: ...
    async def published(
        self,
        uid: str,
        login: str,
        retiring: Mapping[str, datetime],
        rotation: Rotation | None = None,
    ) -> None: ...
    async def forget_logins(self, uid: str, roles: Collection[str]) -> None: ...
    async def set_extensions(self, uid: str, extensions: Collection[str]) -> None: ...
    async def retain(self, uid: str) -> None: ...
    async def forget(self, uid: str) -> None: ...


class TenantSession(Protocol):
    """A session of a tenant's own login in its database."""

    async def extensions(self) -> frozenset[str]: ...
    async def run(self, statements: Sequence[sql.Composed]) -> None: ...


class DatabaseServers(Protocol):
    """The PostgreSQL servers the operator reaches."""

    def admin(self, credentials: AdminCredentials) -> AbstractAsyncContextManager[AdminSession]: ...
    def tenant(
        self, address: ServerAddress, username: str, password: str, database: str
    ) -> AbstractAsyncContextManager[TenantSession]: ...
    async def check_login(
        self, address: ServerAddress, username: str, password: str, dbname: str
    ) -> ServerProbe: ...
    async def probe(
        self,
        address: ServerAddress,
        username: str,
        password: str,
        *,
        health: bool = False,
        health_shared_seconds: float = 0.0,
        tls: bool = False,
        parameters: Sequence[str] = (),
        audit: bool = False,
    ) -> ServerProbe:
        """The admin's role, and as asked the server's load, TLS, running parameters and
        pgaudit. The load read for the same server and admin less than
        `health_shared_seconds` ago is reused, with the time it was read."""
        ...


class Bucket(Protocol):
    """A cluster's object store, as the operator reads and cleans it (blocking calls: the
    handlers run them in threads)."""

    def read_manifest(self, location: str) -> Manifest | None: ...
    def list_manifests(self, prefix: str) -> list[Manifest]: ...
    def locations(self, prefix: str) -> list[str]: ...
    def delete_backup(self, location: str) -> None: ...
    def abort_stale_uploads(self, prefix: str, started_before: datetime) -> list[str]: ...
    # Small documents beside the backups: key records and escrowed keys (#19).
    def read_small(self, key: str) -> bytes | None: ...
    def put_bytes(self, key: str, data: bytes, lock: ObjectLock | None) -> None: ...
    def delete_object(self, key: str) -> None: ...
    def keys_ending(self, prefix: str, suffix: str) -> list[str]: ...


BucketOpener = Callable[[Store], Bucket]
"""A cluster's bucket, from its store and credentials."""
