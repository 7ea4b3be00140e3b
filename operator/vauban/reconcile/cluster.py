"""What a ManagedCluster needs before Vauban can run or adopt it, and the verdict.

Mode Managed: CloudNativePG runs the server; its Cluster's status is mapped onto ours.
Mode External: an existing server, probed by the operator (`vauban.engines.postgres`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from vauban.api.cluster import ManagedClusterSpec
from vauban.builders import cnpg
from vauban.conditions import DomainCondition, Event, Reason, State, Verdict
from vauban.reconcile.compliance import ServerAudit, ServerTls
from vauban.timefmt import parse_rfc3339, rfc3339

CNPG_CRD = f"{cnpg.CNPG_PLURAL}.{cnpg.CNPG_GROUP}"
BARMAN_CRD = f"{cnpg.BARMAN_PLURAL}.{cnpg.BARMAN_GROUP}"

# Keys of a kubernetes.io/basic-auth Secret, which CloudNativePG and PGO use too.
ADMIN_SECRET_KEYS = ("username", "password")


@dataclass(frozen=True)
class Assessment:
    """A verdict, the status fields that go with it, whether the desired objects (mode
    Managed) may be applied, and what else status and Events say."""

    verdict: Verdict
    fields: Mapping[str, Any] = field(default_factory=dict)
    apply: bool = False
    conditions: Sequence[DomainCondition] = ()
    """Domain conditions of what was asked besides the spec (a switchover)."""

    events: Sequence[Event] = ()


# -- mode Managed ------------------------------------------------------------------------


def endpoints(name: str, namespace: str) -> dict[str, str]:
    """CloudNativePG's Services: `-rw` reaches the primary, `-ro` the replicas."""
    return {
        "readWrite": f"{name}-rw.{namespace}.svc:{cnpg.POSTGRES_PORT}",
        "readOnly": f"{name}-ro.{namespace}.svc:{cnpg.POSTGRES_PORT}",
    }


def assess_managed(
    *,
    name: str,
    namespace: str,
    spec: ManagedClusterSpec,
    engine_installed: bool,
    engine_cluster: Mapping[str, Any] | None,
    archiver_installed: bool = True,
    archive_store: Mapping[str, Any] | None = None,
) -> Assessment:
    """`engine_cluster` is CloudNativePG's Cluster as stored (None before it is created);
    `archive_store` the barman-cloud plugin's ObjectStore of its archive (spec.backup)."""
    if not engine_installed:
        return Assessment(
            Verdict(
                State.STALLED,
                Reason.ENGINE_NOT_INSTALLED,
                f"CloudNativePG is not installed: the CRD {CNPG_CRD} is missing. Install "
                "CloudNativePG (its CRDs and operator) to run mode Managed clusters, or adopt "
                "an existing server with mode External.",
            )
        )
    if spec.backup is not None and not archiver_installed:
        return Assessment(
            Verdict(
                State.STALLED,
                Reason.ARCHIVER_NOT_INSTALLED,
                f"spec.backup archives WAL through CloudNativePG's barman-cloud plugin, which "
                f"is not installed: the CRD {BARMAN_CRD} is missing. Install "
                "plugin-barman-cloud beside CloudNativePG (docs/install.md).",
            )
        )
    assert spec.version is not None  # the CRD's CEL rules guarantee it for mode Managed
    if engine_cluster is None:
        return Assessment(
            Verdict(
                State.PROGRESSING,
                Reason.PROVISIONING,
                f"Creating the CloudNativePG Cluster {name} (PostgreSQL {spec.version}, "
                f"{spec.instances} instance(s)).",
            ),
            apply=True,
        )

    running = engine_cluster.get("spec", {}).get("imageName", "")
    if running and cnpg.major(running) != cnpg.major(spec.version):
        return Assessment(
            Verdict(
                State.STALLED,
                Reason.MAJOR_UPGRADE_UNSUPPORTED,
                f"spec.version asks for PostgreSQL {cnpg.major(spec.version)} but the cluster "
                f"runs {cnpg.major(running)}: major upgrades are not supported yet. Set "
                f"spec.version back to {cnpg.major(running)}; nothing was changed.",
            ),
            fields=_engine_fields(name, namespace, engine_cluster),
        )

    status = engine_cluster.get("status", {})
    ready = _engine_ready(engine_cluster)
    ready_instances = int(status.get("readyInstances") or 0)
    fields = {
        **_engine_fields(name, namespace, engine_cluster),
        "continuousArchiving": continuous_archiving(name, engine_cluster, archive_store),
        "recovery": recovery(namespace, spec, recovered=ready or ready_instances > 0),
    }
    if ready and ready_instances >= spec.instances:
        return Assessment(
            Verdict.ready(
                f"{ready_instances}/{spec.instances} instance(s) ready; primary "
                f"{status.get('currentPrimary', 'unknown')}."
            ),
            fields=fields,
            apply=True,
        )
    phase = status.get("phase") or "starting"
    progress = f"CloudNativePG: {phase} ({ready_instances}/{spec.instances} instance(s) ready)."
    if spec.restore is not None and not ready_instances:
        target = spec.restore.target_time or "the end of the archive"
        return Assessment(
            Verdict(
                State.PROGRESSING,
                Reason.RECOVERING,
                f"Recovering the archive of cluster {spec.restore.from_cluster} up to {target}. "
                + progress,
            ),
            fields=fields,
            apply=True,
        )
    return Assessment(
        Verdict(State.PROGRESSING, Reason.PROVISIONING, progress), fields=fields, apply=True
    )


