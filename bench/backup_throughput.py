"""Backup throughput: `vauban agent backup` against `pg_dump | zstd` on the same database.

Starts its own PostgreSQL and versitygw on 127.0.0.1, builds a database of --size-gb with
generate_series (a mix of compressible and random-looking columns), then measures:

- the agent (a process, as in a Job): wall time, dump MB/s (pg_dump's bytes per second),
  stored bytes, and its peak RSS (VmHWM polled from /proc, and wait4's ru_maxrss, which also
  covers pg_dump);
- the reference pipelines, output to /dev/null: `pg_dump -Fc --compress=0 | zstd -3` (the
  agent's work without encryption and upload) and `pg_dump -Fc | zstd -3` (pg_dump's own
  gzip, then zstd).

Prints the numbers and writes bench/results/backup_throughput.json. Not part of `make test`:

    .venv/bin/python bench/backup_throughput.py [--size-gb 1]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from vauban.devcluster.postgres import PostgresServer
from vauban.devcluster.s3 import S3Server

ROLE, PASSWORD, DATABASE, BUCKET = "bench_agent", "bench-password", "bench", "bench-backups"
RESULTS = Path(__file__).resolve().parent / "results" / "backup_throughput.json"
MB = 1_000_000


def build_database(server: PostgresServer, size_gb: float) -> int:
    """About `size_gb` of table data; returns pg_database_size."""
    server.create_role(ROLE, PASSWORD, "CREATEDB")
    with server.superuser() as conn:
        conn.execute(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")
    # ~225 bytes a row on disk: ids and timestamps, hex digests (incompressible-ish text),
    # and a repetitive payload, as an application's table might have.
    rows = int(size_gb * 1e9 / 225)
    with psycopg.connect(
        host=str(server.root), port=server.port, user=ROLE, dbname=DATABASE, autocommit=True
    ) as conn:
        conn.execute(
            "CREATE TABLE events (id bigint, at timestamptz, customer int, digest text,"
            " kind text, payload text)"
        )
        step = 1_000_000
        for start in range(0, rows, step):
            conn.execute(
                """
                INSERT INTO events
                SELECT g, '2024-01-01'::timestamptz + g * interval '1 second', g %% 100000,
                       md5(g::text), 'kind-' || (g %% 17),
                       repeat(md5((g %% 1000)::text), 4)
                FROM generate_series(%s::bigint, %s::bigint) g
                """,
                (start + 1, min(start + step, rows)),
            )
        conn.execute("VACUUM ANALYZE events")
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    assert row is not None
    return int(row[0])


def run_agent(env: dict[str, str]) -> dict[str, Any]:
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "vauban", "agent", "backup", "--location", "bench/run-1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    peak_kb = 0

    def poll() -> None:
        nonlocal peak_kb
        status = Path(f"/proc/{process.pid}/status")
        while process.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak_kb = max(peak_kb, int(line.split()[1]))
            except OSError:
                break
            time.sleep(0.05)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    assert process.stdout is not None
    stdout = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.monotonic() - started
    watcher.join()
    result = json.loads(stdout)
    if process.returncode != 0:
        raise RuntimeError(f"the agent failed: {result}")
    manifest = result["manifest"]
    return {
        "seconds": round(elapsed, 2),
        "agentSeconds": result["durationSeconds"],
        "dumpBytes": manifest["dumpBytes"],
        "storedBytes": manifest["storedBytes"],
        "dumpMBps": round(manifest["dumpBytes"] / MB / elapsed, 1),
        "peakRssMiB": round(peak_kb / 1024, 1),
        "peakRssWithChildrenMiB": round(usage.ru_maxrss / 1024, 1),
    }


def run_reference(env: dict[str, str], pg_dump_args: str) -> dict[str, Any]:
    """pg_dump piped to the zstd command, output counted and thrown away."""
    zstd = shutil.which("zstd")
    if zstd is None:
        raise RuntimeError("the zstd command is needed for the reference (apt-get install zstd)")
    command = f"pg_dump {pg_dump_args} --dbname={DATABASE} | {zstd} -3 -q -c | wc -c"
    started = time.monotonic()
    out = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], env=env, capture_output=True, check=True
    )
    elapsed = time.monotonic() - started
    return {
        "command": command.split(" | wc")[0],
        "seconds": round(elapsed, 2),
        "storedBytes": int(out.stdout),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    args = parser.parse_args()

    with S3Server() as s3:
        s3.create_bucket(BUCKET)
        server = PostgresServer()
        server.start()
        try:
            print(f"building a {args.size_gb} GB database...", flush=True)
            started = time.monotonic()
            database_bytes = build_database(server, args.size_gb)
            print(f"  {database_bytes / MB:.0f} MB in {time.monotonic() - started:.0f} s")
            env = {
                **{
                    k: v
                    for k, v in os.environ.items()
                    if not k.startswith(("PG", "AWS_", "VAUBAN_"))
                },
                "PGHOST": "127.0.0.1",
                "PGPORT": str(server.port),
                "PGUSER": ROLE,
                "PGPASSWORD": PASSWORD,
                "PGDATABASE": DATABASE,
                "VAUBAN_S3_ENDPOINT": s3.endpoint,
                "VAUBAN_S3_REGION": s3.region,
                "VAUBAN_S3_BUCKET": BUCKET,
                "AWS_ACCESS_KEY_ID": s3.access_key,
                "AWS_SECRET_ACCESS_KEY": s3.secret_key,
                "VAUBAN_DATA_KEY": base64.b64encode(os.urandom(32)).decode(),
                "VAUBAN_DATA_KEY_ID": "bench/1",
            }
            print("agent backup...", flush=True)
            agent = run_agent(env)
            print(f"  {agent}")
            print("pg_dump -Fc --compress=0 | zstd -3 ...", flush=True)
            same_work = run_reference(env, "-Fc --compress=0")
            same_work["dumpMBps"] = round(agent["dumpBytes"] / MB / same_work["seconds"], 1)
            print(f"  {same_work}")
            print("pg_dump -Fc | zstd -3 ...", flush=True)
            literal = run_reference(env, "-Fc")
            literal["dumpMBps"] = round(agent["dumpBytes"] / MB / literal["seconds"], 1)
            print(f"  {literal}")
        finally:
            server.destroy()

    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "postgres": server.bindir.parent.name,
            "loadAverageAtEnd": os.getloadavg()[0],
        },
        "databaseBytes": database_bytes,
        "agent": agent,
        "reference": {"compress0ThenZstd": same_work, "pgDumpGzipThenZstd": literal},
        "ratio": {
            "agentToCompress0Zstd": round(same_work["seconds"] / agent["seconds"], 2),
            "agentToPgDumpFcZstd": round(literal["seconds"] / agent["seconds"], 2),
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report["ratio"]))
    print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
