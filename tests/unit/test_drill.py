"""The drill's decisions on an in-memory bucket: which key opens what, which backup is a
database's own, and every refusal's reason. (The whole drill, against versitygw and
PostgreSQL, is in tests/dataplane/test_dataplane_drill.py.)"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from vauban import custody, drill
from vauban.backup import recovery as documents
from vauban.backup.manifest import Manifest, key_context
from vauban.builders.keys import data_key_context, data_key_id
from vauban.crypto import envelope, recovery
from vauban.devcluster.softhsm import SoftHsm
from vauban.kms.local import SecretKeyProvider
from vauban.kms.pkcs11 import Pkcs11Provider

CLUSTER = documents.Identity(namespace="platform", name="main", uid="c-uid")
KEK_ID = "vauban-kek-c-uid"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Bucket:
    """The few calls the drill makes before it downloads a backup."""

    bucket = "mem"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def read_small(self, key: str) -> bytes | None:
        return self.objects.get(key)

    def keys_ending(self, prefix: str, suffix: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix) and k.endswith(suffix))

    def list_manifests(self, prefix: str) -> list[Manifest]:
        return [
            Manifest.from_json(v)
            for k, v in self.objects.items()
            if k.startswith(prefix) and k.endswith("/manifest.json")
        ]

    def check_bucket(self) -> None:
        pass


def manifest(location: str, uid: str, namespace: str, name: str, dek: bytes, at: int) -> Manifest:
    backup_id = f"{at:032x}"
    return Manifest(
        backup_id=backup_id,
        location=location,
        database="db",
        server_version="17.0",
        started_at=T0 + timedelta(hours=at),
        finished_at=T0 + timedelta(hours=at, minutes=1),
        dump_bytes=10,
        stored_bytes=10,
        sha256="0" * 64,
        chunk_size=1024,
        data_key_id=data_key_id(uid),
        wrapped_key=envelope.wrap_key(
            dek, envelope.generate_key(), key_context(location, data_key_id(uid), backup_id)
        ),
        namespace=namespace,
        managed_database=name,
        database_uid=uid,
    ).sealed(dek)


class World:
    def __init__(self, provider: str = "kubernetes-secret") -> None:
        self.bucket = Bucket()
        self.private, public = recovery.generate()
        self.kek = envelope.generate_key()
        self.kek_ref = base64.b64encode(self.kek).decode()
        self.provider = provider
        self.escrow = documents.escrow_key("p", CLUSTER.uid, 1)
        sealed = documents.escrow_kek(recovery.public_key(public), CLUSTER, KEK_ID, 1, self.kek)
        self.bucket.objects[self.escrow] = sealed.to_json()
        self.deks: dict[str, bytes] = {}

    def database(self, namespace: str, name: str, uid: str, backups: int = 2) -> str:
        dek = self.deks[uid] = envelope.generate_key()
        prefix = f"p/{namespace}/{name}/{uid}"
        record = documents.KeyRecord(
            cluster=CLUSTER,
            database=documents.Identity(namespace=namespace, name=name, uid=uid),
            data_key_id=data_key_id(uid),
            wrapped_data_key=envelope.wrap_key(self.kek, dek, data_key_context(uid)),
            kek=documents.KekReference(
                provider=self.provider,
                id=KEK_ID,
                version=1,
                ref=None if self.provider == "kubernetes-secret" else self.kek_ref,
                escrow=self.escrow if self.provider == "kubernetes-secret" else None,
            ),
        ).sealed(dek)
        self.bucket.objects[f"{prefix}/key.json"] = record.to_json()
        for at in range(backups):
            location = f"{prefix}/job-{at}"
            self.bucket.objects[f"{location}/manifest.json"] = manifest(
                location, uid, namespace, name, dek, at
            ).to_json()
        return f"{prefix}/key.json"

    def keys(self, **changes: object) -> custody.Custody:
        fields: dict[str, object] = {"recovery_key": recovery.private_key(self.private)}
        return custody.Custody(**{**fields, **changes})  # type: ignore[arg-type]

    def record(self, key: str) -> documents.KeyRecord:
        return custody.read_record(self.bucket, key)


def test_the_latest_of_two_backups_finished_within_one_second_is_the_later_one() -> None:
    """A small database backed up twice in a second: the manifest keeps the fraction, so the
    later backup is the latest even when its name sorts first."""
    world = World()
    key = world.database("team-a", "shop", "u1", backups=0)
    dek = world.deks["u1"]
    for name, fraction in (("backup-new", 900_000), ("backup-old", 100_000)):
        location = f"p/team-a/shop/u1/{name}"
        at = T0.replace(microsecond=fraction)
        written = manifest(location, "u1", "team-a", "shop", dek, 0).model_copy(
            update={"started_at": at, "finished_at": at}
        )
        world.bucket.objects[f"{location}/manifest.json"] = written.sealed(dek).to_json()
    latest = custody.latest_backup(world.bucket, key, world.record(key), dek)
    assert latest.location == "p/team-a/shop/u1/backup-new"


def refusal(world: World, key: str, held: custody.Custody) -> str:
    with pytest.raises(custody.Refused) as refused:
        custody.open_data_key(world.bucket, world.record(key), held)
    return refused.value.reason


def test_the_recovery_key_opens_the_escrowed_kek_and_the_data_key() -> None:
    world = World()
    key = world.database("team-a", "shop", "u1")
    opened = custody.open_data_key(world.bucket, world.record(key), world.keys())
    assert opened == world.deks["u1"]
    latest = custody.latest_backup(world.bucket, key, world.record(key), opened)
    assert latest.location == "p/team-a/shop/u1/job-1"


def test_refusals_say_why() -> None:
    world = World()
    key = world.database("team-a", "shop", "u1")
    other, _ = recovery.generate()
    assert refusal(world, key, world.keys(recovery_key=recovery.private_key(other))) == (
        "WrongRecoveryKey"
    )
    assert refusal(world, key, world.keys(recovery_key=None)) == "NoRecoveryKey"
    # A record re-pointed at another cluster's escrow context does not open.
    record = world.record(key)
    moved = record.model_copy(
        update={"cluster": documents.Identity(namespace="x", name="y", uid="other")}
    )
    world.bucket.objects[key] = moved.to_json()
    assert refusal(world, key, world.keys()) == "WrongRecoveryKey"
    del world.bucket.objects[world.escrow]
    world.bucket.objects[key] = record.to_json()
    assert refusal(world, key, world.keys()) == "NotEscrowed"


def test_an_altered_record_is_refused_after_its_key_opens() -> None:
    world = World()
    key = world.database("team-a", "shop", "u1")
    record = world.record(key)
    world.bucket.objects[key] = record.model_copy(
        update={"database": record.database.model_copy(update={"namespace": "team-b"})}
    ).to_json()
    # The wrap binds the uid, not the namespace: the record's MAC does.
    assert refusal(world, key, world.keys()) == "KeyRecordNotAuthentic"


def test_an_hsm_held_kek_is_opened_by_the_provider() -> None:
    world = World(provider="pkcs11")
    key = world.database("team-a", "shop", "u1")
    held = custody.Custody(providers={"pkcs11": SecretKeyProvider()})
    opened = custody.open_data_key(world.bucket, world.record(key), held)
    assert opened == world.deks["u1"]
    assert refusal(world, key, custody.Custody()) == "KeyProviderNotConfigured"


def test_only_this_databases_authenticated_backups_count() -> None:
    world = World()
    a = world.database("team-a", "shop", "u1", backups=1)
    world.database("team-b", "shop", "u2", backups=1)
    # team-b's manifest, newer, copied under team-a's prefix; and one for team-a's prefix
    # written with team-b's key.
    world.bucket.objects["p/team-a/shop/u1/job-9/manifest.json"] = manifest(
        "p/team-a/shop/u1/job-9", "u2", "team-b", "shop", world.deks["u2"], 9
    ).to_json()
    world.bucket.objects["p/team-a/shop/u1/job-8/manifest.json"] = manifest(
        "p/team-a/shop/u1/job-8", "u1", "team-a", "shop", world.deks["u2"], 8
    ).to_json()
    opened = custody.open_data_key(world.bucket, world.record(a), world.keys())
    found = custody.authentic_backups(
        world.bucket.list_manifests("p/team-a/shop/u1/"), world.record(a), opened
    )
    assert [m.location for m in found] == ["p/team-a/shop/u1/job-0"]


def test_a_record_copied_under_another_prefix_is_misplaced() -> None:
    world = World()
    a = world.database("team-a", "shop", "u1")
    world.database("team-b", "shop", "u2")
    world.bucket.objects["p/team-b/shop/u2/key.json"] = world.bucket.objects[a]
    result = drill.drill_one(world.bucket, "p/team-b/shop/u2/key.json", world.keys(), None)  # type: ignore[arg-type]
    assert result.reason == "KeyRecordMisplaced"
    assert not (result.found or result.decrypted or result.restored)


def test_a_kek_on_a_pkcs11_token_opens_until_it_is_destroyed(softhsm: SoftHsm) -> None:
    """The drill's custody is the HSM itself (SoftHSM2 here): the KEK never leaves it, and
    once destroyed (crypto-shredding) nothing opens, with a reason that says so."""
    token = Pkcs11Provider(softhsm.module, "vauban-other", softhsm.pin_file("vauban-other"))
    ref = token.create_kek("vauban-kek-drill-v1")
    world = World(provider="pkcs11")
    world.kek_ref = ref
    key = world.database("team-a", "shop", "u1")
    record = world.record(key)
    wrapped = token.wrap(ref, world.deks["u1"], data_key_context("u1"))
    record = record.model_copy(update={"wrapped_data_key": wrapped}).sealed(world.deks["u1"])
    world.bucket.objects[key] = record.to_json()
    held = custody.Custody(providers={"pkcs11": token})
    assert custody.open_data_key(world.bucket, world.record(key), held) == world.deks["u1"]
    token.destroy_kek(ref)
    assert refusal(world, key, held) == "KekDestroyed"
