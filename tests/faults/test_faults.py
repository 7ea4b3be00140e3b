"""Faults injected into a running fleet: the operator killed with SIGKILL (during a burst,
during rotations), PostgreSQL stopped, the apiserver frozen, the object store stopped
mid-backup, the admin Secret deleted and restored, a credentials Secret deleted, the whole
status of every object wiped (after restores and rotations, through an outage).

Each test injects the fault, reads status and metrics during it, ends it, and asserts the
recovery and that nothing was lost, duplicated or orphaned — from the server itself
(`pg_roles`, `pg_database`, Vauban's registry), from Secrets that really log in. The times
measured are printed (`pytest -s`) and kept in docs/conditions.md; the bounds asserted are
loose on purpose (a busy 2-core CI machine), the measured figures are what the docs state.

A control plane, a PostgreSQL server, an S3 server (versitygw, with the agent's pods run on
loopback) and an operator of this module's own: killing and freezing them must not disturb
the other tests.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dataplane.harness import multipart_uploads, pause_pg_dump_mid_upload
from support.backups import finished, managed_backup, object_store
from support.kube import (
    OPERATOR_NAMESPACE,
    KubeCtl,
    OperatorProcess,
    condition,
    eventually,
    external_cluster,
    operator_namespace,
    own_control_plane,
    string_secret,
)
from support.vauban_process import running_operator
from vauban.devcluster.agentrunner import AgentRunner
from vauban.devcluster.postgres import PostgresServer
from vauban.devcluster.s3 import S3Server

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("VAUBAN_TEST_KUBECONFIG")),
    reason="freezes and kills a control plane and an operator of its own",
)

FLEET = 12
RECHECK_SECONDS = 5
"""The operator's re-check interval here; the probe interval stays the chart's (300 s), so
what is shown early is shown by the databases telling their cluster, not by a probe."""
STALE_UPLOAD_SECONDS = 10
BUCKET = "faults"

Row = tuple[Any, ...]


@dataclass
class Rig:
    kube: KubeCtl
    plane_root: Path
    postgres: PostgresServer
    s3: S3Server
    namespace: str
    log_dir: Path
    operator: OperatorProcess | None = None
    _running: AbstractContextManager[OperatorProcess] | None = None

    def start_operator(self) -> None:
        self._running = running_operator(
            self.kube.kubeconfig,
            self.log_dir / f"operator-{time.monotonic_ns()}.log",
            VAUBAN_NAMESPACE=OPERATOR_NAMESPACE,
            VAUBAN_RECHECK_INTERVAL_SECONDS=str(RECHECK_SECONDS),
            VAUBAN_PROBE_INTERVAL_SECONDS="300",
            VAUBAN_STALE_UPLOAD_SECONDS=str(STALE_UPLOAD_SECONDS),
        )
        self.operator = self._running.__enter__()

    def kill_operator(self) -> None:
        assert self.operator is not None and self._running is not None
        self.operator.process.send_signal(signal.SIGKILL)
        self.operator.process.wait()
        self._running.__exit__(None, None, None)
        self.operator = self._running = None

    def query(self, statement: str, *args: Any, dbname: str = "postgres") -> list[Row]:
        with self.postgres.superuser(dbname) as conn:
            conn.execute("SET search_path = pg_catalog, pg_temp")
            return conn.execute(statement, args or None).fetchall()

    def database(self, name: str, **spec: Any) -> dict[str, Any]:
        return {
            "apiVersion": "vauban.dev/v1alpha1",
            "kind": "ManagedDatabase",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {
                "clusterRef": {"name": "pg"},
                "databaseName": name.replace("-", "_"),
                "owner": f"{name.replace('-', '_')}_owner",
                **spec,
            },
        }

    def objects(self, kind: str) -> list[dict[str, Any]]:
        return self.kube.get_list(kind, self.namespace)

    def reason(self, kind: str, name: str) -> str | None:
        obj = self.kube.get(kind, name, self.namespace)
        return (condition(obj, "Ready") or {}).get("reason")

    def all_ready(self, names: list[str]) -> bool:
        ready = {
            o["metadata"]["name"]
            for o in self.objects("manageddatabase")
            if (condition(o, "Ready") or {}).get("status") == "True"
            and o["status"].get("observedGeneration") == o["metadata"]["generation"]
        }
        return set(names) <= ready

    def credentials(self, name: str) -> dict[str, str]:
        secret = self.kube.get("secret", f"{name}-credentials", self.namespace)
        return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}

    def registry(self) -> list[Row]:
        return self.query(
            "SELECT d.name, d.database, d.owner, l.role, l.published"
            " FROM vauban.databases d JOIN vauban.logins l ON l.database_uid = d.uid"
            " ORDER BY d.name, l.generation",
            dbname="vauban",
        )


def process_of(binary: str, under: Path) -> int:
    """The pid of `binary` started with paths under `under` (this module's control plane)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(binary.encode()) and str(under).encode() in b" ".join(argv):
            return int(entry.name)
    raise AssertionError(f"no {binary} under {under}")


def logs_in(values: dict[str, str]) -> bool:
    try:
        with psycopg.connect(
            host=values["host"],
            port=int(values["port"]),
            dbname=values["dbname"],
            user=values["username"],
            password=values["password"],
            connect_timeout=3,
        ):
            return True
    except psycopg.OperationalError:
        return False


def timed(probe: Callable[[], Any], *, timeout: float, what: str) -> float:
    start = time.monotonic()
    eventually(probe, timeout=timeout, what=what)
    elapsed = time.monotonic() - start
    print(f"\n  {what}: {elapsed:.1f} s")
    return elapsed


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("faults")
    postgres = PostgresServer()
    postgres.start()
    s3 = S3Server().start()
    s3.create_bucket(BUCKET)
    try:
        with own_control_plane(root) as kube:
            kube.apply(operator_namespace())
            namespace = kube.unique_namespace("fleet")
            admin, password = "fleet_admin", secrets.token_urlsafe(16)
            postgres.create_role(admin, password, "CREATEROLE", "CREATEDB")
            with postgres.superuser() as conn:
                conn.execute(f'GRANT pg_signal_backend TO "{admin}"')
            kube.apply(admin_secret(namespace, admin, password))
            kube.apply(
                string_secret(
                    namespace, "bucket", accessKeyId=s3.access_key, secretAccessKey=s3.secret_key
                )
            )
            store = object_store(s3, BUCKET)
            kube.apply(
                external_cluster(namespace, "pg", postgres.port, backup={"objectStore": store})
            )
            runner = AgentRunner(kube.binary, kube.kubeconfig, OPERATOR_NAMESPACE).start()
            r = Rig(kube, root, postgres, s3, namespace, root)
            r.start_operator()
            try:
                for i in range(FLEET):
                    kube.apply(r.database(f"app-{i}"))
                names = [f"app-{i}" for i in range(FLEET)]
                timed(lambda: r.all_ready(names), timeout=120, what=f"a fleet of {FLEET} Ready")
                yield r
            finally:
                if r.operator is not None:
                    r.kill_operator()
                runner.stop()
    finally:
        s3.destroy()
        postgres.destroy()


def admin_secret(namespace: str, admin: str, password: str) -> dict[str, Any]:
    return string_secret(namespace, "admin", username=admin, password=password)


def fleet(rig: Rig) -> list[str]:
    return sorted(o["metadata"]["name"] for o in rig.objects("manageddatabase"))


def assert_nothing_lost_or_orphaned(rig: Rig) -> None:
    """Every database Ready, its Secret logs in, its registry record lists exactly the roles
    the server has for it, and no login was left unpublished."""
    names = fleet(rig)
    assert rig.all_ready(names)
    records = rig.registry()
    for name in names:
        values = rig.credentials(name)
        assert logs_in(values), name
        mine = [r for r in records if r[0] == name]
        assert all(published for *_, published in mine), f"unpublished login left: {mine}"
        owner = mine[0][2]
        members = {
            str(r[0])
            for r in rig.query(
                "SELECT m.rolname FROM pg_auth_members a JOIN pg_roles o ON o.oid = a.roleid"
                " JOIN pg_roles m ON m.oid = a.member WHERE o.rolname = %s",
                owner,
            )
        } - {"fleet_admin"}
        assert members == {r[3] for r in mine}, f"{name}: server {members}, record {mine}"
    databases = {str(r[0]) for r in rig.query("SELECT datname FROM pg_database")}
    assert {n.replace("-", "_") for n in names} <= databases


def test_postgres_stopped_is_shown_at_once_and_the_fleet_returns_together(rig: Rig) -> None:
    names = fleet(rig)
    rig.postgres.stop()
    try:
        # Something must meet the outage: a change to one database.
        rig.kube.apply(rig.database(names[0], connectionLimit=7))
        timed(
            lambda: rig.reason("managedcluster", "pg") == "Unreachable",
            timeout=60,
            what="PostgreSQL stopped -> cluster Unreachable",
        )
        assert rig.operator is not None
        assert rig.operator.metric("vauban_cluster_up", namespace=rig.namespace, cluster="pg") == 0
    finally:
        rig.postgres.start()
    timed(lambda: rig.all_ready(names), timeout=120, what="PostgreSQL back -> fleet Ready")
    assert_nothing_lost_or_orphaned(rig)


def test_admin_secret_deleted_then_restored(rig: Rig) -> None:
    names = fleet(rig)
    saved = rig.kube.get("secret", "admin", rig.namespace)
    rig.kube.run("delete", "secret", "admin", "-n", rig.namespace)
    rig.kube.apply(rig.database(names[0], connectionLimit=8))
    timed(
        lambda: rig.reason("managedcluster", "pg") == "SecretMissing",
        timeout=60,
        what="admin Secret deleted -> cluster SecretMissing",
    )
    values = {k: base64.b64decode(v).decode() for k, v in saved["data"].items()}
    rig.kube.apply(admin_secret(rig.namespace, values["username"], values["password"]))
    timed(lambda: rig.all_ready(names), timeout=120, what="admin Secret restored -> fleet Ready")
    assert_nothing_lost_or_orphaned(rig)


def delete_credentials_and_wait(rig: Rig, name: str, what: str) -> None:
    """Delete a database's credentials Secret by hand, and wait for it to be back."""
    secret = f"{name}-credentials"
    rig.kube.run("delete", "secret", secret, "-n", rig.namespace)
    timed(
        lambda: (
            rig.kube.run("get", "secret", secret, "-n", rig.namespace, check=False).returncode == 0
        ),
        timeout=60,
        what=what,
    )


def test_a_deleted_credentials_secret_is_recreated_and_said(rig: Rig) -> None:
    name = fleet(rig)[1]
    before = rig.credentials(name)
    delete_credentials_and_wait(rig, name, "credentials Secret deleted -> recreated")
    after = rig.credentials(name)
    assert after["username"] != before["username"] and logs_in(after)
    assert logs_in(before), "the previous login keeps working for the grace period"
    assert events(rig, name, "CredentialsRecreated"), "CredentialsRecreated Event"
    assert_nothing_lost_or_orphaned(rig)


def test_wiping_every_status_changes_nothing(rig: Rig) -> None:
    names = fleet(rig)
    logins = {n: rig.credentials(n)["username"] for n in names}
    roles_before = rig.query("SELECT rolname FROM pg_roles ORDER BY 1")
    for kind, objs in (
        ("managedcluster", ["pg"]),
        ("manageddatabase", names),
    ):
        for name in objs:
            wipe_status(rig, kind, name)
            if kind == "manageddatabase":
                rig.kube.run("label", kind, name, "-n", rig.namespace, "wiped=1", "--overwrite")
    timed(lambda: rig.all_ready(names), timeout=120, what="every status wiped -> fleet Ready")
    assert {n: rig.credentials(n)["username"] for n in names} == logins, "no rotation"
    assert rig.query("SELECT rolname FROM pg_roles ORDER BY 1") == roles_before
    assert_nothing_lost_or_orphaned(rig)


def wipe_status(rig: Rig, kind: str, name: str) -> None:
    rig.kube.run(
        "patch",
        kind,
        name,
        "-n",
        rig.namespace,
        "--subresource=status",
        "--type=json",
        "-p",
        '[{"op": "remove", "path": "/status"}]',
    )


def connect(values: dict[str, str]) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=values["host"],
        port=int(values["port"]),
        dbname=values["dbname"],
        user=values["username"],
        password=values["password"],
        autocommit=True,
    )


