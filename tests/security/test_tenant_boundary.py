"""The tenant boundary, tried the way an attacker works (docs/security.md).

The attacker is a tenant: it owns one ManagedDatabase and the login in its Secret, and may
write ManagedDatabase objects (and, in many clusters, their status) in its own namespace.
The victim is another tenant of the same server. Each test tries one class of breakout and
then asserts, on the PostgreSQL server itself, what was NOT gained: role memberships, role
attributes, marker roles and files that only privileged code could create, the victim's
data and roles still there and still out of reach.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from support.kube import KubeCtl, condition, eventually, external_cluster, with_reason
from vauban.devcluster.postgres import PostgresServer

pytestmark = pytest.mark.usefixtures("operator")

Row = tuple[Any, ...]


@dataclass(frozen=True)
class Tenant:
    namespace: str
    name: str
    database: str
    owner: str


@dataclass
class Platform:
    """One adopted server, its ManagedCluster in the platform's namespace, admitting the
    tenants' namespaces."""

    kube: KubeCtl
    postgres: PostgresServer
    namespace: str
    admin: str

    def tenant(self, namespace: str, name: str = "app", **spec: Any) -> Tenant:
        suffix = secrets.token_hex(3)
        t = Tenant(namespace, name, f"db_{suffix}", f"own_{suffix}")
        self.kube.apply(manifest(self, t, **spec))
        return t

    def ready(self, t: Tenant) -> dict[str, Any]:
        try:
            return eventually(lambda: _ready(self.kube, t), timeout=60)
        except AssertionError:
            obj = self.kube.get("manageddatabase", t.name, t.namespace)
            raise AssertionError(
                f"{t.namespace}/{t.name} not Ready: {condition(obj, 'Ready')}"
            ) from None

    def credentials(self, t: Tenant) -> dict[str, str]:
        secret = self.kube.get("secret", f"{t.name}-credentials", t.namespace)
        return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}

    def query(self, statement: str, *args: Any, dbname: str = "postgres") -> list[Row]:
        with self.postgres.superuser(dbname) as conn:
            # The test's own superuser session must not fall into the traps it checks for.
            conn.execute("SET search_path = pg_catalog, pg_temp")
            return conn.execute(statement, args or None).fetchall()


def manifest(platform: Platform, t: Tenant, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "vauban.dev/v1alpha1",
        "kind": "ManagedDatabase",
        "metadata": {"name": t.name, "namespace": t.namespace},
        "spec": {
            "clusterRef": {"name": "pg", "namespace": platform.namespace},
            "databaseName": t.database,
            "owner": t.owner,
            **spec,
        },
    }


def _ready(kube: KubeCtl, t: Tenant) -> dict[str, Any] | None:
    obj = kube.get("manageddatabase", t.name, t.namespace)
    c = condition(obj, "Ready")
    return obj if c and c["status"] == "True" else None


def connect_as(values: dict[str, str], dbname: str | None = None) -> psycopg.Connection[Row]:
    return psycopg.connect(
        host=values["host"],
        port=int(values["port"]),
        dbname=dbname or values["dbname"],
        user=values["username"],
        password=values["password"],
        sslmode=values["sslmode"],
        autocommit=True,
        connect_timeout=5,
    )


def can_connect(values: dict[str, str], dbname: str | None = None) -> bool:
    try:
        with connect_as(values, dbname):
            return True
    except psycopg.OperationalError:
        return False


def make_platform(
    kube: KubeCtl, postgres: PostgresServer, *tenants: str, superuser: bool = False, **spec: Any
) -> Platform:
    namespace = kube.unique_namespace("platform")
    admin, password = f"admin_{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    postgres.create_role(
        admin, password, *(("SUPERUSER",) if superuser else ("CREATEROLE", "CREATEDB"))
    )
    if not superuser:
        with postgres.superuser() as conn:  # so retired logins' sessions can be ended
            conn.execute(sql.SQL("GRANT pg_signal_backend TO {}").format(sql.Identifier(admin)))
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "admin", "namespace": namespace},
            "stringData": {"username": admin, "password": password},
        }
    )
    cluster = external_cluster(namespace, "pg", postgres.port, **spec)
    cluster["spec"]["allowedNamespaces"] = {"names": list(tenants)}
    kube.apply(cluster)
    eventually(
        lambda: (
            (condition(kube.get("managedcluster", "pg", namespace), "Ready") or {}).get("status")
            == "True"
        ),
        what="cluster Ready",
    )
    return Platform(kube, postgres, namespace, admin)


