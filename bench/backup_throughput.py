"""Backup throughput: `vauban agent backup` against `pg_dump | zstd` on the same database.

Starts its own PostgreSQL and versitygw on 127.0.0.1, builds a database of --size-gb with
generate_series (a mix of compressible and random-looking columns), then measures:

- the agent (a process, as in a Job): wall time, dump MB/s (pg_dump's bytes per second),
  stored bytes, and its peak RSS (VmHWM polled from /proc, and wait4's ru_maxrss, which also
  covers pg_dump);
- the reference pipelines, output to /dev/null: `pg_dump -Fc --compress=0 | zstd -3` (the
  agent's work without encryption and upload) and `pg_dump -Fc | zstd -3` (pg_dump's own
  gzip, then zstd).

The agent and the first reference run in turn, `--repeats` times each, and the ratio is the
median's: run-to-run spread on a shared 2-core machine is larger than the gap measured. Each
run also says where the machine's CPU went (the agent with pg_dump, PostgreSQL, versitygw);
`--profile` samples the agent's first run with py-spy.

Prints the numbers and writes bench/results/backup_throughput.json. Not part of `make test`:

    .venv/bin/python bench/backup_throughput.py [--size-gb 1] [--repeats 3] [--profile]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from proc import start_profiler, stop_profiler, tree_cpu_seconds

from vauban.backup.postgres import find_client
from vauban.devcluster.postgres import PostgresServer
from vauban.devcluster.s3 import S3Server

ROLE, PASSWORD, DATABASE, BUCKET = "bench_agent", "bench-password", "bench", "bench-backups"
RESULTS = Path(__file__).resolve().parent / "results" / "backup_throughput.json"
MB = 1_000_000
AGENT_CODE = ("vauban/", "minio/", "urllib3/", "zstandard", "cryptography/", "psycopg/")
"""Where the agent's profile is summed by function, callees included."""


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


class Servers:
    """The CPU the servers spent during one run: PostgreSQL (backends included) and versitygw."""

    def __init__(self, pg: PostgresServer, s3: S3Server) -> None:
        assert pg.process is not None and s3.process is not None
        self._pids = {"postgresql": pg.process.pid, "versitygw": s3.process.pid}
        self._start = self._now()

    def _now(self) -> dict[str, float]:
        return {name: tree_cpu_seconds(pid) for name, pid in self._pids.items()}

    def spent(self) -> dict[str, float]:
        now = self._now()
        return {name: round(now[name] - self._start[name], 2) for name in now}


def _children_cpu(usage: Any) -> float:
    return round(float(usage.ru_utime + usage.ru_stime), 2)


def run_agent(
    env: dict[str, str], servers: Servers, location: str, profile: Path | None
) -> dict[str, Any]:
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "vauban", "agent", "backup", "--location", location],
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
    profiler = start_profiler(process.pid, profile) if profile else None
    assert process.stdout is not None
    stdout = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.monotonic() - started
    watcher.join()
    samples = stop_profiler(profiler, profile, AGENT_CODE) if profiler and profile else None
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
        "cpuSeconds": {"agentAndPgDump": _children_cpu(usage), **servers.spent()},
        **({"profile": samples} if samples else {}),
    }


def run_reference(
    env: dict[str, str], servers: Servers, pg: PostgresServer, pg_dump_args: str
) -> dict[str, Any]:
    """pg_dump piped to the zstd command, output counted and thrown away. The same pg_dump
    binary as the agent's (not Debian's wrapper on PATH, which adds its Perl start-up)."""
    zstd = shutil.which("zstd")
    if zstd is None:
        raise RuntimeError("the zstd command is needed for the reference (apt-get install zstd)")
    pg_dump = find_client("pg_dump", int(pg.version.split(".")[0]), None)
    command = f"{pg_dump} {pg_dump_args} --dbname={DATABASE} | {zstd} -3 -q -c | wc -c"
    started = time.monotonic()
    process = subprocess.Popen(
        ["bash", "-o", "pipefail", "-c", command], env=env, stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    stdout = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{command} failed")
    return {
        "command": command.split(" | wc")[0],
        "seconds": round(elapsed, 2),
        "storedBytes": int(stdout),
        "cpuSeconds": {"pipeline": _children_cpu(usage), **servers.spent()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="py-spy on the first agent run")
    parser.add_argument(
        "--no-gzip", action="store_true", help="skip the `pg_dump -Fc | zstd` reference"
    )
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
            agents: list[dict[str, Any]] = []
            references: list[dict[str, Any]] = []
            for repeat in range(1, args.repeats + 1):
                print(f"agent backup ({repeat}/{args.repeats})...", flush=True)
                profile = (
                    RESULTS.with_name("backup_profile.txt")
                    if args.profile and repeat == 1
                    else None
                )
                agent = run_agent(env, Servers(server, s3), f"bench/run-{repeat}", profile)
                agents.append(agent)
                print(f"  { ({k: v for k, v in agent.items() if k != 'profile'}) }")
                print(f"pg_dump -Fc --compress=0 | zstd -3 ({repeat}/{args.repeats})...")
                same_work = run_reference(env, Servers(server, s3), server, "-Fc --compress=0")
                same_work["dumpMBps"] = round(agent["dumpBytes"] / MB / same_work["seconds"], 1)
                references.append(same_work)
                print(f"  {same_work}")
            literal: dict[str, Any] | None = None
            if not args.no_gzip:
                print("pg_dump -Fc | zstd -3 (once)...", flush=True)
                literal = run_reference(env, Servers(server, s3), server, "-Fc")
                literal["dumpMBps"] = round(agents[0]["dumpBytes"] / MB / literal["seconds"], 1)
                print(f"  {literal}")
        finally:
            server.destroy()

    agent_s = statistics.median(a["seconds"] for a in agents)
    same_work_s = statistics.median(r["seconds"] for r in references)
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "postgres": server.bindir.parent.name,
            "loadAverageAtEnd": os.getloadavg()[0],
        },
        "databaseBytes": database_bytes,
        "agent": agents,
        "reference": {"compress0ThenZstd": references, "pgDumpGzipThenZstd": literal},
        "median": {
            "agentSeconds": agent_s,
            "compress0ThenZstdSeconds": same_work_s,
            "agentPeakRssMiB": statistics.median(a["peakRssMiB"] for a in agents),
        },
        "ratio": {
            "agentToCompress0Zstd": round(same_work_s / agent_s, 2),
            **({"agentToPgDumpFcZstd": round(literal["seconds"] / agent_s, 2)} if literal else {}),
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report["ratio"]))
    print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