def backed_up(rig: Rig, database: str, name: str) -> dict[str, Any]:
    """The ManagedBackup `name` of `database`, once finished."""
    rig.kube.apply(managed_backup(rig.namespace, name, database))
    return eventually(
        lambda: finished(rig.kube, rig.namespace, name), timeout=120, what=f"{name} finished"
    )


def events(rig: Rig, name: str, reason: str) -> list[dict[str, Any]]:
    listed = rig.kube.run(
        "get",
        "events",
        "-n",
        rig.namespace,
        "-o",
        "json",
        f"--field-selector=involvedObject.name={name},reason={reason}",
    ).stdout
    return list(json.loads(listed)["items"])


def test_what_was_done_survives_an_outage_and_a_wipe(rig: Rig) -> None:
    """A restore done, a rotation asked by annotation, the last rotation of a periodic policy:
    through a PostgreSQL outage the databases report, then the whole status of every object
    wiped, none is done again and none is forgotten."""
    with connect(rig.credentials("app-3")) as conn:
        conn.execute("CREATE TABLE fact (id int)")
        conn.execute("INSERT INTO fact SELECT generate_series(1, 42)")
    assert backed_up(rig, "app-3", "before-outage")["status"]["phase"] == "Succeeded"
    rig.kube.apply(rig.database("restored", restore={"backupRef": {"name": "before-outage"}}))
    rig.kube.apply(rig.database("periodic", credentials={"rotationPeriod": "30d"}))
    rig.kube.run(
        "annotate", "manageddatabase", "app-4", "-n", rig.namespace,
        "vauban.dev/rotate-credentials=once", "--overwrite",
    )  # fmt: skip
    names = fleet(rig)

    def remembered() -> dict[str, Any]:
        return {
            o["metadata"]["name"]: (
                o["status"].get("restore"),
                {k: v for k, v in o["status"]["credentials"].items() if k != "accepted"},
            )
            for o in rig.objects("manageddatabase")
        }

    def settled() -> bool:
        return rig.all_ready(names) and remembered()["app-4"][1].get("rotationToken") == "once"

    eventually(settled, timeout=120, what="restore and rotation done")
    before = remembered()
    assert before["restored"][0]["phase"] == "Succeeded"
    assert before["periodic"][1]["lastRotation"]

    rig.postgres.stop()
    try:
        rig.kube.apply(rig.database(names[0], connectionLimit=9))
        timed(
            lambda: rig.reason("manageddatabase", "restored") in ("Unreachable", "ClusterNotReady"),
            timeout=60,
            what="PostgreSQL stopped -> a restored database not Ready",
        )
        for name in names:
            wipe_status(rig, "manageddatabase", name)
        for backup in rig.objects("managedbackup"):
            wipe_status(rig, "managedbackup", backup["metadata"]["name"])
        wipe_status(rig, "managedcluster", "pg")
    finally:
        rig.postgres.start()
    timed(lambda: rig.all_ready(names), timeout=120, what="outage and wipe -> fleet Ready")
    assert remembered() == before, "nothing done again, nothing forgotten"
    assert len(events(rig, "restored", "RestoreStarted")) == 1
    with connect(rig.credentials("restored")) as conn:
        assert conn.execute("SELECT count(*) FROM fact").fetchone() == (42,)
    recomputed = eventually(
        lambda: finished(rig.kube, rig.namespace, "before-outage"),
        what="backup status recomputed",
    )
    assert recomputed["status"]["phase"] == "Succeeded"
    assert_nothing_lost_or_orphaned(rig)


