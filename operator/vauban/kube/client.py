"""Connection to the apiserver for the operator's own reads and writes."""

from __future__ import annotations

import asyncio.sslproto
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from kubernetes.aio import client, config

from vauban import __version__

USER_AGENT = f"vauban/{__version__}"
TLS_READ_BUFFER = 64 * 1024


def limit_tls_read_buffers() -> None:
    """asyncio gives each TLS connection a read buffer of 256 KiB, written when it is made,
    so resident: the operator holds some twenty-five to the apiserver (kopf's watches, its
    own watch, its pool), 6 MiB for reads that 64 KiB takes in four steps instead of one.
    For the whole process: asyncio offers no knob per connection."""
    asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


async def connect(kubeconfig: Path | None, *, streams: int = 0) -> client.ApiClient:
    """An API client from `kubeconfig`, else in-cluster credentials, else ~/.kube/config,
    with a connection for each of the `streams` (watches) it will hold open besides."""
    configuration = client.Configuration()
    if kubeconfig is not None:
        await config.load_kube_config(
            config_file=str(kubeconfig), client_configuration=configuration, persist_config=False
        )
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            await config.load_kube_config(client_configuration=configuration, persist_config=False)
    # Each TLS connection holds a read buffer (limit_tls_read_buffers): at the client's
    # default of 100, a burst costs MiBs for no more throughput than the apiserver gives 16.
    configuration.connection_pool_maxsize = 16 + streams
    # aiohttp's trust_env looks up the proxy environment and ~/.netrc in a thread at every
    # request: a tenth of the operator's CPU in a burst. The proxy to the apiserver, if the
    # environment names one, is decided once here; netrc holds no credential it takes.
    configuration.proxy = configuration.proxy or proxy_for(configuration.host)
    configuration.client_session_kwargs = {"trust_env": False}
    api = client.ApiClient(configuration)
    api.user_agent = USER_AGENT
    return api


def proxy_for(url: str) -> str | None:
    """The proxy the environment (HTTPS_PROXY, HTTP_PROXY, NO_PROXY) names for `url`."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies_environment().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy


@dataclass(frozen=True)
class Credentials:
    """How the operator's client reaches the apiserver, for kopf's watchers to use the same."""

    server: str
    ca_path: str | None
    insecure: bool
    scheme: str | None
    token: str | None
    certificate_path: str | None
    private_key_path: str | None


async def credentials_of(api: client.ApiClient) -> Credentials:
    configuration = api.configuration
    # A token-refreshing auth provider refreshes here, hence the await.
    header = await configuration.get_api_key_with_prefix(
        "BearerToken"
    ) or await configuration.get_api_key_with_prefix("authorization")
    scheme, _, token = (header or "").partition(" ")
    return Credentials(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        scheme=scheme if token else None,
        token=token or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )
