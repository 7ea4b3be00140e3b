"""Key custody after the loss of a Kubernetes cluster: from what the bucket holds (key records,
escrowed KEKs, manifests; see `vauban.backup.recovery`) and what survives outside Kubernetes
(the platform's recovery private key, or the HSM), a database's data key and its
authenticated backups. Shared by `vauban drill` and by a new cluster's import.

Nothing is trusted before it is proven: the key record by its MAC under the data key it leads
to (the wrap itself binds the database's uid), each manifest by its own MAC and by its
identity (namespace, ManagedDatabase, uid) against the record's, and the record's place in
the bucket against its identity. Anything else is Refused, with a reason.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import ValidationError

from vauban.backup.errors import AgentFailure
from vauban.backup.manifest import Manifest, ManifestNotAuthentic
from vauban.backup.recovery import (
    KEY_RECORD,
    KekEscrow,
    KeyRecord,
    RecordNotAuthentic,
    escrow_context,
)
from vauban.builders.keys import data_key_context
from vauban.crypto import envelope, recovery
from vauban.kms import KekNotFound, KeyProvider, KeyProviderError, WrongKey


class ObjectStore(Protocol):
    """What custody reads of a bucket: backup.storage.ObjectStore, or the operator's port."""

    def read_small(self, key: str) -> bytes | None: ...
    def keys_ending(self, prefix: str, suffix: str) -> list[str]: ...
    def list_manifests(self, prefix: str) -> list[Manifest]: ...


logger = logging.getLogger(__name__)


class Refused(AgentFailure):
    """This backup cannot be opened with the custody given, or is not what it claims."""

    exit_code = 4


@dataclass(frozen=True)
class Custody:
    """What opens the key-encryption keys once the Kubernetes cluster is gone."""

    recovery_key: X25519PrivateKey | None = None
    providers: Mapping[str, KeyProvider] = field(default_factory=dict)
    """HSM-backed providers (kmip, pkcs11), configured like the operator's."""


def key_records(store: ObjectStore, prefix: str) -> list[str]:
    """The object keys of every key record under `prefix`."""
    return store.keys_ending(prefix.strip("/") + "/" if prefix.strip("/") else "", f"/{KEY_RECORD}")


def read_record(store: ObjectStore, key: str) -> KeyRecord:
    data = store.read_small(key)
    if data is None:
        raise Refused("BackupNotFound", f"no key record at {key}")
    try:
        return KeyRecord.model_validate_json(data)
    except ValidationError:
        raise Refused("KeyRecordInvalid", f"{key} is not a key record this Vauban reads") from None


def _kek_from_escrow(store: ObjectStore, record: KeyRecord, private: X25519PrivateKey) -> bytes:
    kek = record.kek
    if kek.escrow is None:
        raise Refused(
            "NotEscrowed",
            f"the key-encryption key {kek.id} v{kek.version} was never escrowed to a recovery "
            "key: its backups did not survive the loss of their cluster",
        )
    data = store.read_small(kek.escrow)
    if data is None:
        raise Refused("NotEscrowed", f"the escrow {kek.escrow} is missing from the bucket")
    try:
        escrow = KekEscrow.model_validate_json(data)
    except ValidationError:
        raise Refused("EscrowInvalid", f"{kek.escrow} is not a KEK escrow") from None
    mine = recovery.fingerprint(private.public_key())
    if escrow.recipient != mine:
        raise Refused(
            "WrongRecoveryKey",
            f"{kek.id} v{kek.version} is sealed to recovery key {escrow.recipient}, and the "
            f"key given is {mine}",
        )
    try:
        return recovery.open_sealed(
            private, escrow.sealed, escrow_context(record.cluster.uid, kek.id, kek.version)
        )
    except recovery.NotSealedToThisKey as e:
        raise Refused("WrongRecoveryKey", f"{kek.id} v{kek.version}: {e}") from None


def open_data_key(store: ObjectStore, record: KeyRecord, custody: Custody) -> bytes:
    """The record's data key, unwrapped by its KEK (from the escrow or the HSM), and the
    record proven written with it. Refused otherwise, with the reason."""
    kek, context = record.kek, data_key_context(record.database.uid)
    try:
        if kek.provider == "kubernetes-secret":
            if custody.recovery_key is None:
                raise Refused(
                    "NoRecoveryKey",
                    f"{kek.id} was a kubernetes-secret KEK: the recovery private key is needed",
                )
            material = _kek_from_escrow(store, record, custody.recovery_key)
            data_key = envelope.unwrap_key(material, record.wrapped_data_key, context)
        else:
            provider = custody.providers.get(kek.provider)
            if provider is None or kek.ref is None:
                raise Refused(
                    "KeyProviderNotConfigured",
                    f"{kek.id} v{kek.version} is held by a {kek.provider} HSM this drill is "
                    "not configured for",
                )
            data_key = provider.unwrap(kek.ref, record.wrapped_data_key, context)
    except (envelope.WrongKey, WrongKey):
        raise Refused(
            "WrongKey",
            f"{kek.id} v{kek.version} does not open the data key of "
            f"{record.database.namespace}/{record.database.name}",
        ) from None
    except KekNotFound:
        raise Refused(
            "KekDestroyed",
            f"the {kek.provider} HSM has no key {kek.id} v{kek.version}: destroyed "
            "(crypto-shredded), or this is another HSM",
        ) from None
    except KeyProviderError as e:
        raise Refused("KeyProviderUnavailable", f"the {kek.provider} HSM: {e}") from None
    try:
        record.authenticate(data_key)
    except RecordNotAuthentic as e:
        raise Refused("KeyRecordNotAuthentic", str(e)) from None
    return data_key


def authentic_backups(
    manifests: Iterable[Manifest], record: KeyRecord, data_key: bytes
) -> list[Manifest]:
    """The manifests written with this data key for this very database (format 2: every
    field authenticated), oldest first. Any other is skipped, and logged."""
    found = []
    for manifest in manifests:
        try:
            complete = manifest.data_key_id == record.data_key_id and manifest.authenticate(
                data_key
            )
        except ManifestNotAuthentic as e:
            logger.warning("skipping a backup: %s", e)
            continue
        identity = (manifest.namespace, manifest.managed_database, manifest.database_uid)
        wanted = (record.database.namespace, record.database.name, record.database.uid)
        if not complete or identity != wanted:
            logger.warning(
                "skipping %s: not an authenticated backup of %s", manifest.location, wanted
            )
            continue
        found.append(manifest)
    return sorted(found, key=lambda m: m.finished_at)


def latest_backup(
    store: ObjectStore, record_key: str, record: KeyRecord, data_key: bytes
) -> Manifest:
    prefix = record_key.removesuffix(KEY_RECORD)
    found = authentic_backups(store.list_manifests(prefix), record, data_key)
    if not found:
        raise Refused(
            "BackupNotFound",
            f"no authenticated backup of {record.database.namespace}/{record.database.name} "
            f"under {prefix}",
        )
    return found[-1]


def check_placement(record_key: str, record: KeyRecord) -> None:
    """Refused unless the record is where its database's backups are: an authentic record
    copied under another database's prefix does not open what is there."""
    database = record.database
    own = f"/{database.namespace}/{database.name}/{database.uid}/{KEY_RECORD}"
    if not f"/{record_key}".endswith(own):
        raise Refused(
            "KeyRecordMisplaced",
            f"{record_key} is the key record of {database.namespace}/{database.name} "
            f"(uid {database.uid}), which lives elsewhere",
        )