def test_object_store_stopped_mid_backup(rig: Rig) -> None:
    """The store goes away while a backup uploads: the ManagedBackup fails with the reason,
    nothing half-written is listed as a backup, and the upload the agent could not abort is
    swept once older than the bound (here at the operator's next start)."""
    with connect(rig.credentials("app-5")) as conn:
        conn.execute("CREATE TABLE blobs (id int PRIMARY KEY, data bytea)")
        for i in range(24):  # incompressible, more than the agent buffers ahead
            conn.execute("INSERT INTO blobs VALUES (%s, %s)", (i, os.urandom(1 << 20)))
    client = rig.s3.client()
    keys_before = {o.object_name for o in client.list_objects(BUCKET, recursive=True)}
    rig.kube.apply(managed_backup(rig.namespace, "cut", "app-5"))
    dump = pause_pg_dump_mid_upload(os.getpid(), rig.s3, BUCKET)
    rig.s3.stop()
    try:
        os.kill(dump, signal.SIGCONT)
        timed(
            lambda: finished(rig.kube, rig.namespace, "cut"),
            timeout=180,
            what="object store stopped mid-backup -> backup Failed",
        )
    finally:
        rig.s3.start()
    failed = rig.kube.get("managedbackup", "cut", rig.namespace)
    assert failed["status"]["phase"] == "Failed", failed["status"]
    stalled = condition(failed, "Stalled")
    assert stalled is not None and stalled["reason"] == "BackupFailed", stalled
    print(f"\n  reported: {stalled['message'][:200]}")
    assert rig.s3.secret_key not in json.dumps(failed)
    assert {o.object_name for o in client.list_objects(BUCKET, recursive=True)} == keys_before
    assert multipart_uploads(rig.s3, BUCKET), "the agent's abort could not reach the store"

    time.sleep(STALE_UPLOAD_SECONDS)
    rig.kill_operator()
    rig.start_operator()
    timed(
        lambda: not multipart_uploads(rig.s3, BUCKET),
        timeout=60,
        what="store back -> stale upload swept",
    )
    assert backed_up(rig, "app-5", "after-outage")["status"]["phase"] == "Succeeded"


