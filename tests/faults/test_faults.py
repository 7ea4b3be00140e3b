"""Faults injected into a running fleet: the operator killed with SIGKILL (during a burst,
during rotations), PostgreSQL stopped, the apiserver frozen, the admin Secret deleted and
restored, a credentials Secret deleted, the whole status of every object wiped.

Each test injects the fault, reads status and metrics during it, ends it, and asserts the
recovery and that nothing was lost, duplicated or orphaned — from the server itself
(`pg_roles`, `pg_database`, Vauban's registry), from Secrets that really log in. The times
measured are printed (`pytest -s`) and kept in docs/conditions.md; the bounds asserted are
loose on purpose (a busy 2-core CI machine), the measured figures are what the docs state.

A control plane, a PostgreSQL server and an operator of this module's own: killing and
freezing them must not disturb the other tests.
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

from support.kube import (
    KubeCtl,
    OperatorProcess,
    condition,
    eventually,
    external_cluster,
    own_control_plane,
)
from support.vauban_process import running_operator
from vauban.devcluster.postgres import PostgresServer

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("VAUBAN_TEST_KUBECONFIG")),
    reason="freezes and kills a control plane and an operator of its own",
)

FLEET = 12
RECHECK_SECONDS = 5
"""The operator's re-check interval here; the probe interval stays the chart's (300 s), so
what is shown early is shown by the databases telling their cluster, not by a probe."""

Row = tuple[Any, ...]


@dataclass
class Rig:
    kube: KubeCtl
    plane_root: Path
    postgres: PostgresServer
    namespace: str
    log_dir: Path
    operator: OperatorProcess | None = None
    _running: AbstractContextManager[OperatorProcess] | None = None

    def start_operator(self) -> None:
        self._running = running_operator(
            self.kube.kubeconfig,
            self.log_dir / f"operator-{time.monotonic_ns()}.log",
            VAUBAN_RECHECK_INTERVAL_SECONDS=str(RECHECK_SECONDS),
            VAUBAN_PROBE_INTERVAL_SECONDS="300",
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
    try:
        with own_control_plane(root) as kube:
            namespace = kube.unique_namespace("fleet")
            admin, password = "fleet_admin", secrets.token_urlsafe(16)
            postgres.create_role(admin, password, "CREATEROLE", "CREATEDB")
            with postgres.superuser() as conn:
                conn.execute(f'GRANT pg_signal_backend TO "{admin}"')
            kube.apply(admin_secret(namespace, admin, password))
            kube.apply(external_cluster(namespace, "pg", postgres.port))
            r = Rig(kube, root, postgres, namespace, root)
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
    finally:
        postgres.destroy()


def admin_secret(namespace: str, admin: str, password: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "admin", "namespace": namespace},
        "stringData": {"username": admin, "password": password},
    }


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


def test_a_deleted_credentials_secret_is_recreated_and_said(rig: Rig) -> None:
    name = fleet(rig)[1]
    before = rig.credentials(name)
    rig.kube.run("delete", "secret", f"{name}-credentials", "-n", rig.namespace)
    timed(
        lambda: (
            rig.kube.run(
                "get", "secret", f"{name}-credentials", "-n", rig.namespace, check=False
            ).returncode
            == 0
        ),
        timeout=60,
        what="credentials Secret deleted -> recreated",
    )
    after = rig.credentials(name)
    assert after["username"] != before["username"] and logs_in(after)
    assert logs_in(before), "the previous login keeps working for the grace period"
    events = rig.kube.run(
        "get",
        "events",
        "-n",
        rig.namespace,
        "-o",
        "json",
        f"--field-selector=involvedObject.name={name},reason=CredentialsRecreated",
    ).stdout
    assert json.loads(events)["items"], "CredentialsRecreated Event"
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
            if kind == "manageddatabase":
                rig.kube.run("label", kind, name, "-n", rig.namespace, "wiped=1", "--overwrite")
    timed(lambda: rig.all_ready(names), timeout=120, what="every status wiped -> fleet Ready")
    assert {n: rig.credentials(n)["username"] for n in names} == logins, "no rotation"
    assert rig.query("SELECT rolname FROM pg_roles ORDER BY 1") == roles_before
    assert_nothing_lost_or_orphaned(rig)


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
