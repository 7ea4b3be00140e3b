"""Provisioning a ManagedDatabase on its server: names claimed in the server's registry,
the login and database created or repaired, credentials rotated and retired, the Secret
written, extensions managed in the tenant's own session, then restores and backups."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from vauban import timefmt
from vauban.api.cluster import ManagedClusterSpec
from vauban.api.database import MANAGED_DATABASE, ManagedDatabaseSpec
from vauban.builders.backup import AgentLogin
from vauban.builders.credentials import credentials_secret, secret_name
from vauban.conditions import DomainCondition, Reason, State, Verdict
from vauban.engines.postgres import catalog as pg
from vauban.engines.postgres import registry
from vauban.engines.postgres.plan import Desired, Login, extensions_plan, plan
from vauban.engines.postgres.probe import check_login
from vauban.engines.postgres.scram import new_password, verifier
from vauban.handlers.backups import restore, schedules
from vauban.handlers.context import Context
from vauban.handlers.databases.connection import Connection, connect, database_error
from vauban.handlers.databases.stored import kept as _kept
from vauban.handlers.databases.stored import provisioned as _provisioned
from vauban.handlers.publish import post_event
from vauban.reconcile.cluster import ProbeOutcome
from vauban.reconcile.database import (
    ROTATE_ANNOTATION,
    ClusterView,
    Holder,
    ownership,
    plan_credentials,
)
from vauban.reconcile.records import DatabaseRecord

Index = Mapping[tuple[str, str], Iterable[Mapping[str, Any]]]
"""The ManagedBackups of each database, by (namespace, name)."""


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


async def provision(
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
    connection = await connect(ctx, cluster, cluster_spec, spec.database_name)
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
        return database_error(e), _kept(status), []
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
