"""Reads and server-side applies of Vauban's own kinds and the objects around them."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from vauban.api.common import API_VERSION, GROUP, VERSION, KindInfo
from vauban.kube import events, rest
from vauban.kube.client import Credentials, credentials_of
from vauban.kube.lease import LeaderElection
from vauban.kube.rest import APPLY_PATCH, MERGE_PATCH
from vauban.kube.watch import DeletionListener, watch_deletions
from vauban.settings import FIELD_MANAGER

T = TypeVar("T")


class Kube:
    """The operator's handle on the apiserver: a few typed calls, nothing generic."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        self._custom = client.CustomObjectsApi(api)
        self._rest = rest.Rest(api)
        self._events = events.Recorder(self._rest)

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
        applied = await self._rest.apply(rest.NETWORK_POLICIES, body)
        generation = applied.get("metadata", {}).get("generation")
        return int(generation) if generation is not None else None

    async def network_policy_spec(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A NetworkPolicy's spec (wire form), None when it does not exist. Listed by name:
        the operator's role lists NetworkPolicies, it does not get them."""
        listed = await self._rest.list(
            rest.NETWORK_POLICIES, namespace, field_selector=f"metadata.name={name}"
        )
        found = [p["spec"] for p in listed if p.get("spec") is not None]
        return dict(found[0]) if found else None

    async def apply_secret(self, body: Mapping[str, Any]) -> None:
        """Server-side apply of a Secret Vauban owns whole (a tenant's credentials)."""
        await self._rest.apply(rest.SECRETS, body)

    async def create_secret_if_absent(self, body: Mapping[str, Any]) -> bool:
        """Create a Secret unless one of that name exists: a Secret holding a generated
        password is never rewritten. Returns whether it was created."""
        return await _created(self._rest.create(rest.SECRETS, body))

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's decoded values, None when it does not exist. Only for code that must
        use the credentials; values never go to logs, status or events."""
        found = await self.read_secret_and_owners(namespace, name)
        return None if found is None else found[0]

    async def read_secret_and_owners(
        self, namespace: str, name: str
    ) -> tuple[dict[str, str], frozenset[str]] | None:
        """As read_secret, with the uids of the Secret's owners."""
        secret = await _unless_missing(self._rest.get(rest.SECRETS, namespace, name))
        if secret is None:
            return None
        refs = secret.get("metadata", {}).get("ownerReferences") or []
        return _decoded(secret), frozenset(str(ref["uid"]) for ref in refs)

    async def release_claims(
        self, namespace: str, selector: str, owner_uid: str, labels: Mapping[str, str]
    ) -> list[str]:
        """Cut PersistentVolumeClaims loose from their owner so the garbage collector keeps
        them, and label them. Returns the names released."""
        claims = await self._rest.list(rest.CLAIMS, namespace, label_selector=selector)
        return await self._release(rest.CLAIMS, claims, owner_uid, labels)

    async def release_secrets(
        self, namespace: str, selector: str, owner_uid: str, labels: Mapping[str, str]
    ) -> list[str]:
        """As release_claims, for Secrets (their metadata only: values are not read)."""
        secrets = await self._rest.list(
            rest.SECRETS, namespace, label_selector=selector, metadata_only=True
        )
        return await self._release(rest.SECRETS, secrets, owner_uid, labels)

    async def _release(
        self,
        resource: rest.Resource,
        objects: list[dict[str, Any]],
        owner_uid: str,
        labels: Mapping[str, str],
    ) -> list[str]:
        released = []
        for obj in objects:
            meta = obj["metadata"]
            refs = meta.get("ownerReferences") or []
            if not any(ref.get("uid") == owner_uid for ref in refs):
                continue
            owners = [ref for ref in refs if ref.get("uid") != owner_uid]
            await self._rest.merge_patch(
                resource,
                meta["namespace"],
                meta["name"],
                {
                    # The resourceVersion makes this a compare-and-swap of the owner list.
                    "metadata": {
                        "resourceVersion": meta["resourceVersion"],
                        "ownerReferences": owners or None,
                        "labels": dict(labels),
                    }
                },
            )
            released.append(str(meta["name"]))
        return released

    async def delete_secret(self, namespace: str, name: str) -> None:
        await _unless_missing(self._rest.delete(rest.SECRETS, namespace, name))

    async def read_secret_and_annotations(
        self, namespace: str, name: str
    ) -> tuple[dict[str, str], dict[str, str]] | None:
        secret = await _unless_missing(self._rest.get(rest.SECRETS, namespace, name))
        if secret is None:
            return None
        return _decoded(secret), dict(secret.get("metadata", {}).get("annotations") or {})

    async def update_secret_values(
        self, namespace: str, name: str, values: Mapping[str, str]
    ) -> None:
        """Change some values of a Secret, leaving the others."""
        await self._rest.merge_patch(
            rest.SECRETS,
            namespace,
            name,
            {"data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}},
        )

    async def annotate_secret(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None:
        """Set annotations of a Secret (merge patch: None removes one, others stay)."""
        await _unless_missing(
            self._rest.merge_patch(
                rest.SECRETS, namespace, name, {"metadata": {"annotations": dict(annotations)}}
            )
        )

    async def secret_annotations(self, namespace: str, selector: str) -> dict[str, dict[str, str]]:
        """Name -> annotations of the Secrets matching a label selector (values not read)."""
        secrets = await self._rest.list(
            rest.SECRETS, namespace, label_selector=selector, metadata_only=True
        )
        return {
            str(s["metadata"]["name"]): dict(s["metadata"].get("annotations") or {})
            for s in secrets
        }

    async def watch_secret_deletions(
        self, namespace: str | None, selector: str, listener: DeletionListener
    ) -> None:
        """Tells `listener` of each deletion of a Secret `selector` picks, until cancelled;
        in every namespace when `namespace` is None."""
        await watch_deletions(self._rest, rest.SECRETS, namespace, selector, listener)

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
        return await _created(self._rest.create(rest.JOBS, body))

    async def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await _unless_missing(self._rest.get(rest.JOBS, namespace, name))

    async def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job and, in the background, its pods."""
        await _unless_missing(
            self._rest.delete(rest.JOBS, namespace, name, propagation_policy="Background")
        )

    async def apply_cronjob(self, body: Mapping[str, Any]) -> None:
        await self._rest.apply(rest.CRONJOBS, body)

    async def delete_cronjob(self, namespace: str, name: str) -> None:
        await _unless_missing(
            self._rest.delete(rest.CRONJOBS, namespace, name, propagation_policy="Background")
        )

    async def termination_message(self, namespace: str, job: str) -> str | None:
        """The termination message of a Job's (last) pod: the agent's JSON result."""
        pods = await self._rest.list(
            rest.PODS, namespace, label_selector=f"batch.kubernetes.io/job-name={job}"
        )
        # RFC 3339 timestamps in UTC sort as strings.
        for pod in sorted(
            pods, key=lambda p: str(p["metadata"].get("creationTimestamp") or ""), reverse=True
        ):
            for container in (pod.get("status") or {}).get("containerStatuses") or []:
                terminated = (container.get("state") or {}).get("terminated") or {}
                if terminated.get("message"):
                    return str(terminated["message"])
        return None

    async def storage_class(
        self, name: str | None
    ) -> tuple[str, dict[str, str], dict[str, str]] | None:
        """A StorageClass's name, annotations and parameters; with no name, the default
        class's. None when there is no such class."""
        found = await self._storage_class(name)
        if found is None:
            return None
        meta = found["metadata"]
        return (
            str(meta["name"]),
            dict(meta.get("annotations") or {}),
            dict(found.get("parameters") or {}),
        )

    async def volume_expansion(self, name: str | None) -> bool | None:
        """Whether a StorageClass (with no name, the default class) lets claims grow
        (allowVolumeExpansion); None when there is no such class."""
        found = await self._storage_class(name)
        return None if found is None else bool(found.get("allowVolumeExpansion"))

    async def _storage_class(self, name: str | None) -> dict[str, Any] | None:
        if name is not None:
            return await _unless_missing(self._rest.get(rest.STORAGE_CLASSES, None, name))
        listed = await self._rest.list(rest.STORAGE_CLASSES)
        return next(
            (
                c
                for c in listed
                if (c["metadata"].get("annotations") or {}).get(
                    "storageclass.kubernetes.io/is-default-class"
                )
                == "true"
            ),
            None,
        )

    async def volume_claims(self, namespace: str, selector: str) -> list[dict[str, str | None]]:
        """The claims matching a label selector: name, storage class, requested size and
        capacity (None until bound)."""
        claims = await self._rest.list(rest.CLAIMS, namespace, label_selector=selector)
        found: list[dict[str, str | None]] = []
        for claim in claims:
            spec = claim.get("spec") or {}
            requests = (spec.get("resources") or {}).get("requests") or {}
            capacity = (claim.get("status") or {}).get("capacity") or {}
            found.append(
                {
                    "name": str(claim["metadata"]["name"]),
                    "storageClass": spec.get("storageClassName"),
                    "request": requests.get("storage"),
                    "capacity": capacity.get("storage"),
                }
            )
        return found

    async def load_balancers(self, namespace: str, selector: str) -> list[str]:
        """Names of the Services of type LoadBalancer matching a label selector."""
        services = await self._rest.list(rest.SERVICES, namespace, label_selector=selector)
        return sorted(
            str(s["metadata"]["name"])
            for s in services
            if (s.get("spec") or {}).get("type") == "LoadBalancer"
        )

    async def crd_exists(self, name: str) -> bool:
        return await _unless_missing(self._rest.get(rest.CRDS, None, name)) is not None

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
        return await _unless_missing(self._rest.get(rest.NAMESPACES, None, name)) is not None

    async def namespace_labels(self, name: str) -> dict[str, str]:
        namespace = await self._rest.get(rest.NAMESPACES, None, name)
        return dict(namespace.get("metadata", {}).get("labels") or {})


def _decoded(secret: Mapping[str, Any]) -> dict[str, str]:
    """A Secret's values, decoded (bytes that are not UTF-8 replaced, never raised on)."""
    return {
        key: base64.b64decode(value).decode("utf-8", errors="replace")
        for key, value in (secret.get("data") or {}).items()
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