def _engine_ready(engine_cluster: Mapping[str, Any]) -> bool:
    """CloudNativePG's Ready condition, if it speaks of the Cluster's current generation."""
    generation = engine_cluster.get("metadata", {}).get("generation", 0)
    for condition in engine_cluster.get("status", {}).get("conditions", []):
        if condition.get("type") == "Ready":
            current = condition.get("observedGeneration", generation) >= generation
            return bool(condition.get("status") == "True" and current)
    return False


def _engine_fields(name: str, namespace: str, engine_cluster: Mapping[str, Any]) -> dict[str, Any]:
    status = engine_cluster.get("status", {})
    running = status.get("image") or engine_cluster.get("spec", {}).get("imageName", "")
    return {
        "instances": status.get("instances"),
        "readyInstances": status.get("readyInstances"),
        "currentPrimary": status.get("currentPrimary"),
        "version": running.rsplit(":", 1)[-1] if running else None,
        "endpoints": endpoints(name, namespace),
        "health": managed_health(engine_cluster),
    }


def continuous_archiving(
    name: str, engine_cluster: Mapping[str, Any], archive_store: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """WAL archiving and base backups as they are reported: whether archiving works by
    CloudNativePG's ContinuousArchiving condition, the recovery window by the barman-cloud
    plugin's ObjectStore (CloudNativePG's own firstRecoverabilityPoint is deprecated and not
    updated for plugins). None when the cluster archives nothing."""
    plugins = (engine_cluster.get("spec") or {}).get("plugins") or []
    if not any(p.get("name") == cnpg.BARMAN_PLUGIN and p.get("isWALArchiver") for p in plugins):
        return None
    status = engine_cluster.get("status") or {}
    condition = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "ContinuousArchiving"),
        None,
    )
    windows = ((archive_store or {}).get("status") or {}).get("serverRecoveryWindow") or {}
    window = windows.get(name) or {}
    found = {
        "archiving": None if condition is None else condition.get("status") == "True",
        "message": (condition or {}).get("message", "")[:512] or None,
        "firstRecoverabilityPoint": window.get("firstRecoverabilityPoint"),
        "lastSuccessfulBackup": window.get("lastSuccessfulBackupTime"),
    }
    return {k: v for k, v in found.items() if v is not None}


def recovery(namespace: str, spec: ManagedClusterSpec, *, recovered: bool) -> dict[str, Any] | None:
    """What spec.restore recovers, and whether it is over: once an instance of the cluster is
    ready, CloudNativePG's recovery job has replayed the archive and the primary runs,
    promoted."""
    if spec.restore is None or spec.backup is None:
        return None
    found = {
        "fromCluster": spec.restore.from_cluster,
        "archive": cnpg.archive_path(
            namespace, spec.restore.from_cluster, spec.backup.object_store
        ),
        "targetTime": spec.restore.target_time,
        "recovered": recovered,
    }
    return {k: v for k, v in found.items() if v is not None}


