"""The apiserver as `kubectl vauban` sees it: a person's kubeconfig and context, and the reads
and writes a tenant or an SRE makes by hand, kept beside the operator's own calls so that the
Kubernetes client stays in this package."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from kubernetes.aio import client, config
from kubernetes.aio.client.exceptions import ApiException

from vauban.api.common import GROUP, VERSION, KindInfo
from vauban.api.database import MANAGED_DATABASE
from vauban.kube import rest
from vauban.kube.client import USER_AGENT
from vauban.kube.resources import Kube

PLUGIN_FIELD_MANAGER = "kubectl-vauban"

T = TypeVar("T")


class KubeError(Exception):
    """The apiserver refused a request: its status code and message, for a person to read."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def context_namespace(kubeconfig: Path | None, context: str | None) -> str:
    """The namespace of the kubeconfig's (current or named) context, as kubectl picks it;
    `default` when the context names none or there is no kubeconfig."""
    try:
        contexts, current = config.list_kube_config_contexts(
            str(kubeconfig) if kubeconfig is not None else None
        )
    except (config.ConfigException, OSError):
        return "default"
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else current
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")


async def connect(kubeconfig: Path | None, context: str | None) -> PluginKube:
    """A client from the kubeconfig (flag, $KUBECONFIG or ~/.kube/config) and context, as
    kubectl would use them."""
    configuration = client.Configuration()
    try:
        await config.load_kube_config(
            config_file=str(kubeconfig) if kubeconfig is not None else None,
            context=context,
            client_configuration=configuration,
            persist_config=False,
        )
    except config.ConfigException as e:
        raise KubeError(0, f"kubeconfig: {e}") from None
    api = client.ApiClient(configuration)
    api.user_agent = f"{USER_AGENT} kubectl-vauban"
    return PluginKube(api)


class PluginKube(Kube):
    """Kube, plus the calls a person makes: list a namespace, create and annotate objects,
    read events and the operator's logs."""

    async def guarded(self, call: Awaitable[T]) -> T:
        """`call`, with any refusal of the apiserver (in the operator's calls this class
        inherits too) raised as a KubeError."""
        result: T = await _checked(call)
        return result

    async def databases_visible(self, namespace: str) -> list[dict[str, Any]]:
        """Every ManagedDatabase the caller may list: all namespaces' for an SRE, the given
        namespace's for a tenant who may not list the others."""
        try:
            return await self.list_all(MANAGED_DATABASE)
        except ApiException as e:
            if e.status != 403:
                raise
        return await self.list_namespaced(MANAGED_DATABASE, namespace)

    async def list_namespaced(self, kind: KindInfo, namespace: str) -> list[dict[str, Any]]:
        listed = await _checked(
            self._custom.list_namespaced_custom_object(GROUP, VERSION, namespace, kind.plural)
        )
        return list(listed.get("items", [])) if isinstance(listed, dict) else []

    async def get(self, kind: KindInfo, namespace: str, name: str) -> dict[str, Any]:
        """One of Vauban's objects; KubeError (404) when it does not exist."""
        obj = await _checked(
            self._custom.get_namespaced_custom_object(GROUP, VERSION, namespace, kind.plural, name)
        )
        assert isinstance(obj, dict)
        return obj

    async def create(self, kind: KindInfo, body: dict[str, Any]) -> dict[str, Any]:
        created = await _checked(
            self._custom.create_namespaced_custom_object(
                GROUP,
                VERSION,
                body["metadata"]["namespace"],
                kind.plural,
                body,
                field_manager=PLUGIN_FIELD_MANAGER,
            )
        )
        assert isinstance(created, dict)
        return created

    async def annotate(
        self, kind: KindInfo, namespace: str, name: str, annotations: dict[str, str]
    ) -> None:
        await _checked(
            self._custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                kind.plural,
                name,
                {"metadata": {"annotations": annotations}},
                field_manager=PLUGIN_FIELD_MANAGER,
                _content_type="application/merge-patch+json",
            )
        )

    async def secret_data(self, namespace: str) -> list[dict[str, str]]:
        """The decoded values of every Secret of a namespace the caller may read (none when
        it may not): what a support bundle must not contain."""
        try:
            secrets = await self._rest.list(rest.SECRETS, namespace)
        except ApiException as e:
            if e.status in (401, 403):
                return []
            raise
        return [_decoded(s.get("data") or {}) for s in secrets]

    async def events(self, namespace: str) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = await _checked(self._rest.list(rest.EVENTS, namespace))
        return listed

    async def pod_logs(
        self, namespace: str, selector: str, tail_lines: int
    ) -> dict[str, str] | str:
        """Pod name -> its last lines, for the pods matching `selector`; a sentence saying why
        when they cannot be read (another namespace's logs are often not the caller's)."""
        try:
            pods = await self._rest.list(rest.PODS, namespace, label_selector=selector)
            logs = {}
            for pod in pods:
                name = str(pod["metadata"]["name"])
                logs[name] = await self._rest.pod_log(namespace, name, tail_lines=tail_lines)
        except ApiException as e:
            return f"not read: {e.status} {e.reason}"
        return logs


def _decoded(data: Mapping[str, bytes | str]) -> dict[str, str]:
    values = {}
    for key, value in data.items():
        try:
            values[key] = base64.b64decode(value).decode("utf-8", errors="replace")
        except (binascii.Error, ValueError):
            values[key] = str(value)
    return values


async def _checked(call: Any) -> Any:
    """The result of a call; its refusal as a KubeError with the apiserver's own message."""
    try:
        return await call
    except ApiException as e:
        raise KubeError(e.status or 0, _message(e)) from None


def _message(error: ApiException) -> str:
    try:
        body = json.loads(error.body or "{}")
    except (TypeError, ValueError):
        body = {}
    return str(body.get("message") or error.reason or f"HTTP {error.status}")