@pytest.fixture
def tenants(kube: KubeCtl) -> Iterator[tuple[str, str]]:
    """The victim's namespace and the attacker's."""
    names = (kube.unique_namespace("victim"), kube.unique_namespace("attacker"))
    yield names
    for name in names:
        kube.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def platform(
    kube: KubeCtl, postgres: PostgresServer, tenants: tuple[str, str]
) -> Iterator[Platform]:
    p = make_platform(kube, postgres, *tenants)
    yield p
    kube.run("delete", "namespace", p.namespace, "--wait=false", check=False)


def members_of(platform: Platform, role: str) -> set[str]:
    rows = platform.query(
        "SELECT m.rolname FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid"
        " JOIN pg_roles m ON m.oid = a.member WHERE r.rolname = %s",
        role,
    )
    return {str(r[0]) for r in rows}


def memberships_of(platform: Platform, role: str) -> set[str]:
    rows = platform.query(
        "WITH RECURSIVE up(oid) AS (SELECT oid FROM pg_roles WHERE rolname = %s"
        " UNION SELECT a.roleid FROM pg_auth_members a JOIN up ON a.member = up.oid)"
        " SELECT r.rolname FROM up JOIN pg_roles r ON r.oid = up.oid WHERE r.rolname <> %s",
        role,
        role,
    )
    return {str(r[0]) for r in rows}


def privileged_roles(platform: Platform) -> set[str]:
    rows = platform.query(
        "SELECT rolname FROM pg_roles WHERE rolsuper OR rolcreaterole OR rolcreatedb"
        " OR rolbypassrls OR rolreplication"
    )
    return {str(r[0]) for r in rows}


# -- class 1: privileged sessions inside tenant-controlled databases -------------------------

TRAP = """
CREATE OR REPLACE FUNCTION {schema}.boom() RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN
    BEGIN EXECUTE 'GRANT {victim} TO {attacker}'; EXCEPTION WHEN others THEN NULL; END;
    BEGIN EXECUTE 'ALTER ROLE {attacker} SUPERUSER'; EXCEPTION WHEN others THEN NULL; END;
    BEGIN EXECUTE 'CREATE ROLE {marker}'; EXCEPTION WHEN others THEN NULL; END;
    BEGIN EXECUTE 'COPY (SELECT 1) TO PROGRAM ''touch {marker_file}''';
    EXCEPTION WHEN others THEN NULL; END;
    RETURN true;
END $f$;
CREATE OR REPLACE FUNCTION {schema}.boom_eq(name, text) RETURNS boolean LANGUAGE sql
    AS $f$ SELECT {schema}.boom() AND $1::text = $2 $f$;
CREATE OPERATOR {schema}.= (LEFTARG = name, RIGHTARG = text, FUNCTION = {schema}.boom_eq);
CREATE OR REPLACE VIEW {schema}.pg_extension AS
    SELECT e.* FROM pg_catalog.pg_extension e WHERE {schema}.boom();
CREATE OR REPLACE VIEW {schema}.pg_roles AS
    SELECT r.* FROM pg_catalog.pg_roles r WHERE {schema}.boom();
CREATE OR REPLACE VIEW {schema}.pg_database AS
    SELECT d.* FROM pg_catalog.pg_database d WHERE {schema}.boom();
CREATE OR REPLACE FUNCTION {schema}.array_agg(anyelement) RETURNS anyarray LANGUAGE sql
    AS $f$ SELECT ARRAY[$1] WHERE {schema}.boom() $f$;
CREATE OR REPLACE FUNCTION {schema}.now() RETURNS timestamptz LANGUAGE sql
    AS $f$ SELECT pg_catalog.now() WHERE {schema}.boom() $f$;
"""


