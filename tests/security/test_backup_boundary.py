"""The tenant boundary, for backups and restores (issue 14, classes 2 and 4, and the
manifest of class 7), tried as an adversarial tenant would.

Class 2: a tenant's backup is tenant content. Replayed by a restore test (or a restore) it
runs the tenant's functions — in CHECK constraints, generated columns, index expressions —
with the privileges of the role restoring it. The payload here tries, silently, everything a
superuser could do (become SUPERUSER, join a powerful role, create a role, run a shell command
through COPY ... TO PROGRAM); the tests assert on the server that none of it happened, with a
superuser admin (as managed clusters have) and a CREATEROLE one (as external servers may).

Class 4: a tenant may write its ManagedBackups' status. Forged to point at another tenant's
backup, location or data key, or wiped, it changes nothing but what it displays: nothing of
the victim is restored, nothing of the victim is deleted, and status is rebuilt from the
operator's records.
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from dataplane.harness import Agent
from support.backups import (
    connect_tenant,
    finished,
    managed_backup,
    object_store,
    purged_after_retention,
)
from support.kube import (
    OPERATOR_NAMESPACE,
    KubeCtl,
    OperatorProcess,
    condition,
    eventually,
    external_cluster,
    ready,
    string_secret,
)
from vauban.devcluster.agentrunner import AgentRunner
from vauban.devcluster.postgres import PostgresServer
from vauban.devcluster.s3 import S3Server

# -- class 2: replaying tenant content -------------------------------------------------------

PLACEMENTS = {
    # Checked for each row COPY loads.
    "check": "CREATE TABLE public.t (id int CHECK (public.evil()))",
    # Computed for each row COPY loads.
    "generated": (
        "CREATE TABLE public.t (id int, flag boolean GENERATED ALWAYS AS (public.evil_i(id) > 0)"
        " STORED)"
    ),
    # Computed for each row when pg_restore builds the index, after the data.
    "index": "CREATE TABLE public.t (id int); CREATE INDEX ON public.t ((public.evil_i(id)))",
}


@pytest.fixture(scope="module")
def bucket_name(s3: S3Server) -> str:
    name = f"sec-{secrets.token_hex(4)}"
    s3.create_bucket(name)
    return name


class Tenant:
    """A tenant's login, owning its database, and the payload's witnesses."""

    def __init__(self, postgres: PostgresServer, placement: str) -> None:
        suffix = secrets.token_hex(4)
        self.postgres = postgres
        self.role, self.password = f"sec_tenant_{suffix}", secrets.token_urlsafe(16)
        self.database = f"sec_src_{suffix}"
        self.marker_role = f"sec_marker_{suffix}"
        # Written by the postgres OS user if COPY ... TO PROGRAM ever runs.
        self.marker_file = Path(f"/tmp/vauban-sec-{suffix}")
        postgres.create_role(self.role, self.password)
        with postgres.superuser() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(self.database), sql.Identifier(self.role)
                )
            )
        with self.connect(self.database) as conn:
            conn.execute(self.payload(conn))
            conn.execute(PLACEMENTS[placement])
            conn.execute("INSERT INTO public.t (id) SELECT g FROM generate_series(1, 20) g")
            # A search_path of the tenant's choosing, for every session in its database.
            conn.execute("CREATE SCHEMA trap")
            conn.execute(
                sql.SQL("ALTER DATABASE {} SET search_path = trap, public").format(
                    sql.Identifier(self.database)
                )
            )
        self.memberships_before = self.memberships()

    def payload(self, conn: psycopg.Connection[Any]) -> sql.Composed:
        """Tries everything, fails silently as an unprivileged role, returns true: the tenant's
        own inserts work, and a restore that replays it succeeds whatever it gained."""
        attempts = [
            sql.SQL("ALTER ROLE {} SUPERUSER").format(sql.Identifier(self.role)),
            sql.SQL("GRANT pg_execute_server_program TO {}").format(sql.Identifier(self.role)),
            sql.SQL("CREATE ROLE {}").format(sql.Identifier(self.marker_role)),
            sql.SQL("COPY (SELECT 1) TO PROGRAM {}").format(
                sql.Literal(f"touch {self.marker_file}")
            ),
        ]
        body = sql.SQL(" ").join(
            sql.SQL("BEGIN EXECUTE {}; EXCEPTION WHEN OTHERS THEN NULL; END;").format(
                sql.Literal(a.as_string(conn))
            )
            for a in attempts
        )
        return sql.SQL(
            "CREATE FUNCTION public.evil() RETURNS boolean LANGUAGE plpgsql AS $f$ BEGIN {} "
            "RETURN true; END $f$; "
            "CREATE FUNCTION public.evil_i(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS "
            "$f$ BEGIN PERFORM public.evil(); RETURN $1; END $f$;"
        ).format(body)

    def connect(self, dbname: str) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.postgres.port,
            user=self.role,
            password=self.password,
            dbname=dbname,
            autocommit=True,
        )

    def memberships(self) -> list[tuple[str, str]]:
        with self.postgres.superuser() as conn:
            rows = conn.execute(
                "SELECT r.rolname, m.rolname FROM pg_auth_members a"
                " JOIN pg_roles r ON r.oid = a.roleid JOIN pg_roles m ON m.oid = a.member"
                " WHERE m.rolname = %s OR r.rolname = %s ORDER BY 1, 2",
                (self.role, self.role),
            ).fetchall()
        return [(str(a), str(b)) for a, b in rows]

    def assert_nothing_gained(self) -> None:
        with self.postgres.superuser() as conn:
            row = conn.execute(
                "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles"
                " WHERE rolname = %s",
                (self.role,),
            ).fetchone()
            assert row == (False, False, False, False)
            marker = conn.execute(
                "SELECT FROM pg_roles WHERE rolname = %s", (self.marker_role,)
            ).fetchone()
            assert marker is None, "the payload created a role"
        assert self.memberships() == self.memberships_before
        assert not self.marker_file.exists(), "the payload ran a shell command"


def _admin(postgres: PostgresServer, superuser: bool) -> tuple[str, str]:
    name, password = f"sec_admin_{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    attributes = ("SUPERUSER",) if superuser else ("CREATEROLE", "CREATEDB")
    postgres.create_role(name, password, *attributes)
    return name, password


def _agent(postgres: PostgresServer, s3: S3Server, bucket: str, tenant: Tenant) -> Agent:
    agent = Agent(postgres, s3, os.urandom(32))
    agent.env.update(
        PGUSER=tenant.role,
        PGPASSWORD=tenant.password,
        PGDATABASE=tenant.database,
        VAUBAN_S3_BUCKET=bucket,
        VAUBAN_DATA_KEY_ID="dek-sec",
        VAUBAN_DATABASE_NAMESPACE="tenant",
    )
    return agent


def _leftovers(postgres: PostgresServer, name: str) -> tuple[object, object]:
    with postgres.superuser() as conn:
        database = conn.execute("SELECT FROM pg_database WHERE datname = %s", (name,)).fetchone()
        role = conn.execute("SELECT FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
    return database, role


@pytest.mark.parametrize("superuser", [True, False], ids=["superuser-admin", "createrole-admin"])
@pytest.mark.parametrize("placement", sorted(PLACEMENTS))
def test_restore_tests_replay_tenant_content_with_no_privilege(
    postgres: PostgresServer, s3: S3Server, bucket_name: str, placement: str, superuser: bool
) -> None:
    tenant = Tenant(postgres, placement)
    agent = _agent(postgres, s3, bucket_name, tenant)
    location = f"vauban/tenant/{tenant.database}/uid/backup-{uuid.uuid4().hex[:8]}"
    backup = agent.run("backup", "--location", location)
    assert backup.code == 0, backup
    admin, password = _admin(postgres, superuser)
    scratch = f"sec_verify_{secrets.token_hex(4)}"

    verify = agent.run(
        "verify",
        "--location",
        location,
        "--scratch-database",
        scratch,
        PGUSER=admin,
        PGPASSWORD=password,
        PGDATABASE="postgres",
    )

    # The backup restores (its payload fails silently), so the test passes: what matters is
    # that the payload ran with nothing to gain.
    assert (verify.code, verify.reason) == (0, "VerificationPassed"), verify
    tenant.assert_nothing_gained()
    assert _leftovers(postgres, scratch) == (None, None)
    assert password not in verify.stderr + json.dumps(verify.result)


@pytest.mark.parametrize("placement", sorted(PLACEMENTS))
def test_a_restore_replays_tenant_content_as_the_tenant(
    postgres: PostgresServer, s3: S3Server, bucket_name: str, placement: str
) -> None:
    tenant = Tenant(postgres, placement)
    agent = _agent(postgres, s3, bucket_name, tenant)
    location = f"vauban/tenant/{tenant.database}/uid/backup-{uuid.uuid4().hex[:8]}"
    assert agent.run("backup", "--location", location).code == 0
    target = f"{tenant.database}_copy"
    with postgres.superuser() as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(target), sql.Identifier(tenant.role)
            )
        )
    restore = agent.run("restore", "--location", location, PGDATABASE=target)
    assert (restore.code, restore.reason) == (0, "RestoreCompleted"), restore
    tenant.assert_nothing_gained()
    with tenant.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM public.t").fetchone() == (20,)


def test_the_payload_is_live_when_replayed_as_a_superuser(
    postgres: PostgresServer, s3: S3Server, bucket_name: str
) -> None:
    """What the tests above prove is not vacuous: the same backup, restored by a superuser
    (what verify did before), creates the marker role."""
    tenant = Tenant(postgres, "check")
    agent = _agent(postgres, s3, bucket_name, tenant)
    location = f"vauban/tenant/{tenant.database}/uid/backup-{uuid.uuid4().hex[:8]}"
    assert agent.run("backup", "--location", location).code == 0
    admin, password = _admin(postgres, superuser=True)
    target = f"{tenant.database}_as_admin"
    with postgres.superuser() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target)))
    restore = agent.run(
        "restore", "--location", location, PGDATABASE=target, PGUSER=admin, PGPASSWORD=password
    )
    assert restore.code == 0, restore
    try:
        with postgres.superuser() as conn:
            found = conn.execute(
                "SELECT FROM pg_roles WHERE rolname = %s", (tenant.marker_role,)
            ).fetchone()
        assert found is not None
    finally:
        with postgres.superuser() as conn:
            conn.execute(sql.SQL("ALTER ROLE {} NOSUPERUSER").format(sql.Identifier(tenant.role)))
            conn.execute(
                sql.SQL("REVOKE pg_execute_server_program FROM {}").format(
                    sql.Identifier(tenant.role)
                )
            )
            conn.execute(
                sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(tenant.marker_role))
            )
        tenant.marker_file.unlink(missing_ok=True)


def test_verify_refuses_a_role_it_did_not_create(
    postgres: PostgresServer, s3: S3Server, bucket_name: str
) -> None:
    """The throw-away role is recognised by a mark only a CREATEROLE role can set: a tenant's
    role of that name is neither used nor dropped."""
    tenant = Tenant(postgres, "check")
    agent = _agent(postgres, s3, bucket_name, tenant)
    location = f"vauban/tenant/{tenant.database}/uid/backup-{uuid.uuid4().hex[:8]}"
    assert agent.run("backup", "--location", location).code == 0
    admin, password = _admin(postgres, superuser=True)
    verify = agent.run(
        "verify",
        "--location",
        location,
        "--scratch-database",
        tenant.role,
        PGUSER=admin,
        PGPASSWORD=password,
        PGDATABASE="postgres",
    )
    assert (verify.code, verify.reason) == (5, "ScratchRoleExists"), verify
    with tenant.connect(tenant.database) as conn:
        assert conn.execute("SELECT count(*) FROM public.t").fetchone() == (20,)


def test_every_agent_session_pins_its_search_path(
    postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vauban.backup import postgres as agent_postgres

    tenant = Tenant(postgres, "check")
    for name, value in {
        "PGHOST": "127.0.0.1",
        "PGPORT": str(postgres.port),
        "PGUSER": tenant.role,
        "PGPASSWORD": tenant.password,
        "PGDATABASE": tenant.database,
        "PGSSLMODE": "disable",
    }.items():
        monkeypatch.setenv(name, value)
    with agent_postgres.connect() as conn:
        assert conn.execute("SHOW search_path").fetchone() == ("pg_catalog,pg_temp",)


# -- class 4: status is not authority --------------------------------------------------------


def _database(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    tag = f"{name}_{namespace[-6:]}".replace("-", "_")
    return {
        "apiVersion": "vauban.dev/v1alpha1",
        "kind": "ManagedDatabase",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "clusterRef": {"name": "pg", "namespace": spec.pop("cluster_namespace")},
            "databaseName": tag,
            "owner": f"own_{tag}",
            **spec,
        },
    }


def _forge(kube: KubeCtl, namespace: str, name: str, status: dict[str, Any]) -> None:
    """What a tenant allowed `*/status` can do to its own ManagedBackup."""
    kube.run(
        "patch",
        "managedbackup",
        name,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


class World:
    """A platform namespace with a cluster and a bucket, and two tenants' namespaces: the
    victim's, with a backup of a table of secrets, and the attacker's, with its own."""

    def __init__(
        self, kube: KubeCtl, postgres: PostgresServer, s3: S3Server, platform: str
    ) -> None:
        self.kube, self.s3 = kube, s3
        self.platform = platform
        self.victim = kube.unique_namespace("victim")
        self.attacker = kube.unique_namespace("attacker")
        self.bucket = f"sec-{secrets.token_hex(4)}"
        s3.create_bucket(self.bucket)
        admin, password = f"admin_{secrets.token_hex(4)}", secrets.token_urlsafe(16)
        postgres.create_role(admin, password, "CREATEROLE", "CREATEDB")
        kube.apply(string_secret(platform, "admin", username=admin, password=password))
        kube.apply(
            string_secret(
                platform, "bucket", accessKeyId=s3.access_key, secretAccessKey=s3.secret_key
            )
        )
        store = object_store(s3, self.bucket)
        kube.apply(
            external_cluster(
                platform,
                "pg",
                postgres.port,
                backup={"objectStore": store},
                allowedNamespaces={"names": [self.victim, self.attacker]},
            )
        )
        self.vault = self.backed_up(self.victim, "vault", "vbk", "victim-secret")
        self.mine = self.backed_up(self.attacker, "mine", "own", "attacker-row")

    def database(self, namespace: str, name: str, **spec: Any) -> dict[str, Any]:
        return _database(namespace, name, cluster_namespace=self.platform, **spec)

    def backed_up(self, namespace: str, database: str, backup: str, row: str) -> dict[str, Any]:
        """A Ready database with one table and one row, and a successful backup of it."""
        self.kube.apply(self.database(namespace, database))
        eventually(
            lambda: ready(self.kube, "manageddatabase", database, namespace),
            timeout=90,
            what=database,
        )
        with connect_tenant(self.kube, namespace, database) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS rows (value text)")
            conn.execute("INSERT INTO rows VALUES (%s)", (row,))
        return self.backup(namespace, backup, database)

    def backup(self, namespace: str, name: str, database: str, **spec: Any) -> dict[str, Any]:
        self.kube.apply(managed_backup(namespace, name, database, **spec))
        done = eventually(lambda: finished(self.kube, namespace, name), timeout=120, what=name)
        assert done["status"]["phase"] == "Succeeded", done["status"]
        return done

    def stored(self) -> set[str]:
        objects = self.s3.client().list_objects(self.bucket, recursive=True)
        return {str(o.object_name) for o in objects}

    def victim_intact(self) -> None:
        key = self.vault["status"]["location"]["key"]
        assert {f"{key}/manifest.json", f"{key}/data"} <= self.stored()
        assert finished(self.kube, self.victim, "vbk") is not None
        dek = f"vauban-{self.vault['status']['dataKeyId']}"
        assert (
            self.kube.run("get", "secret", dek, "-n", OPERATOR_NAMESPACE, check=False).returncode
            == 0
        )

    def forged_victim_pointer(self) -> dict[str, Any]:
        status = self.vault["status"]
        return {
            "phase": "Succeeded",
            "location": status["location"],
            "dataKeyId": status["dataKeyId"],
            "sha256": status["sha256"],
        }


@pytest.fixture(scope="module")
def world(
    kube: KubeCtl,
    postgres: PostgresServer,
    s3: S3Server,
    operator: OperatorProcess,
    agent_runner: AgentRunner,
) -> Iterator[World]:
    platform = kube.unique_namespace("platform")
    built = World(kube, postgres, s3, platform)
    yield built
    for namespace in (built.victim, built.attacker, platform):
        kube.run("delete", "namespace", namespace, "--wait=false", check=False)


def _refused(kube: KubeCtl, name: str, namespace: str) -> dict[str, Any] | None:
    obj = kube.get("manageddatabase", name, namespace)
    stalled = condition(obj, "Stalled")
    return obj if stalled and stalled["status"] == "True" else None


def _rows(kube: KubeCtl, namespace: str, database: str) -> list[str]:
    with connect_tenant(kube, namespace, database) as conn:
        found = conn.execute(
            "SELECT FROM pg_tables WHERE schemaname = 'public' AND tablename = 'rows'"
        ).fetchone()
        if found is None:
            return []
        return [str(r[0]) for r in conn.execute("SELECT value FROM rows").fetchall()]


@pytest.mark.parametrize("database", ["vault", "nobody"])
def test_a_status_forged_to_name_another_tenants_backup_restores_nothing(
    world: World, database: str
) -> None:
    """The attacker's ManagedBackup names a database it does not have (the victim's name, or
    any), and its status is forged to the victim's location and data key: the restore is
    refused, with a reason, and nothing of the victim reaches the attacker."""
    kube, ns = world.kube, world.attacker
    fake = f"fake-{database}"
    kube.apply(managed_backup(ns, fake, database))
    eventually(
        lambda: (kube.get("managedbackup", fake, ns).get("status") or {}).get("phase"),
        what="the fake backup reconciled",
    )
    _forge(kube, ns, fake, world.forged_victim_pointer())
    target = f"stolen-{database}"
    kube.apply(world.database(ns, target, restore={"backupRef": {"name": fake}}))
    obj = eventually(lambda: _refused(kube, target, ns), timeout=60, what="restore refused")
    stalled = condition(obj, "Stalled")
    assert stalled is not None and stalled["reason"] in (
        "RestoreRefused",
        "RestoreSourceFailed",
        "RestoreFailed",
    )
    assert "Traceback" not in stalled["message"]
    events = kube.run(
        "get", "events", "-n", ns, "--field-selector", f"involvedObject.name={target}", "-o", "json"
    ).stdout
    assert stalled["reason"] in events
    # No restore Job ever ran for it, and the victim's backup is where it was.
    assert not kube.get_list(
        "jobs", OPERATOR_NAMESPACE, "-l", f"vauban.dev/database-uid={obj['metadata']['uid']}"
    )
    world.victim_intact()


def test_a_forged_status_is_rewritten_and_restores_only_the_tenants_own_backup(
    world: World,
) -> None:
    kube, ns = world.kube, world.attacker
    own = world.mine["status"]
    _forge(kube, ns, "own", world.forged_victim_pointer())

    def rebuilt() -> dict[str, Any] | None:
        status = kube.get("managedbackup", "own", ns).get("status") or {}
        return status if status.get("location") == own["location"] else None

    status = eventually(rebuilt, timeout=60, what="status rebuilt from the records")
    assert status["dataKeyId"] == own["dataKeyId"] and status["sha256"] == own["sha256"]
    # Forged again, right before the restore reads it: it reads the records instead.
    _forge(kube, ns, "own", world.forged_victim_pointer())
    kube.apply(world.database(ns, "copy", restore={"backupRef": {"name": "own"}}))
    eventually(lambda: ready(kube, "manageddatabase", "copy", ns), timeout=120, what="restored")
    assert _rows(kube, ns, "copy") == ["attacker-row"]
    world.victim_intact()


def test_a_forged_status_deletes_nothing_of_the_victim(world: World) -> None:
    kube, ns = world.kube, world.attacker
    doomed = world.backup(ns, "doomed", "mine", deletionPolicy="Delete")
    mine = doomed["status"]["location"]["key"]
    _forge(kube, ns, "doomed", world.forged_victim_pointer())
    kube.run("delete", "managedbackup", "doomed", "-n", ns, "--wait=true", "--timeout=60s")
    # Its own backup went (deletionPolicy Delete); the one its status named did not.
    assert f"{mine}/manifest.json" not in world.stored()
    world.victim_intact()


def test_a_wiped_status_is_rebuilt_from_the_records(world: World) -> None:
    kube, ns = world.kube, world.victim
    before = world.vault["status"]
    kube.run(
        "patch",
        "managedbackup",
        "vbk",
        "-n",
        ns,
        "--subresource=status",
        "--type=json",
        "-p",
        '[{"op": "remove", "path": "/status"}]',
    )
    status = eventually(
        lambda: (finished(kube, ns, "vbk") or {}).get("status"), timeout=60, what="rebuilt"
    )
    for field in ("phase", "location", "dataKeyId", "sha256", "sizeBytes", "finishedAt"):
        assert status[field] == before[field], field
    # Rebuilt, not re-run: no second backup of the victim was made.
    key = before["location"]["key"].rsplit("/", 1)[0]
    # (Beside them, the incarnation's key record, key.json, for a recovery elsewhere.)
    backups = {k for k in world.stored() if k.startswith(key) and not k.endswith("/key.json")}
    assert len(backups) == 2
    world.victim_intact()


def test_purging_a_deleted_database_follows_its_key_record_not_status(world: World) -> None:
    """The attacker deletes a database whose backups are kept 7 days, with its backup's status
    forged to the victim's data key and location; when the days pass, only its own backups,
    records and key are purged."""
    kube, ns = world.kube, world.attacker
    kube.apply(
        world.database(
            ns, "leaving", deletionPolicy="Delete", backup={"retainAfterDeletionDays": 7}
        )
    )
    eventually(
        lambda: ready(kube, "manageddatabase", "leaving", ns), timeout=90, what="leaving Ready"
    )
    left = world.backup(ns, "left", "leaving")["status"]
    _forge(kube, ns, "left", world.forged_victim_pointer())
    kube.run("delete", "manageddatabase", "leaving", "-n", ns, "--wait=true", "--timeout=60s")
    purged_after_retention(kube, f"vauban-{left['dataKeyId']}", timeout=90)
    assert f"{left['location']['key']}/manifest.json" not in world.stored()
    world.victim_intact()
