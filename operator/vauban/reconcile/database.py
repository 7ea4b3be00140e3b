"""What a ManagedDatabase needs before Vauban can provision it, and the verdict when it can't."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from vauban.api.cluster import ManagedClusterSpec
from vauban.api.common import duration_seconds
from vauban.api.database import CredentialsStatus, ManagedDatabaseSpec, ManagedDatabaseStatus
from vauban.conditions import Reason, State, Verdict
from vauban.reconcile.records import DatabaseRecord, LoginRecord
from vauban.reconcile.tenancy import namespace_allowed
from vauban.timefmt import parse_rfc3339


@dataclass(frozen=True)
class ClusterView:
    """What a database needs to know of its cluster, as the operator's cache holds it."""

    namespace: str
    name: str
    spec: ManagedClusterSpec | None
    """None when the cluster's spec does not parse (the cluster reports InvalidSpec)."""

    ready: bool
    uid: str = ""
    abandon_server_objects: bool = False
    """A platform admin's annotation (ABANDON_ANNOTATION) on the cluster: deleting its
    databases no longer waits for the server to be reachable, and leaves what they have
    there."""

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def server(self) -> tuple[str, str]:
        """The server its databases' sessions go to, which bounds how many run at once: an
        external host and port, which several ManagedClusters may adopt (their databases
        share one server's max_connections), or a managed cluster's own."""
        if self.spec is not None and self.spec.external is not None:
            # A cluster's name has no colon: no managed cluster shares this key.
            return ("external", f"{self.spec.external.host}:{self.spec.external.port}")
        return (self.namespace, self.name)


ABANDON_ANNOTATION = "vauban.dev/abandon-server-objects"

ROTATE_ANNOTATION = "vauban.dev/rotate-credentials"
"""On a ManagedDatabase: a new value rotates its credentials once (the value acted on is
recorded on the server)."""


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


def connection_limit(spec: ManagedDatabaseSpec, cluster: ManagedClusterSpec) -> int | Verdict:
    """Each tenant login's connection limit: the spec's, within the cluster's maximum, else
    the cluster's default. No tenant may take every slot of a server shared with others."""
    bounds = cluster.tenant_connection_limit
    if spec.connection_limit is None:
        return bounds.default
    if spec.connection_limit > bounds.maximum:
        return Verdict(
            State.STALLED,
            Reason.CONNECTION_LIMIT_TOO_HIGH,
            f"spec.connectionLimit {spec.connection_limit} is above the maximum of this "
            f"cluster ({bounds.maximum}, its spec.tenantConnectionLimit.maximum). Lower it, or "
            "ask the cluster's owners; nothing was changed.",
        )
    return spec.connection_limit


# -- ownership -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Holder:
    """The ManagedDatabase whose record on the server holds a name."""

    uid: str
    namespace: str
    name: str


def ownership(
    *,
    namespace: str,
    database: str,
    owner: str,
    record: DatabaseRecord | None,
    holder: Holder | None,
    database_exists: bool,
    owner_exists: bool,
) -> str | None:
    """Why provisioning would touch something of the server that Vauban did not create for
    this very ManagedDatabase, or None. Only the server's record decides: a role or database
    that exists without a record for this object (another application's, a departed tenant's,
    a neighbour's) is never taken over, whatever its attributes."""
    if record is not None:
        if (record.database, record.owner) != (database, owner):
            return (
                f"record of this ManagedDatabase on the server holds database "
                f"{record.database} and owner {record.owner}, not {database} and {owner}"
            )
        return None
    if holder is not None:
        who = (
            f"ManagedDatabase {holder.namespace}/{holder.name}"
            if holder.namespace == namespace
            else "a ManagedDatabase of another namespace (or one deleted with Retain)"
        )
        return f"database {database} or role {owner} is already held by {who}"
    if database_exists:
        return f"database {database} already exists on the server and Vauban did not create it"
    if owner_exists:
        return f"role {owner} already exists on the server and Vauban did not create it"
    return None


# -- credentials -----------------------------------------------------------------------------


def login_name(owner: str, generation: int) -> str:
    """The n-th login role of an owner, within PostgreSQL's 63-byte names. Owners too long to
    take the suffix are cut and given a digest of the full name, so two owners sharing a
    prefix never share a login name."""
    name = f"{owner}_login{generation}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(owner.encode()).hexdigest()[:8]
    return f"{owner[:40]}_{digest}_login{generation}"