@dataclass(frozen=True)
class RunningSetting:
    """A server parameter as the primary runs it: the value its configuration files give
    (the last line naming it wins), whether that line is in effect, and whether the server
    waits for a restart to use it."""

    name: str
    file_value: str | None
    applied: bool
    pending_restart: bool


def configuration_pending(
    desired: Mapping[str, str], running: Sequence[RunningSetting]
) -> Verdict | None:
    """Reconciling while the primary does not run spec.postgresql.parameters yet.

    CloudNativePG's Ready condition carries no generation: right after a change it still
    speaks of the previous configuration, until its instance managers rewrite the files,
    reload, and restart the instances one by one. The primary's files and pending restarts
    say when the change has really landed."""
    by_name = {s.name: s for s in running}
    waiting = []
    for name, wanted in sorted(desired.items()):
        setting = by_name.get(name)
        if setting is None:
            continue  # not a parameter of this server version: the server says so itself
        if _normalized(setting.file_value) != _normalized(wanted):
            waiting.append(f"{name} is {setting.file_value or 'unset'}, {wanted} wanted")
        elif setting.pending_restart or not setting.applied:
            waiting.append(f"{name} = {wanted} waits for a restart")
    if not waiting:
        return None
    return Verdict(
        State.PROGRESSING,
        Reason.CONFIGURATION_PENDING,
        "CloudNativePG is applying spec.postgresql.parameters; on the primary: "
        + "; ".join(waiting)
        + ".",
    )


def _normalized(value: str | None) -> str:
    return "".join((value or "").split()).strip("'").lower()


# -- mode External -----------------------------------------------------------------------


class ProbeOutcome(StrEnum):
    OK = "ok"
    UNREACHABLE = "unreachable"
    AUTHENTICATION_FAILED = "authentication-failed"


@dataclass(frozen=True)
class ServerProbe:
    """What connecting to an external server showed. `detail` is safe to publish: it never
    holds credentials."""

    outcome: ProbeOutcome
    detail: str = ""
    version: str | None = None
    """server_version, e.g. 17.6."""

    role: str = ""
    superuser: bool = False
    create_role: bool = False
    create_db: bool = False
    health: ServerHealth | None = None
    """The server's load, when the probe was asked to read it."""

    tls: ServerTls | None = None
    """What the server says of TLS, when the probe was asked to read it."""

    settings: tuple[RunningSetting, ...] | None = None
    """The parameters the probe was asked about, as the server runs them; None when not
    asked or not readable (pg_file_settings is for superusers)."""

    audit: ServerAudit | None = None
    """Whether the server runs pgaudit, when the probe was asked."""


