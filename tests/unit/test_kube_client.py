"""The operator's API client decides its proxy once, from the environment, as aiohttp's
trust_env would at every request."""

from __future__ import annotations

import pytest

from vauban.kube.client import proxy_for

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_no_proxy_in_the_environment_is_no_proxy() -> None:
    assert proxy_for("https://10.96.0.1:443") is None


def test_the_scheme_s_proxy_is_used_unless_the_host_is_excluded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "10.96.0.1,.cluster.local")
    assert proxy_for("https://api.example:6443") == "http://proxy.example:3128"
    assert proxy_for("https://10.96.0.1:443") is None
    assert proxy_for("https://kubernetes.default.svc.cluster.local") is None
    assert proxy_for("http://api.example:8080") is None  # no HTTP_PROXY
