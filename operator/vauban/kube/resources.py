"""Reads and server-side applies of Vauban's own kinds and the objects around them."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from vauban.api.common import API_VERSION, GROUP, VERSION, KindInfo
from vauban.kube import events
from vauban.kube.client import Credentials, credentials_of
from vauban.kube.lease import LeaderElection
from vauban.settings import FIELD_MANAGER

APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"

T = TypeVar("T")


class Kube:
    """The operator's handle on the apiserver: a few typed calls, nothing generic."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self._crds = client.ApiextensionsV1Api(api)
        self._networking = client.NetworkingV1Api(api)
        self._batch = client.BatchV1Api(api)
        self._storage = client.StorageV1Api(api)
        self._events = events.Recorder(self._core)

    async def close(self) -> None:
        try:
            await self._events.close()  # the folds of a burst still pending
        finally:
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

    async def list_all(self, kind: KindInfo) -> list[dict[str, Any]]:
        """Every object of one of Vauban's kinds, in every namespace the caller may list."""
        listed = await self._custom.list_cluster_custom_object(GROUP, VERSION, kind.plural)
        return list(listed.get("items", [])) if isinstance(listed, dict) else []

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

    async def apply_custom(self, plural: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Server-side apply of a custom object: what Vauban sets is repaired if someone
        changes it; what others set is theirs. None when it was gone again before it could be
        read back (its owner deleted meanwhile: the garbage collector took it)."""
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
        return await self.read_custom(group, version, plural, meta["namespace"], meta["name"])

    async def patch_custom_status(
        self,
        group: str,
        version: str,
        plural: str,
        namespace: str,
        name: str,
        patch: Mapping[str, Any],
    ) -> dict[str, Any] | None:
        """Merge patch of another controller's custom object's status, conditional when
        `patch` carries metadata.resourceVersion: None when the object changed meanwhile
        (409) or is gone."""
        try:
            obj = await _unless_missing(
                self._custom.patch_namespaced_custom_object_status(
                    group,
                    version,
                    namespace,
                    plural,
                    name,
                    dict(patch),
                    field_manager=FIELD_MANAGER,
                    _content_type=MERGE_PATCH,
                )
            )
        except ApiException as e:
            if e.status == 409:
                return None
            raise
        return obj if isinstance(obj, dict) else None

    async def annotate_custom(
        self,
        group: str,
        version: str,
        plural: str,
        namespace: str,
        name: str,
        annotations: Mapping[str, str | None],
    ) -> None:
        """Set annotations of a custom object (merge patch: None removes one, others stay;
        owned apart from the fields Vauban's server-side apply sets, which leaves them)."""
        await _unless_missing(
            self._custom.patch_namespaced_custom_object(
                group,
                version,
                namespace,
                plural,
                name,
                {"metadata": {"annotations": dict(annotations)}},
                field_manager=FIELD_MANAGER,
                _content_type=MERGE_PATCH,
            )
        )

    async def apply_network_policy(self, body: Mapping[str, Any]) -> int | None:
        """Returns the generation the apply left, for the caller's memo."""
        applied = await _apply(self._networking.patch_namespaced_network_policy, body)
        return getattr(getattr(applied, "metadata", None), "generation", None)

    async def network_policy_spec(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A NetworkPolicy's spec (wire form), None when it does not exist. Listed by name:
        the operator's role lists NetworkPolicies, it does not get them."""
        listed = await self._networking.list_namespaced_network_policy(
            namespace, field_selector=f"metadata.name={name}"
        )
        found = [p.spec for p in listed.items if p.spec is not None]
        return found[0].model_dump(by_alias=True, exclude_none=True) if found else None

    async def apply_secret(self, body: Mapping[str, Any]) -> None:
        """Server-side apply of a Secret Vauban owns whole (a tenant's credentials)."""
        await _apply(self._core.patch_namespaced_secret, body)

    async def create_secret_if_absent(self, body: Mapping[str, Any]) -> bool:
        """Create a Secret unless one of that name exists: a Secret holding a generated
        password is never rewritten. Returns whether it was created."""
        return await _created(
            self._core.create_namespaced_secret(
                body["metadata"]["namespace"], client.V1Secret.model_validate(dict(body))
            )
        )

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
        values = _decoded(secret)
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
                _content_type=MERGE_PATCH,
            )
            released.append(str(meta.name))
        return released

    async def delete_secret(self, namespace: str, name: str) -> None:
        await _unless_missing(self._core.delete_namespaced_secret(name, namespace))

    async def read_secret_and_annotations(
        self, namespace: str, name: str
    ) -> tuple[dict[str, str], dict[str, str]] | None:
        secret = await _unless_missing(self._core.read_namespaced_secret(name, namespace))
        if secret is None:
            return None
        annotations = secret.metadata.annotations if secret.metadata else None
        return _decoded(secret), dict(annotations or {})

    async def update_secret_values(
        self, namespace: str, name: str, values: Mapping[str, str]
    ) -> None:
        """Change some values of a Secret, leaving the others."""
        await self._core.patch_namespaced_secret(
            name,
            namespace,
            {"data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}},
            _content_type=MERGE_PATCH,
        )

    async def annotate_secret(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None:
        """Set annotations of a Secret (merge patch: None removes one, others stay)."""
        await _unless_missing(
            self._core.patch_namespaced_secret(
                name,
                namespace,
                {"metadata": {"annotations": dict(annotations)}},
                _content_type=MERGE_PATCH,
            )
        )

    async def secret_annotations(self, namespace: str, selector: str) -> dict[str, dict[str, str]]:
        """Name -> annotations of the Secrets matching a label selector (values not read)."""
        secrets = await self._core.list_namespaced_secret(namespace, label_selector=selector)
        return {
            str(s.metadata.name): dict(s.metadata.annotations or {})
            for s in secrets.items
            if s.metadata is not None
        }

    async def create_custom(self, plural: str, body: Mapping[str, Any]) -> bool:
        """Create a custom object unless one of that name exists; returns whether it was
        created. For objects whose name is their identity (a scheduled run's record)."""
        group, version = str(body["apiVersion"]).split("/")
        return await _created(
            self._custom.create_namespaced_custom_object(
                group, version, body["metadata"]["namespace"], plural, dict(body)
            )
        )

    async def delete_custom(self, kind: KindInfo, namespace: str, name: str) -> None:
        await self.delete_custom_object(GROUP, VERSION, kind.plural, namespace, name)

    async def delete_custom_object(
        self, group: str, version: str, plural: str, namespace: str, name: str
    ) -> None:
        await _unless_missing(
            self._custom.delete_namespaced_custom_object(group, version, namespace, plural, name)
        )

    async def create_job(self, body: Mapping[str, Any]) -> bool:
        """Create a Job unless it exists (a Job's pod template cannot change once created);
        returns whether it was created."""
        return await _created(
            self._batch.create_namespaced_job(
                body["metadata"]["namespace"], client.V1Job.model_validate(dict(body))
            )
        )

    async def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        job = await _unless_missing(self._batch.read_namespaced_job(name, namespace))
        return (
            None if job is None else job.model_dump(by_alias=True, exclude_none=True, mode="json")
        )

    async def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job and, in the background, its pods."""
        await _unless_missing(
            self._batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        )

    async def apply_cronjob(self, body: Mapping[str, Any]) -> None:
        await _apply(self._batch.patch_namespaced_cron_job, body)

    async def delete_cronjob(self, namespace: str, name: str) -> None:
        await _unless_missing(
            self._batch.delete_namespaced_cron_job(name, namespace, propagation_policy="Background")
        )

    async def termination_message(self, namespace: str, job: str) -> str | None:
        """The termination message of a Job's (last) pod: the agent's JSON result."""
        pods = await self._core.list_namespaced_pod(
            namespace, label_selector=f"batch.kubernetes.io/job-name={job}"
        )
        for pod in sorted(
            pods.items,
            key=lambda p: str(p.metadata.creation_timestamp if p.metadata else ""),
            reverse=True,
        ):
            for container in (pod.status.container_statuses if pod.status else None) or []:
                terminated = container.state.terminated if container.state else None
                if terminated is not None and terminated.message:
                    return str(terminated.message)
        return None

    async def storage_class(
        self, name: str | None
    ) -> tuple[str, dict[str, str], dict[str, str]] | None:
        """A StorageClass's name, annotations and parameters; with no name, the default
        class's. None when there is no such class."""
        found = await self._storage_class(name)
        meta = found.metadata if found is not None else None
        if found is None or meta is None:
            return None
        return (str(meta.name), dict(meta.annotations or {}), dict(found.parameters or {}))

    async def volume_expansion(self, name: str | None) -> bool | None:
        """Whether a StorageClass (with no name, the default class) lets claims grow
        (allowVolumeExpansion); None when there is no such class."""
        found = await self._storage_class(name)
        return None if found is None else bool(found.allow_volume_expansion)

    async def _storage_class(self, name: str | None) -> client.V1StorageClass | None:
        if name is not None:
            return await _unless_missing(self._storage.read_storage_class(name))
        listed = await self._storage.list_storage_class()
        return next(
            (
                c
                for c in listed.items
                if c.metadata is not None
                and (c.metadata.annotations or {}).get(
                    "storageclass.kubernetes.io/is-default-class"
                )
                == "true"
            ),
            None,
        )

    async def volume_claims(self, namespace: str, selector: str) -> list[dict[str, str | None]]:
        """The claims matching a label selector: name, storage class, requested size and
        capacity (None until bound)."""
        claims = await self._core.list_namespaced_persistent_volume_claim(
            namespace, label_selector=selector
        )
        found: list[dict[str, str | None]] = []
        for claim in claims.items:
            if claim.metadata is None or claim.spec is None:
                continue
            requests = (claim.spec.resources.requests if claim.spec.resources else None) or {}
            capacity = (claim.status.capacity if claim.status else None) or {}
            found.append(
                {
                    "name": str(claim.metadata.name),
                    "storageClass": claim.spec.storage_class_name,
                    "request": requests.get("storage"),
                    "capacity": capacity.get("storage"),
                }
            )
        return found

    async def load_balancers(self, namespace: str, selector: str) -> list[str]:
        """Names of the Services of type LoadBalancer matching a label selector."""
        services = await self._core.list_namespaced_service(namespace, label_selector=selector)
        return sorted(
            str(s.metadata.name)
            for s in services.items
            if s.spec is not None and s.spec.type == "LoadBalancer" and s.metadata is not None
        )

    async def crd_exists(self, name: str) -> bool:
        return await _unless_missing(self._crds.read_custom_resource_definition(name)) is not None

    async def post_event(
        self,
        *,
        kind: str,
        namespace: str,
        name: str,
        uid: str,
        type_: events.EventType,
        reason: str,
        message: str,
        fold_into: events.ObjectRef | None = None,
    ) -> None:
        await self._events.record(
            events.ObjectRef(kind, namespace, name, uid),
            type_,
            reason,
            message,
            fold_into=fold_into,
        )

    async def heartbeat(self) -> None:
        """The cheapest authenticated request: whether the API answers this client."""
        await client.VersionApi(self._api).get_code()

    async def namespace_exists(self, name: str) -> bool:
        return await _unless_missing(self._core.read_namespace(name)) is not None

    async def namespace_labels(self, name: str) -> dict[str, str]:
        namespace = await self._core.read_namespace(name)
        return dict(namespace.metadata.labels or {}) if namespace.metadata else {}


def _decoded(secret: client.V1Secret) -> dict[str, str]:
    """A Secret's values, decoded (bytes that are not UTF-8 replaced, never raised on)."""
    return {
        key: base64.b64decode(value).decode("utf-8", errors="replace")
        for key, value in (secret.data or {}).items()
    }


async def _created(call: Awaitable[object]) -> bool:
    """Whether a create made the object: False when one of that name exists (409)."""
    try:
        await call
    except ApiException as e:
        if e.status == 409:
            return False
        raise
    return True


async def _unless_missing(call: Awaitable[T]) -> T | None:
    """The result of a read, None when the apiserver answers 404."""
    try:
        return await call
    except ApiException as e:
        if e.status == 404:
            return None
        raise


async def _apply(patch: Callable[..., Awaitable[object]], body: Mapping[str, Any]) -> object:
    """Server-side apply of a namespaced built-in object with Vauban's field manager; the
    object as stored."""
    meta = body["metadata"]
    return await patch(
        meta["name"],
        meta["namespace"],
        dict(body),
        field_manager=FIELD_MANAGER,
        force=True,
        _content_type=APPLY_PATCH,
    )
