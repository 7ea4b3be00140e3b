"""Reads and server-side applies of Vauban's own kinds and the objects around them."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from vauban.api.common import API_VERSION, GROUP, VERSION, KindInfo
from vauban.kube.client import Credentials, credentials_of
from vauban.kube.lease import LeaderElection
from vauban.settings import FIELD_MANAGER

APPLY_PATCH = "application/apply-patch+yaml"

T = TypeVar("T")


class Kube:
    """The operator's handle on the apiserver: a few typed calls, nothing generic."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self._crds = client.ApiextensionsV1Api(api)
        self._networking = client.NetworkingV1Api(api)

    async def close(self) -> None:
        await self._api.close()

    def leader_election(
        self, *, namespace: str, name: str, identity: str, duration_seconds: int
    ) -> LeaderElection:
        return LeaderElection(
            self._api,
            namespace=namespace,
            name=name,
            identity=identity,
            duration_seconds=duration_seconds,
            renew_seconds=max(1.0, duration_seconds / 3),
        )

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
        """One of Vauban's objects as stored now; None when it is gone."""
        return await self.read_custom(GROUP, VERSION, kind.plural, namespace, name)

    async def read_custom(
        self, group: str, version: str, plural: str, namespace: str, name: str
    ) -> dict[str, Any] | None:
        """A custom object as stored now; None when it (or its CRD) does not exist."""
        obj = await _unless_missing(
            self._custom.get_namespaced_custom_object(group, version, namespace, plural, name)
        )
        if obj is None:
            return None
        assert isinstance(obj, dict)
        return obj

    async def apply_custom(self, plural: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply of a custom object: what Vauban sets is repaired if someone
        changes it; what others set is theirs."""
        group, version = str(body["apiVersion"]).split("/")
        meta = body["metadata"]
        obj = await self._custom.patch_namespaced_custom_object(
            group,
            version,
            meta["namespace"],
            plural,
            meta["name"],
            dict(body),
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=APPLY_PATCH,
        )
        if isinstance(obj, dict):
            return obj
        # The client does not decode every response of a create-by-apply: read it back.
        stored = await self.read_custom(group, version, plural, meta["namespace"], meta["name"])
        assert stored is not None
        return stored

    async def apply_network_policy(self, body: Mapping[str, Any]) -> None:
        await _apply(self._networking.patch_namespaced_network_policy, body)

    async def apply_secret(self, body: Mapping[str, Any]) -> None:
        """Server-side apply of a Secret Vauban owns whole (a tenant's credentials)."""
        await _apply(self._core.patch_namespaced_secret, body)

    async def create_secret_if_absent(self, body: Mapping[str, Any]) -> bool:
        """Create a Secret unless one of that name exists: a Secret holding a generated
        password is never rewritten. Returns whether it was created."""
        try:
            await self._core.create_namespaced_secret(
                body["metadata"]["namespace"], client.V1Secret.model_validate(dict(body))
            )
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        return True

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's decoded values, None when it does not exist. Only for code that must
        use the credentials; values never go to logs, status or events."""
        found = await self.read_secret_and_owners(namespace, name)
        return None if found is None else found[0]

    async def read_secret_and_owners(
        self, namespace: str, name: str
    ) -> tuple[dict[str, str], frozenset[str]] | None:
        """As read_secret, with the uids of the Secret's owners."""
        secret = await _unless_missing(self._core.read_namespaced_secret(name, namespace))
        if secret is None:
            return None
        values = {
            key: base64.b64decode(value).decode("utf-8", errors="replace")
            for key, value in (secret.data or {}).items()
        }
        owners = frozenset(
            ref.uid for ref in (secret.metadata.owner_references if secret.metadata else None) or []
        )
        return values, owners

    async def release_claims(
        self, namespace: str, selector: str, owner_uid: str, labels: Mapping[str, str]
    ) -> list[str]:
        """Cut PersistentVolumeClaims loose from their owner so the garbage collector keeps
        them, and label them. Returns the names released."""
        claims = await self._core.list_namespaced_persistent_volume_claim(
            namespace, label_selector=selector
        )
        metas = [c.metadata for c in claims.items if c.metadata is not None]
        return await self._release(
            metas, self._core.patch_namespaced_persistent_volume_claim, owner_uid, labels
        )

    async def release_secrets(
        self, namespace: str, selector: str, owner_uid: str, labels: Mapping[str, str]
    ) -> list[str]:
        """As release_claims, for Secrets."""
        secrets = await self._core.list_namespaced_secret(namespace, label_selector=selector)
        metas = [s.metadata for s in secrets.items if s.metadata is not None]
        return await self._release(metas, self._core.patch_namespaced_secret, owner_uid, labels)

    @staticmethod
    async def _release(
        metas: list[client.V1ObjectMeta],
        patch: Callable[..., Awaitable[object]],
        owner_uid: str,
        labels: Mapping[str, str],
    ) -> list[str]:
        released = []
        for meta in metas:
            if not any(ref.uid == owner_uid for ref in meta.owner_references or []):
                continue
            owners = [ref.to_dict() for ref in meta.owner_references or [] if ref.uid != owner_uid]
            await patch(
                meta.name,
                meta.namespace,
                {
                    # The resourceVersion makes this a compare-and-swap of the owner list.
                    "metadata": {
                        "resourceVersion": meta.resource_version,
                        "ownerReferences": owners or None,
                        "labels": dict(labels),
                    }
                },
                _content_type="application/merge-patch+json",
            )
            released.append(str(meta.name))
        return released

    async def crd_exists(self, name: str) -> bool:
        return await _unless_missing(self._crds.read_custom_resource_definition(name)) is not None

    async def namespace_labels(self, name: str) -> dict[str, str]:
        namespace = await self._core.read_namespace(name)
        return dict(namespace.metadata.labels or {}) if namespace.metadata else {}


async def _unless_missing(call: Awaitable[T]) -> T | None:
    """The result of a read, None when the apiserver answers 404."""
    try:
        return await call
    except ApiException as e:
        if e.status == 404:
            return None
        raise


async def _apply(patch: Callable[..., Awaitable[object]], body: Mapping[str, Any]) -> None:
    """Server-side apply of a namespaced built-in object with Vauban's field manager."""
    meta = body["metadata"]
    await patch(
        meta["name"],
        meta["namespace"],
        dict(body),
        field_manager=FIELD_MANAGER,
        force=True,
        _content_type=APPLY_PATCH,
    )
