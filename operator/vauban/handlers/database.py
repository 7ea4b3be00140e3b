"""ManagedDatabase handlers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import kopf
import psycopg
from psycopg import sql

from vauban import timefmt
from vauban.api.cluster import MANAGED_CLUSTER, ManagedClusterSpec
from vauban.api.common import Condition
from vauban.api.database import MANAGED_DATABASE, ManagedDatabaseSpec
from vauban.builders import cnpg
from vauban.builders.backup import AgentLogin
from vauban.builders.credentials import Endpoint, credentials_secret, secret_name
from vauban.conditions import ConditionType, DomainCondition, Reason, State, Verdict, is_true
from vauban.engines.postgres import catalog as pg
from vauban.engines.postgres import registry
from vauban.engines.postgres.plan import (
    Desired,
    Login,
    drop_database,
    extensions_plan,
    plan,
    retire_login,
    suspend_login,
)
from vauban.engines.postgres.probe import ServerAddress, check_login
from vauban.engines.postgres.scram import new_password, verifier
from vauban.handlers import cluster as cluster_handler
from vauban.handlers.backups import purge, restore, schedules
from vauban.handlers.context import Context, ObjectKey
from vauban.handlers.envelope import Envelope
from vauban.handlers.publish import (
    awaiting_finalizer,
    parse_spec,
    post_event,
    publish,
    refresh,
)
from vauban.reconcile import compliance
from vauban.reconcile.cluster import ProbeOutcome
from vauban.reconcile.database import (
    ABANDON_ANNOTATION,
    ClusterView,
    Holder,
    assess,
    cluster_key,
    cluster_key_of,
    connection_limit,
    ownership,
    plan_credentials,
    resync_due,
    timers_due,
    usage_moved,
)
from vauban.reconcile.records import DatabaseRecord
from vauban.reconcile.status import previous_conditions
from vauban.reconcile.tenancy import needs_namespace_labels

logger = logging.getLogger(__name__)

ROTATE_ANNOTATION = "vauban.dev/rotate-credentials"


_KEPT = ("cluster", "credentials", "extensions", "sizeBytes", "connections", "backup", "restore")

Index = Mapping[tuple[str, str], Iterable[Mapping[str, Any]]]


def _kept(status: Mapping[str, Any]) -> dict[str, Any]:
    """What was provisioned before stays reported: a failed step loses no information."""
    return {k: status[k] for k in _KEPT if k in status}


def _provisioned(body: Mapping[str, Any]) -> bool:
    """Whether status says the database was provisioned: for what is displayed and for
    placement's leniency only; what was created is the server's record's to say."""
    return bool(((body.get("status") or {}).get("credentials") or {}).get("username"))


async def reconcile(
    ctx: Context,
    body: Mapping[str, Any],
    clusters: Mapping[tuple[str, str], Iterable[ClusterView]],
    backups: Index,
    *,
    only_if_due: bool = False,
) -> None:
    """`backups`: the ManagedBackups of each database. `only_if_due`: for the periodic
    re-check, whose copy of the object may predate a reconcile that made it not due any
    more."""
    # Read fresh under the lock: a reconcile that waited must see what the previous one
    # wrote (a rotation done twice would cut the grace period of the first).
    await _envelope(ctx).run(
        ctx,
        body,
        lambda fresh: _reconcile(ctx, fresh, clusters, backups),
        still_wanted=(lambda fresh: due(ctx, fresh)) if only_if_due else None,
    )


def _envelope(ctx: Context) -> Envelope:
    """A bounded number of databases of one cluster reconcile at a time: a burst of a
    thousand would otherwise exhaust its server's max_connections ("too many clients"), and
    hold a thousand bodies in memory while they wait. A waiting reconcile holds nothing: the
    object is read when its turn comes."""

    def server_slot(body: Mapping[str, Any]) -> AbstractAsyncContextManager[object]:
        server = cluster_key_of(body)
        return ctx.server_slots[server] if server else contextlib.nullcontext()

    return Envelope(
        MANAGED_DATABASE, kept=_kept, around=lambda _: ctx.memory.busy(), within=server_slot
    )


