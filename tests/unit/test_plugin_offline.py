"""`kubectl vauban` without a cluster: what it shows, the manifests it writes, what a support
bundle keeps and removes, how its arguments read, and its krew manifest. The commands
themselves run against the real apiserver in tests/integration/test_plugin.py."""

from __future__ import annotations

import base64
import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from vauban.plugin import cli, redact, views

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _condition(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-03-01T11:00:00Z",
    }


CLUSTER: dict[str, Any] = {
    "kind": "ManagedCluster",
    "metadata": {"namespace": "platform", "name": "pg", "generation": 2},
    "spec": {"mode": "Managed", "version": "17", "instances": 3, "compliance": {"profile": "hds"}},
    "status": {
        "observedGeneration": 2,
        "phase": "Ready",
        "conditions": [_condition("Ready", "True", "Available")],
        "instances": 3,
        "readyInstances": 3,
        "currentPrimary": "pg-1",
        "endpoints": {"readWrite": "pg-rw.platform.svc:5432"},
        "encryption": {
            "provider": "kmip",
            "keyId": "kek-1",
            "keyVersion": 2,
            "keyCreated": "2026-02-27T12:00:00Z",
        },
        "compliance": {
            "profile": "hds",
            "rules": [{"rule": "encrypted-storage", "met": False, "evidence": "class plain"}],
        },
    },
}
DATABASE: dict[str, Any] = {
    "kind": "ManagedDatabase",
    "metadata": {"namespace": "shop", "name": "orders", "generation": 1},
    "spec": {
        "clusterRef": {"name": "pg", "namespace": "platform"},
        "databaseName": "orders",
        "owner": "orders_owner",
        "extensions": ["citext"],
        "dataClassification": "health",
        "backup": {"schedule": "0 3 * * *"},
    },
    "status": {
        "observedGeneration": 1,
        "phase": "Ready",
        "cluster": "platform/pg",
        "conditions": [
            _condition("Ready", "True", "Provisioned"),
            _condition("BackupHealthy", "False", "BackupTooOld", "last backup 3d ago"),
        ],
        "sizeBytes": 3 * 1024 * 1024,
        "credentials": {
            "secretName": "orders-credentials",
            "username": "orders_owner_2",
            "lastRotation": "2026-03-01T10:00:00Z",
        },
        "backup": {"lastBackup": "b2", "lastBackupTime": "2026-02-26T03:00:00Z"},
    },
}


def _backup(name: str, created: str, database: str = "orders", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "shop", "name": name, "creationTimestamp": created},
        "spec": {"databaseRef": {"name": database}},
        "status": status,
    }


def test_cluster_view_gathers_instances_key_compliance_and_databases() -> None:
    view = views.cluster_view(CLUSTER, [DATABASE, {**DATABASE, "status": {}}], NOW)
    assert view["instances"] == {
        "desired": 3,
        "observed": 3,
        "ready": 3,
        "primary": "pg-1",
        "replicas": [],
    }
    assert view["key"]["age"] == "2d" and view["key"]["version"] == 2
    assert view["compliance"]["rules"][0]["met"] is False
    assert view["databases"] == [{"name": "shop/orders", "phase": "Ready", "size": None}]
    text = views.render_cluster(view)
    assert "3/3 ready, primary pg-1" in text
    assert "UNMET encrypted-storage: class plain" in text
    assert "Ready            True     Available" in text


def test_database_view_lists_its_backups_newest_first() -> None:
    backups = [
        _backup("b1", "2026-02-25T03:00:00Z", phase="Succeeded", sizeBytes=2048),
        _backup("b2", "2026-02-26T03:00:00Z", phase="Succeeded", size="4.0 KiB"),
        _backup("other", "2026-02-27T03:00:00Z", database="invoices"),
    ]
    view = views.database_view(DATABASE, backups, NOW)
    assert [b["name"] for b in view["backups"]["items"]] == ["b2", "b1"]
    assert view["backups"]["items"][1]["size"] == "2.0 KiB"
    assert view["size"] == "3.0 MiB"
    assert view["credentials"]["age"] == "2h"
    assert view["compliance"]["dataClassification"] == "health"
    text = views.render_database(view)
    assert "BackupHealthy    False    BackupTooOld" in text and "last backup 3d ago" in text
    assert "rotated 2h ago" in text