def test_kill_9_during_a_burst_and_during_rotations(rig: Rig) -> None:
    burst = [rig.database(f"burst-{i}") for i in range(2 * FLEET)]
    rig.kube.apply({"apiVersion": "v1", "kind": "List", "items": burst})
    time.sleep(0.5)  # mid-burst: some provisioned, some half-way, some not begun
    rig.kill_operator()
    rig.start_operator()
    timed(lambda: rig.all_ready(fleet(rig)), timeout=180, what="kill -9 in a burst -> all Ready")
    assert_nothing_lost_or_orphaned(rig)

    names = fleet(rig)
    before = logins_per_database(rig)
    rig.kube.run(
        "annotate",
        "manageddatabase",
        "--all",
        "-n",
        rig.namespace,
        "vauban.dev/rotate-credentials=kill9",
        "--overwrite",
    )
    time.sleep(0.3)  # mid-rotations
    rig.kill_operator()
    rig.start_operator()

    def rotated() -> bool:
        return all(
            (o["status"].get("credentials") or {}).get("rotationToken") == "kill9"
            for o in rig.objects("manageddatabase")
        )

    timed(lambda: rotated() and rig.all_ready(names), timeout=180, what="kill -9 in rotations")
    assert_nothing_lost_or_orphaned(rig)
    # Each database rotated exactly once: one login more, the replaced one retiring.
    assert logins_per_database(rig) == {name: n + 1 for name, n in before.items()}


