"""ManagedDatabase provisioning on a real PostgreSQL server, through an external-mode
ManagedCluster. Every check that matters is made from the database itself."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import psycopg
import pytest

from support.kube import (
    KubeCtl,
    OperatorProcess,
    condition,
    eventually,
    external_cluster,
    with_reason,
)
from vauban.devcluster.postgres import PostgresServer

pytestmark = pytest.mark.usefixtures("operator")


@pytest.fixture
def cluster(kube: KubeCtl, namespace: str, postgres: PostgresServer) -> Iterator[str]:
    """An adopted server, Ready; yields the cluster's name."""
    admin, password = f"admin_{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    postgres.create_role(admin, password, "CREATEROLE", "CREATEDB")
    with postgres.superuser() as conn:  # so retired logins' sessions can be ended
        conn.execute(f'GRANT pg_signal_backend TO "{admin}"')
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "admin", "namespace": namespace},
            "stringData": {"username": admin, "password": password},
        }
    )
    kube.apply(external_cluster(namespace, "pg", postgres.port))
    eventually(lambda: ready(kube, "managedcluster", "pg", namespace), what="cluster Ready")
    yield "pg"


def ready(kube: KubeCtl, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    obj = kube.get(kind, name, namespace)
    c = condition(obj, "Ready")
    return obj if c and c["status"] == "True" else None


def database(namespace: str, name: str = "shop", **spec: Any) -> dict[str, Any]:
    base = {
        "clusterRef": {"name": "pg"},
        "databaseName": f"db_{namespace[-6:]}",
        "owner": f"own_{namespace[-6:]}",
    }
    return {
        "apiVersion": "vauban.dev/v1alpha1",
        "kind": "ManagedDatabase",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {**base, **spec},
    }


def credentials(kube: KubeCtl, namespace: str, name: str = "shop") -> dict[str, str]:
    secret = kube.get("secret", f"{name}-credentials", namespace)
    assert secret["type"] == "kubernetes.io/basic-auth"
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def connect_as(values: dict[str, str]) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(
        host=values["host"],
        port=int(values["port"]),
        dbname=values["dbname"],
        user=values["username"],
        password=values["password"],
        sslmode=values["sslmode"],
        autocommit=True,
        connect_timeout=5,
    )


def provisioned(kube: KubeCtl, namespace: str, **spec: Any) -> dict[str, Any]:
    kube.apply(database(namespace, **spec))
    return eventually(
        lambda: ready(kube, "manageddatabase", "shop", namespace), timeout=60, what="database Ready"
    )


def _projected(kube: KubeCtl, namespace: str, name: str, root: Path) -> Path:
    """What the servicebinding.io reconciler does for a workload: find the Secret through the
    Provisioned Service's status.binding.name, and project each key as a file."""
    obj = kube.get("manageddatabase", name, namespace)
    secret = kube.get("secret", obj["status"]["binding"]["name"], namespace)
    directory = root / name
    directory.mkdir()
    for key, value in secret["data"].items():
        (directory / key).write_bytes(base64.b64decode(value))
    return directory


def _binding(directory: Path) -> dict[str, str]:
    """What a binder's library reads back: one entry per file (Spring Cloud Bindings,
    Quarkus' kubernetes-service-binding)."""
    return {f.name: f.read_text() for f in directory.iterdir()}


def _from_jdbc(url: str) -> dict[str, Any]:
    """libpq's parameters for a JDBC URL of pgJDBC's form, as the Java driver reads it."""
    parsed = urlsplit(url.removeprefix("jdbc:"))
    assert parsed.scheme == "postgresql"
    query = dict(parse_qsl(parsed.query))
    return {
        "host": parsed.hostname,
        "port": parsed.port,
        "dbname": unquote(parsed.path.lstrip("/")),
        **query,
    }


def test_the_secret_binds_as_servicebinding_io_binders_read_it(
    kube: KubeCtl, namespace: str, cluster: str, tmp_path: Path
) -> None:
    provisioned(kube, namespace)
    directory = _projected(kube, namespace, "shop", tmp_path)
    values = _binding(directory)
    # How Spring Cloud Bindings and Quarkus pick a binding: its `type`.
    assert values["type"] == "postgresql" and values["provider"] == "vauban"

    def who(conn: psycopg.Connection[tuple[Any, ...]]) -> tuple[Any, ...] | None:
        return conn.execute("SELECT current_user, current_database()").fetchone()

    expected = (
        kube.get("manageddatabase", "shop", namespace)["spec"]["owner"],
        values["database"],
    )
    # Spring Cloud Bindings' PostgreSQL processor: host, port, database, username, password,
    # sslmode (and sslrootcert, a file of the binding, when there is one).
    with psycopg.connect(
        host=values["host"],
        port=int(values["port"]),
        dbname=values["database"],
        user=values["username"],
        password=values["password"],
        sslmode=values["sslmode"],
        connect_timeout=5,
    ) as conn:
        assert who(conn) == expected
    # Every URI connects, as libpq or pgJDBC reads it.
    for key in ("uri", "fqdn-uri"):
        with psycopg.connect(values[key], connect_timeout=5) as conn:
            assert who(conn) == expected, key
    for key in ("jdbc-uri", "fqdn-jdbc-uri"):
        with psycopg.connect(**_from_jdbc(values[key]), connect_timeout=5) as conn:
            assert who(conn) == expected, key
    # CloudNativePG's `user` and the pgpass file, as psql uses them.
    (directory / "pgpass").chmod(0o600)
    with psycopg.connect(
        host=values["host"],
        port=values["port"],
        dbname=values["dbname"],
        user=values["user"],
        passfile=str(directory / "pgpass"),
        connect_timeout=5,
    ) as conn:
        assert who(conn) == expected


def test_database_role_secret_and_tenant_access(
    kube: KubeCtl,
    namespace: str,
    cluster: str,
    postgres: PostgresServer,
    operator: OperatorProcess,
) -> None:
    obj = provisioned(kube, namespace, extensions=["pgcrypto", "citext"], connectionLimit=5)
    spec = obj["spec"]
    db, owner = spec["databaseName"], spec["owner"]
    status = obj["status"]
    assert status["phase"] == "Ready"
    assert status["credentials"]["secretName"] == "shop-credentials"
    assert status["sizeBytes"] > 0
    assert status["extensions"] == ["citext", "pgcrypto"]

    values = credentials(kube, namespace)
    assert set(values) == {
        "username",
        "password",
        "host",
        "port",
        "dbname",
        "uri",
        "jdbc-uri",
        "pgpass",
        "sslmode",
        # CloudNativePG's other names
        "user",
        "fqdn-uri",
        "fqdn-jdbc-uri",
        # servicebinding.io's
        "type",
        "provider",
        "database",
    }
    assert (values["host"], values["port"], values["dbname"]) == (
        "127.0.0.1",
        str(postgres.port),
        db,
    )
    assert values["username"] == status["credentials"]["username"] != owner
    assert values["password"] not in json.dumps(obj)

    with connect_as(values) as conn:
        # The login acts as the owner: what the tenant creates belongs to the owner role.
        conn.execute("CREATE TABLE orders (id int)")
        row = conn.execute(
            "SELECT current_user, tableowner FROM pg_tables WHERE tablename = 'orders'"
        ).fetchone()
        assert row == (owner, owner)
        extensions = {r[0] for r in conn.execute("SELECT extname FROM pg_extension")}
        assert {"pgcrypto", "citext"} <= extensions
    with psycopg.connect(values["uri"], connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)

    with postgres.superuser() as conn:
        rows = conn.execute(
            "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname IN (%s, %s)",
            (owner, values["username"]),
        ).fetchall()
        roles = {row[0]: row[1] for row in rows}
        assert roles == {owner: False, values["username"]: True}
        # libpq's verifier, at the server's iteration count (scram_iterations, PostgreSQL 16+).
        stored = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (values["username"],)
        ).fetchone()
        iterations = conn.execute("SELECT current_setting('scram_iterations', true)").fetchone()
        assert stored and iterations
        assert str(stored[0]).startswith(f"SCRAM-SHA-256${iterations[0] or 4096}:")
        limit = conn.execute(
            "SELECT rolconnlimit FROM pg_roles WHERE rolname = %s", (values["username"],)
        ).fetchone()
        assert limit == (5,)
        assert conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (db,)
        ).fetchone() == (owner,)

    # PUBLIC may not connect: another role of the server is refused.
    stranger, password = f"stranger_{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    postgres.create_role(stranger, password)
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        connect_as({**values, "username": stranger, "password": password})

    events = [
        e["reason"]
        for e in kube.get_list("events", namespace)
        if e["involvedObject"]["name"] == "shop"
    ]
    # One Event tells the creation (the transition to Ready); Provisioned is for changes.
    assert events.count("Available") == 1 and "Provisioned" not in events

    labels = {"namespace": namespace, "database": "shop"}
    assert operator.metric("vauban_database_up", **labels) == 1.0
    assert (operator.metric("vauban_database_size_bytes", **labels) or 0) > 0
    reconciles = operator.metric(
        "vauban_reconcile_total", kind="ManagedDatabase", handler="reconcile", result="success"
    )
    assert (reconciles or 0) > 0
    assert operator.metric("vauban_build_info") == 1.0


