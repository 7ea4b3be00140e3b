"""Provisioning a ManagedDatabase, as vauban.reconcile.provision plans it: the facts are
gathered on one admin session (`_observe`), the plan is decided, then carried out — names
claimed in the server's registry, the login and database created or repaired, logins
retired, the Secret written, the rotation recorded, extensions managed in the tenant's own
session — and the database's restore and backups follow."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from vauban import timefmt
from vauban.api.cluster import ManagedClusterSpec
from vauban.api.common import human_size
from vauban.api.database import MANAGED_DATABASE, ManagedDatabaseSpec, ManagedDatabaseStatus
from vauban.builders.backup import AgentLogin
from vauban.builders.credentials import Endpoint, secret_name
from vauban.conditions import DomainCondition, Reason, State, Verdict
from vauban.engines.postgres import catalog as pg
from vauban.engines.postgres import registry
from vauban.engines.postgres.plan import Catalog, Desired, Login, Plan, extensions_plan, plan
from vauban.engines.postgres.scram import new_password
from vauban.handlers.backups import restore, schedules
from vauban.handlers.context import Context
from vauban.handlers.databases import stored
from vauban.handlers.databases.connection import Connection, connect, database_error
from vauban.handlers.ports import AdminSession
from vauban.handlers.publish import post_event
from vauban.reconcile import provision as decision
from vauban.reconcile.cluster import ProbeOutcome
from vauban.reconcile.database import ROTATE_ANNOTATION, ClusterView, Holder, usage_to_write

Index = Mapping[tuple[str, str], Iterable[Mapping[str, Any]]]
"""The ManagedBackups of each database, by (namespace, name)."""


async def provision(
    ctx: Context,
    body: Mapping[str, Any],
    spec: ManagedDatabaseSpec,
    cluster: ClusterView,
    cluster_spec: ManagedClusterSpec,
    connection_limit: int,
    backups: Index,
) -> tuple[Verdict, ManagedDatabaseStatus, list[DomainCondition]]:
    """The verdict, the status observed (nothing on a failure: what status showed stays,
    the caller keeps it) and the backup conditions."""
    nothing = ManagedDatabaseStatus()
    connection = await connect(ctx, cluster, cluster_spec, spec.database_name)
    if isinstance(connection, Verdict):
        return connection, nothing, []
    try:
        done = await _on_server(ctx, connection, body, spec, cluster, connection_limit)
    except psycopg.Error as e:
        return database_error(e), nothing, []
    except registry.RegistryUnusable as e:
        verdict = Verdict(State.STALLED, Reason.REGISTRY_UNAVAILABLE, f"Vauban's registry: {e}")
        return verdict, nothing, []
    if isinstance(done, Verdict):
        return done, nothing, []
    steps, applied, usage = done
    # A change to a provisioned database is an Event of its own; a first provisioning is
    # told by the Event of the transition to Ready (one write per object less at scale).
    if applied and steps.announce:
        summary = "Applied: " + "; ".join(applied.summary())[:900]
        await post_event(ctx, MANAGED_DATABASE, body, "Normal", "Provisioned", summary)
    for event in steps.events:
        await post_event(ctx, MANAGED_DATABASE, body, event.type, event.reason, event.message)
    credentials = steps.status.credentials
    if cluster_spec.external is not None and credentials is not None:
        accepted = await _login_accepted(
            ctx, body, connection, steps.server.login, steps.password, spec.database_name
        )
        if accepted is not None:
            credentials = credentials.model_copy(update={"accepted": accepted})
    logins = _agent_logins(connection, steps.server.login, steps.password, spec.database_name)
    restoring, restored = await restore.advance(
        ctx, body, spec, cluster, cluster_spec, logins.tenant, backups
    )
    measured = ManagedDatabaseStatus(
        size_bytes=usage.size_bytes if usage else None,
        size=human_size(usage.size_bytes) if usage else None,
        connections=usage.connections if usage else None,
    )
    status = steps.status.merged(
        usage_to_write(stored.status(body), measured).merged(
            ManagedDatabaseStatus(credentials=credentials, restore=restored)
        )
    )
    if restoring is not None:
        return restoring, status, []
    mine = list(backups.get((body["metadata"]["namespace"], body["metadata"]["name"]), ()))
    outcome = await schedules.for_database(ctx, body, spec, cluster, cluster_spec, logins, mine)
    status = status.merged(ManagedDatabaseStatus(backup=outcome.status if outcome else None))
    return steps.ready, status, outcome.conditions if outcome else []


async def _on_server(
    ctx: Context,
    connection: Connection,
    body: Mapping[str, Any],
    spec: ManagedDatabaseSpec,
    cluster: ClusterView,
    connection_limit: int,
) -> tuple[decision.Provision, Plan, pg.DatabaseUsage | None] | Verdict:
    """Observe, decide and act on one admin session (connecting, with TLS and SCRAM, costs
    more than the whole plan): the plan carried out, the SQL that ran and the database's
    usage; or the verdict that stopped it."""
    meta = body["metadata"]
    now = timefmt.now()
    async with ctx.servers.admin(connection.admin) as server:
        found = await ctx.kube.read_secret_and_owners(meta["namespace"], secret_name(meta["name"]))
        secret = (
            None if found is None else decision.SecretFound(meta.get("uid") in found[1], found[0])
        )
        refused = decision.foreign_secret(meta["name"], secret)
        if refused is not None:
            return refused.verdict  # before the registry is asked anything
        view, catalog = await _observe(
            server, body, spec, cluster, connection_limit, connection.endpoint, now, secret
        )
        decided = decision.plan_provision(view)
        if decided.claim is not None:
            try:
                await server.claim(decided.claim)
            except registry.NamesTaken:
                return decision.claim_lost(spec)
        if isinstance(decided, decision.Refused):
            return decided.verdict
        applied = await _carry_out(ctx, server, connection, view, decided, catalog)
        if isinstance(applied, Verdict):
            return applied
        usage = (await server.usage([spec.database_name])).databases.get(spec.database_name)
    return decided, applied, usage


async def _observe(
    server: AdminSession,
    body: Mapping[str, Any],
    spec: ManagedDatabaseSpec,
    cluster: ClusterView,
    connection_limit: int,
    endpoint: Endpoint,
    now: datetime,
    secret: decision.SecretFound | None,
) -> tuple[decision.ProvisionView, Catalog]:
    """Every fact the plan is decided from, read once; and the catalog, from which
    engines.postgres.plan computes the SQL."""
    meta = body["metadata"]
    uid = str(meta["uid"])
    record = await server.record_of(uid)
    held = None
    if record is None:
        held = await server.holder_of(spec.database_name, spec.owner)
    catalog = await server.catalog(spec.database_name, decision.roles_to_read(spec.owner, record))
    view = decision.ProvisionView(
        namespace=meta["namespace"],
        name=meta["name"],
        uid=uid,
        spec=spec,
        cluster_ref=cluster.ref,
        connection_limit=connection_limit,
        endpoint=endpoint,
        secret=secret,
        record=record,
        holder=None if held is None else Holder(*held),
        roles=frozenset(catalog.roles),
        database_exists=catalog.database_owner is not None,
        rotate_token=(meta.get("annotations") or {}).get(ROTATE_ANNOTATION),
        now=now,
        provisioned=stored.provisioned(body),
        new_password=new_password(),
    )
    return view, catalog


async def _carry_out(
    ctx: Context,
    server: AdminSession,
    connection: Connection,
    view: decision.ProvisionView,
    steps: decision.Provision,
    catalog: Catalog,
) -> Plan | Verdict:
    """The plan's steps, once its names are claimed: the SQL that ran, or why it stopped."""
    credentials, state = steps.credentials, steps.server
    if credentials.new_login:
        await server.add_login(view.uid, credentials.login, credentials.generation)
    password_verifier = (
        await server.password_verifier(state.login, steps.password) if state.create_login else ""
    )
    desired = Desired(
        database=state.database,
        owner=state.owner,
        login=Login(state.login, password_verifier),
        connection_limit=state.connection_limit,
        retire=state.retire,
    )
    sql_plan = plan(desired, catalog)
    await server.run(sql_plan.server)
    await server.run(sql_plan.retire)
    await server.forget_logins(view.uid, credentials.retire_now)
    # The login role exists before the Secret names it: an application never reads
    # credentials the server does not accept yet.
    if steps.secret is not None:
        await ctx.kube.apply_secret(steps.secret)
    await server.published(view.uid, credentials.login, credentials.retiring, steps.rotation)
    if steps.extensions is not None:
        ran = await _extensions(ctx, connection, view, steps)
        if isinstance(ran, Verdict):
            return ran
        sql_plan.database.extend(ran)
        if steps.extensions.changed:
            await server.set_extensions(view.uid, steps.extensions.wanted)
    return sql_plan


