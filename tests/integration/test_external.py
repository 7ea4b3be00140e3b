"""Mode External: adopting a real PostgreSQL server that the suite runs on 127.0.0.1."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

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


def admin_secret(namespace: str, username: str, password: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/basic-auth",
        "metadata": {"name": "admin", "namespace": namespace},
        "stringData": {"username": username, "password": password},
    }


@pytest.fixture
def admin(postgres: PostgresServer) -> Iterator[tuple[str, str]]:
    name, password = f"admin_{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    postgres.create_role(name, password, "CREATEROLE", "CREATEDB")
    yield name, password


def test_adopts_a_reachable_server(
    kube: KubeCtl,
    namespace: str,
    postgres: PostgresServer,
    admin: tuple[str, str],
    operator: OperatorProcess,
) -> None:
    kube.apply(admin_secret(namespace, *admin))
    kube.apply(external_cluster(namespace, "legacy", postgres.port))
    obj = eventually(
        lambda: with_reason(kube, "managedcluster", "legacy", namespace, "Available"),
        what="adopted",
    )
    status = obj["status"]
    assert status["phase"] == "Ready"
    assert status["version"] == postgres.version
    assert status["endpoints"] == {"readWrite": f"127.0.0.1:{postgres.port}"}
    ready = condition(obj, "Ready")
    assert ready and f"as role {admin[0]}" in ready["message"]
    # Nothing is created for an adopted server.
    assert kube.get_list("networkpolicies", namespace) == []

    # The password appears nowhere the operator writes.
    events = kube.run("get", "events", "-n", namespace, "-o", "json").stdout
    assert admin[1] not in json.dumps(status) and admin[1] not in events
    assert admin[1] not in operator.log_text()


def test_wrong_password_then_fixed(
    kube: KubeCtl, namespace: str, postgres: PostgresServer, admin: tuple[str, str]
) -> None:
    kube.apply(admin_secret(namespace, admin[0], "not-the-password"))
    kube.apply(external_cluster(namespace, "legacy", postgres.port))
    obj = eventually(
        lambda: with_reason(kube, "managedcluster", "legacy", namespace, "AuthenticationFailed")
    )
    stalled = condition(obj, "Stalled")
    assert stalled and stalled["status"] == "True"
    assert "Fix the Secret's username or password" in stalled["message"]
    assert "not-the-password" not in json.dumps(obj)

    kube.apply(admin_secret(namespace, *admin))
    eventually(
        lambda: with_reason(kube, "managedcluster", "legacy", namespace, "Available"),
        timeout=60,
        what="recovery",
    )


def test_role_without_privileges(kube: KubeCtl, namespace: str, postgres: PostgresServer) -> None:
    name, password = f"weak_{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    postgres.create_role(name, password)
    kube.apply(admin_secret(namespace, name, password))
    kube.apply(external_cluster(namespace, "legacy", postgres.port))
    obj = eventually(
        lambda: with_reason(kube, "managedcluster", "legacy", namespace, "InsufficientPrivileges")
    )
    ready = condition(obj, "Ready")
    assert ready and "CREATEROLE and CREATEDB" in ready["message"]


def test_version_mismatch(
    kube: KubeCtl, namespace: str, postgres: PostgresServer, admin: tuple[str, str]
) -> None:
    other = "17" if not postgres.version.startswith("17") else "16"
    kube.apply(admin_secret(namespace, *admin))
    kube.apply(external_cluster(namespace, "legacy", postgres.port, version=other))
    eventually(lambda: with_reason(kube, "managedcluster", "legacy", namespace, "VersionMismatch"))


def test_missing_secret_waits(kube: KubeCtl, namespace: str, postgres: PostgresServer) -> None:
    kube.apply(external_cluster(namespace, "legacy", postgres.port))
    obj = eventually(
        lambda: with_reason(kube, "managedcluster", "legacy", namespace, "SecretMissing")
    )
    reconciling = condition(obj, "Reconciling")
    assert reconciling and reconciling["status"] == "True"


def test_server_going_away_and_coming_back(
    kube: KubeCtl, namespace: str, admin: tuple[str, str], operator: OperatorProcess
) -> None:
    """The operator probes ready clusters every probe interval (2 s in the suite): a server
    that stops is Unreachable within two intervals, and the up metric follows."""
    server = PostgresServer()
    server.start()
    try:
        server.create_role(*admin, "CREATEROLE", "CREATEDB")
        kube.apply(admin_secret(namespace, *admin))
        kube.apply(external_cluster(namespace, "legacy", server.port))
        eventually(lambda: with_reason(kube, "managedcluster", "legacy", namespace, "Available"))
        up = {"namespace": namespace, "cluster": "legacy"}
        assert operator.metric("vauban_cluster_up", **up) == 1.0

        server.stop()
        stopped = time.monotonic()
        obj = eventually(
            lambda: with_reason(kube, "managedcluster", "legacy", namespace, "Unreachable"),
            timeout=60,
        )
        # Two probe intervals, plus the time to notice and write status.
        assert time.monotonic() - stopped < 2 * 2 + 3
        assert operator.metric("vauban_cluster_up", **up) == 0.0
        assert obj["status"]["phase"] == "Pending"
        ready = condition(obj, "Ready")
        assert ready and f"127.0.0.1:{server.port}" in ready["message"]

        server.start()
        eventually(
            lambda: with_reason(kube, "managedcluster", "legacy", namespace, "Available"),
            timeout=90,
            what="back",
        )
        assert operator.metric("vauban_cluster_up", **up) == 1.0
    finally:
        server.destroy()


def _rules(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["rule"]: r for r in (obj.get("status") or {}).get("compliance", {}).get("rules", [])}


def test_tls_required_is_judged_on_the_server(
    kube: KubeCtl, namespace: str, postgres: PostgresServer, admin: tuple[str, str]
) -> None:
    """The suite's server has no certificate and a `host all all 127.0.0.1/32
    scram-sha-256` line: tls-required is unmet on what the server says (ssl, pg_hba), that
    line named. Read as a superuser; an admin role without the right to read pg_hba says it
    could not, and is judged on the rest."""
    superuser, password = f"su_{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    postgres.create_role(superuser, password, "SUPERUSER")
    kube.apply(admin_secret(namespace, superuser, password))
    kube.apply(
        external_cluster(namespace, "legacy", postgres.port, compliance={"profile": "iso27001"})
    )
    limited = admin_secret(namespace, *admin)
    limited["metadata"]["name"] = "limited"
    kube.apply(limited)
    other = external_cluster(namespace, "other", postgres.port, compliance={"profile": "iso27001"})
    other["spec"]["external"]["adminSecretRef"]["name"] = "limited"
    kube.apply(other)

    def judged(name: str) -> dict[str, Any] | None:
        obj = kube.get("managedcluster", name, namespace)
        tls = _rules(obj).get("tls-required")
        return obj if tls and "ssl is" in tls["evidence"] else None

    obj = eventually(lambda: judged("legacy"), what="tls-required judged on the server")
    tls = _rules(obj)["tls-required"]
    assert not tls["met"]
    assert tls["evidence"].startswith(
        "sslMode is disable; ssl is off; pg_hba accepts connections without TLS at line "
    )
    assert tls["evidence"].endswith(": host all all 127.0.0.1/32 scram-sha-256")
    compliant = condition(obj, "Compliant")
    assert compliant and compliant["status"] == "False"
    assert "127.0.0.1/32" in compliant["message"]
    # No object store: nothing is backed up, whatever the databases.
    assert _rules(obj)["backups-succeeding"] == {
        "rule": "backups-succeeding",
        "met": False,
        "evidence": "no spec.backup.objectStore: nothing is backed up",
    }

    obj = eventually(lambda: judged("other"), what="tls-required judged with a limited role")
    assert _rules(obj)["tls-required"]["evidence"] == (
        "sslMode is disable; ssl is off; pg_hba not observable: the admin role may not read "
        "pg_hba_file_rules (superusers, or a GRANT)"
    )


def test_audit_logging_is_judged_on_the_server_with_and_without_pgaudit(
    kube: KubeCtl, namespace: str, postgres: PostgresServer, admin: tuple[str, str]
) -> None:
    """The suite's server runs without pgaudit; a second one preloads it (Debian's
    postgresql-NN-pgaudit). The admin role is no superuser: what pgaudit defines is readable
    by any role, which is what the probe relies on."""
    kube.apply(admin_secret(namespace, *admin))
    kube.apply(external_cluster(namespace, "plain", postgres.port, compliance={"profile": "hds"}))
    audited = PostgresServer()
    with (audited.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write("shared_preload_libraries = 'pgaudit'\npgaudit.log = 'ddl,role'\n")
    audited.start()
    try:
        audited.create_role(*admin, "CREATEROLE", "CREATEDB")
        kube.apply(
            external_cluster(namespace, "audited", audited.port, compliance={"profile": "hds"})
        )

        def judged(name: str) -> dict[str, Any] | None:
            obj = kube.get("managedcluster", name, namespace)
            rule = _rules(obj).get("audit-logging")
            return obj if rule and "audit" in (obj.get("status") or {}) else None

        plain = eventually(lambda: judged("plain"), what="audit-logging judged without pgaudit")
        assert plain["status"]["audit"] == {"pgaudit": False}
        assert _rules(plain)["audit-logging"] == {
            "rule": "audit-logging",
            "met": False,
            "evidence": "pgaudit is not loaded: add pgaudit to shared_preload_libraries",
        }
        compliant = condition(plain, "Compliant")
        assert compliant and "audit-logging" in compliant["message"]

        obj = eventually(lambda: judged("audited"), what="audit-logging judged with pgaudit")
        assert obj["status"]["audit"] == {"pgaudit": True, "log": "ddl,role"}
        assert _rules(obj)["audit-logging"] == {
            "rule": "audit-logging",
            "met": True,
            "evidence": "pgaudit is loaded; pgaudit.log = ddl,role",
        }
    finally:
        audited.destroy()