def plant_traps(values: dict[str, str], victim: Tenant, attacker: Tenant, marker: str) -> Path:
    """Everything a database owner may do to have privileged code run its functions: shadow
    catalog relations, functions and operators in schemas it controls, put them first in
    the search_path of its database and of its roles."""
    marker_file = Path("/tmp") / f"{marker}.touched"
    with connect_as(values) as conn:
        for schema in ("trap", "public"):
            if schema == "trap":
                conn.execute("CREATE SCHEMA IF NOT EXISTS trap")
            conn.execute(
                TRAP.format(
                    schema=schema,
                    victim=victim.owner,
                    attacker=attacker.owner,
                    marker=marker,
                    marker_file=marker_file,
                ).encode()
            )
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET search_path = trap, public, pg_catalog").format(
                sql.Identifier(attacker.database)
            )
        )
        for role in ("CURRENT_USER", "SESSION_USER"):
            with contextlib.suppress(psycopg.Error):
                conn.execute(f"ALTER ROLE {role} SET search_path = trap, public, pg_catalog")
    return marker_file


def assert_nothing_gained(
    platform: Platform,
    victim: Tenant,
    attacker: Tenant,
    marker: str,
    marker_file: Path,
    privileged_before: set[str],
) -> None:
    assert victim.owner not in memberships_of(platform, attacker.owner)
    # (A non-superuser admin is a member of every owner role: it creates and drops them.)
    attacker_logins = members_of(platform, attacker.owner) - {platform.admin}
    for role in (attacker.owner, *attacker_logins):
        assert victim.owner not in memberships_of(platform, role), role
    assert privileged_roles(platform) == privileged_before, "no role gained an attribute"
    assert platform.query("SELECT 1 FROM pg_roles WHERE rolname = %s", marker) == []
    assert not marker_file.exists(), "a shell command ran as the server's OS user"


@pytest.mark.parametrize("admin", ["createrole", "superuser"])
def test_planted_catalog_shadows_never_run_with_the_admin_privileges(
    kube: KubeCtl, postgres: PostgresServer, tenants: tuple[str, str], admin: str
) -> None:
    platform = make_platform(kube, postgres, *tenants, superuser=admin == "superuser")
    victim_ns, attacker_ns = tenants
    victim = platform.tenant(victim_ns)
    attacker = platform.tenant(attacker_ns, extensions=["citext"])
    platform.ready(victim)
    platform.ready(attacker)
    privileged_before = privileged_roles(platform)
    marker = f"marker_{secrets.token_hex(4)}"
    marker_file = plant_traps(platform.credentials(attacker), victim, attacker, marker)

    # Every step of a reconcile: extensions created and dropped, a rotation, a resync.
    platform.kube.apply(manifest(platform, attacker, extensions=["hstore", "pgcrypto"]))
    platform.kube.run(
        "annotate",
        "manageddatabase",
        attacker.name,
        "-n",
        attacker.namespace,
        "vauban.dev/rotate-credentials=now",
        "--overwrite",
    )

    def converged() -> bool:
        rows = platform.query("SELECT extname FROM pg_extension", dbname=attacker.database)
        names = {str(r[0]) for r in rows}
        return {"hstore", "pgcrypto"} <= names and "citext" not in names

    eventually(converged, timeout=60, what="the extension change applied")
    platform.ready(attacker)
    assert_nothing_gained(platform, victim, attacker, marker, marker_file, privileged_before)
    values = platform.credentials(attacker)
    assert not can_connect(values, victim.database), "the victim's database stays out of reach"
    kube.run("delete", "namespace", platform.namespace, "--wait=false", check=False)


# -- class 3: taking over what Vauban did not create for this object --------------------------


def _foreign_group(platform: Platform) -> str:
    """Another application's NOLOGIN group role, which can read that application's data."""
    group = f"billing_{secrets.token_hex(3)}"
    with platform.postgres.superuser() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(group)))
    return group


def _retained(platform: Platform, namespace: str) -> Tenant:
    """A departed tenant's database, kept by deletionPolicy Retain."""
    gone = platform.tenant(namespace, name="departed", deletionPolicy="Retain")
    platform.ready(gone)
    platform.kube.run("delete", "manageddatabase", gone.name, "-n", namespace)
    return gone


