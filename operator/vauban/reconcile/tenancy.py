"""Which namespaces may place databases on a cluster."""

from __future__ import annotations

from collections.abc import Mapping

from vauban.api.cluster import AllowedNamespaces, LabelSelector, LabelSelectorRequirement


def matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """Label-selector semantics of metav1.LabelSelector: every requirement must hold; an empty
    selector matches everything."""
    if any(labels.get(key) != value for key, value in selector.match_labels.items()):
        return False
    return all(_requirement_holds(r, labels) for r in selector.match_expressions)


def _requirement_holds(requirement: LabelSelectorRequirement, labels: Mapping[str, str]) -> bool:
    present = requirement.key in labels
    match requirement.operator:
        case "In":
            return present and labels[requirement.key] in requirement.values
        case "NotIn":
            return not present or labels[requirement.key] not in requirement.values
        case "Exists":
            return present
        case "DoesNotExist":
            return not present


def namespace_allowed(
    *,
    cluster_namespace: str,
    allowed: AllowedNamespaces | None,
    namespace: str,
    namespace_labels: Mapping[str, str],
) -> bool:
    """The cluster's own namespace always may; others only when named or selected."""
    if namespace == cluster_namespace:
        return True
    if allowed is None:
        return False
    if namespace in allowed.names:
        return True
    return allowed.selector is not None and matches(allowed.selector, namespace_labels)


def needs_namespace_labels(
    *, cluster_namespace: str, allowed: AllowedNamespaces | None, namespace: str
) -> bool:
    """Whether `namespace_allowed` would look at the namespace's labels: only then are they
    worth a read."""
    return (
        namespace != cluster_namespace
        and allowed is not None
        and namespace not in allowed.names
        and allowed.selector is not None
    )