@pytest.mark.parametrize(
    ("stamp", "shown"),
    [
        ("2026-03-01T11:59:15Z", "45s"),
        ("2026-03-01T11:48:00Z", "12m"),
        ("2026-03-01T07:00:00Z", "5h"),
        ("2026-02-20T12:00:00Z", "9d"),
        (None, None),
        ("yesterday", None),
    ],
)
def test_age_reads_like_kubectl(stamp: str | None, shown: str | None) -> None:
    assert views.age(stamp, NOW) == shown


def test_restore_manifest_keeps_the_cluster_and_takes_new_names() -> None:
    latest = views.restore_manifest(
        DATABASE, "orders-copy", backup=None, database_name="orders_copy", owner="copy_owner"
    )
    assert latest["metadata"] == {
        "name": "orders-copy",
        "namespace": "shop",
        "labels": {"app.kubernetes.io/created-by": "kubectl-vauban"},
    }
    assert latest["spec"] == {
        "clusterRef": {"name": "pg", "namespace": "platform"},
        "extensions": ["citext"],
        "dataClassification": "health",
        "databaseName": "orders_copy",
        "owner": "copy_owner",
        "restore": {"databaseRef": {"name": "orders"}},
    }
    chosen = views.restore_manifest(DATABASE, "x", backup="b1", database_name="x", owner="y")
    assert chosen["spec"]["restore"] == {"backupRef": {"name": "b1"}}
    assert views.identifier("orders-copy.v2") == "orders_copy_v2"


def test_a_wait_ends_on_ready_or_stalled_of_the_current_generation() -> None:
    def obj(generation: int, observed: int, *conditions: dict[str, Any]) -> dict[str, Any]:
        return {
            "metadata": {"generation": generation},
            "status": {"observedGeneration": observed, "conditions": list(conditions)},
        }

    assert views.finished(obj(1, 1, _condition("Ready", "True", "Done"))) is True
    assert views.finished(obj(2, 1, _condition("Ready", "True", "Done"))) is None
    assert views.finished(obj(1, 1, _condition("Stalled", "True", "BadInput"))) is False
    assert views.finished(obj(1, 1, _condition("Ready", "False", "Running"))) is None
    assert views.finished({"metadata": {}, "status": {"phase": "Failed"}}) is False
    line = views.progress(
        {
            "status": {
                "phase": "Running",
                "conditions": [_condition("Ready", "False", "BackupRunning", "dumping")],
            }
        }
    )
    assert line == "Running · BackupRunning · dumping"


SECRET_VALUES = {
    "password": "s3cr3t-P@ss:word",
    "uri": "postgresql://orders_owner:s3cr3t-P@ss:word@pg-rw:5432/orders",
    "username": "orders_owner",
    "host": "pg-rw.platform.svc",
    "port": "5432",
}


def test_known_values_leave_out_what_only_locates_the_database() -> None:
    known = redact.known_values([SECRET_VALUES, {"secretAccessKey": "AKIA-very-secret"}])
    assert SECRET_VALUES["password"] in known and "AKIA-very-secret" in known
    assert base64.b64encode(b"AKIA-very-secret").decode() in known
    assert "orders_owner" not in known and "5432" not in known
    agent = {
        "VAUBAN_DATABASE_NAME": "orders",
        "VAUBAN_S3_BUCKET": "backups-1",
        "VAUBAN_DATA_KEY": "k3y-material",
    }
    assert redact.known_values([agent]) == [
        "k3y-material",
        base64.b64encode(b"k3y-material").decode(),
    ]


@pytest.mark.parametrize(
    "line",
    [
        "connecting with password=hunter2hunter2 to pg",
        'settings {"password": "hunter2hunter2"}',
        "PGPASSWORD: hunter2hunter2",
        "dsn postgresql://app:hunter2hunter2@db:5432/app",
        "header Authorization: Bearer hunter2hunter2",
        "secretAccessKey=hunter2hunter2",
        "-----BEGIN PRIVATE KEY-----\nhunter2hunter2\n-----END PRIVATE KEY-----",
    ],
)
def test_credential_shaped_text_is_scrubbed_unknown(line: str) -> None:
    scrubbed = redact.scrub(line, [])
    assert "hunter2hunter2" not in scrubbed and redact.REDACTED in scrubbed


