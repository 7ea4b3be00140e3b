"""The apiserver's REST API by resource and path, through the official client's `ApiClient`:
its configuration, authentication, TLS, connection pool and `ApiException`, without its
generated API classes. Importing those costs the operator more memory than anything else
it holds: CoreV1Api 24 MiB, BatchV1Api 8.4, StorageV1Api 5.6, NetworkingV1Api 3.9
(resident, measured), for the dozen calls Vauban makes. Objects go and come in the
apiserver's JSON form (dicts), the form kopf hands to the handlers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from kubernetes.aio import client

from vauban.settings import FIELD_MANAGER

APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
JSON = "application/json"
# Metadata only, for any resource: what a watch needs to know of a Secret is never its data.
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


@dataclass(frozen=True)
class Resource:
    group: str
    """'' for the core group (/api/v1)."""
    version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        parts = [f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"]
        if self.namespaced and namespace is not None:
            parts += ["namespaces", quote(namespace, safe="")]
        parts.append(self.plural)
        if name is not None:
            parts.append(quote(name, safe=""))
        return "/".join(parts)


SECRETS = Resource("", "v1", "secrets")
EVENTS = Resource("", "v1", "events")
PODS = Resource("", "v1", "pods")
CLAIMS = Resource("", "v1", "persistentvolumeclaims")
SERVICES = Resource("", "v1", "services")
NAMESPACES = Resource("", "v1", "namespaces", namespaced=False)
JOBS = Resource("batch", "v1", "jobs")
CRONJOBS = Resource("batch", "v1", "cronjobs")
NETWORK_POLICIES = Resource("networking.k8s.io", "v1", "networkpolicies")
STORAGE_CLASSES = Resource("storage.k8s.io", "v1", "storageclasses", namespaced=False)
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", namespaced=False)

Object = dict[str, Any]


async def json_lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[Object]:
    """One JSON object per line, whatever the chunks' boundaries. Lines of any length:
    aiohttp's line reader refuses those over 128 KiB, and an object's annotations alone may
    hold 256 KiB."""
    parts: list[bytes] = []  # of the line not yet ended: joined once, however many chunks
    async for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            line = b"".join([*parts, chunk[start:end]])
            parts, start = [], end + 1
            if line.strip():
                yield json.loads(line)
        if start < len(chunk):
            parts.append(chunk[start:])
    if (last := b"".join(parts)).strip():
        yield json.loads(last)


class Rest:
    """get, list, create, apply, merge-patch and delete of any resource. A refusal raises
    the client's ApiException, with the HTTP status, as its generated classes do."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Mapping[str, Any] | None = None,
        content_type: str | None = None,
        accept: str = JSON,
    ) -> Object:
        data = await self._call(method, path, query, body, content_type, "object", accept)
        return data if isinstance(data, dict) else {}

    async def stream(
        self, path: str, *, query: Sequence[tuple[str, str]], accept: str, seconds: float
    ) -> AsyncIterator[Object]:
        """A watch: the objects of a response of one JSON object per line, as they come,
        until the server ends it or `seconds` have passed since it was opened."""
        serialized = await self._api.param_serialize(
            method="GET",
            resource_path=path,
            query_params=list(query),
            header_params={"Accept": accept},
            auth_settings=["BearerToken"],
        )
        response = await self._api.call_api(*serialized, _request_timeout=seconds)
        try:
            if not 200 <= response.status <= 299:
                await response.read()
                self._api.response_deserialize(response, {"2XX": "object"})  # raises
            async for obj in json_lines(response.response.content.iter_any()):
                yield obj
        finally:
            response.response.release()

    async def _call(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]],
        body: Mapping[str, Any] | None,
        content_type: str | None,
        answer: str,
        accept: str,
    ) -> object:
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        serialized = await self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list(query),
            header_params=headers,
            body=dict(body) if body is not None else None,
            auth_settings=["BearerToken"],
        )
        response = await self._api.call_api(*serialized)
        await response.read()
        return self._api.response_deserialize(response, {"2XX": answer}).data

    async def pod_log(self, namespace: str, name: str, *, tail_lines: int) -> str:
        path = f"{PODS.path(namespace, name)}/log"
        return str(
            await self._call(
                "GET", path, [("tailLines", str(tail_lines))], None, None, "str", "text/plain"
            )
        )

    async def get(self, resource: Resource, namespace: str | None, name: str) -> Object:
        return await self.request("GET", resource.path(namespace, name))

    async def list(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        metadata_only: bool = False,
    ) -> list[Object]:
        query = [("labelSelector", label_selector)] if label_selector else []
        query += [("fieldSelector", field_selector)] if field_selector else []
        listed = await self.request(
            "GET",
            resource.path(namespace),
            query=query,
            accept=METADATA_LIST if metadata_only else JSON,
        )
        return list(listed.get("items") or [])

    async def create(self, resource: Resource, body: Mapping[str, Any]) -> Object:
        namespace = body["metadata"].get("namespace")
        return await self.request("POST", resource.path(namespace), body=body)

    async def apply(self, resource: Resource, body: Mapping[str, Any]) -> Object:
        """Server-side apply with Vauban's field manager, taking over conflicting fields."""
        meta = body["metadata"]
        return await self.request(
            "PATCH",
            resource.path(meta.get("namespace"), meta["name"]),
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            body=body,
            content_type=APPLY_PATCH,
        )

    async def merge_patch(
        self, resource: Resource, namespace: str | None, name: str, patch: Mapping[str, Any]
    ) -> Object:
        return await self.request(
            "PATCH",
            resource.path(namespace, name),
            query=[("fieldManager", FIELD_MANAGER)],
            body=patch,
            content_type=MERGE_PATCH,
        )

    async def delete(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        *,
        propagation_policy: str | None = None,
    ) -> Object:
        query = [("propagationPolicy", propagation_policy)] if propagation_policy else []
        return await self.request("DELETE", resource.path(namespace, name), query=query)