def test_a_burst_tells_each_database_once_in_fewer_events(
    kube: KubeCtl, namespace: str, cluster: str
) -> None:
    """Databases of one cluster created together: each one's transition to Ready is told
    once, on itself or named in one Event folded on the cluster (vauban.kube.events)."""
    names = [f"burst-{i}" for i in range(6)]
    kube.apply(
        "\n---\n".join(
            json.dumps(database(namespace, n, databaseName=f"b{i}_{namespace[-6:]}", owner=f"o{i}"))
            for i, n in enumerate(names)
        )
    )
    eventually(
        lambda: all(ready(kube, "manageddatabase", n, namespace) for n in names) or None,
        timeout=90,
        what="every database Ready",
    )

    def told() -> dict[str, int] | None:
        events = [e for e in kube.get_list("events", namespace) if e["reason"] == "Available"]
        counts = dict.fromkeys(names, 0)
        for e in events:
            involved = e["involvedObject"]
            if involved["kind"] == "ManagedDatabase":
                counts[involved["name"]] += 1
            elif involved["name"] == cluster and e["message"].startswith("(combined from"):
                folded = e["message"].split(" Available: ", 1)[1].split(". ")[0].split(", ")
                assert e["count"] == len(folded)
                for n in folded:
                    counts[n] += 1
        return counts if all(counts.values()) else None

    counts = eventually(told, timeout=60, what="every database told Ready")
    assert counts == dict.fromkeys(names, 1)


