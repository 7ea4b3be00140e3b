"""What a ManagedDatabase needs before Vauban can provision it, and the verdict when it can't."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from vauban.api.cluster import ManagedClusterSpec
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

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


def cluster_key(namespace: str, spec: ManagedDatabaseSpec) -> tuple[str, str]:
    """The (namespace, name) of the cluster a database refers to."""
    return (spec.cluster_ref.namespace or namespace, spec.cluster_ref.name)


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
        State.STALLED,
        Reason.NOT_IMPLEMENTED,
        f"ManagedCluster {ref} is ready, but this version of Vauban does not provision "
        "databases yet. Nothing was created.",
    )