def _next_generation(logins: Sequence[LoginRecord]) -> int:
    return max((login.generation for login in logins), default=0) + 1


def next_login(owner: str, logins: Sequence[LoginRecord]) -> str:
    """The login role a rotation would create now."""
    return login_name(owner, _next_generation(logins))


@dataclass(frozen=True)
class CredentialsPlan:
    """What to do about the tenant's credentials this reconcile."""

    login: str
    """The login role the Secret names after this reconcile."""

    generation: int
    new_login: bool
    """Create `login` with a new password, rather than use the Secret's."""

    retiring: Mapping[str, datetime]
    """Former logins still working, each until its deadline."""

    retire_now: tuple[str, ...]
    """Logins to drop now: their grace period is over, or no Secret ever named them."""

    @property
    def rotated(self) -> bool:
        return self.new_login

    @property
    def retire_after(self) -> datetime | None:
        return min(self.retiring.values(), default=None)


def plan_credentials(
    *,
    owner: str,
    secret_username: str | None,
    logins: Sequence[LoginRecord],
    rotate_token: str | None,
    acted_token: str | None,
    last_rotation: datetime | None,
    rotation_period: str | None,
    grace_period: str,
    now: datetime,
) -> CredentialsPlan:
    """The credentials step, from the Secret and the server's record of this database's
    logins (never from status).

    The Secret is the only source of a password: with no rotation due, its login is used as
    it is, so a restart never brings back a stale password. A login no Secret ever named
    (a reconcile that failed after creating it) has a password no one knows: it is dropped
    at once instead of piling up."""
    by_role = {login.role: login for login in logins}
    current = by_role.get(secret_username) if secret_username else None
    token_due = rotate_token is not None and rotate_token != acted_token
    period_due = (
        rotation_period is not None
        and last_rotation is not None
        and now >= last_rotation + timedelta(seconds=duration_seconds(rotation_period))
    )
    if current is None or token_due or period_due:
        generation = _next_generation(logins)
        login, new = login_name(owner, generation), True
    else:
        generation, login, new = current.generation, current.role, False
    grace = now + timedelta(seconds=duration_seconds(grace_period))
    retiring: dict[str, datetime] = {}
    retire_now: list[str] = []
    for former in logins:
        if former.role == login:
            continue
        deadline = former.retire_after or grace
        if not former.published or now >= deadline:
            retire_now.append(former.role)
        else:
            retiring[former.role] = deadline
    return CredentialsPlan(login, generation, new, retiring, tuple(sorted(retire_now)))


def timers_wake_at(
    credentials: CredentialsStatus | None, rotation_period: str | None
) -> datetime | None:
    """When time alone calls for a reconcile (None: never, as things stand): retiring logins
    past their grace period, or a rotation period elapsed. `credentials` as status shows
    them: a timer read from a forged status costs a reconcile, never a decision (the record
    decides)."""
    if credentials is None:
        return None
    moments: list[datetime] = []
    retire_after = parse_rfc3339(credentials.retire_after)
    if credentials.retiring and retire_after is not None:
        moments.append(retire_after)
    last = parse_rfc3339(credentials.last_rotation)
    if rotation_period and last is not None:
        moments.append(last + timedelta(seconds=duration_seconds(rotation_period)))
    return min(moments, default=None)


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
probe or resync, and a new one a write at its first probe (its free space maps appear
after its first vacuum). The metric has the figure of the cluster's last usage read."""


def usage_to_write(
    status: ManagedDatabaseStatus, measured: ManagedDatabaseStatus
) -> ManagedDatabaseStatus:
    """The usage a full reconcile puts in status: what it measured when it moved enough,
    else what status has, so that the hourly resync of a database in use writes nothing."""
    if usage_moved(status, measured):
        return measured
    return ManagedDatabaseStatus(
        size_bytes=status.size_bytes, size=status.size, connections=status.connections
    )


def usage_moved(status: ManagedDatabaseStatus, measured: ManagedDatabaseStatus) -> bool:
    """Whether measured size and sessions differ enough from status to be written."""
    if status.connections != measured.connections:
        return True
    before, now = status.size_bytes, measured.size_bytes
    if before is None or now is None:
        return before != now
    return bool(abs(now - before) > max(SIZE_TOLERANCE * before, SIZE_TOLERANCE_BYTES))