def test_second_reconcile_changes_nothing(kube: KubeCtl, namespace: str, cluster: str) -> None:
    obj = provisioned(kube, namespace)
    secret_version = kube.get("secret", "shop-credentials", namespace)["metadata"][
        "resourceVersion"
    ]
    events_before = len(kube.get_list("events", namespace))

    kube.apply(database(namespace))  # the same YAML again
    kube.run("label", "manageddatabase", "shop", "-n", namespace, "touched=yes")  # a reconcile
    time.sleep(3)

    after = kube.get("manageddatabase", "shop", namespace)
    assert after["status"]["credentials"] == obj["status"]["credentials"]
    assert kube.get("secret", "shop-credentials", namespace)["metadata"]["resourceVersion"] == (
        secret_version
    )
    assert len(kube.get_list("events", namespace)) == events_before
    with connect_as(credentials(kube, namespace)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_rotation_keeps_running_apps_working(
    kube: KubeCtl, namespace: str, cluster: str, postgres: PostgresServer
) -> None:
    provisioned(kube, namespace, credentials={"gracePeriod": "4s"})
    old = credentials(kube, namespace)
    running = connect_as(old)  # an application that stays connected through the rotation

    kube.run(
        "annotate",
        "manageddatabase",
        "shop",
        "-n",
        namespace,
        "vauban.dev/rotate-credentials=2026-11-29",
    )
    rotated = eventually(
        lambda: (
            (o := kube.get("manageddatabase", "shop", namespace))["status"]
            .get("credentials", {})
            .get("rotationToken")
            == "2026-11-29"
            and o
        ),
        what="the rotation",
    )
    assert rotated["status"]["credentials"]["retiring"] == [old["username"]]
    new = credentials(kube, namespace)
    assert new["username"] != old["username"] and new["password"] != old["password"]
    with connect_as(new) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # During the grace period the previous credentials still work.
    with connect_as(old) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert running.execute("SELECT 1").fetchone() == (1,)

    eventually(
        lambda: (
            not kube.get("manageddatabase", "shop", namespace)["status"]["credentials"].get(
                "retiring"
            )
        ),
        timeout=30,
        what="the previous login to be retired",
    )
    with pytest.raises(psycopg.OperationalError):
        connect_as(old)
    with pytest.raises(psycopg.OperationalError):  # its open session was ended too
        running.execute("SELECT 1")
    with connect_as(new) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with postgres.superuser() as conn:
        assert (
            conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (old["username"],)).fetchone()
            is None
        )
    running.close()
    events = [e["reason"] for e in kube.get_list("events", namespace)]
    assert "CredentialsRotated" in events


def test_secret_is_the_only_source_of_passwords(
    kube: KubeCtl, namespace: str, cluster: str, postgres: PostgresServer
) -> None:
    """A login role that disappears from the server comes back with the Secret's password:
    nothing stale or new is ever applied behind the Secret's back."""
    provisioned(kube, namespace)
    values = credentials(kube, namespace)
    with postgres.superuser() as conn:
        conn.execute(f'DROP ROLE "{values["username"]}"')
    kube.run("label", "manageddatabase", "shop", "-n", namespace, "poke=1")
    eventually(lambda: _can_connect(values), what="the login to be recreated")
    assert credentials(kube, namespace) == values


