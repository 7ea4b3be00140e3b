"""Secrets of the `kubernetes-secret` key provider, in the operator's namespace: one
key-encryption key (KEK) per ManagedCluster, with every version it ever had, and one wrapped
data key (DEK) per ManagedDatabase. Pure: values in, manifests out.

The KEK Secret holds, per version, what the cluster's key provider returned when the version
was made: the key material itself (base64) for `kubernetes-secret`, only the key manager's
identifier for `kmip`. Each version's creation time is in an annotation
(`vauban.dev/created-v<n>`), which the key-age metric and rotation read.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from vauban.builders.cnpg import MANAGED_BY

# Keys of the Secrets' values besides the key material itself.
CURRENT = "current"
PROVIDER = "provider"
WRAPPED_KEY = "wrappedKey"
KEK = "kek"
KEK_VERSION = "kekVersion"
KEY_ID = "keyId"
CLUSTER_UID_LABEL = "vauban.dev/cluster-uid"


def kek_secret_name(cluster_uid: str) -> str:
    return f"vauban-kek-{cluster_uid}"


def data_key_secret_name(database_uid: str) -> str:
    return f"vauban-dek-{database_uid}"


def data_key_id(database_uid: str) -> str:
    """The id recorded in each backup's manifest; it names the Secret holding the key."""
    return f"dek-{database_uid}"


def database_uid_of(key_id: str) -> str | None:
    return key_id.removeprefix("dek-") if key_id.startswith("dek-") else None


def data_key_context(database_uid: str) -> bytes:
    """Associated data binding a wrapped DEK to its database: a wrapped key copied onto
    another database's Secret does not open."""
    return f"vauban:dek:{database_uid}".encode()


def version_key(version: int) -> str:
    return f"v{version}"


def encode(material: bytes) -> str:
    return base64.b64encode(material).decode()


def decode(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


@dataclass(frozen=True)
class KekOwner:
    namespace: str
    name: str
    uid: str


def created_annotation(version: int) -> str:
    return f"vauban.dev/created-{version_key(version)}"


def _secret(
    name: str,
    namespace: str,
    labels: dict[str, str],
    annotations: dict[str, str],
    values: dict[str, str],
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**MANAGED_BY, **labels},
            "annotations": annotations,
        },
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in sorted(values.items())},
    }


def kek_secret(
    owner: KekOwner,
    *,
    namespace: str,
    provider: str,
    versions: dict[int, str],
    current: int,
    created: dict[int, str],
) -> dict[str, Any]:
    return _secret(
        kek_secret_name(owner.uid),
        namespace,
        {"vauban.dev/key": "kek", CLUSTER_UID_LABEL: owner.uid},
        {
            "vauban.dev/cluster": f"{owner.namespace}/{owner.name}",
            **{created_annotation(v): t for v, t in sorted(created.items())},
        },
        {
            PROVIDER: provider,
            CURRENT: str(current),
            **{version_key(v): ref for v, ref in versions.items()},
        },
    )


def data_key_secret(
    *,
    namespace: str,
    cluster_uid: str,
    database: str,
    database_uid: str,
    kek: str,
    kek_version: int,
    wrapped: bytes,
    created: str,
) -> dict[str, Any]:
    return _secret(
        data_key_secret_name(database_uid),
        namespace,
        {"vauban.dev/key": "dek", CLUSTER_UID_LABEL: cluster_uid},
        {"vauban.dev/database": database, "vauban.dev/created": created},
        {
            WRAPPED_KEY: encode(wrapped),
            KEK: kek,
            KEK_VERSION: str(kek_version),
            KEY_ID: data_key_id(database_uid),
        },
    )
