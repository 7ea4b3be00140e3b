"""The namespaces the operator watches, one answer for kopf and for its own Secret watch."""

from __future__ import annotations

from vauban.handlers.wiring import secret_namespaces
from vauban.settings import Settings


def test_a_namespaced_install_also_watches_its_own_namespace_once() -> None:
    settings = Settings(namespace="vauban-system", watch_namespaces=["b", "vauban-system", "a"])

    assert settings.namespaces == ["a", "b", "vauban-system"]
    assert secret_namespaces(settings) == ["a", "b", "vauban-system"]


def test_a_cluster_wide_install_names_no_namespace_and_watches_secrets_everywhere() -> None:
    settings = Settings(namespace="vauban-system")

    assert settings.namespaces == []
    assert secret_namespaces(settings) == [None]