def test_the_probe_follows_usage_and_finds_what_was_dropped(
    kube: KubeCtl,
    namespace: str,
    cluster: str,
    postgres: PostgresServer,
    operator: OperatorProcess,
) -> None:
    """Every probe interval (2 s here), one query per cluster reads its databases' sessions
    and sizes, and sees a login role gone; nothing pokes the ManagedDatabase."""
    provisioned(kube, namespace)
    values = credentials(kube, namespace)
    labels = {"namespace": namespace, "database": "shop"}
    with connect_as(values), connect_as(values):
        eventually(
            lambda: kube.get("manageddatabase", "shop", namespace)["status"]["connections"] == 2,
            what="two sessions in status",
        )
        assert operator.metric("vauban_database_connections", **labels) == 2.0
    with postgres.superuser() as conn:
        conn.execute(f'DROP ROLE "{values["username"]}"')
    eventually(lambda: _can_connect(values), what="the login to be recreated")
    eventually(
        lambda: kube.get("manageddatabase", "shop", namespace)["status"]["connections"] == 0,
        what="no session in status",
    )


def _can_connect(values: dict[str, str]) -> bool:
    try:
        with connect_as(values):
            return True
    except psycopg.OperationalError:
        return False


def test_extensions_and_connection_limit_follow_the_spec(
    kube: KubeCtl, namespace: str, cluster: str, postgres: PostgresServer
) -> None:
    obj = provisioned(kube, namespace, extensions=["pgcrypto", "citext"], connectionLimit=5)
    db = obj["spec"]["databaseName"]
    values = credentials(kube, namespace)
    kube.apply(database(namespace, extensions=["citext", "hstore"], connectionLimit=10))

    def converged() -> bool:
        with postgres.superuser(db) as conn:
            extensions = {r[0] for r in conn.execute("SELECT extname FROM pg_extension")}
            limit = conn.execute(
                "SELECT rolconnlimit FROM pg_roles WHERE rolname = %s", (values["username"],)
            ).fetchone()
        return (
            "pgcrypto" not in extensions and {"citext", "hstore"} <= extensions and limit == (10,)
        )

    eventually(converged, what="extensions and limit to follow the spec")

    def provisioned_event() -> str | None:
        return next(
            (
                e["message"]
                for e in kube.get_list("events", namespace)
                if e["involvedObject"]["name"] == "shop" and e["reason"] == "Provisioned"
            ),
            None,
        )

    message = eventually(provisioned_event, what="a Provisioned Event for the change")
    assert "hstore" in message and "pgcrypto" in message  # what was created and dropped


@pytest.mark.parametrize("policy", ["Retain", "Delete"])
def test_deletion_policies(
    kube: KubeCtl, namespace: str, cluster: str, postgres: PostgresServer, policy: str
) -> None:
    obj = provisioned(kube, namespace, deletionPolicy=policy)
    db, owner = obj["spec"]["databaseName"], obj["spec"]["owner"]
    values = credentials(kube, namespace)
    with connect_as(values) as conn:
        conn.execute("CREATE TABLE kept (id int)")
    kube.run("delete", "manageddatabase", "shop", "-n", namespace)

    with postgres.superuser() as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone()
        login = conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", (values["username"],)
        ).fetchone()
        owner_left = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (owner,)).fetchone()
    assert login is None, "the tenant's login is revoked either way"
    if policy == "Retain":
        assert exists is not None and owner_left is not None
        with postgres.superuser(db) as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (0,)
    else:
        assert exists is None and owner_left is None
    assert not _can_connect(values)


def test_name_conflict_and_its_deletion_leave_the_first_alone(
    kube: KubeCtl, namespace: str, cluster: str, postgres: PostgresServer
) -> None:
    first = provisioned(kube, namespace, deletionPolicy="Delete")
    db = first["spec"]["databaseName"]
    second = database(
        namespace, name="copycat", databaseName=db, owner="someone_else", deletionPolicy="Delete"
    )
    kube.apply(second)
    obj = eventually(
        lambda: with_reason(kube, "manageddatabase", "copycat", namespace, "NameConflict")
    )
    assert f"{namespace}/shop" in (condition(obj, "Ready") or {})["message"]

    kube.run("delete", "manageddatabase", "copycat", "-n", namespace)
    with postgres.superuser() as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone()
    assert _can_connect(credentials(kube, namespace))


def test_a_secret_of_the_same_name_is_never_overwritten(
    kube: KubeCtl, namespace: str, cluster: str
) -> None:
    kube.run(
        "create",
        "secret",
        "generic",
        "shop-credentials",
        "-n",
        namespace,
        "--from-literal=mine=precious",
    )
    kube.apply(database(namespace))
    obj = eventually(
        lambda: with_reason(kube, "manageddatabase", "shop", namespace, "NameConflict")
    )
    assert "Secret shop-credentials already exists" in (condition(obj, "Ready") or {})["message"]
    secret = kube.get("secret", "shop-credentials", namespace)
    assert secret["type"] == "Opaque"
    assert base64.b64decode(secret["data"]["mine"]).decode() == "precious"
    assert set(secret["data"]) == {"mine"}
