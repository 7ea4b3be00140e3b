"""The operator's API client decides its proxy once, from the environment, as aiohttp's
trust_env would at every request; its TLS connections read into 64 KiB, not 256."""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import ssl

import pytest

from vauban.kube.client import TLS_READ_BUFFER, limit_tls_read_buffers, proxy_for

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


def test_tls_connections_read_into_a_smaller_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncio's own attribute, read where each connection's buffer is made: a Python that
    renamed it would make the setting a silent no-op, which this catches."""
    sslproto = asyncio.sslproto.SSLProtocol
    monkeypatch.setattr(sslproto, "max_size", sslproto.max_size)  # put back afterwards
    limit_tls_read_buffers()

    async def buffer_size() -> int:
        loop = asyncio.get_running_loop()
        made = sslproto(
            loop, asyncio.Protocol(), ssl.create_default_context(), loop.create_future()
        )
        return len(made._ssl_buffer)  # type: ignore[attr-defined]  # what asyncio allocates

    assert asyncio.run(buffer_size()) == TLS_READ_BUFFER < 256 * 1024
