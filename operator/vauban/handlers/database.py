"""ManagedDatabase handlers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf
import psycopg

from vauban.api.cluster import ManagedClusterSpec
from vauban.api.database import MANAGED_DATABASE, ManagedDatabaseSpec
from vauban.builders import cnpg
from vauban.builders.backup import AgentLogin
from vauban.builders.credentials import Endpoint, credentials_secret, secret_name
from vauban.conditions import ConditionType, DomainCondition, Reason, State, Verdict, is_true
from vauban.engines.postgres import catalog as pg
from vauban.engines.postgres.plan import (
    Desired,
    Login,
    drop_database,
    plan,
    retire_login,
    takeover,
)
from vauban.engines.postgres.probe import ServerAddress, check_login
from vauban.engines.postgres.scram import new_password, verifier
from vauban.handlers import backup
from vauban.handlers.context import Context, ObjectKey
from vauban.handlers.publish import (
    awaiting_finalizer,
    parse_spec,
    post_event,
    publish,
    refresh,
    unexpected,
)
from vauban.reconcile import compliance
from vauban.reconcile import database as database_logic
from vauban.reconcile.cluster import ProbeOutcome
from vauban.reconcile.database import Claim, ClusterView
from vauban.reconcile.status import previous_conditions
from vauban.reconcile.tenancy import needs_namespace_labels

logger = logging.getLogger(__name__)

ROTATE_ANNOTATION = "vauban.dev/rotate-credentials"


def claim_of(body: Mapping[str, Any]) -> Claim:
    meta, spec = body["metadata"], body.get("spec", {})
    return Claim(
        namespace=meta["namespace"],
        name=meta["name"],
        created=str(meta.get("creationTimestamp", "")),
        database=str(spec.get("databaseName", "")),
        owner=str(spec.get("owner", "")),
        provisioned=_provisioned(body),
    )


_KEPT = ("cluster", "credentials", "extensions", "sizeBytes", "connections", "backup", "restore")

Index = Mapping[tuple[str, str], Iterable[Mapping[str, Any]]]


def _kept(status: Mapping[str, Any]) -> dict[str, Any]:
    """What was provisioned before stays reported: a failed step loses no information."""
    return {k: status[k] for k in _KEPT if k in status}


def _provisioned(body: Mapping[str, Any]) -> bool:
    return bool(((body.get("status") or {}).get("credentials") or {}).get("username"))


async def reconcile(
    ctx: Context,
    body: Mapping[str, Any],
    clusters: Mapping[tuple[str, str], Iterable[ClusterView]],
    neighbours: Index,
    backups: Index,
    *,
    only_if_due: bool = False,
) -> None:
    """`neighbours`: the databases of each cluster, for name conflicts; `backups`: the
    ManagedBackups of each database. `only_if_due`: for the periodic re-check, whose copy of
    the object may predate a reconcile that made it not due any more."""
    meta = body["metadata"]
    server = database_logic.cluster_key_of(body)
    # A bounded number of databases of one cluster reconcile at a time: a burst of a
    # thousand would otherwise exhaust its server's max_connections ("too many clients"),
    # and hold a thousand bodies in memory while they wait. A waiting reconcile holds
    # nothing: the object is read when its turn comes.
    async with (
        ctx.memory.busy(),
        ctx.locks[_key(body)],
        ctx.server_slots[server] if server else contextlib.nullcontext(),
    ):
        # Re-read under the lock: a reconcile that waited must see what the previous one
        # wrote (a rotation done twice would cut the grace period of the first).
        fresh = await ctx.kube.read(MANAGED_DATABASE, meta["namespace"], meta["name"])
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return
        if only_if_due and not due(ctx, fresh):
            return
        with ctx.metrics.reconcile(MANAGED_DATABASE.kind):
            try:
                await _reconcile(ctx, fresh, clusters, neighbours, backups)
            except Exception as e:
                logger.exception(
                    "reconcile of ManagedDatabase %s/%s failed", meta["namespace"], meta["name"]
                )
                # Keep what status knew; say what failed.
                kept = _kept(fresh.get("status") or {})
                await publish(ctx, MANAGED_DATABASE, fresh, unexpected(e), fields=kept)
                ctx.backoff.failed(_key(body))
                raise


async def _reconcile(
    ctx: Context,
    body: Mapping[str, Any],
    clusters: Mapping[tuple[str, str], Iterable[ClusterView]],
    neighbours: Index,
    backups: Index,
) -> None:
    spec = await parse_spec(ctx, MANAGED_DATABASE, ManagedDatabaseSpec, body)
    if spec is None:
        return
    namespace = body["metadata"]["namespace"]
    key = database_logic.cluster_key(namespace, spec)
    cluster = next(iter(clusters.get(key, ())), None)
    labels: Mapping[str, str] = {}
    if (
        cluster is not None
        and cluster.spec is not None
        and needs_namespace_labels(
            cluster_namespace=cluster.namespace,
            allowed=cluster.spec.allowed_namespaces,
            namespace=namespace,
        )
    ):
        labels = await ctx.kube.namespace_labels(namespace)
    verdict = database_logic.assess(
        namespace=namespace, spec=spec, cluster=cluster, namespace_labels=labels
    )
    fields: dict[str, Any] = {"cluster": "/".join(key)}
    domain: list[DomainCondition] = []
    if cluster is not None and cluster.spec is not None:
        placement = compliance.placement(cluster.spec.compliance.profile, spec.data_classification)
        domain.append(placement)
        # A database already provisioned keeps serving: the condition says what is wrong.
        if placement.status == "False" and not _provisioned(body):
            verdict = Verdict(State.STALLED, placement.reason, placement.message)
    if verdict.state is State.PROGRESSING and cluster is not None and cluster.spec is not None:
        others = [claim_of(b) for b in neighbours.get(key, ())]
        conflict = database_logic.name_conflict(claim_of(body), others)
        unprepared = awaiting_finalizer(body)
        if conflict is not None:
            verdict = conflict
        elif unprepared is not None:
            # Nothing is written either: kopf's finalizer is a write that is about to bring
            # the next event, and the status of that reconcile says all there is to say.
            return
        else:
            verdict, provisioned, backup_conditions = await _provision(
                ctx, body, spec, cluster, cluster.spec, backups
            )
            fields.update(provisioned)
            domain += backup_conditions
    await publish(ctx, MANAGED_DATABASE, body, verdict, fields=fields, domain=domain)
    key_of_me = _key(body)
    ctx.reconciled[key_of_me] = time.monotonic()
    # Only failures that cost a connection back off; waiting on Kubernetes objects is cheap
    # and must notice a fix (a namespace labelled) within one re-check interval.
    if verdict.reason in (Reason.UNREACHABLE, Reason.PROVISIONING_FAILED):
        ctx.backoff.failed(key_of_me)
    else:
        ctx.backoff.succeeded(key_of_me)


def settled(ctx: Context, body: Mapping[str, Any]) -> bool:
    """Whether a watch event can be let pass: the object is Ready for its current spec and
    rotation request, and was reconciled by this process within the probe interval. The
    events of Vauban's own status writes are such events; reconciling them again would
    re-read the server and, with a session count that moved, write status again."""
    status = body.get("status") or {}
    token = (body["metadata"].get("annotations") or {}).get(ROTATE_ANNOTATION)
    return (
        status.get("observedGeneration") == body["metadata"].get("generation")
        and token == (status.get("credentials") or {}).get("rotationToken")
        and is_true(previous_conditions(status), ConditionType.READY)
        and not due(ctx, body)
    )


def due(ctx: Context, body: Mapping[str, Any]) -> bool:
    """Whether the periodic re-check should reconcile this database now."""
    key = _key(body)
    status = body.get("status") or {}
    if not is_true(previous_conditions(status), ConditionType.READY):
        return ctx.backoff.due(key)
    if database_logic.timers_due(status, body.get("spec") or {}, datetime.now(UTC)):
        return True
    return database_logic.resync_due(
        key, time.monotonic() - ctx.reconciled.get(key, 0.0), ctx.settings.resync_interval_seconds
    )


def _key(body: Mapping[str, Any]) -> ObjectKey:
    return (MANAGED_DATABASE.kind, body["metadata"]["namespace"], body["metadata"]["name"])


async def probe_usage(
    ctx: Context, cluster: ClusterView, bodies: Iterable[Mapping[str, Any]]
) -> None:
    """The periodic look at a cluster's ready databases, with one connection for all of them
    instead of a reconcile each: sizes and sessions go to status (when they moved) and to
    the metrics; a database or login gone from the server makes its database due for a full
    reconcile, which re-creates it."""
    if cluster.spec is None:
        return
    watched: list[tuple[Mapping[str, Any], str, str]] = []
    for body in bodies:
        status = body.get("status") or {}
        login = (status.get("credentials") or {}).get("username")
        database = (body.get("spec") or {}).get("databaseName")
        if (
            login
            and database
            and not body["metadata"].get("deletionTimestamp")
            and status.get("observedGeneration") == body["metadata"].get("generation")
            and is_true(previous_conditions(status), ConditionType.READY)
        ):
            watched.append((body, str(database), str(login)))
    if not watched:
        return
    connection = await _connection(ctx, cluster, cluster.spec, "postgres")
    if isinstance(connection, Verdict):
        return  # the cluster's own status says what is missing
    try:
        async with ctx.server_slots[(cluster.namespace, cluster.name)]:
            async with asyncio.timeout(USAGE_DEADLINE_SECONDS):
                async with pg.session(connection.admin) as server:
                    found = await server.usage(
                        {db for _, db, _ in watched}, {r for _, _, r in watched}
                    )
    except (psycopg.Error, TimeoutError) as e:
        # The cluster's own probe reports a server that does not answer; the databases keep
        # their last figures until it does.
        logger.info("usage of the databases of %s not read: %s", cluster.ref, type(e).__name__)
        return
    for body, db, login in watched:
        measured = found.databases.get(db)
        if measured is None or login not in found.logins:
            ctx.reconciled.pop(_key(body), None)
            continue
        fields = {"sizeBytes": measured.size_bytes, "connections": measured.connections}
        status = body.get("status") or {}
        ctx.metrics.observe(MANAGED_DATABASE.kind, *_key(body)[1:], {**status, **fields})
        if database_logic.usage_moved(status, fields):
            await refresh(ctx, MANAGED_DATABASE, body, fields)


USAGE_DEADLINE_SECONDS = 30.0
"""One read of a cluster's database sizes; pg_database_size walks each database's files."""


@dataclass(frozen=True)
class Connection:
    admin: pg.AdminCredentials
    endpoint: Endpoint


async def _connection(
    ctx: Context, cluster: ClusterView, spec: ManagedClusterSpec, database: str
) -> Connection | Verdict:
    """How the operator reaches the cluster as admin, and how tenants reach the database."""
    if spec.external is not None:
        external = spec.external
        admin = await ctx.kube.read_secret(cluster.namespace, external.admin_secret_ref.name)
        ca_pem = None
        if external.ca_secret_ref is not None:
            ca = await ctx.kube.read_secret(cluster.namespace, external.ca_secret_ref.name)
            ca_pem = (ca or {}).get(external.ca_secret_ref.key)
        address = ServerAddress(external.host, external.port, external.ssl_mode, ca_pem)
        secret = external.admin_secret_ref.name
    else:
        admin = await ctx.kube.read_secret(
            cluster.namespace, cnpg.superuser_secret_name(cluster.name)
        )
        ca = await ctx.kube.read_secret(cluster.namespace, f"{cluster.name}-ca")
        address = ServerAddress(
            f"{cluster.name}-rw.{cluster.namespace}.svc",
            cnpg.POSTGRES_PORT,
            "verify-full",
            (ca or {}).get("ca.crt"),
        )
        secret = cnpg.superuser_secret_name(cluster.name)
    if admin is None or "username" not in admin or "password" not in admin:
        return Verdict(
            State.WAITING,
            Reason.CLUSTER_NOT_READY,
            f"The admin Secret {cluster.namespace}/{secret} of ManagedCluster {cluster.ref} "
            "is missing or incomplete.",
        )
    return Connection(
        pg.AdminCredentials(address, admin["username"], admin["password"]),
        Endpoint(address.host, address.port, database, address.ssl_mode, address.ca_pem),
    )


def _parse_time(value: Any) -> datetime | None:
    return database_logic.parse_time(str(value)) if value else None


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _database_error(error: psycopg.Error) -> Verdict:
    if isinstance(error, psycopg.OperationalError) and error.sqlstate is None:
        return Verdict(
            State.WAITING,
            Reason.UNREACHABLE,
            f"Cannot reach the cluster's server: {' '.join(str(error).split())[:300]}",
        )
    primary = error.diag.message_primary or type(error).__name__
    return Verdict(
        State.STALLED,
        Reason.PROVISIONING_FAILED,
        f"PostgreSQL refused a step of provisioning: {primary}. Fix the spec (or the "
        "server's setup); Vauban retries on every change.",
    )


async def _provision(
    ctx: Context,
    body: Mapping[str, Any],
    spec: ManagedDatabaseSpec,
    cluster: ClusterView,
    cluster_spec: ManagedClusterSpec,
    backups: Index,
) -> tuple[Verdict, dict[str, Any], list[DomainCondition]]:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    status = body.get("status") or {}
    credentials = status.get("credentials") or {}
    connection = await _connection(ctx, cluster, cluster_spec, spec.database_name)
    if isinstance(connection, Verdict):
        return connection, {}, []
    now = datetime.now(UTC)
    try:
        # One admin session for the whole plan: connecting (TLS, SCRAM) costs more than it.
        async with pg.session(connection.admin) as server:
            catalog = await server.catalog(spec.database_name, spec.owner)
            found = await ctx.kube.read_secret_and_owners(namespace, secret_name(name))
            if found is not None and meta.get("uid") not in found[1]:
                return (
                    Verdict(
                        State.STALLED,
                        Reason.NAME_CONFLICT,
                        f"Secret {secret_name(name)} already exists and was not created for this "
                        "ManagedDatabase; Vauban does not overwrite it. Delete or rename it.",
                    ),
                    _kept(status),
                    [],
                )
            secret = None if found is None else found[0]
            token = (meta.get("annotations") or {}).get(ROTATE_ANNOTATION)
            steps = database_logic.plan_credentials(
                owner=spec.owner,
                secret_username=(secret or {}).get("username")
                if secret and "password" in secret
                else None,
                existing_logins=[r for r in catalog.roles if r != spec.owner],
                retiring=credentials.get("retiring") or [],
                retire_after=_parse_time(credentials.get("retireAfter")),
                last_rotation=_parse_time(credentials.get("lastRotation")),
                rotate_token=token,
                acted_token=credentials.get("rotationToken"),
                rotation_period=spec.credentials.rotation_period,
                grace_period=spec.credentials.grace_period,
                now=now,
            )
            password = new_password() if steps.new_password else (secret or {})["password"]
            desired = Desired(
                database=spec.database_name,
                owner=spec.owner,
                # PBKDF2 is a reconcile's costliest step: only for a login to create.
                login=Login(
                    steps.login, "" if steps.login in catalog.roles else verifier(password)
                ),
                connection_limit=spec.connection_limit or -1,
                extensions=frozenset(spec.extensions),
                managed_extensions=frozenset(status.get("extensions") or []),
                retire=frozenset(steps.retire_now),
            )
            taken = None if _provisioned(body) else takeover(desired, catalog)
            if taken is not None:
                return (
                    Verdict(
                        State.STALLED,
                        Reason.NAME_CONFLICT,
                        f"The {taken}: Vauban does not take over what it did not create. Choose "
                        "other names; nothing was changed.",
                    ),
                    {},
                    [],
                )
            sql_plan = plan(desired, catalog)
            await server.apply(spec.database_name, spec.owner, sql_plan)
            # The login role exists before the Secret names it: an application never reads
            # credentials the server does not accept yet.
            desired_secret = credentials_secret(
                name=name,
                namespace=namespace,
                owner_uid=meta.get("uid", ""),
                username=steps.login,
                password=password,
                endpoint=connection.endpoint,
            )
            if _secret_differs(secret, desired_secret):
                await ctx.kube.apply_secret(desired_secret)
            usage = (await server.usage([spec.database_name])).databases.get(spec.database_name)
    except psycopg.Error as e:
        return _database_error(e), _kept(status), []

    # A change to a provisioned database is an Event of its own; a first provisioning is
    # told by the Event of the transition to Ready (one write per object less at scale).
    if sql_plan and _provisioned(body):
        await post_event(
            ctx,
            MANAGED_DATABASE,
            body,
            "Normal",
            "Provisioned",
            "Applied: " + "; ".join(sql_plan.summary())[:900],
        )
    if steps.rotated and secret is not None:
        await post_event(
            ctx,
            MANAGED_DATABASE,
            body,
            "Normal",
            "CredentialsRotated",
            f"Secret {secret_name(name)} now holds login {steps.login}; "
            f"previous logins work until the grace period ends.",
        )
    fields: dict[str, Any] = {
        "credentials": {
            "secretName": secret_name(name),
            "username": steps.login,
            "lastRotation": _rfc3339(now) if steps.rotated else credentials.get("lastRotation"),
            "rotationToken": token if steps.rotated else credentials.get("rotationToken"),
            "retiring": list(steps.retiring),
            "retireAfter": _rfc3339(steps.retire_after) if steps.retire_after else None,
        },
        "extensions": sorted(spec.extensions),
        "sizeBytes": usage.size_bytes if usage else None,
        "connections": usage.connections if usage else None,
    }
    if cluster_spec.external is not None:
        fields["credentials"]["accepted"] = await _login_accepted(
            ctx, body, connection, steps.login, password, spec.database_name
        )
    fields["credentials"] = {k: v for k, v in fields["credentials"].items() if v is not None}
    endpoint = connection.endpoint
    logins = backup.Logins(
        tenant=AgentLogin(
            endpoint.host,
            endpoint.port,
            steps.login,
            password,
            spec.database_name,
            endpoint.sslmode,
            endpoint.ca_pem,
        ),
        admin=AgentLogin(
            endpoint.host,
            endpoint.port,
            connection.admin.username,
            connection.admin.password,
            "postgres",
            endpoint.sslmode,
            endpoint.ca_pem,
        ),
    )
    restoring, fields["restore"] = await backup.restore(
        ctx, body, spec, cluster, cluster_spec, logins.tenant, backups
    )
    if restoring is not None:
        return restoring, fields, []
    outcome = await backup.for_database(
        ctx,
        body,
        spec,
        cluster,
        cluster_spec,
        logins,
        list(backups.get((namespace, name), ())),
    )
    fields["backup"] = outcome.fields if outcome else None
    return (
        Verdict.ready(
            f"Database {spec.database_name} (owner {spec.owner}) is ready on ManagedCluster "
            f"{cluster.ref}; credentials in Secret {secret_name(name)}."
        ),
        fields,
        outcome.conditions if outcome else [],
    )


async def _login_accepted(
    ctx: Context,
    body: Mapping[str, Any],
    connection: Connection,
    username: str,
    password: str,
    dbname: str,
) -> bool | None:
    """Log in as the tenant, as an application would. A refusal leaves the database Ready
    (the operator may come through another pg_hba path than the applications) but is said,
    once, with what to do. None when the server could not be asked."""
    outcome = await check_login(connection.admin.address, username, password, dbname)
    if outcome.outcome is ProbeOutcome.UNREACHABLE:
        return None
    accepted = outcome.outcome is ProbeOutcome.OK
    before = ((body.get("status") or {}).get("credentials") or {}).get("accepted")
    if not accepted and before is not False:
        await post_event(
            ctx,
            MANAGED_DATABASE,
            body,
            "Warning",
            "CredentialsRejected",
            f"The server refused the credentials of Secret {secret_name(body['metadata']['name'])}"
            f": {outcome.detail[:300]}. If the password was changed by hand, rotate them with the "
            f"annotation {ROTATE_ANNOTATION}.",
        )
    return accepted


def _secret_differs(current: Mapping[str, str] | None, desired: Mapping[str, Any]) -> bool:
    if current is None:
        return True
    wanted = {k: base64.b64decode(v).decode() for k, v in desired["data"].items()}
    return dict(current) != wanted


async def finalize(
    ctx: Context,
    body: Mapping[str, Any],
    clusters: Mapping[tuple[str, str], Iterable[ClusterView]],
    neighbours: Mapping[tuple[str, str], Iterable[Mapping[str, Any]]],
) -> None:
    """Before a ManagedDatabase goes: Retain revokes the tenant's logins and keeps the
    database; Delete drops the database and its roles. Nothing is touched on the server for
    a database this object never provisioned (a name conflict)."""
    try:
        spec = ManagedDatabaseSpec.model_validate(body.get("spec", {}))
    except ValueError:
        return
    namespace = body["metadata"]["namespace"]
    key = database_logic.cluster_key(namespace, spec)
    cluster = next(iter(clusters.get(key, ())), None)
    provisioned = _provisioned(body)
    others = [claim_of(b) for b in neighbours.get(key, ())]
    if provisioned and spec.backup is not None and spec.backup.final_backup:
        await backup.final_backup(ctx, body)
    await backup.database_deleted(ctx, body, spec, cluster)
    if cluster is None or cluster.spec is None or not provisioned:
        return
    if database_logic.name_conflict(claim_of(body), others) is not None:
        return
    connection = await _connection(ctx, cluster, cluster.spec, spec.database_name)
    if isinstance(connection, Verdict):
        # Without the admin Secret (deleted with its namespace, say) nothing can be done on
        # the server; blocking the deletion forever would not make it possible.
        await post_event(
            ctx,
            MANAGED_DATABASE,
            body,
            "Warning",
            "CleanupSkipped",
            f"{connection.message} Revoke the logins of {spec.owner} "
            f"(or drop {spec.database_name}) by hand.",
        )
        return
    try:
        async with ctx.server_slots[key], pg.session(connection.admin) as server:
            catalog = await server.catalog(spec.database_name, spec.owner)
            logins = sorted(
                r
                for r in catalog.roles
                if database_logic.login_generation(spec.owner, r) is not None
            )
            if spec.deletion_policy == "Delete":
                statements = drop_database(spec.database_name, [*logins, spec.owner])
            else:
                statements = [s for role in logins for s in retire_login(role)]
            await server.run(statements)
    except psycopg.Error as e:
        raise kopf.TemporaryError(_database_error(e).message, delay=30) from e
    logger.info(
        "ManagedDatabase %s/%s: %s on deletion",
        namespace,
        body["metadata"]["name"],
        "dropped" if spec.deletion_policy == "Delete" else "logins revoked, data kept",
    )
