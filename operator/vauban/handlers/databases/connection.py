"""How the operator reaches a database's server as admin, what a failure to reach it or a
refusal by PostgreSQL means for the database, and the cluster told when its server seems
gone."""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg

from vauban.api.cluster import MANAGED_CLUSTER, ManagedClusterSpec
from vauban.builders import cnpg
from vauban.builders.credentials import Endpoint
from vauban.conditions import Reason, State, Verdict
from vauban.engines.postgres import catalog as pg
from vauban.engines.postgres.probe import ServerAddress
from vauban.handlers import cluster as cluster_handler
from vauban.handlers.context import NEVER, Context
from vauban.reconcile.database import ClusterView


@dataclass(frozen=True)
class Connection:
    admin: pg.AdminCredentials
    endpoint: Endpoint


async def connect(
    ctx: Context, cluster: ClusterView, spec: ManagedClusterSpec, database: str
) -> Connection | Verdict:
    """How the operator reaches the cluster as admin, and how tenants reach the database.
    The admin and CA Secrets are read at every reconcile, never remembered: a database's
    reconcile is how its cluster learns at once that the platform deleted its admin Secret
    (tell_cluster), and what removes or suspends must stop when it is gone."""
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
        Endpoint(
            address.host,
            address.port,
            database,
            address.ssl_mode,
            address.ca_pem,
            # An external host is what its spec says; a Service's name has a cluster domain.
            None if spec.external is not None else f"{address.host}.{ctx.settings.cluster_domain}",
        ),
    )


_TRANSIENT_SQLSTATES = ("08", "53", "57P01", "57P02", "57P03", "40001", "40P01")
"""Connection lost, resources exhausted, server shutting down or starting, a serialization
failure or deadlock: the server's state, not the spec's; the next attempt may pass."""


def database_error(error: psycopg.Error) -> Verdict:
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


CLUSTER_TOLD_INTERVAL_SECONDS = 5.0
"""A fleet of databases finding their server gone tells their cluster once, not each."""


async def tell_cluster(ctx: Context, cluster: ClusterView) -> None:
    """A database found the server unreachable, or the cluster's admin Secret gone, while the
    cluster still says Ready: the cluster is reconciled now (its probe would only come at
    the next probe interval), so its status and metrics say it at once, and the event of its
    change reconciles its databases."""
    key = (MANAGED_CLUSTER.kind, cluster.namespace, cluster.name)
    now = time.monotonic()
    if now - ctx.clusters_told.get(key, NEVER) < CLUSTER_TOLD_INTERVAL_SECONDS:
        return
    ctx.clusters_told[key] = now
    body = await ctx.kube.read(MANAGED_CLUSTER, cluster.namespace, cluster.name)
    if body is not None and not body["metadata"].get("deletionTimestamp"):
        await cluster_handler.reconcile(ctx, body)
