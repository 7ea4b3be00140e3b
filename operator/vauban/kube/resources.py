"""Reads and server-side applies of Vauban's own kinds and the objects around them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from vauban.api.common import API_VERSION, GROUP, VERSION, KindInfo
from vauban.kube.client import Credentials, credentials_of
from vauban.settings import FIELD_MANAGER

APPLY_PATCH = "application/apply-patch+yaml"


class Kube:
    """The operator's handle on the apiserver: a few typed calls, nothing generic."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self._crds = client.ApiextensionsV1Api(api)

    async def close(self) -> None:
        await self._api.close()

    async def credentials(self) -> Credentials:
        return await credentials_of(self._api)

    @property
    def core(self) -> client.CoreV1Api:
        return self._core

    async def apply_status(
        self, kind: KindInfo, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        """Server-side apply of the whole status: fields Vauban set before and omits now are
        removed, fields other managers own are left alone."""
        body = {
            "apiVersion": API_VERSION,
            "kind": kind.kind,
            "metadata": {"name": name, "namespace": namespace},
            "status": dict(status),
        }
        await self._custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            kind.plural,
            name,
            body,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=APPLY_PATCH,
        )

    async def read(self, kind: KindInfo, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as stored now; None when it is gone."""
        try:
            obj = await self._custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, kind.plural, name
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        assert isinstance(obj, dict)
        return obj

    async def crd_exists(self, name: str) -> bool:
        try:
            await self._crds.read_custom_resource_definition(name)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    async def namespace_labels(self, name: str) -> dict[str, str]:
        namespace = await self._core.read_namespace(name)
        return dict(namespace.metadata.labels or {}) if namespace.metadata else {}

    async def secret_keys(self, namespace: str, name: str) -> frozenset[str] | None:
        """The keys of a Secret, None when it does not exist. Values are never returned:
        callers that only check a Secret's shape must not hold its content."""
        try:
            secret = await self._core.read_namespaced_secret(name, namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return frozenset((secret.data or {}).keys()) | frozenset((secret.string_data or {}).keys())
