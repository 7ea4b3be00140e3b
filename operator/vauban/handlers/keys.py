"""Envelope keys: a key-encryption key (KEK) per cluster, held by the cluster's key provider,
and a data key (DEK) per database, stored only wrapped by the KEK — both recorded in Secrets
of the operator's namespace.

A key is created once and never replaced: a missing KEK while data keys wrapped by it exist
is reported (KeyMissing), not regenerated, since a new key would not open anything and would
hide the loss. Rotation adds a KEK version and re-wraps the data keys; backups, encrypted
with keys the data keys wrap, are never touched, and every old version stays until no data
key needs it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime

from vauban import timefmt
from vauban.api.cluster import ManagedClusterSpec
from vauban.builders import keys
from vauban.builders.backup import Database, DataKey
from vauban.conditions import Reason, State, Verdict
from vauban.crypto.envelope import generate_key
from vauban.handlers.context import Context
from vauban.kms import KeyProvider, KeyProviderError, WrongKey
from vauban.reconcile.database import ClusterView

logger = logging.getLogger(__name__)


def _missing(what: str) -> Verdict:
    return Verdict(
        State.STALLED,
        Reason.KEY_MISSING,
        f"{what} Backups encrypted with it cannot be read, and Vauban does not make a new one "
        "that would hide the loss: restore the Secret (or the key manager's key) from the "
        "platform's escrow.",
    )


def _unavailable(provider: str, error: Exception) -> Verdict:
    return Verdict(
        State.WAITING,
        Reason.KEY_PROVIDER_UNAVAILABLE,
        f"The key provider {provider} cannot be used: {error}",
    )


def provider_of(ctx: Context, name: str) -> KeyProvider | Verdict:
    provider = ctx.key_providers.get(name)
    if provider is None:
        return Verdict(
            State.STALLED,
            Reason.KEY_PROVIDER_UNAVAILABLE,
            f"The key provider {name} is not configured on this operator; ask the platform "
            "team (see docs/security.md).",
        )
    return provider


@dataclass(frozen=True)
class Kek:
    """A cluster's key-encryption key as recorded: every version's reference."""

    secret: str
    provider: str
    current: int
    versions: dict[int, str]
    created: dict[int, datetime]

    @property
    def current_ref(self) -> str:
        return self.versions[self.current]


async def read_kek(ctx: Context, owner: keys.KekOwner) -> Kek | None:
    namespace = ctx.settings.namespace
    name = keys.kek_secret_name(owner.uid)
    found = await ctx.kube.read_secret_and_annotations(namespace, name)
    if found is None:
        return None
    values, annotations = found
    versions = {int(k[1:]): v for k, v in values.items() if k.startswith("v") and k[1:].isdigit()}
    created = {}
    for version in versions:
        stamp = timefmt.parse_rfc3339(annotations.get(keys.created_annotation(version)))
        if stamp is not None:
            created[version] = stamp
    return Kek(
        name,
        values.get(keys.PROVIDER, "kubernetes-secret"),
        int(values[keys.CURRENT]),
        versions,
        created,
    )


async def _write_kek(ctx: Context, owner: keys.KekOwner, kek: Kek, *, create: bool) -> None:
    body = keys.kek_secret(
        owner,
        namespace=ctx.settings.namespace,
        provider=kek.provider,
        versions=kek.versions,
        current=kek.current,
        created={v: timefmt.rfc3339(t) for v, t in kek.created.items()},
    )
    if create:
        await ctx.kube.create_secret_if_absent(body)
    else:
        await ctx.kube.apply_secret(body)


async def ensure_kek(ctx: Context, owner: keys.KekOwner, provider_name: str) -> Kek | Verdict:
    """The cluster's KEK, created (version 1) by its provider on first use."""
    kek = await read_kek(ctx, owner)
    if kek is not None:
        return kek
    provider = provider_of(ctx, provider_name)
    if isinstance(provider, Verdict):
        return provider
    try:
        ref = await asyncio.to_thread(provider.create_kek, f"{keys.kek_secret_name(owner.uid)}-v1")
    except KeyProviderError as e:
        return _unavailable(provider_name, e)
    now = timefmt.now()
    await _write_kek(
        ctx,
        owner,
        Kek(keys.kek_secret_name(owner.uid), provider_name, 1, {1: ref}, {1: now}),
        create=True,
    )
    logger.info(
        "created key-encryption key for %s/%s (%s)", owner.namespace, owner.name, provider_name
    )
    # Another replica may have won the race: the stored key is the one.
    stored = await read_kek(ctx, owner)
    assert stored is not None
    return stored


async def data_key(
    ctx: Context, cluster: keys.KekOwner, provider_name: str, database: Database, *, create: bool
) -> DataKey | Verdict:
    """The database's data key, unwrapped; created (and wrapped by the cluster's current
    KEK) when `create` and it does not exist yet."""
    namespace = ctx.settings.namespace
    name = keys.data_key_secret_name(database.uid)
    stored = await ctx.kube.read_secret(namespace, name)
    if stored is None:
        if not create:
            return _missing(f"The data key of ManagedDatabase {database.name} is gone.")
        kek = await ensure_kek(ctx, cluster, provider_name)
        if isinstance(kek, Verdict):
            return kek
        provider = provider_of(ctx, kek.provider)
        if isinstance(provider, Verdict):
            return provider
        material = generate_key()
        try:
            wrapped = await asyncio.to_thread(
                provider.wrap, kek.current_ref, material, keys.data_key_context(database.uid)
            )
        except KeyProviderError as e:
            return _unavailable(kek.provider, e)
        await ctx.kube.create_secret_if_absent(
            keys.data_key_secret(
                namespace=namespace,
                cluster_uid=cluster.uid,
                database=f"{database.namespace}/{database.name}",
                database_uid=database.uid,
                kek=kek.secret,
                kek_version=kek.current,
                wrapped=wrapped,
                created=timefmt.now_rfc3339(),
            )
        )
        stored = await ctx.kube.read_secret(namespace, name)
        assert stored is not None
    return await unwrap_data_key(ctx, stored, database.uid)