def _conflict(platform: Platform, t: Tenant) -> str:
    obj = eventually(
        lambda: with_reason(platform.kube, "manageddatabase", t.name, t.namespace, "NameConflict"),
        what="NameConflict",
    )
    return str((condition(obj, "Ready") or {}).get("message"))


@pytest.mark.parametrize("target", ["group role", "neighbour's owner", "retained database"])
def test_existing_roles_are_never_taken_over(
    platform: Platform, tenants: tuple[str, str], target: str
) -> None:
    victim_ns, attacker_ns = tenants
    victim = platform.tenant(victim_ns)
    platform.ready(victim)
    if target == "group role":
        owner, database = _foreign_group(platform), f"x_{secrets.token_hex(3)}"
    elif target == "neighbour's owner":
        owner, database = victim.owner, f"x_{secrets.token_hex(3)}"
    else:
        gone = _retained(platform, victim_ns)
        owner, database = gone.owner, gone.database
    members_before = members_of(platform, owner)
    attacker = Tenant(attacker_ns, "app", database, owner)
    platform.kube.apply(manifest(platform, attacker, deletionPolicy="Delete"))
    message = _conflict(platform, attacker)
    assert "nothing was changed" in message
    assert members_of(platform, owner) == members_before, "no login joined the role"
    assert (
        platform.kube.run(
            "get", "secret", "app-credentials", "-n", attacker_ns, check=False
        ).returncode
        != 0
    )

    # Deleting the intruder (deletionPolicy Delete) touches nothing of what it named.
    platform.kube.run("delete", "manageddatabase", "app", "-n", attacker_ns)
    assert platform.query("SELECT 1 FROM pg_roles WHERE rolname = %s", owner) != []
    assert members_of(platform, owner) == members_before
    if target == "retained database":
        assert platform.query("SELECT 1 FROM pg_database WHERE datname = %s", database) != []
    assert can_connect(platform.credentials(victim))


def test_a_foreign_database_is_never_adopted(platform: Platform, tenants: tuple[str, str]) -> None:
    database = f"ledger_{secrets.token_hex(3)}"
    with platform.postgres.superuser() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    attacker = Tenant(tenants[1], "app", database, f"own_{secrets.token_hex(3)}")
    platform.kube.apply(manifest(platform, attacker, deletionPolicy="Delete"))
    assert f"database {database} already exists" in _conflict(platform, attacker)
    platform.kube.run("delete", "manageddatabase", "app", "-n", tenants[1])
    assert platform.query(
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", database
    ) == [("postgres",)]
    assert platform.query("SELECT 1 FROM pg_roles WHERE rolname = %s", attacker.owner) == []


IDENTIFIER = st.text(
    alphabet=string.ascii_lowercase + string.digits + "_", min_size=1, max_size=30
).map(lambda s: "r" + s)


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=IDENTIFIER)
def test_no_existing_role_name_is_taken_over(
    platform: Platform, tenants: tuple[str, str], name: str
) -> None:
    """Whatever the name of a role that exists on the server, a tenant naming it as owner
    gets nothing: no login is made a member of it."""
    role = f"{name}_{secrets.token_hex(2)}"
    with platform.postgres.superuser() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    attacker = Tenant(tenants[1], f"t-{secrets.token_hex(3)}", f"d_{secrets.token_hex(3)}", role)
    platform.kube.apply(manifest(platform, attacker, deletionPolicy="Delete"))
    _conflict(platform, attacker)
    assert members_of(platform, role) == set()
    platform.kube.run("delete", "manageddatabase", attacker.name, "-n", tenants[1])
    assert platform.query("SELECT 1 FROM pg_roles WHERE rolname = %s", role) != []