def assess_external(
    *,
    spec: ManagedClusterSpec,
    admin_secret_keys: Collection[str] | None,
    probe: ServerProbe | None,
) -> Assessment:
    """`probe` is None when the Secret was not usable and no connection was tried."""
    assert spec.external is not None  # the CRD's CEL rules guarantee it for mode External
    server = f"{spec.external.host}:{spec.external.port}"
    secret = spec.external.admin_secret_ref.name
    if admin_secret_keys is None:
        return Assessment(
            Verdict(
                State.WAITING,
                Reason.SECRET_MISSING,
                f"Secret {secret} (spec.external.adminSecretRef) does not exist. Create it with "
                "the keys username and password of a role that may create roles and databases.",
            )
        )
    missing = [k for k in ADMIN_SECRET_KEYS if k not in admin_secret_keys]
    if missing or probe is None:
        return Assessment(
            Verdict(
                State.STALLED,
                Reason.SECRET_MISSING,
                f"Secret {secret} (spec.external.adminSecretRef) lacks the key(s) "
                f"{', '.join(missing or ADMIN_SECRET_KEYS)}. Add them: Vauban needs username "
                "and password.",
            )
        )
    fields: dict[str, Any] = {"endpoints": {"readWrite": server}}
    if probe.outcome is ProbeOutcome.UNREACHABLE:
        return Assessment(
            Verdict(
                State.WAITING,
                Reason.UNREACHABLE,
                f"Cannot reach PostgreSQL at {server}: {probe.detail}. Retrying with backoff.",
            ),
            fields=fields,
        )
    if probe.outcome is ProbeOutcome.AUTHENTICATION_FAILED:
        return Assessment(
            Verdict(
                State.STALLED,
                Reason.AUTHENTICATION_FAILED,
                f"PostgreSQL at {server} refused the credentials of Secret {secret}: "
                f"{probe.detail}. Fix the Secret's username or password.",
            ),
            fields=fields,
        )
    fields["version"] = probe.version
    if not (probe.superuser or (probe.create_role and probe.create_db)):
        return Assessment(
            Verdict(
                State.STALLED,
                Reason.INSUFFICIENT_PRIVILEGES,
                f"Role {probe.role} of Secret {secret} may not create roles and databases. "
                "Grant it CREATEROLE and CREATEDB (ALTER ROLE ... CREATEROLE CREATEDB).",
            ),
            fields=fields,
        )
    if spec.version is not None and probe.version is not None:
        wanted, running = cnpg.major(spec.version), cnpg.major(probe.version)
        if wanted != running or (spec.version != wanted and spec.version != probe.version):
            return Assessment(
                Verdict(
                    State.STALLED,
                    Reason.VERSION_MISMATCH,
                    f"spec.version is {spec.version} but the server at {server} runs "
                    f"PostgreSQL {probe.version}. Fix spec.version, or leave it unset.",
                ),
                fields=fields,
            )
    return Assessment(
        Verdict.ready(f"Adopted PostgreSQL {probe.version} at {server} as role {probe.role}."),
        fields=fields,
    )


# -- health ------------------------------------------------------------------------------

MAX_REPLICAS = 9
"""status.health.replicas is bounded: a ManagedCluster has at most 9 instances."""

NEAR_LIMIT_EVENT = "ConnectionsNearLimit"
WITHIN_LIMIT_EVENT = "ConnectionsWithinLimit"
PRIMARY_CHANGED_EVENT = "PrimaryChanged"


@dataclass(frozen=True)
class ReplicaHealth:
    name: str
    """application_name of the standby (mode External), pod name (mode Managed)."""

    state: str | None = None
    """pg_stat_replication.state (streaming, catchup...), or CloudNativePG's instance status
    (healthy, replicating, failed)."""

    lag_seconds: float | None = None
    """replay_lag: how long ago the standby was last caught up."""


@dataclass(frozen=True)
class ServerHealth:
    """What a probe read of a server's load. None where it could not be read (a query not
    permitted to the admin role, or timed out): the other fields are still reported."""

    connections: int | None = None
    """Client sessions (pg_stat_activity)."""

    max_connections: int | None = None
    in_recovery: bool | None = None
    replicas: Sequence[ReplicaHealth] | None = None
    wal_bytes: int | None = None
    """Size of pg_wal (pg_ls_waldir: superuser or pg_monitor only)."""

    databases_bytes: int | None = None
    """Total size of the server's databases, when every one of them is readable."""

    read_at: datetime | None = None
    """When these figures were read, if not by the probe that reports them: the clusters
    that adopt one server share a reading (vauban.engines.postgres.servers)."""

    @property
    def near_limit(self) -> bool | None:
        """Whether client sessions exceed 90 % of max_connections."""
        if self.connections is None or not self.max_connections:
            return None
        return self.connections * 10 > self.max_connections * 9


def health_due(previous: Mapping[str, Any] | None, now: datetime, interval: float) -> bool:
    """Whether the server's load is read again: once per probe interval. Every status write
    is itself a watch event, so a reconcile in between keeps what status has (refreshing it
    each time would write status in a loop)."""
    last = ((previous or {}).get("health") or {}).get("lastProbeTime")
    when = parse_rfc3339(last)
    if when is None:
        return True
    return (now - when).total_seconds() >= interval