async def _reconcile(
    ctx: Context,
    body: Mapping[str, Any],
    clusters: Mapping[tuple[str, str], Iterable[ClusterView]],
    backups: Index,
) -> None:
    spec = await parse_spec(ctx, MANAGED_DATABASE, ManagedDatabaseSpec, body)
    if spec is None:
        return
    namespace = body["metadata"]["namespace"]
    key = cluster_key(namespace, spec)
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
    verdict = assess(namespace=namespace, spec=spec, cluster=cluster, namespace_labels=labels)
    # What the server's record said last stays displayed while it cannot be read (a cluster
    # not ready): display only, every decision reads the record itself.
    fields: dict[str, Any] = {**_kept(body.get("status") or {}), "cluster": "/".join(key)}
    domain: list[DomainCondition] = []
    if cluster is not None and cluster.spec is not None:
        placement = compliance.placement(cluster.spec.compliance.profile, spec.data_classification)
        domain.append(placement)
        # A database already provisioned keeps serving: the condition says what is wrong.
        if placement.status == "False" and not _provisioned(body):
            verdict = Verdict(State.STALLED, placement.reason, placement.message)
    if verdict.state is State.PROGRESSING and cluster is not None and cluster.spec is not None:
        limit = connection_limit(spec, cluster.spec)
        if isinstance(limit, Verdict):
            verdict = limit
        elif awaiting_finalizer(body) is not None:
            # Nothing is written either: kopf's finalizer is a write that is about to bring
            # the next event, and the status of that reconcile says all there is to say.
            return
        else:
            verdict, provisioned, backup_conditions = await _provision(
                ctx, body, spec, cluster, cluster.spec, limit, backups
            )
            fields.update(provisioned)
            domain += backup_conditions
    elif verdict.reason is Reason.NAMESPACE_NOT_ALLOWED and cluster and cluster.spec:
        previous = _previous_ready(body)
        if previous is None or previous.reason != verdict.reason or _resync_due(ctx, body):
            verdict = await _suspend(ctx, body, spec, cluster, cluster.spec, verdict)
        else:
            # Between two looks at the server, what the last one found stays said.
            verdict = Verdict(verdict.state, verdict.reason, previous.message)
    await publish(ctx, MANAGED_DATABASE, body, verdict, fields=fields, domain=domain)
    if (
        cluster is not None
        and cluster.ready
        and verdict.reason in (Reason.UNREACHABLE, Reason.CLUSTER_NOT_READY)
    ):
        await _tell_cluster(ctx, cluster)
    key_of_me = _key(body)
    ctx.reconciled[key_of_me] = time.monotonic()
    # Only failures that cost a connection back off; waiting on Kubernetes objects is cheap
    # and must notice a fix (a namespace labelled) within one re-check interval.
    if verdict.reason in (Reason.UNREACHABLE, Reason.PROVISIONING_FAILED):
        ctx.backoff.failed(key_of_me)
    else:
        ctx.backoff.succeeded(key_of_me)


CLUSTER_TOLD_INTERVAL_SECONDS = 5.0
"""A fleet of databases finding their server gone tells their cluster once, not each."""


