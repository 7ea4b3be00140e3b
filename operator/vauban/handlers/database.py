"""ManagedDatabase handlers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from vauban.api.database import MANAGED_DATABASE, ManagedDatabaseSpec
from vauban.handlers.context import Context
from vauban.handlers.publish import parse_spec, publish
from vauban.reconcile import database as database_logic
from vauban.reconcile.database import ClusterView
from vauban.reconcile.tenancy import needs_namespace_labels


async def reconcile(
    ctx: Context, body: Mapping[str, Any], clusters: Mapping[tuple[str, str], Iterable[ClusterView]]
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
    await publish(ctx, MANAGED_DATABASE, body, verdict, fields={"cluster": "/".join(key)})