def health_status(health: ServerHealth, now: str) -> dict[str, Any]:
    """status.health for an external server: bounded, unreadable fields omitted."""
    replicas = None
    if health.replicas is not None:
        replicas = [
            {
                k: v
                for k, v in (
                    ("name", r.name),
                    ("state", r.state),
                    ("lagSeconds", None if r.lag_seconds is None else round(r.lag_seconds, 3)),
                )
                if v is not None
            }
            for r in health.replicas[:MAX_REPLICAS]
        ]
    values = {
        "lastProbeTime": now if health.read_at is None else rfc3339(health.read_at),
        "connections": health.connections,
        "maxConnections": health.max_connections,
        "connectionsNearLimit": health.near_limit,
        "inRecovery": health.in_recovery,
        "replicas": replicas,
        "walBytes": health.wal_bytes,
        "databasesBytes": health.databases_bytes,
    }
    return {k: v for k, v in values.items() if v is not None}


def external_health(
    previous: Mapping[str, Any] | None, probe: ServerProbe | None, now: str
) -> dict[str, Any] | None:
    """status.health of an external cluster: the probe's reading when it took one, what
    status has between two readings, nothing when the server did not answer (stale figures
    would mislead)."""
    if probe is None or probe.outcome is not ProbeOutcome.OK:
        return None
    if probe.health is None:
        kept = (previous or {}).get("health")
        return dict(kept) if isinstance(kept, Mapping) and kept.get("lastProbeTime") else None
    return health_status(probe.health, now)


def managed_health(engine_cluster: Mapping[str, Any]) -> dict[str, Any] | None:
    """status.health of a managed cluster, from what CloudNativePG reports: its replicas and
    their status. CloudNativePG's Cluster status carries no replication lag (its exporter
    does: cnpg_pg_replication_lag), and the operator never dials a managed cluster for it."""
    status = engine_cluster.get("status") or {}
    states = {
        pod: str(state)
        for state, pods in (status.get("instancesStatus") or {}).items()
        for pod in pods or ()
    }
    reported = status.get("instancesReportedState") or {}
    primary = status.get("currentPrimary") or next(
        (pod for pod, r in reported.items() if (r or {}).get("isPrimary")), None
    )
    replicas = sorted((set(states) | set(reported)) - {primary})
    if primary is None or not replicas:
        return None  # before a primary is known, no instance is a replica of anything
    return {
        "replicas": [
            {"name": pod, **({"state": states[pod]} if pod in states else {})}
            for pod in replicas[:MAX_REPLICAS]
        ]
    }


def connections_event(
    previous: Mapping[str, Any] | None, health: Mapping[str, Any] | None
) -> Event | None:
    """An Event when client sessions go over 90 % of max_connections, and one when they go
    back under. Not a condition of readiness: the server still works, new sessions are
    refused only at the limit."""
    if not health or "connectionsNearLimit" not in health:
        return None
    before = bool(((previous or {}).get("health") or {}).get("connectionsNearLimit"))
    near = bool(health["connectionsNearLimit"])
    if near == before:
        return None
    used = (
        f"{health.get('connections')} client sessions of max_connections "
        f"{health.get('maxConnections')} are in use"
    )
    if near:
        return Event(
            "Warning",
            NEAR_LIMIT_EVENT,
            f"{used} (over 90 %); the server refuses new sessions "
            "at the limit. Raise max_connections, lower the databases' connectionLimit, or put "
            "a connection pooler in front.",
        )
    return Event("Normal", WITHIN_LIMIT_EVENT, f"{used}.")


def primary_event(previous: Mapping[str, Any] | None, current_primary: str | None) -> Event | None:
    """An Event when CloudNativePG's primary moves (a failover or a switchover). Read from
    the previous status only to say it: a status lost or forged costs one Event at most."""
    before = (previous or {}).get("currentPrimary")
    if not before or not current_primary or before == current_primary:
        return None
    return Event(
        "Warning",
        PRIMARY_CHANGED_EVENT,
        f"The primary moved from {before} to {current_primary} (a CloudNativePG failover or "
        "switchover). Sessions on the former primary were cut; clients reconnect through the "
        "read-write Service to the new one.",
    )