def test_two_clusters_on_one_server_share_one_record(
    kube: KubeCtl, postgres: PostgresServer, tenants: tuple[str, str]
) -> None:
    """A second ManagedCluster adopting the same server (another admin role) cannot be used
    to name, and on deletion drop, what the first one's tenants own."""
    victim_ns, attacker_ns = tenants
    first = make_platform(kube, postgres, victim_ns)
    second = make_platform(kube, postgres, attacker_ns)
    victim = first.tenant(victim_ns)
    first.ready(victim)
    victim_logins = members_of(first, victim.owner)
    intruder = Tenant(attacker_ns, "app", victim.database, victim.owner)
    kube.apply(manifest(second, intruder, deletionPolicy="Delete"))
    assert "another namespace" in _conflict(second, intruder)
    kube.run("delete", "manageddatabase", "app", "-n", attacker_ns)
    assert members_of(first, victim.owner) == victim_logins
    assert first.query("SELECT 1 FROM pg_database WHERE datname = %s", victim.database) != []
    assert can_connect(first.credentials(victim))
    for p in (first, second):
        kube.run("delete", "namespace", p.namespace, "--wait=false", check=False)


# -- class 4: status is observation, never authority ----------------------------------------


def forge_status(kube: KubeCtl, t: Tenant, status: dict[str, Any]) -> None:
    kube.run(
        "patch",
        "manageddatabase",
        t.name,
        "-n",
        t.namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def test_forged_status_grants_and_deletes_nothing(
    platform: Platform, tenants: tuple[str, str]
) -> None:
    victim_ns, attacker_ns = tenants
    victim = platform.tenant(victim_ns)
    platform.ready(victim)
    victim_login = platform.credentials(victim)["username"]
    intruder = Tenant(attacker_ns, "app", victim.database, victim.owner)
    platform.kube.apply(manifest(platform, intruder, deletionPolicy="Delete"))
    _conflict(platform, intruder)
    # The intruder's status now claims the victim's database was provisioned by it, with the
    # victim's login as its own and as one being retired.
    forge_status(
        platform.kube,
        intruder,
        {
            "credentials": {
                "username": victim_login,
                "retiring": [victim_login],
                "retireAfter": "2000-01-01T00:00:00Z",
            },
            "extensions": ["plpgsql"],
        },
    )
    platform.kube.run("label", "manageddatabase", "app", "-n", attacker_ns, "poke=1")
    _conflict(platform, intruder)
    platform.kube.run("delete", "manageddatabase", "app", "-n", attacker_ns)
    assert platform.query("SELECT 1 FROM pg_database WHERE datname = %s", victim.database) != []
    assert (
        platform.query("SELECT 1 FROM pg_roles WHERE rolname = %s AND rolcanlogin", victim_login)
        != []
    )
    assert can_connect(platform.credentials(victim))


def test_a_wiped_status_is_rebuilt_from_the_record(
    platform: Platform, tenants: tuple[str, str]
) -> None:
    t = platform.tenant(tenants[0])
    before = platform.ready(t)["status"]["credentials"]
    logins_before = members_of(platform, t.owner)
    platform.kube.run(
        "patch",
        "manageddatabase",
        t.name,
        "-n",
        t.namespace,
        "--subresource=status",
        "--type=json",
        "-p",
        '[{"op": "remove", "path": "/status"}]',
    )
    platform.kube.run("label", "manageddatabase", t.name, "-n", t.namespace, "poke=1")
    after = eventually(
        lambda: (_ready(platform.kube, t) or {}).get("status", {}).get("credentials")
    )
    assert after["username"] == before["username"], "no rotation because status forgot"
    assert members_of(platform, t.owner) == logins_before, "no login created or dropped"


# -- class 6: exhaustion ----------------------------------------------------------------------


def test_a_tenant_at_its_limit_leaves_the_others_and_the_operator_alone(
    kube: KubeCtl, postgres: PostgresServer, tenants: tuple[str, str]
) -> None:
    victim_ns, attacker_ns = tenants
    platform = make_platform(
        kube, postgres, *tenants, tenantConnectionLimit={"default": 3, "maximum": 5}
    )
    greedy = Tenant(attacker_ns, "greedy", f"g_{secrets.token_hex(3)}", f"g_{secrets.token_hex(3)}")
    kube.apply(manifest(platform, greedy, connectionLimit=50))
    obj = eventually(
        lambda: with_reason(
            kube, "manageddatabase", "greedy", attacker_ns, "ConnectionLimitTooHigh"
        )
    )
    assert "maximum of this cluster (5" in (condition(obj, "Ready") or {})["message"]
    assert platform.query("SELECT 1 FROM pg_roles WHERE rolname = %s", greedy.owner) == []

    attacker = platform.tenant(attacker_ns)
    victim = platform.tenant(victim_ns)
    platform.ready(attacker)
    platform.ready(victim)
    values = platform.credentials(attacker)
    assert platform.query(
        "SELECT rolconnlimit FROM pg_roles WHERE rolname = %s", values["username"]
    ) == [(3,)]
    held = [connect_as(values) for _ in range(3)]
    try:
        assert not can_connect(values), "the limit holds"
        assert can_connect(platform.credentials(victim)), "another tenant still gets in"
        # The operator still reconciles, on the same server.
        kube.apply(manifest(platform, victim, extensions=["citext"]))
        eventually(
            lambda: platform.query(
                "SELECT 1 FROM pg_extension WHERE extname = 'citext'", dbname=victim.database
            ),
            what="the operator still at work",
        )
    finally:
        for conn in held:
            conn.close()
    kube.run("delete", "namespace", platform.namespace, "--wait=false", check=False)


# -- class 7: the smaller holes ---------------------------------------------------------------


def test_a_namespace_no_longer_admitted_keeps_no_way_in(
    platform: Platform, tenants: tuple[str, str]
) -> None:
    victim_ns, attacker_ns = tenants
    t = platform.tenant(attacker_ns)
    platform.ready(t)
    values = platform.credentials(t)
    assert can_connect(values)
    cluster = platform.kube.get("managedcluster", "pg", platform.namespace)
    cluster["spec"]["allowedNamespaces"] = {"names": [victim_ns]}
    platform.kube.apply(
        {k: cluster[k] for k in ("apiVersion", "kind", "spec")}
        | {"metadata": {"name": "pg", "namespace": platform.namespace}}
    )
    obj = eventually(
        lambda: with_reason(
            platform.kube, "manageddatabase", t.name, attacker_ns, "NamespaceNotAllowed"
        ),
        what="NamespaceNotAllowed",
    )
    eventually(lambda: not can_connect(values), what="the login suspended")
    message = (condition(platform.kube.get("manageddatabase", t.name, attacker_ns), "Ready") or {})[
        "message"
    ]
    assert "logins are suspended" in message, obj
    # Admitted again, it gets its way back, with the same credentials.
    cluster["spec"]["allowedNamespaces"] = {"names": list(tenants)}
    platform.kube.apply(
        {k: cluster[k] for k in ("apiVersion", "kind", "spec")}
        | {"metadata": {"name": "pg", "namespace": platform.namespace}}
    )
    eventually(lambda: can_connect(values), timeout=60, what="the login restored")


def test_the_registry_is_out_of_every_tenant_reach(
    platform: Platform, tenants: tuple[str, str]
) -> None:
    t = platform.tenant(tenants[0])
    platform.ready(t)
    values = platform.credentials(t)
    assert not can_connect(values, "vauban")
    with connect_as(values) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET ROLE vauban_registry")
        with pytest.raises(psycopg.Error):
            conn.execute(f"GRANT vauban_registry TO {values['username']}")
    assert "vauban_registry" not in memberships_of(platform, values["username"])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("owner", "information_schema", "owner must not be one of"),
        ("owner", "vauban_registry", "reserved by Vauban"),
        ("databaseName", "vauban", "reserved by Vauban"),
        ("extensions", ["pg_stat_statements"], "extensions"),
    ],
)
def test_reserved_names_and_untrusted_extensions_are_refused_at_apply(
    platform: Platform, tenants: tuple[str, str], field: str, value: Any, message: str
) -> None:
    t = Tenant(tenants[1], "app", "d_x", "o_x")
    body = manifest(platform, t)
    body["spec"][field] = value
    result = platform.kube.run("apply", "-f", "-", stdin=json.dumps(body), check=False)
    assert result.returncode != 0 and message in result.stderr


def test_an_empty_namespace_selector_is_refused(kube: KubeCtl, namespace: str) -> None:
    cluster = external_cluster(namespace, "pg", 5432)
    cluster["spec"]["allowedNamespaces"] = {"selector": {}}
    result = kube.run("apply", "-f", "-", stdin=json.dumps(cluster), check=False)
    assert result.returncode != 0 and "would admit every namespace" in result.stderr