async def _extensions(
    ctx: Context, connection: Connection, view: decision.ProvisionView, steps: decision.Provision
) -> list[sql.Composed] | Verdict:
    """Create and drop extensions in a session of the tenant's own login: whatever the tenant
    planted in its database runs with its privileges, never the admin's. The statements run,
    or a Verdict when the server refused that login."""
    assert steps.extensions is not None
    wanted, managed = steps.extensions.wanted, steps.extensions.managed
    try:
        async with ctx.servers.tenant(
            connection.admin.address, steps.server.login, steps.password, steps.server.database
        ) as tenant:
            present = await tenant.extensions()
            statements = extensions_plan(wanted, managed, present)
            await tenant.run(statements)
    except psycopg.OperationalError as e:
        if e.sqlstate is not None:
            raise
        return Verdict(
            State.STALLED,
            Reason.AUTHENTICATION_FAILED,
            f"Vauban manages extensions with the tenant's own login, and the server refused the "
            f"login of Secret {secret_name(view.name)}: {' '.join(str(e).split())[:300]}. If "
            f"its password was changed by hand, rotate the credentials (annotation "
            f"{ROTATE_ANNOTATION}).",
        )
    return statements


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
    outcome = await ctx.servers.check_login(connection.admin.address, username, password, dbname)
    if outcome.outcome is ProbeOutcome.UNREACHABLE:
        return None
    accepted = outcome.outcome is ProbeOutcome.OK
    shown = stored.status(body).credentials
    before = shown.accepted if shown else None
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


def _agent_logins(
    connection: Connection, login: str, password: str, database: str
) -> schedules.Logins:
    """The backup agent's logins: the tenant's, for dumps and restores into its database;
    the admin's, for restore tests into scratch databases."""
    endpoint = connection.endpoint
    return schedules.Logins(
        tenant=AgentLogin(
            endpoint.host,
            endpoint.port,
            login,
            password,
            database,
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