async def database_key(
    ctx: Context, cluster: ClusterView, cluster_spec: ManagedClusterSpec, database: Database
) -> DataKey | Verdict:
    """The data key of `database` on `cluster`, unwrapped; made on first use, wrapped by the
    cluster's current KEK (itself made by the cluster's encryption provider on first use)."""
    owner = keys.KekOwner(cluster.namespace, cluster.name, cluster.uid)
    return await data_key(ctx, owner, cluster_spec.encryption.provider, database, create=True)


async def unwrap_data_key(
    ctx: Context, stored: dict[str, str], database_uid: str
) -> DataKey | Verdict:
    kek_name, version = stored[keys.KEK], int(stored[keys.KEK_VERSION])
    kek = await ctx.kube.read_secret(ctx.settings.namespace, kek_name)
    if kek is None or keys.version_key(version) not in kek:
        return _missing(f"Key-encryption key {kek_name} (version {version}) is missing.")
    provider = provider_of(ctx, kek.get(keys.PROVIDER, "kubernetes-secret"))
    if isinstance(provider, Verdict):
        return provider
    try:
        material = await asyncio.to_thread(
            provider.unwrap,
            kek[keys.version_key(version)],
            keys.decode(stored[keys.WRAPPED_KEY]),
            keys.data_key_context(database_uid),
        )
    except WrongKey:
        return _missing(
            f"Key-encryption key {kek_name} (version {version}) does not open the data key: "
            "it was replaced or destroyed."
        )
    except KeyProviderError as e:
        return _unavailable(provider.name, e)
    return DataKey(stored[keys.KEY_ID], material)


async def data_key_by_id(ctx: Context, key_id: str) -> DataKey | Verdict:
    """A data key named in a backup's manifest (a restore from another database's backup)."""
    uid = keys.database_uid_of(key_id)
    stored = (
        None
        if uid is None
        else await ctx.kube.read_secret(ctx.settings.namespace, keys.data_key_secret_name(uid))
    )
    if uid is None or stored is None:
        return _missing(
            f"Data key {key_id} no longer exists: its database was deleted and its data key "
            "destroyed (crypto-shredding), or its retention after deletion ran out."
        )
    return await unwrap_data_key(ctx, stored, uid)


async def rotate(ctx: Context, owner: keys.KekOwner, kek: Kek) -> Kek | Verdict:
    """Add a KEK version, make it current, and re-wrap every data key of the cluster with it.
    Backups are untouched: they are encrypted with keys the data keys wrap."""
    provider = provider_of(ctx, kek.provider)
    if isinstance(provider, Verdict):
        return provider
    version = max(kek.versions) + 1
    try:
        ref = await asyncio.to_thread(
            provider.create_kek, f"{keys.kek_secret_name(owner.uid)}-v{version}"
        )
    except KeyProviderError as e:
        return _unavailable(kek.provider, e)
    rotated = Kek(
        kek.secret,
        kek.provider,
        version,
        {**kek.versions, version: ref},
        {**kek.created, version: timefmt.now()},
    )
    # The new version is recorded before any data key uses it.
    await _write_kek(ctx, owner, rotated, create=False)
    namespace = ctx.settings.namespace
    names = await ctx.kube.secret_annotations(
        namespace, f"vauban.dev/key=dek,{keys.CLUSTER_UID_LABEL}={owner.uid}"
    )
    for name in sorted(names):
        stored = await ctx.kube.read_secret(namespace, name)
        if stored is None or int(stored[keys.KEK_VERSION]) == version:
            continue
        uid = name.removeprefix("vauban-dek-")
        context = keys.data_key_context(uid)
        try:
            material = await asyncio.to_thread(
                provider.unwrap,
                kek.versions[int(stored[keys.KEK_VERSION])],
                keys.decode(stored[keys.WRAPPED_KEY]),
                context,
            )
            wrapped = await asyncio.to_thread(provider.wrap, ref, material, context)
        except (WrongKey, KeyError, KeyProviderError) as e:
            logger.error("data key %s could not be re-wrapped: %s", name, type(e).__name__)
            continue
        await ctx.kube.update_secret_values(
            namespace,
            name,
            {keys.WRAPPED_KEY: keys.encode(wrapped), keys.KEK_VERSION: str(version)},
        )
    logger.info(
        "rotated key-encryption key of %s/%s to version %d", owner.namespace, owner.name, version
    )
    return rotated


async def destroy_data_key(ctx: Context, database_uid: str) -> None:
    """Crypto-shredding: without its data key, no backup of the database can be read."""
    await ctx.kube.delete_secret(ctx.settings.namespace, keys.data_key_secret_name(database_uid))
