"""Recovery from the bucket alone: backups made by the real agent, the key records and KEK
escrows the operator writes beside them, then everything else gone (source databases, keys,
Kubernetes). `vauban drill`, given only the bucket and the recovery private key, restores
each database's latest backup into a scratch database and counts its rows; with the wrong
recovery key it refuses, says why, and creates nothing."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from dataplane.harness import Agent, connect, create_database
from vauban.backup import recovery as documents
from vauban.builders.keys import data_key_context, data_key_id
from vauban.crypto import envelope, recovery
from vauban.devcluster.postgres import PostgresServer

pytestmark = pytest.mark.dataplane


@dataclass(frozen=True)
class Source:
    namespace: str
    name: str
    uid: str
    rows: int

    @property
    def dbname(self) -> str:
        return f"dr_{self.name}_{self.uid[:8]}"


@dataclass(frozen=True)
class Bucket:
    prefix: str
    sources: list[Source]
    recovery_private: str


def _populate(postgres: PostgresServer, source: Source) -> None:
    create_database(postgres, source.dbname)
    with connect(postgres, source.dbname) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, label text, owner text)")
        conn.execute(
            "INSERT INTO items SELECT g, 'item ' || g, %s FROM generate_series(1, %s) g",
            (source.namespace, source.rows),
        )


def _back_up(agent: Agent, prefix: str, source: Source, data_key: bytes, job: str) -> None:
    location = f"{prefix}/{source.namespace}/{source.name}/{source.uid}/{job}"
    outcome = agent.run(
        "backup",
        "--location",
        location,
        PGDATABASE=source.dbname,
        VAUBAN_DATA_KEY=base64.b64encode(data_key).decode(),
        VAUBAN_DATA_KEY_ID=data_key_id(source.uid),
        VAUBAN_DATABASE_NAMESPACE=source.namespace,
        VAUBAN_DATABASE_NAME=source.name,
        VAUBAN_DATABASE_UID=source.uid,
    )
    assert outcome.code == 0, outcome


@pytest.fixture
def lost_cluster(agent: Agent, postgres: PostgresServer) -> Bucket:
    """A cluster's bucket as the operator leaves it: backups of three databases of two
    tenants, each database's key record, the KEK sealed to the recovery key. Then the cluster
    is lost: the source databases are dropped, and no key survives but the recovery key."""
    prefix = f"vauban-dr-{uuid.uuid4().hex[:8]}"
    private, public = recovery.generate()
    cluster = documents.Identity(namespace="platform", name="main", uid=str(uuid.uuid4()))
    kek_id, kek = f"vauban-kek-{cluster.uid}", envelope.generate_key()
    escrow = documents.escrow_kek(recovery.public_key(public), cluster, kek_id, 1, kek)
    store = agent.store()
    escrow_at = documents.escrow_key(prefix, cluster.uid, 1)
    store.put_bytes(escrow_at, escrow.to_json(), None)
    sources = [
        Source("team-a", "shop", str(uuid.uuid4()), 1500),
        Source("team-a", "crm", str(uuid.uuid4()), 40),
        Source("team-b", "shop", str(uuid.uuid4()), 777),
    ]
    for source in sources:
        _populate(postgres, source)
        data_key = envelope.generate_key()
        _back_up(agent, prefix, source, data_key, "backup-old")
        with connect(postgres, source.dbname) as conn:
            conn.execute("DELETE FROM items WHERE id > %s", (source.rows - 10,))
        _back_up(agent, prefix, source, data_key, "backup-new")
        record = documents.KeyRecord(
            cluster=cluster,
            database=documents.Identity(
                namespace=source.namespace, name=source.name, uid=source.uid
            ),
            data_key_id=data_key_id(source.uid),
            wrapped_data_key=envelope.wrap_key(kek, data_key, data_key_context(source.uid)),
            kek=documents.KekReference(
                provider="kubernetes-secret", id=kek_id, version=1, escrow=escrow_at
            ),
        ).sealed(data_key)
        database_prefix = f"{prefix}/{source.namespace}/{source.name}/{source.uid}"
        store.put_bytes(documents.key_record_key(database_prefix), record.to_json(), None)
        with postgres.superuser() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(source.dbname))
            )
    return Bucket(prefix, sources, private)


def drill(agent: Agent, bucket: Bucket, key_file: Path) -> tuple[int, dict[str, Any], str]:
    env = agent.process_env(
        {
            "PGDATABASE": "postgres",
            "VAUBAN_DATA_KEY": None,
            "VAUBAN_DATA_KEY_ID": None,
            "VAUBAN_DATABASE_NAMESPACE": None,
            "VAUBAN_DATABASE_NAME": None,
            "VAUBAN_DATABASE_UID": None,
        }
    )
    process = subprocess.run(
        [
            *(sys.executable, "-m", "vauban", "drill", "--prefix", bucket.prefix),
            *("--recovery-key-file", str(key_file)),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = json.loads(process.stdout) if process.stdout.strip() else {}
    return process.returncode, report, process.stderr


def scratch_leftovers(postgres: PostgresServer) -> list[str]:
    with postgres.superuser() as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'vauban_drill_%'"
            " UNION ALL SELECT rolname FROM pg_roles WHERE rolname LIKE 'vauban_drill_%'"
        ).fetchall()
    return [str(r[0]) for r in rows]


def _key_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recovery.key"
    path.write_text(text + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def test_drill_restores_every_database_from_the_bucket_and_the_recovery_key(
    agent: Agent, postgres: PostgresServer, lost_cluster: Bucket, tmp_path: Path
) -> None:
    code, report, stderr = drill(
        agent, lost_cluster, _key_file(tmp_path, lost_cluster.recovery_private)
    )
    assert code == 0, stderr
    assert report["summary"]["databases"] == 3 and report["summary"]["restored"] == 3
    by_uid = {d["uid"]: d for d in report["databases"]}
    for source in lost_cluster.sources:
        found = by_uid[source.uid]
        assert (found["namespace"], found["name"], found["cluster"]) == (
            source.namespace,
            source.name,
            "platform/main",
        )
        assert found["found"] and found["decrypted"] and found["restored"], found
        # The latest backup, not the first: ten rows fewer.
        assert found["location"].endswith("/backup-new")
        assert found["rowsPerTable"] == {"public.items": source.rows - 10}
        assert found["seconds"] > 0
    assert scratch_leftovers(postgres) == []


def test_wrong_recovery_key_is_refused_and_nothing_is_restored(
    agent: Agent, postgres: PostgresServer, lost_cluster: Bucket, tmp_path: Path
) -> None:
    wrong, _ = recovery.generate()
    code, report, _ = drill(agent, lost_cluster, _key_file(tmp_path, wrong))
    assert code == 1
    assert report["summary"]["restored"] == 0
    for found in report["databases"]:
        assert not found["found"] and not found["decrypted"] and not found["restored"]
        assert found["reason"] == "WrongRecoveryKey"
        assert "sealed to recovery key" in found["message"]
        # The key is named by its fingerprint only, never shown.
        assert wrong.split(":")[1] not in found["message"]
    assert scratch_leftovers(postgres) == []


def test_another_tenants_backup_never_passes_for_this_database(
    agent: Agent, postgres: PostgresServer, lost_cluster: Bucket, tmp_path: Path
) -> None:
    """Whoever writes the bucket copies team-b's latest backup, newer, under team-a's shop,
    and team-a's key record under team-b's prefix: the drill restores each database's own
    backup, and refuses the record that is not team-b's."""
    store = agent.store()
    a, _, b = lost_cluster.sources
    prefix = lost_cluster.prefix
    a_prefix = f"{prefix}/{a.namespace}/{a.name}/{a.uid}"
    b_prefix = f"{prefix}/{b.namespace}/{b.name}/{b.uid}"
    for name in ("manifest.json", "data"):
        data = store.read_small(f"{b_prefix}/backup-new/{name}")
        assert data is not None
        store.put_bytes(f"{a_prefix}/backup-zz/{name}", data, None)
    a_record = store.read_small(f"{a_prefix}/key.json")
    assert a_record is not None
    store.put_bytes(f"{b_prefix}/key.json", a_record, None)

    code, report, _ = drill(agent, lost_cluster, _key_file(tmp_path, lost_cluster.recovery_private))
    assert code == 1
    results = {d["location"] is not None: d for d in report["databases"] if d["uid"] == a.uid}
    misplaced, at_home = results[False], results[True]
    assert misplaced["reason"] == "KeyRecordMisplaced" and not misplaced["restored"]
    assert at_home["restored"] and at_home["location"] == f"{a_prefix}/backup-new"
    assert at_home["rowsPerTable"] == {"public.items": a.rows - 10}
    # team-b's database is not in the report as restored from anything of team-a's.
    assert all(d["uid"] != b.uid for d in report["databases"])
    assert scratch_leftovers(postgres) == []