async def _tell_cluster(ctx: Context, cluster: ClusterView) -> None:
    """A database found the server unreachable, or the cluster's admin Secret gone, while the
    cluster still says Ready: the cluster is reconciled now (its probe would only come at
    the next probe interval), so its status and metrics say it at once, and the event of its
    change reconciles its databases."""
    key = (MANAGED_CLUSTER.kind, cluster.namespace, cluster.name)
    now = time.monotonic()
    if now - ctx.clusters_told.get(key, 0.0) < CLUSTER_TOLD_INTERVAL_SECONDS:
        return
    ctx.clusters_told[key] = now
    body = await ctx.kube.read(MANAGED_CLUSTER, cluster.namespace, cluster.name)
    if body is not None and not body["metadata"].get("deletionTimestamp"):
        await cluster_handler.reconcile(ctx, body)


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
    if timers_due(status, body.get("spec") or {}, timefmt.now()):
        return True
    return resync_due(
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
        # The databases keep their last figures; the cluster says the server does not answer.
        logger.info("usage of the databases of %s not read: %s", cluster.ref, type(e).__name__)
        await _tell_cluster(ctx, cluster)
        return
    for body, db, login in watched:
        measured = found.databases.get(db)
        if measured is None or login not in found.logins:
            ctx.reconciled.pop(_key(body), None)
            continue
        fields = {"sizeBytes": measured.size_bytes, "connections": measured.connections}
        status = body.get("status") or {}
        ctx.metrics.observe(MANAGED_DATABASE.kind, *_key(body)[1:], {**status, **fields})
        if usage_moved(status, fields):
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


_TRANSIENT_SQLSTATES = ("08", "53", "57P01", "57P02", "57P03", "40001", "40P01")
"""Connection lost, resources exhausted, server shutting down or starting, a serialization
failure or deadlock: the server's state, not the spec's; the next attempt may pass."""


def _database_error(error: psycopg.Error) -> Verdict:
    sqlstate = error.sqlstate
    if sqlstate is None or sqlstate.startswith(_TRANSIENT_SQLSTATES):
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


def _conflict(message: str) -> Verdict:
    return Verdict(
        State.STALLED,
        Reason.NAME_CONFLICT,
        f"The {message}: Vauban does not take over what it did not create for this "
        "ManagedDatabase. Choose other names; nothing was changed.",
    )


async def _claim(
    server: pg.Server, body: Mapping[str, Any], spec: ManagedDatabaseSpec
) -> DatabaseRecord | Verdict:
    """This ManagedDatabase's record on the server, claimed now if it has none: its names
    are recorded before anything is created with them."""
    meta = body["metadata"]
    uid, namespace = str(meta["uid"]), str(meta["namespace"])
    conn = server.connection
    record = await registry.record_of(conn, uid)
    holder, catalog = None, None
    if record is None:
        found = await registry.holder_of(conn, spec.database_name, spec.owner)
        holder = None if found is None else Holder(*found)
        catalog = await server.catalog(spec.database_name, [spec.owner])
    conflict = ownership(
        namespace=namespace,
        database=spec.database_name,
        owner=spec.owner,
        record=record,
        holder=holder,
        database_exists=catalog is not None and catalog.database_owner is not None,
        owner_exists=catalog is not None and spec.owner in catalog.roles,
    )
    if conflict is not None:
        return _conflict(conflict)
    if record is not None:
        return record
    record = DatabaseRecord(uid, namespace, meta["name"], spec.database_name, spec.owner)
    try:
        await registry.claim(conn, record)
    except registry.NamesTaken:
        return _conflict(
            f"database {spec.database_name} or role {spec.owner} was just claimed by another "
            "ManagedDatabase"
        )
    return record


async def _extensions(
    connection: Connection,
    login: str,
    password: str,
    spec: ManagedDatabaseSpec,
    record: DatabaseRecord,
) -> list[sql.Composed] | Verdict:
    """Create and drop extensions in a session of the tenant's own login: whatever the tenant
    planted in its database runs with its privileges, never the admin's. The statements run,
    or a Verdict when the server refused that login."""
    try:
        async with pg.tenant_session(
            connection.admin.address, login, password, spec.database_name
        ) as tenant:
            present = await tenant.extensions()
            statements = extensions_plan(frozenset(spec.extensions), record.extensions, present)
            await tenant.run(statements)
    except psycopg.OperationalError as e:
        if e.sqlstate is not None:
            raise
        return Verdict(
            State.STALLED,
            Reason.AUTHENTICATION_FAILED,
            f"Vauban manages extensions with the tenant's own login, and the server refused the "
            f"login of Secret {secret_name(record.name)}: {' '.join(str(e).split())[:300]}. If "
            f"its password was changed by hand, rotate the credentials (annotation "
            f"{ROTATE_ANNOTATION}).",
        )
    return statements


async def _provision(
    ctx: Context,
    body: Mapping[str, Any],
    spec: ManagedDatabaseSpec,
    cluster: ClusterView,
    cluster_spec: ManagedClusterSpec,
    connection_limit: int,
    backups: Index,
) -> tuple[Verdict, dict[str, Any], list[DomainCondition]]:
    meta = body["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], str(meta["uid"])
    status = body.get("status") or {}
    connection = await _connection(ctx, cluster, cluster_spec, spec.database_name)
    if isinstance(connection, Verdict):
        return connection, {}, []
    now = timefmt.now()
    try:
        # One admin session for the whole plan: connecting (TLS, SCRAM) costs more than it.
        async with pg.session(connection.admin) as server:
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
            record = await _claim(server, body, spec)
            if isinstance(record, Verdict):
                return record, {}, []
            secret = None if found is None else found[0]
            token = (meta.get("annotations") or {}).get(ROTATE_ANNOTATION)
            steps = plan_credentials(
                owner=spec.owner,
                secret_username=(secret or {}).get("username")
                if secret and "password" in secret
                else None,
                logins=record.logins,
                rotate_token=token,
                acted_token=record.rotation_token,
                last_rotation=record.last_rotation,
                rotation_period=spec.credentials.rotation_period,
                grace_period=spec.credentials.grace_period,
                now=now,
            )
            recorded = [login.role for login in record.logins]
            catalog = await server.catalog(spec.database_name, [spec.owner, *recorded, steps.login])
            if steps.new_login:
                if steps.login in catalog.roles:  # another application's, by chance
                    return _conflict(f"role {steps.login} already exists on the server"), {}, []
                await registry.add_login(server.connection, uid, steps.login, steps.generation)
            password = new_password() if steps.new_login else (secret or {})["password"]
            desired = Desired(
                database=spec.database_name,
                owner=spec.owner,
                # PBKDF2 is a reconcile's costliest step: only for a login to create.
                # (A recorded login dropped by hand is recreated with the Secret's password.)
                login=Login(
                    steps.login, "" if steps.login in catalog.roles else verifier(password)
                ),
                connection_limit=connection_limit,
                retire=frozenset(steps.retire_now),
            )
            sql_plan = plan(desired, catalog)
            await server.run(sql_plan.server)
            await server.run(sql_plan.retire)
            await registry.forget_logins(server.connection, uid, steps.retire_now)
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
            await registry.published(server.connection, uid, steps.login, steps.retiring)
            if steps.rotated:
                await registry.rotated(server.connection, uid, token, now)
            wanted = frozenset(spec.extensions)
            if wanted or record.extensions:
                ran = await _extensions(connection, steps.login, password, spec, record)
                if isinstance(ran, Verdict):
                    return ran, _kept(status), []
                sql_plan.database.extend(ran)
                if record.extensions != wanted:
                    await registry.set_extensions(server.connection, uid, wanted)
            usage = (await server.usage([spec.database_name])).databases.get(spec.database_name)
    except psycopg.Error as e:
        return _database_error(e), _kept(status), []
    except registry.RegistryUnusable as e:
        return (
            Verdict(State.STALLED, Reason.REGISTRY_UNAVAILABLE, f"Vauban's registry: {e}"),
            _kept(status),
            [],
        )

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
    recreated = (
        steps.rotated
        and (secret is None or "password" not in secret)
        and any(login.published for login in record.logins)
    )
    if recreated:
        await post_event(
            ctx,
            MANAGED_DATABASE,
            body,
            "Warning",
            "CredentialsRecreated",
            _recreated(name, steps.login, steps.retire_after),
        )
    elif steps.rotated and secret is not None:
        await post_event(
            ctx,
            MANAGED_DATABASE,
            body,
            "Normal",
            "CredentialsRotated",
            f"Secret {secret_name(name)} now holds login {steps.login}; "
            f"previous logins work until the grace period ends.",
        )
    last_rotation = now if steps.rotated else record.last_rotation
    retire_after = steps.retire_after
    fields: dict[str, Any] = {
        "credentials": {
            "secretName": secret_name(name),
            "username": steps.login,
            "lastRotation": timefmt.rfc3339(last_rotation) if last_rotation else None,
            "rotationToken": token if steps.rotated else record.rotation_token,
            "retiring": sorted(steps.retiring),
            "retireAfter": timefmt.rfc3339(retire_after) if retire_after else None,
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
    logins = schedules.Logins(
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
    restoring, fields["restore"] = await restore.advance(
        ctx, body, spec, cluster, cluster_spec, logins.tenant, backups
    )
    if restoring is not None:
        return restoring, fields, []
    outcome = await schedules.for_database(
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
            + (f" {_recreated(name, steps.login, steps.retire_after)}" if recreated else "")
        ),
        fields,
        outcome.conditions if outcome else [],
    )


def _recreated(name: str, login: str, retire_after: datetime | None) -> str:
    until = f" until {timefmt.rfc3339(retire_after)}" if retire_after else ""
    return (
        f"Secret {secret_name(name)} was missing its password and was recreated with a new "
        f"login, {login}: Vauban keeps no copy of a password. The previous login keeps "
        f"working{until} (the grace period), then is revoked: restart applications that read "
        f"the old credentials once."
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
) -> None:
    """Before a ManagedDatabase goes: Retain revokes the tenant's logins and keeps the
    database; Delete drops the database and its roles. Only what the server's record says
    this very object (by UID) owns is touched, whatever its status says: nothing at all for
    an object that never provisioned (a name conflict). While the server cannot be reached
    (admin Secret missing, server down), deletion waits and says so (DeletionBlocked), unless
    the cluster carries ABANDON_ANNOTATION."""
    try:
        spec = ManagedDatabaseSpec.model_validate(body.get("spec", {}))
    except ValueError:
        return
    meta = body["metadata"]
    namespace, uid = meta["namespace"], str(meta["uid"])
    key = cluster_key(namespace, spec)
    cluster = next(iter(clusters.get(key, ())), None)
    if cluster is None or cluster.spec is None:
        # Nothing to reach: the cluster's own deletion waits for its databases, so it is gone
        # only if it never existed (or was forced away).
        await purge.database_deleted(ctx, body, spec, cluster)
        return
    connection = await _connection(ctx, cluster, cluster.spec, spec.database_name)
    try:
        if isinstance(connection, Verdict):
            raise _Unreachable(connection.message)
        async with ctx.server_slots[key], pg.session(connection.admin) as server:
            record = await registry.record_of(server.connection, uid)
    except (psycopg.Error, registry.RegistryUnusable, _Unreachable) as e:
        why = _database_error(e).message if isinstance(e, psycopg.Error) else str(e)
        await _cannot_clean_up(ctx, body, spec, cluster, why)
        await purge.database_deleted(ctx, body, spec, cluster)
        return
    if record is not None and spec.backup is not None and spec.backup.final_backup:
        await purge.final_backup(ctx, body)
    await purge.database_deleted(ctx, body, spec, cluster)
    if record is None or record.retained:
        return
    try:
        async with ctx.server_slots[key], pg.session(connection.admin) as server:
            logins = [login.role for login in record.logins]
            if spec.deletion_policy == "Delete":
                await server.run(drop_database(record.database, [*logins, record.owner]))
                await registry.forget(server.connection, uid)
            else:
                await server.run([s for role in logins for s in retire_login(role)])
                await registry.retain(server.connection, uid)
    except psycopg.Error as e:
        raise kopf.TemporaryError(_database_error(e).message, delay=30) from e
    logger.info(
        "ManagedDatabase %s/%s: %s on deletion",
        namespace,
        meta["name"],
        "dropped" if spec.deletion_policy == "Delete" else "logins revoked, data kept",
    )


class _Unreachable(Exception):
    """The server cannot be asked (its admin Secret is missing): the message says why."""


async def _cannot_clean_up(
    ctx: Context,
    body: Mapping[str, Any],
    spec: ManagedDatabaseSpec,
    cluster: ClusterView,
    why: str,
) -> None:
    """The server cannot be reached to clean up. Waiting is right when this object may hold
    a working login there; it is pointless when no Secret of it was ever written (no one has
    a password of what it may have created), or when the platform admin said to abandon."""
    if cluster.abandon_server_objects or not await _published(ctx, body):
        await post_event(
            ctx,
            MANAGED_DATABASE,
            body,
            "Warning",
            "CleanupSkipped",
            f"{why} Revoke the logins of {spec.owner} (or drop {spec.database_name}) by hand, "
            "and the record of this ManagedDatabase in the server's vauban database.",
        )
        return
    message = (
        f"Deletion waits until the server can be reached to "
        f"{'drop the database' if spec.deletion_policy == 'Delete' else 'revoke the logins'}: "
        f"{why} To give up cleaning up the server, a platform admin annotates ManagedCluster "
        f"{cluster.ref} with {ABANDON_ANNOTATION}=true."
    )
    await publish(
        ctx,
        MANAGED_DATABASE,
        body,
        Verdict(State.WAITING, Reason.DELETION_BLOCKED, message),
        fields=_kept(body.get("status") or {}),
    )
    raise kopf.TemporaryError(message, delay=5)


async def _published(ctx: Context, body: Mapping[str, Any]) -> bool:
    """Whether a credentials Secret of this very object exists (Vauban writes it only once
    the login works)."""
    meta = body["metadata"]
    found = await ctx.kube.read_secret_and_owners(meta["namespace"], secret_name(meta["name"]))
    return found is not None and meta.get("uid") in found[1]


def _previous_ready(body: Mapping[str, Any]) -> Condition | None:
    conditions = previous_conditions(body.get("status"))
    return next((c for c in conditions if c.type == ConditionType.READY), None)


def _resync_due(ctx: Context, body: Mapping[str, Any]) -> bool:
    """Once per resync interval, a refused namespace's logins are looked for again: a status
    forged to say they were suspended costs at most that long, not the suspension."""
    elapsed = time.monotonic() - ctx.suspensions_checked.get(_key(body), 0.0)
    return elapsed >= ctx.settings.resync_interval_seconds


async def _suspend(
    ctx: Context,
    body: Mapping[str, Any],
    spec: ManagedDatabaseSpec,
    cluster: ClusterView,
    cluster_spec: ManagedClusterSpec,
    refused: Verdict,
) -> Verdict:
    """A namespace the cluster no longer admits keeps no way in: the logins its database
    holds are suspended at once (data kept; admitting the namespace again restores them)."""
    ctx.suspensions_checked[_key(body)] = time.monotonic()
    connection = await _connection(ctx, cluster, cluster_spec, spec.database_name)
    if isinstance(connection, Verdict):
        return refused
    try:
        async with (
            ctx.server_slots[(cluster.namespace, cluster.name)],
            pg.session(connection.admin) as server,
        ):
            record = await registry.record_of(server.connection, str(body["metadata"]["uid"]))
            if record is None or not record.logins:
                return refused
            roles = [login.role for login in record.logins]
            catalog = await server.catalog(record.database, roles)
            active = [r for r in roles if r in catalog.roles and catalog.roles[r].can_login]
            await server.run([s for role in active for s in suspend_login(role)])
    except (psycopg.Error, registry.RegistryUnusable) as e:
        logger.info("logins of %s not suspended yet: %s", _key(body), type(e).__name__)
        return refused
    if active:
        await post_event(
            ctx,
            MANAGED_DATABASE,
            body,
            "Warning",
            "LoginsSuspended",
            f"Logins {', '.join(active)} may no longer log in: the namespace is not admitted "
            f"by ManagedCluster {cluster.ref} any more. The data is kept.",
        )
    return Verdict(
        refused.state,
        refused.reason,
        refused.message.replace("Nothing was created.", "")
        + " Its logins are suspended and its data kept; admitting the namespace again "
        "restores them.",
    )
