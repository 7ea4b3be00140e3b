"""What every handler needs, created once by `vauban run` and handed over through kopf's memo."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vauban.builders.backup import Store
from vauban.engines.postgres.servers import PostgresServers
from vauban.handlers.ports import Bucket, BucketOpener, DatabaseServers, KeyProvider, KubeApi
from vauban.kms.local import SecretKeyProvider
from vauban.kube.retry import jittered
from vauban.memory import MemoryReleaser
from vauban.metrics import Metrics
from vauban.settings import Settings

ObjectKey = tuple[str, str, str]
"""(kind, namespace, name): a cluster and a database may share a name in a namespace."""

Bodies = Mapping[tuple[str, str], Iterable[Mapping[str, Any]]]
"""One of kopf's indices: (namespace, name) to the object bodies kept under it."""


NEVER = -math.inf
"""The monotonic time of what never happened. Not 0.0: monotonic time counts from boot, so
on a node up for less than an interval, 0.0 would read as "a moment ago"."""


@dataclass
class Indices:
    """kopf's indices that a reconcile of another kind reads: live (kopf keeps them
    current), handed over once at startup. None until then."""

    databases_by_cluster: Bodies | None = None
    backups_by_database: Bodies | None = None

    def attach(self, indices: Mapping[str, Any]) -> None:
        """From a kopf handler's keyword arguments."""
        self.databases_by_cluster = indices["databases_by_cluster"]
        self.backups_by_database = indices["backups_by_database"]


@dataclass
class Backoff:
    """When an object that keeps failing (a server that does not answer) is next re-checked:
    the interval doubles with each failure, up to `cap`. Watch events still reconcile at
    once; only the periodic re-check waits."""

    base: float
    cap: float = 300.0
    _next: dict[ObjectKey, tuple[int, float]] = field(default_factory=dict)

    def due(self, key: ObjectKey) -> bool:
        return time.monotonic() >= self._next.get(key, (0, 0.0))[1]

    def failed(self, key: ObjectKey) -> None:
        failures, _ = self._next.get(key, (0, 0.0))
        # Jittered: the databases of a server that went down failed together, and would
        # otherwise be re-checked together, every time.
        delay = jittered(min(self.cap, self.base * 2**failures))
        self._next[key] = (failures + 1, time.monotonic() + delay)

    def succeeded(self, key: ObjectKey) -> None:
        self._next.pop(key, None)


class ObjectLocks:
    """One lock per object: its own event, a re-check and its cluster's event may reconcile
    it at the same moment; they run one after the other. A lock exists only while it is
    held or awaited: one per live object, kept between reconciles, was memory a fleet paid
    per database for nothing (a free lock and no lock are the same)."""

    def __init__(self) -> None:
        self._locks: dict[ObjectKey, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: ObjectKey) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


def open_bucket(store: Store) -> Bucket:
    # Imported here: the S3 client is loaded by the first cluster with backups, not by
    # every operator (vauban.backup.storage_errors).
    from vauban.backup.storage import ObjectStore

    return ObjectStore(
        endpoint=store.endpoint,
        region=store.region,
        bucket=store.bucket,
        access_key_id=store.access_key_id,
        secret_access_key=store.secret_access_key,
    )


@dataclass(frozen=True)
class Context:
    """Every port (handlers/ports.py) is a field: `vauban run` leaves the real adapters,
    tests/controllers passes in-memory fakes."""

    kube: KubeApi
    settings: Settings
    metrics: Metrics
    servers: DatabaseServers = field(default_factory=PostgresServers)
    """The PostgreSQL servers: admin and tenant sessions, a tenant's login checked."""

    buckets: BucketOpener = open_bucket
    """A cluster's object store, opened with its credentials."""

    locks: ObjectLocks = field(default_factory=ObjectLocks)
    """Each object's reconciles, one at a time."""

    server_slots: defaultdict[tuple[str, str], asyncio.Semaphore] = field(init=False)
    """Per cluster: how many database reconciles run at once
    (VAUBAN_MAX_CONCURRENT_RECONCILES_PER_CLUSTER). Each holds at most one admin and one other
    connection to the server; those waiting for a slot hold nothing yet (a burst of a
    thousand would otherwise hold a thousand bodies and their neighbours' claims)."""

    memory: MemoryReleaser = field(default_factory=MemoryReleaser)
    """Trims the heap once a wave of reconciles has drained."""

    backoff: Backoff = field(init=False)
    reconciled: dict[ObjectKey, float] = field(default_factory=dict)
    """When each object was last reconciled in full, for the periodic re-check of ready
    ones (clusters every probe interval, databases every resync interval)."""

    requests_seen: dict[ObjectKey, str] = field(default_factory=dict)
    """The annotations (a person's requests: a switchover, a key rotation) each cluster had
    at its last full reconcile, as a fingerprint."""

    clusters_told: dict[ObjectKey, float] = field(default_factory=dict)
    """When a database last had its cluster reconciled for what it found of the server."""

    suspensions_checked: dict[ObjectKey, float] = field(default_factory=dict)
    """When the logins of each database refused by its cluster were last looked for."""

    usage_probed: dict[tuple[str, str], float] = field(default_factory=dict)
    """When the databases of each cluster last had their usage read (one query for all)."""

    indices: Indices = field(default_factory=Indices)
    """The ManagedDatabases by cluster and the ManagedBackups by database, for the
    compliance rule on a cluster's backups."""

    key_providers: dict[str, KeyProvider] = field(
        default_factory=lambda: {"kubernetes-secret": SecretKeyProvider()}
    )
    """The key providers this operator is configured for, by name."""

    applied: dict[tuple[str, str, str], str] = field(default_factory=dict)
    """Fingerprint of what this process last applied per (kind, namespace, name), for
    objects re-rendered at every reconcile: unchanged ones are not written again."""

    rendered: dict[ObjectKey, tuple[str, int | None]] = field(default_factory=dict)
    """Objects rendered for a cluster (its CloudNativePG Cluster, its NetworkPolicy): the
    fingerprint this process last applied, and the generation that apply left."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "backoff", Backoff(self.settings.recheck_interval_seconds))
        slots = self.settings.max_concurrent_reconciles_per_cluster
        object.__setattr__(self, "server_slots", defaultdict(lambda: asyncio.Semaphore(slots)))


def fingerprint(body: Mapping[str, Any]) -> str:
    """What an object to apply is, in a few bytes: equal when nothing in it changed."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def context_of(memo: Any) -> Context:
    ctx = memo.ctx
    assert isinstance(ctx, Context)
    return ctx
