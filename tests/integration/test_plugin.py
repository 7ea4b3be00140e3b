"""`kubectl vauban` as a person runs it: found by kubectl on PATH, against the real apiserver,
the operator, the suite's PostgreSQL and S3 server; and what `kubectl get` and `kubectl
explain` show of Vauban's kinds."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from support.backups import backed_up_cluster, connect_tenant, tenant_database
from support.kube import KubeCtl, condition, eventually, ready
from vauban.devcluster.postgres import PostgresServer
from vauban.devcluster.s3 import S3Server

pytestmark = pytest.mark.usefixtures("operator", "agent_runner")


def plugin(kube: KubeCtl, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`kubectl vauban ...`: kubectl finds kubectl-vauban where pip installed it."""
    scripts = str(Path(sys.executable).parent)
    result = subprocess.run(
        [kube.binary, "vauban", f"--kubeconfig={kube.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"kubectl vauban {' '.join(args)}: {result.returncode}\n{result.stdout}"
            f"\n{result.stderr}"
        )
    return result


@pytest.fixture
def orders(kube: KubeCtl, namespace: str, postgres: PostgresServer, s3: S3Server) -> Iterator[str]:
    """ManagedDatabase `orders` on cluster `pg`, Ready, with a table of 100 rows."""
    bucket = f"b-{secrets.token_hex(4)}"
    s3.create_bucket(bucket)
    backed_up_cluster(kube, namespace, postgres, s3, bucket)
    eventually(lambda: ready(kube, "managedcluster", "pg", namespace), what="cluster Ready")
    kube.apply(tenant_database(namespace, "orders"))
    eventually(lambda: ready(kube, "manageddatabase", "orders", namespace), what="Ready")
    with connect_tenant(kube, namespace, "orders") as conn:
        conn.execute("CREATE TABLE item (id int PRIMARY KEY, label text)")
        conn.execute("INSERT INTO item SELECT g, 'item ' || g FROM generate_series(1, 100) g")
    yield "orders"


def _secret_values(kube: KubeCtl, namespace: str) -> dict[str, str]:
    """Every value of every Secret of the namespace, by `<secret>/<key>`."""
    return {
        f"{s['metadata']['name']}/{k}": base64.b64decode(v).decode()
        for s in kube.get_list("secrets", namespace)
        for k, v in (s.get("data") or {}).items()
    }


def test_status_backup_and_restore(kube: KubeCtl, namespace: str, orders: str) -> None:
    cluster = json.loads(
        plugin(kube, "status", "cluster", "pg", "-n", namespace, "-o", "json").stdout
    )
    assert cluster["kind"] == "ManagedCluster" and cluster["mode"] == "External"
    ready_condition = next(c for c in cluster["conditions"] if c["type"] == "Ready")
    assert ready_condition["status"] == "True" and ready_condition["reason"]
    assert cluster["key"]["provider"] == "kubernetes-secret" and cluster["key"]["version"] == 1
    assert cluster["compliance"]["profile"] == "none"
    assert [d["name"] for d in cluster["databases"]] == [f"{namespace}/orders"]
    text = plugin(kube, "status", "mdbc", "pg", "-n", namespace).stdout
    assert f"ManagedCluster {namespace}/pg" in text and "Conditions:" in text and "Key:" in text

    # Back up now: progress on standard error, the result on standard output.
    backed = plugin(kube, "backup", orders, "--name", "now", "-n", namespace, "-o", "json")
    result = json.loads(backed.stdout)
    assert result["name"] == "now" and result["phase"] == "Succeeded", backed.stderr
    assert result["trigger"] == "OnDemand" and result["size"].endswith("B")
    assert "ManagedBackup now:" in backed.stderr and "Succeeded" in backed.stderr

    database = yaml.safe_load(
        plugin(kube, "status", "database", orders, "-n", namespace, "-o", "yaml").stdout
    )
    assert database["backups"]["items"][0]["name"] == "now"
    eventually(
        lambda: (
            json.loads(
                plugin(kube, "status", "database", orders, "-n", namespace, "-o", "json").stdout
            )["backups"]["last"]
            == "now"
        ),
        what="last backup in status",
    )
    assert database["credentials"]["secret"] == "orders-credentials"
    text = plugin(kube, "status", "database", orders, "-n", namespace).stdout
    assert "Credentials: Secret orders-credentials" in text and "now" in text

    # Restore into a new database, waiting for it; its rows are the source's.
    restored = plugin(
        kube,
        "restore",
        orders,
        "copy",
        "--backup",
        "now",
        "--database-name",
        f"copy_{namespace[-6:]}".replace("-", "_"),
        "--owner",
        f"own_copy_{namespace[-6:]}".replace("-", "_"),
        "-n",
        namespace,
    )
    assert f"ManagedDatabase {namespace}/copy" in restored.stdout
    assert "Restored:    from now, Succeeded" in restored.stdout
    with connect_tenant(kube, namespace, "copy") as conn:
        assert conn.execute("SELECT count(*) FROM item").fetchone() == (100,)

    # What `kubectl get -o wide` shows of them (a Table request, rendered by kubectl).
    def wide(kind: str) -> dict[str, str] | None:
        lines = kube.run("get", kind, "-n", namespace, "-o", "wide").stdout.splitlines()
        columns = [(m.group(), m.start()) for m in re.finditer(r"\S+(?: \S+)*", lines[0])]
        bounds = [start for _, start in columns[1:]] + [None]
        for line in lines[1:]:
            row = {
                name: line[start:end].strip()
                for (name, start), end in zip(columns, bounds, strict=True)
            }
            if row["NAME"] in ("pg", "orders", "now"):
                return row
        return None

    mdbc = wide("managedclusters")
    assert mdbc is not None
    assert {"REASON", "SIZE", "PRIMARY", "ENDPOINT", "LAST BACKUP"} <= mdbc.keys()
    assert mdbc["READY"] == "True" and mdbc["REASON"] == ready_condition["reason"]
    assert mdbc["ENDPOINT"] == cluster["endpoints"]["readWrite"]
    backup = wide("managedbackups")
    assert backup is not None and backup["SIZE"] == result["size"]
    assert backup["REASON"] and backup["FINISHED"] and backup["LOCATION"]

    def sized() -> dict[str, str] | None:
        row = wide("manageddatabases")
        return row if row and row["SIZE"] not in ("", "<none>") else None

    mdb = eventually(sized, what="database size shown")
    assert mdb["SIZE"].endswith("B") and mdb["LAST BACKUP"] not in ("", "<none>")


def test_rotate_credentials_and_key(kube: KubeCtl, namespace: str, orders: str) -> None:
    before = _secret_values(kube, namespace)["orders-credentials/password"]
    rotated = json.loads(
        plugin(
            kube, "rotate", "credentials", orders, "--token", "t1", "-n", namespace, "-o", "json"
        ).stdout
    )
    assert rotated["token"] == "t1" and rotated["lastRotation"]
    db = kube.get("manageddatabase", orders, namespace)
    assert db["metadata"]["annotations"]["vauban.dev/rotate-credentials"] == "t1"
    assert db["status"]["credentials"]["rotationToken"] == "t1"
    assert _secret_values(kube, namespace)["orders-credentials/password"] != before

    plugin(kube, "rotate", "key", "pg", "-n", namespace)
    encryption = kube.get("managedcluster", "pg", namespace)["status"]["encryption"]
    assert encryption["keyVersion"] == 2


def test_psql_logs_in_without_showing_the_password(
    kube: KubeCtl, namespace: str, orders: str, postgres: PostgresServer
) -> None:
    password = _secret_values(kube, namespace)["orders-credentials/password"]
    session = plugin(
        kube,
        "psql",
        orders,
        "-n",
        namespace,
        "--psql",
        str(postgres.bindir / "psql"),
        "--",
        "-tAc",
        "SELECT session_user, count(*) FROM item",
    )
    username = _secret_values(kube, namespace)["orders-credentials/username"]
    assert session.stdout.strip() == f"{username}|100"
    assert password not in session.stdout + session.stderr


def test_report_holds_no_secret_value(kube: KubeCtl, namespace: str, orders: str) -> None:
    values = _secret_values(kube, namespace)
    password = values["orders-credentials/password"]
    # Secrets leak where they should not: a careless annotation, an event's message.
    kube.run("annotate", "manageddatabase", orders, "-n", namespace, f"note=password={password}")
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "leak", "namespace": namespace},
            "involvedObject": {"kind": "ManagedDatabase", "name": orders, "namespace": namespace},
            "reason": "Leak",
            "type": "Warning",
            "message": f"connected with {values['orders-credentials/uri']}",
        }
    )
    bundle_file = Path(kube.kubeconfig).parent / f"bundle-{namespace}.json"
    plugin(kube, "report", "-n", namespace, "-o", "json", "-f", str(bundle_file))
    text = bundle_file.read_text(encoding="utf-8")
    bundle = json.loads(text)
    assert [o["metadata"]["name"] for o in bundle["objects"]["manageddatabases"]] == [orders]
    assert bundle["objects"]["managedclusters"][0]["metadata"]["name"] == "pg"
    assert any(c["object"] == f"ManagedDatabase {orders}" for c in bundle["conditions"])
    assert any(e["reason"] == "Leak" for e in bundle["events"])
    assert "operatorLogs" in bundle
    leaked = [
        key
        for key, value in values.items()
        # What only locates the database (its names appear in the objects themselves), and
        # the servicebinding.io `type`/`provider` ("postgresql", "vauban").
        if key.rsplit("/", 1)[1]
        not in (
            "username",
            "user",
            "host",
            "port",
            "dbname",
            "database",
            "sslmode",
            "type",
            "provider",
        )
        and value in text
    ]
    assert leaked == [], f"secret values in the bundle: {leaked}"
    assert "<redacted>" in text
    # The YAML form, on standard output, is as clean.
    out = plugin(kube, "report", "-n", namespace).stdout
    assert yaml.safe_load(out)["namespace"] == namespace
    assert password not in out


def test_compliance_and_errors(kube: KubeCtl, namespace: str, orders: str) -> None:
    report = json.loads(plugin(kube, "compliance", "-n", namespace, "-o", "json").stdout)
    assert report["summary"]["clusters"] == 1 and report["summary"]["databases"] == 1
    assert plugin(kube, "compliance", "-n", namespace).stdout.startswith(
        "# Vauban compliance report"
    )
    missing = plugin(kube, "status", "database", "nope", "-n", namespace, check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr
    assert condition(kube.get("manageddatabase", orders, namespace), "Ready")


def test_kubectl_explain_says_what_each_kind_is(kube: KubeCtl, crds: None) -> None:
    def explained(kind: str) -> str | None:
        found = kube.run("explain", kind, check=False)
        return found.stdout if found.returncode == 0 else None

    text = eventually(lambda: explained("managedcluster"), what="explain managedcluster")
    assert "PostgreSQL server Vauban runs databases on" in " ".join(text.split())
    text = eventually(lambda: explained("mbk"), what="explain managedbackup")
    assert "One backup of one ManagedDatabase" in " ".join(text.split())
