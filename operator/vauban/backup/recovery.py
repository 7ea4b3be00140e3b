"""What the bucket holds so that its backups outlive the Kubernetes cluster that made them.

Beside the backups of each database incarnation, at `<database prefix>/key.json`, its *key
record*: the database's identity (cluster, namespace, name, uid), its data key wrapped by the
cluster's key-encryption key (KEK), and which KEK (provider, the cluster's KEK id, version,
and for an HSM the key manager's reference, which is a name, not key material). With the
`kubernetes-secret` provider, the KEK itself is in the bucket too, sealed to the platform's
recovery public key (`vauban.crypto.recovery`), at `<store prefix>/_recovery/<cluster
uid>/kek-v<n>.json`: the *escrow*. Neither opens anything without the HSM or the recovery
private key.

Who can trust what. Whoever writes the bucket can write these documents; they decide nothing
until the data key they lead to is proven: the wrapped data key opens only under its
database's uid (the wrap's associated data), the key record carries an HMAC under a key
derived from the data key, and each backup's manifest one too (`vauban.backup.manifest`).
A forged or swapped record, escrow or manifest leads to a key that does not open, or to a
MAC that fails: refused, with nothing restored.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from vauban.backup.manifest import Base64Bytes
from vauban.crypto import envelope, recovery

KEY_RECORD = "key.json"
RECOVERY_FOLDER = "_recovery"
KEY_RECORD_FORMAT: Literal["vauban/key-record/1"] = "vauban/key-record/1"
ESCROW_FORMAT: Literal["vauban/kek-escrow/1"] = "vauban/kek-escrow/1"


class RecordNotAuthentic(Exception):
    """The key record was not written with this data key, or was changed since."""


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore"
    )


class Identity(_Model):
    namespace: str
    name: str
    uid: str


class KekReference(_Model):
    provider: Literal["kubernetes-secret", "kmip", "pkcs11"]
    id: str
    """The cluster's KEK id (`vauban-kek-<cluster uid>`), the same for every version."""

    version: int = Field(ge=1)
    ref: str | None = None
    """The key manager's reference of this version (kmip, pkcs11); None for
    `kubernetes-secret`, whose reference is the key material itself."""

    escrow: str | None = None
    """`kubernetes-secret`: the key of this version's escrow in the bucket, when the
    operator has a recovery key."""


class KeyRecord(_Model):
    format: Literal["vauban/key-record/1"] = KEY_RECORD_FORMAT
    cluster: Identity
    database: Identity
    """The ManagedDatabase's namespace, name and uid."""

    data_key_id: str
    wrapped_data_key: Base64Bytes
    """The data key, wrapped by the KEK with `vauban:dek:<uid>` as associated data."""

    kek: KekReference
    mac: Base64Bytes | None = None

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, indent=2).encode("utf-8") + b"\n"

    def _mac(self, data_key: bytes) -> bytes:
        envelope.check_key(data_key, "data key")
        key = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=None,
            info=b"vauban/key-record-mac/1:" + self.database.uid.encode("utf-8"),
        ).derive(data_key)
        fields = self.model_dump(mode="json", by_alias=True, exclude={"mac"})
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hmac.new(key, canonical.encode("utf-8"), hashlib.sha256).digest()

    def sealed(self, data_key: bytes) -> KeyRecord:
        unsealed = self.model_copy(update={"mac": None})
        return unsealed.model_copy(update={"mac": unsealed._mac(data_key)})

    def authenticate(self, data_key: bytes) -> None:
        if self.mac is None or not hmac.compare_digest(self.mac, self._mac(data_key)):
            raise RecordNotAuthentic(
                f"the key record of {self.database.namespace}/{self.database.name} fails its "
                "authentication: it was altered, or not written with this database's data key"
            )


class KekEscrow(_Model):
    format: Literal["vauban/kek-escrow/1"] = ESCROW_FORMAT
    cluster: Identity
    kek_id: str
    version: int = Field(ge=1)
    recipient: str
    """Fingerprint of the recovery public key it is sealed to."""

    sealed: Base64Bytes

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, indent=2).encode("utf-8") + b"\n"

    def context(self) -> bytes:
        return escrow_context(self.cluster.uid, self.kek_id, self.version)


def escrow_context(cluster_uid: str, kek_id: str, version: int) -> bytes:
    """Associated data of a sealed KEK: it opens only as this cluster's KEK, this version."""
    fields = [cluster_uid, kek_id, version]
    return b"vauban/kek-escrow/1:" + json.dumps(fields, separators=(",", ":")).encode("utf-8")


def escrow_kek(
    recipient: X25519PublicKey, cluster: Identity, kek_id: str, version: int, material: bytes
) -> KekEscrow:
    """KEK `version` of `cluster`, sealed to the recovery key `recipient`."""
    return KekEscrow(
        cluster=cluster,
        kek_id=kek_id,
        version=version,
        recipient=recovery.fingerprint(recipient),
        sealed=recovery.seal(recipient, material, escrow_context(cluster.uid, kek_id, version)),
    )


def key_record_key(database_prefix: str) -> str:
    return f"{database_prefix.strip('/')}/{KEY_RECORD}"


def escrow_key(store_prefix: str, cluster_uid: str, version: int) -> str:
    parts = [store_prefix.strip("/"), RECOVERY_FOLDER, cluster_uid, f"kek-v{version}.json"]
    return "/".join(p for p in parts if p)