def test_redact_empties_secret_fields_and_scrubs_known_values_everywhere() -> None:
    known = redact.known_values([SECRET_VALUES])
    credentials = {"secretName": "orders-credentials", "username": "orders_owner"}
    bundle = {
        "objects": [
            {
                "kind": "Secret",
                "metadata": {"name": "orders-credentials"},
                "data": {"password": "czNjcjN0", "username": "b3JkZXJz"},
            },
            {
                "kind": "ManagedDatabase",
                "metadata": {"annotations": {"note": f"it is {SECRET_VALUES['password']}"}},
                "status": {"credentials": credentials},
                "spec": {"adminSecretRef": {"name": "admin"}, "token": "abcdef123456"},
            },
        ],
        "events": [{"message": f"failed: {SECRET_VALUES['uri']}"}],
        "logs": "line one\nauth failed for password 'x' token=abcdefghijkl\n",
    }
    clean = redact.redact(bundle, known)
    text = yaml.safe_dump(clean)
    for value in ("s3cr3t", "czNjcjN0", "abcdef123456", "abcdefghijkl"):
        assert value not in text
    assert clean["objects"][0]["data"] == {"password": "<redacted>", "username": "<redacted>"}
    database = clean["objects"][1]
    assert database["status"]["credentials"] == credentials
    assert database["spec"]["adminSecretRef"] == {"name": "admin"}
    assert "line one" in clean["logs"]


def test_arguments_read_as_kubectl_users_type_them() -> None:
    args = cli.parser().parse_args(["-n", "shop", "status", "database", "orders", "-o", "json"])
    assert (args.namespace, args.kind, args.name, args.output) == (
        "shop",
        "database",
        "orders",
        "json",
    )
    args = cli.parser().parse_args(["backup", "orders", "--context", "prod", "--no-wait"])
    assert args.context == "prod" and args.wait is False and not hasattr(args, "namespace")
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["status", "table", "orders"])


def test_psql_arguments_follow_the_double_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    async def fake_run(command: Any, args: Any) -> int:
        seen["args"] = args
        return 0

    monkeypatch.setattr(cli, "_run", fake_run)
    assert cli.main(["psql", "orders", "-n", "shop", "--", "-c", "SELECT 1", "-n", "x"]) == 0
    assert seen["args"].psql_args == ["-c", "SELECT 1", "-n", "x"]
    assert seen["args"].namespace == "shop"
    with pytest.raises(SystemExit):
        cli.main(["status", "database", "orders", "--", "-c", "x"])


def test_pgpass_fields_escape_colons_and_backslashes() -> None:
    assert cli._pgpass_field("a:b\\c") == "a\\:b\\\\c"


def test_krew_manifest_names_the_installed_command() -> None:
    text = (ROOT / "plugins" / "krew" / "vauban.yaml").read_text(encoding="utf-8")
    # What krew-release-bot does at a release: the tag in, each archive's URI and sha256.
    rendered = re.sub(
        r'\{\{ addURIAndSha "([^"]+)" \.TagName \}\}',
        lambda m: f"uri: {m.group(1)}\n      sha256: {'ab' * 32}",
        text,
    ).replace("{{ .TagName }}", "v0.1.0")
    manifest = yaml.safe_load(rendered)
    assert manifest["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2"
    assert manifest["kind"] == "Plugin" and manifest["metadata"]["name"] == "vauban"
    assert manifest["spec"]["version"] == "v0.1.0" and manifest["spec"]["shortDescription"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kubectl-vauban"] == "vauban.plugin.cli:main"
    platforms = manifest["spec"]["platforms"]
    assert {
        (p["selector"]["matchLabels"]["os"], p["selector"]["matchLabels"]["arch"])
        for p in platforms
    } == {(o, a) for o in ("linux", "darwin") for a in ("amd64", "arm64")}
    for platform in platforms:
        assert platform["bin"] == "kubectl-vauban"
        assert platform["uri"].endswith(".tar.gz") and "v0.1.0" in platform["uri"]
        assert len(platform["sha256"]) == 64
