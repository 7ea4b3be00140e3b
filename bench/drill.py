"""Recovery time: `vauban drill` restoring N databases of a given size from the bucket alone.

Starts its own PostgreSQL and versitygw on 127.0.0.1, builds --databases databases of about
--size-mb each, backs each up with `vauban agent backup` (a process, as in a Job), writes
beside the backups what the operator writes (each database's key record, the KEK sealed to a
recovery key), drops the source databases, then times `vauban drill` with the recovery
private key alone. Prints the per-database times and the total, and writes
bench/results/drill.json. Not part of `make test`:

    .venv/bin/python bench/drill.py [--databases 10] [--size-mb 100]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from vauban.backup import recovery as documents
from vauban.backup.storage import ObjectStore
from vauban.builders.keys import data_key_context, data_key_id
from vauban.crypto import envelope, recovery
from vauban.devcluster.postgres import PostgresServer
from vauban.devcluster.s3 import S3Server

ROLE, PASSWORD, BUCKET, PREFIX = "bench_drill", "bench-password", "bench-drill", "vauban"
RESULTS = Path(__file__).resolve().parent / "results" / "drill.json"


def build(server: PostgresServer, name: str, size_mb: int) -> None:
    with server.superuser() as conn:
        conn.execute(f"CREATE DATABASE {name} OWNER {ROLE}")
    rows = max(1, size_mb * 1_000_000 // 225)
    with psycopg.connect(
        host="127.0.0.1",
        port=server.port,
        user=ROLE,
        password=PASSWORD,
        dbname=name,
        autocommit=True,
    ) as conn:
        conn.execute("CREATE TABLE events (id bigint, at timestamptz, digest text, payload text)")
        conn.execute(
            "INSERT INTO events SELECT g, now() - g * interval '1 second', md5(g::text),"
            " repeat('payload ', 16) FROM generate_series(1, %s) g",
            (rows,),
        )


def environment(server: PostgresServer, s3: S3Server, **extra: str) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "AWS_", "VAUBAN_"))}
    return {
        **inherited,
        "PGHOST": "127.0.0.1",
        "PGPORT": str(server.port),
        "PGUSER": ROLE,
        "PGPASSWORD": PASSWORD,
        "PGSSLMODE": "disable",
        "VAUBAN_S3_ENDPOINT": s3.endpoint,
        "VAUBAN_S3_REGION": s3.region,
        "VAUBAN_S3_BUCKET": BUCKET,
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        **extra,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--databases", type=int, default=10)
    parser.add_argument("--size-mb", type=int, default=100)
    args = parser.parse_args()
    private, public = recovery.generate()
    cluster = documents.Identity(namespace="platform", name="main", uid=str(uuid.uuid4()))
    kek_id, kek = f"vauban-kek-{cluster.uid}", envelope.generate_key()
    server = PostgresServer()
    server.start()
    try:
        server.create_role(ROLE, PASSWORD, "CREATEDB", "CREATEROLE")
        with S3Server(buckets=(BUCKET,)) as s3:
            store = ObjectStore(s3.endpoint, s3.region, BUCKET, s3.access_key, s3.secret_key)
            escrow_at = documents.escrow_key(PREFIX, cluster.uid, 1)
            escrow = documents.escrow_kek(recovery.public_key(public), cluster, kek_id, 1, kek)
            store.put_bytes(escrow_at, escrow.to_json(), None)
            stored = 0
            for index in range(args.databases):
                uid, name = str(uuid.uuid4()), f"db{index:03d}"
                build(server, name, args.size_mb)
                data_key = envelope.generate_key()
                prefix = f"{PREFIX}/team/{name}/{uid}"
                backup = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "vauban",
                        "agent",
                        "backup",
                        "--location",
                        f"{prefix}/backup-1",
                    ],
                    env=environment(
                        server,
                        s3,
                        PGDATABASE=name,
                        VAUBAN_DATA_KEY=base64.b64encode(data_key).decode(),
                        VAUBAN_DATA_KEY_ID=data_key_id(uid),
                        VAUBAN_DATABASE_NAMESPACE="team",
                        VAUBAN_DATABASE_NAME=name,
                        VAUBAN_DATABASE_UID=uid,
                    ),
                    capture_output=True,
                    text=True,
                    check=True,
                )
                stored += json.loads(backup.stdout)["manifest"]["storedBytes"]
                record = documents.KeyRecord(
                    cluster=cluster,
                    database=documents.Identity(namespace="team", name=name, uid=uid),
                    data_key_id=data_key_id(uid),
                    wrapped_data_key=envelope.wrap_key(kek, data_key, data_key_context(uid)),
                    kek=documents.KekReference(
                        provider="kubernetes-secret", id=kek_id, version=1, escrow=escrow_at
                    ),
                ).sealed(data_key)
                store.put_bytes(documents.key_record_key(prefix), record.to_json(), None)
                with server.superuser() as conn:
                    conn.execute(f"DROP DATABASE {name}")
            with tempfile.TemporaryDirectory() as folder:
                key_file = Path(folder) / "recovery.key"
                key_file.write_text(private, encoding="utf-8")
                started = time.monotonic()
                drilled = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "vauban",
                        "drill",
                        "--prefix",
                        PREFIX,
                        "--recovery-key-file",
                        str(key_file),
                    ],
                    env=environment(server, s3, PGDATABASE="postgres"),
                    capture_output=True,
                    text=True,
                    check=False,
                )
                wall = time.monotonic() - started
    finally:
        server.destroy()
    report: dict[str, Any] = json.loads(drilled.stdout)
    seconds = [d["seconds"] for d in report["databases"]]
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "databases": args.databases,
        "sizeMb": args.size_mb,
        "storedBytes": stored,
        "restored": report["summary"]["restored"],
        "wallSeconds": round(wall, 2),
        "perDatabaseSeconds": {
            "min": min(seconds),
            "median": sorted(seconds)[len(seconds) // 2],
            "max": max(seconds),
        },
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0 if drilled.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
