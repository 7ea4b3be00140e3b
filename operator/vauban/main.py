"""Runs the operator: one API client, one kopf registry, settings chosen on purpose."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import kopf
from aiohttp import web
from kubernetes.aio.client.exceptions import ApiException
from prometheus_client import generate_latest

from vauban.engines.postgres.servers import PostgresServers
from vauban.handlers import wiring
from vauban.handlers.context import Context
from vauban.kms import KeyProvider, KeyProviderError
from vauban.kms.local import SecretKeyProvider
from vauban.kube.client import connect, limit_tls_read_buffers
from vauban.kube.resources import Kube
from vauban.kube.retry import JitteredDelays
from vauban.metrics import Metrics
from vauban.settings import FINALIZER, Settings

logger = logging.getLogger(__name__)


class _NoDiffBase(kopf.DiffBaseStorage):
    """Keeps no last-handled state. Vauban's handlers are level-triggered (on.event) and its
    only change-detecting ones are on.delete, which never read a diff: kopf's annotation
    storage would PATCH a copy of each object's spec onto it (one more write per object, and
    an annotation GitOps tools see) for nothing."""

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def operator_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # Events are Vauban's own, one per state transition; kopf's per-handler events would
    # flood namespaces with "Handler succeeded" on every reconcile.
    settings.posting.enabled = False
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="vauban.dev")
    settings.persistence.diffbase_storage = _NoDiffBase()
    # A watch that hangs silently (a proxy dropping idle streams) must be restarted.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    # kopf's own delays, jittered: every watch and patch failing at an apiserver restart
    # would otherwise retry in step.
    settings.networking.error_backoffs = JitteredDelays((1, 1, 2, 3, 5, 8, 13, 21))
    return settings


def key_providers(settings: Settings) -> dict[str, KeyProvider]:
    """The key providers this operator offers: always kubernetes-secret, kmip when the platform
    configured a key manager, pkcs11 when it configured a PKCS#11 token. A provider configured
    by halves, or whose certificates or module cannot be loaded, stops the start-up with a
    message saying what to fix."""
    providers: dict[str, KeyProvider] = {"kubernetes-secret": SecretKeyProvider()}
    try:
        if settings.kmip_host:
            providers["kmip"] = _kmip(settings, settings.kmip_host)
        if pkcs11 := _pkcs11(settings):
            providers["pkcs11"] = pkcs11
    except KeyProviderError as e:
        raise SystemExit(f"a key provider cannot start: {e}") from None
    return providers


def _kmip(settings: Settings, host: str) -> KeyProvider:
    # Imported only when used: PyKMIP brings SQLAlchemy, some 20 MiB of memory.
    from vauban.kms.kmip import KmipProvider

    if not (settings.kmip_cert_file and settings.kmip_key_file and settings.kmip_ca_file):
        raise SystemExit(
            "VAUBAN_KMIP_HOST is set: VAUBAN_KMIP_CERT_FILE, VAUBAN_KMIP_KEY_FILE and "
            "VAUBAN_KMIP_CA_FILE are needed too"
        )
    return KmipProvider(
        host,
        settings.kmip_port,
        settings.kmip_cert_file,
        settings.kmip_key_file,
        settings.kmip_ca_file,
        server_name=settings.kmip_server_name,
    )


def _pkcs11(settings: Settings) -> KeyProvider | None:
    """The pkcs11 provider when its three settings are set; None when none is."""
    module, label, pin_file = (
        settings.pkcs11_module,
        settings.pkcs11_token_label,
        settings.pkcs11_pin_file,
    )
    given = {
        "VAUBAN_PKCS11_MODULE": module,
        "VAUBAN_PKCS11_TOKEN_LABEL": label,
        "VAUBAN_PKCS11_PIN_FILE": pin_file,
    }
    if not any(given.values()):
        return None
    if not (module and label and pin_file):
        unset = " and ".join(name for name, value in given.items() if not value)
        is_set = ", ".join(name for name, value in given.items() if value)
        raise SystemExit(f"{is_set} set: the pkcs11 key provider needs {unset} too")
    # Imported only when used: it loads python-pkcs11's extension and the vendor's module.
    from vauban.kms.pkcs11 import Pkcs11Provider

    return Pkcs11Provider(module, label, pin_file)


def configure_logging(settings: Settings) -> None:
    kopf.configure(
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL,
        debug=settings.log_level == "DEBUG",
        log_refkey="object" if settings.log_format == "json" else None,
    )
    logging.getLogger().setLevel(settings.log_level)
    # aiohttp and the client log request bodies at DEBUG: bodies can hold Secrets.
    for noisy in ("aiohttp", "kubernetes", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))
    # PyKMIP logs each failed connection at ERROR with its own words; the provider's
    # KeyProviderError says it once, in the object's Encrypted condition.
    logging.getLogger("kmip").setLevel(logging.CRITICAL)
    # kopf says "Handler succeeded" for every event; Vauban logs state transitions itself.
    if settings.log_level != "DEBUG":
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)


class ApiHealth:
    """Whether the Kubernetes API answers: a heartbeat every HEARTBEAT_SECONDS, and kopf's
    failed requests (its watches and patches) counted from its log. /readyz fails while the
    API does not answer, so that a replica cut from the API is seen, not just a process."""

    HEARTBEAT_SECONDS = 5.0

    def __init__(self, kube: Kube, metrics: Metrics) -> None:
        self._kube, self._metrics = kube, metrics
        self.answering = True

    async def beat_forever(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.HEARTBEAT_SECONDS):
                    await self._kube.heartbeat()
                self.answering = True
            except (ApiException, OSError, TimeoutError) as e:
                self.answering = False
                self._metrics.api_errors.labels("heartbeat").inc()
                logger.warning("the Kubernetes API does not answer: %s", type(e).__name__)
            self._metrics.api_up.set(1 if self.answering else 0)
            await asyncio.sleep(self.HEARTBEAT_SECONDS)

    def count_kopf_failures(self) -> logging.Handler:
        metrics = self._metrics

        class _Counter(logging.Handler):
            # kopf logs each failed API request attempt (watch streams included) with
            # the logger of whatever made it, at ERROR, as "Request attempt N failed...".
            def emit(self, record: logging.LogRecord) -> None:
                if record.levelno >= logging.ERROR and str(record.msg).startswith(
                    "Request attempt"
                ):
                    metrics.api_errors.labels("kopf").inc()

        handler = _Counter()
        logging.getLogger("kopf").addHandler(handler)
        return handler


async def serve_metrics(
    metrics: Metrics, ready: asyncio.Event, health: ApiHealth, port: int
) -> web.AppRunner:
    """/metrics for Prometheus, /readyz for the kubelet: ready once kopf has started, and
    while the Kubernetes API answers."""

    async def scrape(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), content_type="text/plain")

    async def readyz(_: web.Request) -> web.Response:
        if not ready.is_set():
            return web.Response(text="starting", status=503)
        if not health.answering:
            return web.Response(text="the Kubernetes API does not answer", status=503)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()  # noqa: S104 - scraped from the pod IP
    return runner


LEASE_NAME = "vauban-leader"


async def run(settings: Settings) -> bool:
    """Run until the process is signalled, or until leadership is lost. Returns whether it
    was lost: the process should then exit and start over as a standby."""
    limit_tls_read_buffers()
    kube = Kube(await connect(settings.kubeconfig, streams=len(wiring.secret_namespaces(settings))))
    metrics = Metrics()
    ready, stop = asyncio.Event(), asyncio.Event()
    health = ApiHealth(kube, metrics)
    kopf_failures = health.count_kopf_failures()
    heartbeat = asyncio.create_task(health.beat_forever(), name="vauban-api-heartbeat")
    runner = (
        await serve_metrics(metrics, ready, health, settings.metrics_port)
        if settings.metrics_port
        else None
    )
    registry = kopf.OperatorRegistry()
    wiring.register(registry, settings)
    election, keeping = None, None
    servers = PostgresServers()
    try:
        if settings.leader_election:
            election = kube.leader_election(
                namespace=settings.namespace,
                name=LEASE_NAME,
                identity=settings.pod_name or f"{socket.gethostname()}-{os.getpid()}",
                duration_seconds=settings.lease_duration_seconds,
            )
            # A standby is ready: it serves metrics and takes over when needed; holding a
            # rolling update on it would deadlock the update.
            ready.set()
            await election.acquire()
            keeping = asyncio.create_task(election.keep(), name="vauban-lease")
            keeping.add_done_callback(lambda _: stop.set())
        await kopf.operator(
            registry=registry,
            settings=operator_settings(),
            memo=kopf.Memo(
                ctx=Context(
                    kube=kube,
                    settings=settings,
                    metrics=metrics,
                    servers=servers,
                    key_providers=key_providers(settings),
                )
            ),
            ready_flag=ready,
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            # Replicas are coordinated by the Lease above, not by kopf's peering (equal peers
            # all run; it also needs kopf's own CRDs).
            standalone=True,
            liveness_endpoint=(
                f"http://0.0.0.0:{settings.liveness_port}/healthz"
                if settings.liveness_port
                else None
            ),
            stop_flag=stop,
        )
    finally:
        heartbeat.cancel()
        logging.getLogger("kopf").removeHandler(kopf_failures)
        lost = keeping is not None and keeping.done() and not keeping.cancelled()
        if keeping is not None and not keeping.done():
            keeping.cancel()
        if election is not None and not lost:
            await election.release()
        if runner is not None:
            await runner.cleanup()
        await servers.close()
        await kube.close()
    return lost
