"""ManagedCluster handlers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from vauban.api.cluster import MANAGED_CLUSTER, ManagedClusterSpec
from vauban.conditions import ConditionType, Verdict, is_true
from vauban.handlers.context import Context
from vauban.handlers.publish import parse_spec, publish
from vauban.reconcile import cluster as cluster_logic
from vauban.reconcile.database import ClusterView
from vauban.reconcile.status import previous_conditions


def view_of(body: Mapping[str, Any]) -> ClusterView:
    """The cached view of a cluster that databases resolve their clusterRef against."""
    meta = body["metadata"]
    try:
        spec: ManagedClusterSpec | None = ManagedClusterSpec.model_validate(body.get("spec", {}))
    except ValidationError:
        spec = None
    ready = is_true(previous_conditions(body.get("status")), ConditionType.READY)
    return ClusterView(namespace=meta["namespace"], name=meta["name"], spec=spec, ready=ready)


async def reconcile(ctx: Context, body: Mapping[str, Any]) -> None:
    spec = await parse_spec(ctx, MANAGED_CLUSTER, ManagedClusterSpec, body)
    if spec is None:
        return
    verdict = await _assess(ctx, body["metadata"]["namespace"], spec)
    await publish(ctx, MANAGED_CLUSTER, body, verdict)


async def _assess(ctx: Context, namespace: str, spec: ManagedClusterSpec) -> Verdict:
    if spec.mode == "Managed":
        observed = cluster_logic.ClusterObservation(
            engine_installed=await ctx.kube.crd_exists(cluster_logic.CNPG_CRD),
            admin_secret_keys=None,
        )
    else:
        assert spec.external is not None
        observed = cluster_logic.ClusterObservation(
            engine_installed=False,
            admin_secret_keys=await ctx.kube.secret_keys(
                namespace, spec.external.admin_secret_ref.name
            ),
        )
    return cluster_logic.assess(spec=spec, observed=observed)
