"""What a ManagedDatabase needs before Vauban can provision it, and the verdict when it can't."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from vauban.api.cluster import ManagedClusterSpec
from vauban.api.common import duration_seconds
from vauban.api.database import ManagedDatabaseSpec
from vauban.conditions import Reason, State, Verdict
from vauban.reconcile.tenancy import namespace_allowed


@dataclass(frozen=True)
class ClusterView:
    """What a database needs to know of its cluster, as the operator's cache holds it."""

    namespace: str
    name: str
    spec: ManagedClusterSpec | None
    """None when the cluster's spec does not parse (the cluster reports InvalidSpec)."""

    ready: bool
    uid: str = ""

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


def cluster_key(namespace: str, spec: ManagedDatabaseSpec) -> tuple[str, str]:
    """The (namespace, name) of the cluster a database refers to."""
    return (spec.cluster_ref.namespace or namespace, spec.cluster_ref.name)


def cluster_key_of(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """(namespace, name) of the cluster a ManagedDatabase's body refers to, read without
    parsing the spec; None without a clusterRef."""
    ref = (body.get("spec") or {}).get("clusterRef") or {}
    if "name" not in ref:
        return None
    return (str(ref.get("namespace") or body["metadata"]["namespace"]), str(ref["name"]))


def assess(
    *,
    namespace: str,
    spec: ManagedDatabaseSpec,
    cluster: ClusterView | None,
    namespace_labels: Mapping[str, str],
) -> Verdict:
    """The verdict on a database given its cluster (None: not found) and its namespace's labels."""
    cluster_ns, cluster_name = cluster_key(namespace, spec)
    ref = f"{cluster_ns}/{cluster_name}"
    if cluster is None:
        return Verdict(
            State.WAITING,
            Reason.CLUSTER_NOT_FOUND,
            f"ManagedCluster {ref} does not exist. Create it, or fix spec.clusterRef; "
            "the database is provisioned once the cluster appears and is ready.",
        )
    if cluster.spec is not None and not namespace_allowed(
        cluster_namespace=cluster.namespace,
        allowed=cluster.spec.allowed_namespaces,
        namespace=namespace,
        namespace_labels=namespace_labels,
    ):
        return Verdict(
            State.STALLED,
            Reason.NAMESPACE_NOT_ALLOWED,
            f"ManagedCluster {ref} does not admit databases from namespace {namespace}. "
            "Ask its owners to add the namespace to spec.allowedNamespaces, "
            "or use a cluster that admits it. Nothing was created.",
        )
    if not cluster.ready:
        return Verdict(
            State.WAITING,
            Reason.CLUSTER_NOT_READY,
            f"ManagedCluster {ref} is not ready yet (see its conditions); "
            "the database is provisioned once it is.",
        )
    return Verdict(
        State.PROGRESSING,
        Reason.PROVISIONING,
        f"Provisioning database {spec.database_name} on ManagedCluster {ref}.",
    )


@dataclass(frozen=True)
class Claim:
    """Another ManagedDatabase's hold on names of the same cluster."""

    namespace: str
    name: str
    created: str
    database: str
    owner: str
    provisioned: bool
    """Whether it already provisioned its names: it keeps them, whatever its age."""

    def precedence(self) -> tuple[bool, str, str, str]:
        return (not self.provisioned, self.created, self.namespace, self.name)


def name_conflict(me: Claim, others: Iterable[Claim]) -> Verdict | None:
    """Two ManagedDatabases may not share a database or owner role on one cluster: the one
    that provisioned them keeps them, else the older (then the first by namespace/name); the
    other is told why."""
    for other in others:
        if (other.namespace, other.name) == (me.namespace, me.name):
            continue
        if other.precedence() > me.precedence():
            continue
        clash = (
            f"database {me.database}"
            if other.database == me.database
            else f"owner role {me.owner}"
            if other.owner in (me.owner, me.database) or other.database == me.owner
            else None
        )
        if clash:
            return Verdict(
                State.STALLED,
                Reason.NAME_CONFLICT,
                f"The {clash} is already provided by ManagedDatabase "
                f"{other.namespace}/{other.name} on the same cluster. Choose another name; "
                "nothing was created.",
            )
    return None


# -- credentials -----------------------------------------------------------------------------


def login_name(owner: str, generation: int) -> str:
    """The n-th login role of an owner, within PostgreSQL's 63-byte names."""
    return f"{owner[:52]}_login{generation}"


def login_generation(owner: str, role: str) -> int | None:
    prefix = f"{owner[:52]}_login"
    suffix = role.removeprefix(prefix)
    return int(suffix) if role.startswith(prefix) and suffix.isdigit() else None


@dataclass(frozen=True)
class CredentialsPlan:
    """What to do about the tenant's credentials this reconcile."""

    login: str
    """The login role the Secret names after this reconcile."""

    new_password: bool
    """Generate a password (a new login role), rather than use the Secret's."""

    retiring: tuple[str, ...]
    """Former logins still working, until retire_after."""

    retire_after: datetime | None
    retire_now: tuple[str, ...]
    """Former logins whose grace period is over: revoke them now."""

    rotated: bool


def plan_credentials(
    *,
    owner: str,
    secret_username: str | None,
    existing_logins: Iterable[str],
    retiring: Iterable[str],
    retire_after: datetime | None,
    last_rotation: datetime | None,
    rotate_token: str | None,
    acted_token: str | None,
    rotation_period: str | None,
    grace_period: str,
    now: datetime,
) -> CredentialsPlan:
    """The credentials step, from the Secret, the server's login roles and the status.

    The Secret is the only source of a password: with no rotation due, its username and
    password are used as they are (a login role missing on the server is recreated with
    them), so a restart never brings back a stale password."""
    logins = sorted(
        (r for r in existing_logins if login_generation(owner, r) is not None),
        key=lambda r: login_generation(owner, r) or 0,
    )
    token_due = rotate_token is not None and rotate_token != acted_token
    period_due = (
        rotation_period is not None
        and last_rotation is not None
        and now >= last_rotation + timedelta(seconds=duration_seconds(rotation_period))
    )
    rotate = secret_username is None or token_due or period_due
    highest = max((login_generation(owner, r) or 0 for r in logins), default=0)
    current = login_name(owner, highest + 1) if rotate else str(secret_username)
    # Logins other than the current one: those already retiring keep their deadline, any
    # other (the one just replaced, or one left by an interrupted rotation) gets a full grace.
    others = [r for r in logins if r != current]
    pending = set(retiring) & set(others)
    fresh = [r for r in others if r not in pending]
    deadline = retire_after if pending else None
    if fresh:
        deadline = now + timedelta(seconds=duration_seconds(grace_period))
    if deadline is not None and now >= deadline:
        return CredentialsPlan(current, rotate, (), None, tuple(sorted(others)), rotate)
    return CredentialsPlan(current, rotate, tuple(sorted(others)), deadline, (), rotate)


def timers_due(status: Mapping[str, Any], spec: Mapping[str, Any], now: datetime) -> bool:
    """Whether time alone calls for a reconcile: retiring logins past their grace period, or
    a rotation period elapsed."""
    credentials = status.get("credentials") or {}
    retire_after = credentials.get("retireAfter")
    if credentials.get("retiring") and retire_after and now >= parse_time(retire_after):
        return True
    period = (spec.get("credentials") or {}).get("rotationPeriod")
    last = credentials.get("lastRotation")
    return bool(
        period and last and now >= parse_time(last) + timedelta(seconds=duration_seconds(period))
    )


RESYNC_SPREAD = 0.25
"""Each object's resync interval is shortened by a fraction of up to this, fixed by its
key: objects reconciled together (a burst, a restart) are next resynced over a quarter of
the interval instead of all at once."""


def resync_due(key: tuple[str, ...], elapsed: float, interval: float) -> bool:
    """Whether `elapsed` seconds since an object's last full reconcile call for another."""
    fraction = zlib.crc32("/".join(key).encode()) / 2**32
    return elapsed >= interval * (1 - RESYNC_SPREAD * fraction)


SIZE_TOLERANCE = 0.01
SIZE_TOLERANCE_BYTES = 1 << 20
"""A database's size in status is rewritten when it moved by more than 1 % and 1 MiB: a
busy database would otherwise cost a status write (and an event to every watcher) at every
probe, and a new one a write at its first probe (its free space maps appear after its
first vacuum). The metric always has the figure just read."""


def usage_moved(status: Mapping[str, Any], measured: Mapping[str, int | None]) -> bool:
    """Whether measured size and sessions differ enough from status to be written."""
    if status.get("connections") != measured["connections"]:
        return True
    before, now = status.get("sizeBytes"), measured["sizeBytes"]
    if before is None or now is None:
        return before != now
    return bool(abs(now - before) > max(SIZE_TOLERANCE * before, SIZE_TOLERANCE_BYTES))


def parse_time(value: str) -> datetime:
    """An RFC 3339 time as status stores it."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