def logins_per_database(rig: Rig) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, *_ in rig.registry():
        counts[name] = counts.get(name, 0) + 1
    return counts


def test_apiserver_frozen_readiness_says_so(rig: Rig) -> None:
    apiserver = process_of("kube-apiserver", rig.plane_root)
    assert rig.operator is not None
    url = f"http://127.0.0.1:{rig.operator.metrics_port}/readyz"

    def readyz() -> int:
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                return int(response.status)
        except urllib.error.HTTPError as e:
            return e.code

    os.kill(apiserver, signal.SIGSTOP)
    try:
        timed(lambda: readyz() == 503, timeout=30, what="apiserver frozen -> /readyz 503")
    finally:
        os.kill(apiserver, signal.SIGCONT)
    timed(lambda: readyz() == 200, timeout=30, what="apiserver back -> /readyz 200")
    assert (rig.operator.metric("vauban_api_errors_total", client="heartbeat") or 0) >= 1
    names = fleet(rig)
    rig.kube.apply(rig.database(names[0], extensions=["citext"]))
    timed(
        lambda: rig.query(
            "SELECT 1 FROM pg_extension WHERE extname = 'citext'",
            dbname=names[0].replace("-", "_"),
        ),
        timeout=60,
        what="apiserver back -> a change applied",
    )
    # The watch of credentials Secrets (Vauban's own, not kopf's) is back too.
    delete_credentials_and_wait(
        rig, names[3], "apiserver back -> a deleted credentials Secret recreated"
    )


def test_deletion_waits_for_a_missing_admin_secret(rig: Rig) -> None:
    name = fleet(rig)[2]
    values = rig.credentials(name)
    saved = rig.kube.get("secret", "admin", rig.namespace)
    rig.kube.run("delete", "secret", "admin", "-n", rig.namespace)
    rig.kube.run("delete", "manageddatabase", name, "-n", rig.namespace, "--wait=false")
    timed(
        lambda: rig.reason("manageddatabase", name) == "DeletionBlocked",
        timeout=60,
        what="deletion without admin Secret -> DeletionBlocked",
    )
    assert logs_in(values), "nothing revoked yet: nothing could be"
    admin = {k: base64.b64decode(v).decode() for k, v in saved["data"].items()}
    rig.kube.apply(admin_secret(rig.namespace, admin["username"], admin["password"]))
    timed(
        lambda: (
            rig.kube.run(
                "get", "manageddatabase", name, "-n", rig.namespace, check=False
            ).returncode
            != 0
        ),
        timeout=90,
        what="admin Secret back -> deletion done",
    )
    assert not logs_in(values), "the login was revoked (deletionPolicy Retain)"
    assert rig.query("SELECT 1 FROM pg_database WHERE datname = %s", name.replace("-", "_"))
