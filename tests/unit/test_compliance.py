"""Compliance profiles as rules: each rule, each profile, storage evidence and placement;
the rules judged from observed facts (TLS on the server, the NetworkPolicy read back, the
databases' backups)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from vauban.api.cluster import ManagedClusterSpec
from vauban.builders import cnpg
from vauban.engines.postgres.probe import hba_of
from vauban.handlers import posture
from vauban.reconcile import compliance
from vauban.reconcile.backup import BackupRecord
from vauban.reconcile.cluster import ProbeOutcome, ServerProbe
from vauban.reconcile.compliance import (
    DatabaseBackups,
    Facts,
    HbaRule,
    PolicyFacts,
    ServerAudit,
    ServerTls,
    StorageEvidence,
)

STORE = {
    "bucket": "backups",
    "region": "eu-west-3",
    "credentialsSecretRef": {"name": "bucket"},
}
ENCRYPTED = StorageEvidence("luks", True, "annotation")
PLAIN = StorageEvidence("standard", False, "no evidence")
OWNER = cnpg.Owner("main", "team", "uid-1")
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def hba(*lines: str) -> tuple[HbaRule, ...]:
    """pg_hba lines as pg_hba_file_rules gives them (a CIDR split into address and mask)."""
    rules = []
    for number, line in enumerate(lines, start=1):
        kind, databases, users, *rest = line.split()
        address = netmask = None
        if kind != "local":
            where, *rest = rest
            address = where
            if "/" in where:
                ip, bits = where.split("/")
                family = 6 if ":" in ip else 4
                width = 32 if family == 4 else 128
                mask = (2**width - 1) ^ (2 ** (width - int(bits)) - 1)
                address = ip
                netmask = (
                    ".".join(str(mask >> s & 255) for s in (24, 16, 8, 0))
                    if family == 4
                    else ":".join(f"{mask >> s & 0xFFFF:x}" for s in range(112, -1, -16))
                )
        rules.append(
            HbaRule(number, kind, tuple(databases.split(",")), (users,), address, netmask, rest[0])
        )
    return tuple(rules)


# What CloudNativePG writes around Vauban's two rules (spec.postgresql.pg_hba).
CNPG_HBA = hba(
    "local all all peer",
    "hostssl postgres streaming_replica all cert",
    "hostssl replication streaming_replica all cert",
    *cnpg.PG_HBA,
    "host all all all scram-sha-256",
)
SERVER_OK = ServerTls(ssl=True, hba=CNPG_HBA)
AUDIT_OK = ServerAudit(loaded=True, log="ddl,role")


def rendered_policy(**spec: Any) -> PolicyFacts:
    """The NetworkPolicy Vauban renders, as read back."""
    body = cnpg.network_policy(
        OWNER, managed("iso27001", **spec), operator_namespaces=("vauban-system", "cnpg-system")
    )
    return PolicyFacts(
        body["metadata"]["name"], OWNER.namespace, cnpg.instance_labels(OWNER), body["spec"]
    )


def observed(**facts: Any) -> Facts:
    """Facts of a healthy managed cluster, but for those given."""
    return Facts(
        **{
            "storage": ENCRYPTED,
            "server": SERVER_OK,
            "audit": AUDIT_OK,
            "network_policy": rendered_policy(),
            "databases": (),
            "recovery_key": "0f" * 16,
            "now": NOW,
            **facts,
        }
    )


def managed(profile: str, **spec: Any) -> ManagedClusterSpec:
    return ManagedClusterSpec.model_validate(
        {
            "version": "17",
            "storage": {"size": "1Gi"},
            "compliance": {"profile": profile},
            **spec,
        }
    )


def unmet(spec: ManagedClusterSpec, facts: Facts) -> list[str]:
    return [r.rule for r in compliance.assess(spec, facts).unmet]


def test_no_profile_no_rules() -> None:
    condition = compliance.assess(managed("none"), Facts(storage=PLAIN)).condition()
    assert (condition.status, condition.reason) == ("True", "NoProfile")


def evidence(spec: ManagedClusterSpec, facts: Facts, rule: str) -> tuple[bool, str]:
    found = next(r for r in compliance.assess(spec, facts).results if r.rule == rule)
    return found.met, found.evidence


def test_profiles_hold_the_observed_rules() -> None:
    assert compliance.rules_of("iso27001") == (
        "tls-required",
        "backups-configured",
        "backups-succeeding",
        "network-policy",
    )
    for profile in ("hds", "secnumcloud"):
        assert "backups-succeeding" in compliance.rules_of(profile)


def test_hds_on_plain_storage_without_backups() -> None:
    spec = managed("hds")
    facts = observed(storage=PLAIN, server=ServerTls.not_observed("nothing runs"))
    assert unmet(spec, facts) == [
        "backups-configured",
        "backups-succeeding",
        "encrypted-storage",
        "backup-region",
        "backups-survive-cluster-loss",
    ]
    condition = compliance.assess(spec, facts).condition()
    assert condition.status == "False" and condition.reason == "RulesUnmet"
    assert "encrypted-storage" in condition.message
    assert evidence(spec, facts, "backups-succeeding") == (
        False,
        "no spec.backup.objectStore: nothing is backed up",
    )


def test_hds_met() -> None:
    spec = managed("hds", backup={"objectStore": STORE})
    facts = observed(allowed_backup_regions=("eu-west-3",))
    assert unmet(spec, facts) == []
    assert compliance.assess(spec, facts).condition().reason == "RulesMet"


def test_backup_region_and_load_balancers() -> None:
    spec = managed("hds", backup={"objectStore": STORE})
    facts = observed(allowed_backup_regions=("fr-par",), load_balancers=("lb",))
    assert unmet(spec, facts) == ["backup-region", "no-load-balancer"]


def test_secnumcloud_requires_a_key_manager() -> None:
    spec = managed("secnumcloud", backup={"objectStore": STORE})
    assert unmet(spec, observed()) == ["external-key-manager"]


@pytest.mark.parametrize("profile", ["hds", "secnumcloud"])
def test_backups_must_survive_the_loss_of_the_cluster(profile: str) -> None:
    """With the KEK in a Secret of this cluster, only an escrow to a recovery key makes the
    backups restorable elsewhere; an HSM-held KEK is outside the cluster already."""
    in_secret = managed(profile, backup={"objectStore": STORE})
    met, said = evidence(in_secret, observed(recovery_key=None), "backups-survive-cluster-loss")
    assert not met and "do not survive the loss of the cluster" in said
    met, said = evidence(in_secret, observed(), "backups-survive-cluster-loss")
    assert met and "0f0f" in said
    in_hsm = managed(profile, backup={"objectStore": STORE}, encryption={"provider": "pkcs11"})
    met, said = evidence(in_hsm, observed(recovery_key=None), "backups-survive-cluster-loss")
    assert met and "pkcs11 HSM" in said
    assert "backups-survive-cluster-loss" not in compliance.rules_of("iso27001")


def external(mode: str) -> ManagedClusterSpec:
    return ManagedClusterSpec.model_validate(
        {
            "mode": "External",
            "external": {"host": "db", "adminSecretRef": {"name": "a"}, "sslMode": mode},
            "compliance": {"profile": "iso27001"},
            "backup": {"objectStore": STORE},
        }
    )


def test_external_tls_rule_reads_ssl_mode_and_the_server() -> None:
    assert unmet(external("verify-full"), Facts(server=SERVER_OK)) == []
    assert unmet(external("require"), Facts(server=SERVER_OK)) == ["tls-required"]
    met, said = evidence(external("verify-full"), Facts(server=SERVER_OK), "tls-required")
    assert met and said.startswith("sslMode is verify-full; ssl is on; pg_hba: no rule")
    # A server that cannot be asked is judged on the sslMode alone, and says so.
    unasked = Facts(server=ServerTls.not_observed("unreachable: timeout"))
    assert evidence(external("verify-ca"), unasked, "tls-required") == (
        True,
        "sslMode is verify-ca; server not observable: unreachable: timeout",
    )
    assert evidence(external("verify-ca"), Facts(), "tls-required")[0]


def test_managed_tls_observed_on_cloudnativepg_rules() -> None:
    """CloudNativePG's own fallback `host all all all` comes after Vauban's `hostnossl ...
    reject`: never reached by a connection without TLS."""
    met, said = evidence(managed("iso27001"), observed(), "tls-required")
    assert met, said
    assert said == (
        "ssl is on; pg_hba: no rule accepts a connection without TLS "
        "(line 4: hostnossl all all all reject comes first)"
    )


def test_a_host_line_that_accepts_plain_text_is_unmet_and_named() -> None:
    server = ServerTls(
        ssl=True,
        hba=hba(
            "local all all trust",
            "hostssl all all all scram-sha-256",
            "host all app 10.0.0.0/8 md5",
            "hostnossl all all all reject",
            "host all all all scram-sha-256",
        ),
    )
    met, said = evidence(managed("iso27001"), observed(server=server), "tls-required")
    assert not met
    assert said == (
        "ssl is on; pg_hba accepts connections without TLS at line 3: host all app 10.0.0.0/8 md5"
    )


def test_ssl_off_is_unmet() -> None:
    server = ServerTls(ssl=False, hba=hba("hostssl all all all scram-sha-256"))
    met, said = evidence(managed("iso27001"), observed(server=server), "tls-required")
    assert not met and said.startswith("ssl is off; pg_hba: no rule")


def test_an_unreadable_pg_hba_is_said_not_failed() -> None:
    server = ServerTls(ssl=True, unobservable="pg_hba_file_rules is for superusers")
    assert evidence(managed("iso27001"), observed(server=server), "tls-required") == (
        True,
        "ssl is on; pg_hba not observable: pg_hba_file_rules is for superusers",
    )
    nothing = ServerTls.not_observed("the cluster is not ready")
    assert evidence(managed("iso27001"), observed(server=nothing), "tls-required") == (
        True,
        "server not observable: the cluster is not ready",
    )


@pytest.mark.parametrize(
    ("lines", "accepting"),
    [
        # IPv4 rejected only: IPv6 connections without TLS still reach the host rule.
        (("hostnossl all all 0.0.0.0/0 reject", "host all all all trust"), [2]),
        (
            (
                "hostnossl all all 0.0.0.0/0 reject",
                "hostnossl all all ::/0 reject",
                "host all all all trust",
            ),
            [],
        ),
        (("hostnossl all all 0.0.0.0/0 reject", "host all all 10.0.0.0/8 trust"), []),
        (("hostnossl all all 0.0.0.0/0 reject", "host all all ::1/128 trust"), [2]),
        # A reject for some databases or users only shadows nothing.
        (("hostnossl app all all reject", "host all all all md5"), [2]),
        (("hostnossl all all 10.0.0.0/8 reject", "host all all all md5"), [2]),
        # GSSAPI-encrypted and TLS-only rules need no TLS check; nor does the Unix socket.
        (("hostgssenc all all all gss", "hostssl all all all md5", "local all all trust"), []),
        (("hostnogssenc all all all md5",), [1]),
        (("host all all all reject", "host all all all md5"), []),
    ],
)
def test_plain_text_rules_follow_first_match(lines: tuple[str, ...], accepting: list[int]) -> None:
    found, _ = compliance.plain_text_rules(hba(*lines))
    assert [r.line for r in found] == accepting


def test_more_than_three_accepting_rules_are_counted() -> None:
    server = ServerTls(ssl=True, hba=hba(*(f"host db{i} all all md5" for i in range(5))))
    _, said = evidence(managed("iso27001"), observed(server=server), "tls-required")
    assert said.endswith("line 3: host db2 all all md5 (+2 more)")


def test_pg_hba_file_rules_rows() -> None:
    rows = [
        (1, "local", ["all"], ["all"], None, None, "trust", None),
        (2, "host", ["all"], ["all"], "127.0.0.1", "255.255.255.255", "scram-sha-256", None),
        (
            3,
            "host",
            ["all"],
            ["all"],
            "::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "md5",
            None,
        ),
    ]
    tls = hba_of(True, rows)
    assert tls.ssl and tls.hba is not None
    assert [str(r) for r in tls.hba] == [
        "line 1: local all all trust",
        "line 2: host all all 127.0.0.1/32 scram-sha-256",
        "line 3: host all all ::1/128 md5",
    ]
    # A rule loaded with a warning is judged; a line that does not parse makes it all unknown.
    warned = (4, "hostssl", ["all"], ["all"], "all", None, "md5", "SSL is disabled")
    assert [r.line for r in hba_of(False, [*rows, warned]).hba or ()] == [1, 2, 3, 4]
    broken = hba_of(True, [*rows, (4, None, None, None, None, None, None, "invalid IP mask")])
    assert broken.hba is None and broken.ssl
    assert broken.unobservable.startswith("pg_hba.conf has an error at line 4 (invalid IP mask)")


def test_what_a_probe_saw_of_tls() -> None:
    assert posture.server_tls(None).unobservable == "no usable admin Secret"
    refused = ServerProbe(ProbeOutcome.AUTHENTICATION_FAILED, detail="password failed")
    assert posture.server_tls(refused).unobservable == "authentication-failed: password failed"
    assert posture.server_tls(ServerProbe(ProbeOutcome.OK, tls=SERVER_OK)) is SERVER_OK
    assert posture.server_tls(ServerProbe(ProbeOutcome.OK)).unobservable == "not asked"


def test_what_a_probe_saw_of_pgaudit_and_what_status_says() -> None:
    refused = ServerProbe(ProbeOutcome.AUTHENTICATION_FAILED, detail="password failed")
    assert posture.server_audit(refused).unobservable == "authentication-failed: password failed"
    assert posture.server_audit(ServerProbe(ProbeOutcome.OK, audit=AUDIT_OK)) is AUDIT_OK
    assert posture.audit_fields(AUDIT_OK) == {"pgaudit": True, "log": "ddl,role"}
    assert posture.audit_fields(ServerAudit(loaded=False)) == {"pgaudit": False}
    assert posture.audit_fields(posture.server_audit(None)) is None


# --- network-policy ---------------------------------------------------------------------------


def test_the_rendered_network_policy_is_met_with_what_it_admits() -> None:
    spec = managed("iso27001", allowedNamespaces={"names": ["app"]})
    assert evidence(spec, observed(network_policy=rendered_policy()), "network-policy") == (
        True,
        "NetworkPolicy main-postgresql: Ingress, selects the instance pods; admits from "
        "namespaces cnpg-system, team, vauban-system",
    )
    labelled = rendered_policy(
        allowedNamespaces={"names": ["app"], "selector": {"matchLabels": {"tier": "db"}}}
    )
    met, said = evidence(spec, observed(network_policy=labelled), "network-policy")
    assert met
    assert said.endswith(
        "admits from namespaces app, cnpg-system, team, vauban-system; namespaces labelled tier=db"
    )


def test_a_missing_or_altered_network_policy_is_unmet() -> None:
    spec = managed("iso27001")
    gone = PolicyFacts("main-postgresql", "team", cnpg.instance_labels(OWNER), None)
    assert evidence(spec, observed(network_policy=gone), "network-policy") == (
        False,
        "NetworkPolicy main-postgresql not found",
    )
    # Before CloudNativePG's Cluster exists, nothing runs for the policy to protect.
    first = PolicyFacts("main-postgresql", "team", {}, None, instances=False)
    assert evidence(spec, observed(network_policy=first), "network-policy") == (
        True,
        "NetworkPolicy main-postgresql not created yet: no instance exists",
    )
    assert evidence(spec, observed(network_policy=None), "network-policy") == (
        False,
        "NetworkPolicy not read",
    )
    policy = rendered_policy()
    assert policy.spec is not None
    altered = {
        **policy.spec,
        "policyTypes": ["Egress"],
        "podSelector": {"matchLabels": {cnpg.CNPG_CLUSTER_LABEL: "other"}},
        "ingress": [*policy.spec["ingress"], {"ports": [{"port": 5432}]}],
    }
    facts = observed(network_policy=PolicyFacts(policy.name, "team", policy.pod_labels, altered))
    assert evidence(spec, facts, "network-policy") == (
        False,
        "NetworkPolicy main-postgresql: its policyTypes lack Ingress; it does not select the "
        "instance pods; a rule admits every source",
    )


def test_an_external_cluster_has_no_network_policy_to_read() -> None:
    assert evidence(external("verify-full"), Facts(), "network-policy")[0]


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ({}, True),
        (None, True),
        ({"matchLabels": {"cnpg.io/cluster": "main"}}, True),
        ({"matchLabels": {"cnpg.io/cluster": "other"}}, False),
        (
            {
                "matchExpressions": [
                    {"key": "cnpg.io/cluster", "operator": "In", "values": ["main"]}
                ]
            },
            True,
        ),
        (
            {
                "matchExpressions": [
                    {"key": "cnpg.io/cluster", "operator": "NotIn", "values": ["main"]}
                ]
            },
            False,
        ),
        ({"matchExpressions": [{"key": "role", "operator": "NotIn", "values": ["x"]}]}, True),
        ({"matchExpressions": [{"key": "cnpg.io/cluster", "operator": "Exists"}]}, True),
        ({"matchExpressions": [{"key": "cnpg.io/cluster", "operator": "DoesNotExist"}]}, False),
        ({"matchExpressions": [{"key": "cnpg.io/cluster", "operator": "Gt"}]}, False),
    ],
)
def test_label_selectors(selector: dict[str, Any] | None, matches: bool) -> None:
    assert compliance.selects(selector, {"cnpg.io/cluster": "main"}) is matches


def test_what_a_policy_admits() -> None:
    ingress: list[dict[str, Any]] = [
        {"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]},
        {"from": [{"namespaceSelector": {}}]},
        {
            "from": [
                {"namespaceSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}}
            ]
        },
    ]
    assert compliance.admitted("team", ingress) == (
        ["addresses 10.0.0.0/8", "every namespace", "namespaces labelled tier Exists"],
        False,
    )
    assert compliance.admitted("team", [{}]) == ([], True)


# --- backups-succeeding -------------------------------------------------------------------------


def backup(name: str, phase: str, finished: datetime | None) -> BackupRecord:
    return BackupRecord(name, phase, finished, finished)


def database(
    name: str, *backups: BackupRecord, schedule: str | None = None, age: float = 30
) -> DatabaseBackups:
    return DatabaseBackups(f"team/{name}", schedule, NOW - timedelta(days=age), backups)


BACKED_UP = managed("iso27001", backup={"objectStore": STORE})


def succeeding(*databases: DatabaseBackups) -> tuple[bool, str]:
    return evidence(BACKED_UP, observed(databases=databases), "backups-succeeding")


def test_no_databases_yet_is_met() -> None:
    assert succeeding() == (True, "no databases yet")
    facts = observed(databases=None)
    assert evidence(BACKED_UP, facts, "backups-succeeding") == (
        True,
        "not observable: the databases were not read yet",
    )


def test_backups_succeeding_names_the_oldest_last_success() -> None:
    daily = "0 2 * * *"
    met, said = succeeding(
        database("a", backup("a-1", "Succeeded", NOW - timedelta(hours=10)), schedule=daily),
        database(
            "b",
            backup("b-1", "Failed", NOW - timedelta(days=3)),
            backup("b-2", "Succeeded", NOW - timedelta(days=2)),
            backup("b-3", "Running", None),
        ),
        database("c", schedule=daily, age=0.5),
    )
    assert met, said
    assert said == (
        "3 database(s), none whose latest backup failed or that missed two scheduled runs; "
        "oldest last success: team/b (ManagedBackup b-2) at 2026-03-08T12:00:00Z; "
        "no backup yet: team/c"
    )


def test_a_failed_latest_backup_is_unmet() -> None:
    met, said = succeeding(
        database(
            "a",
            backup("a-1", "Succeeded", NOW - timedelta(days=2)),
            backup("a-2", "Failed", NOW - timedelta(hours=1)),
        ),
        database("b", backup("b-1", "Succeeded", NOW - timedelta(hours=1))),
    )
    assert not met
    assert said == "2 database(s): latest backup failed: team/a (ManagedBackup a-2)"


def test_two_missed_scheduled_runs_are_unmet() -> None:
    daily = "0 2 * * *"
    met, said = succeeding(
        database("late", backup("l-1", "Succeeded", NOW - timedelta(days=3)), schedule=daily),
        database("never", schedule=daily, age=5),
        database("bad", schedule="61 * * * *"),
        database("unscheduled", backup("u-1", "Succeeded", NOW - timedelta(days=30))),
    )
    assert not met
    assert said == (
        "4 database(s): no successful backup in two scheduled runs: "
        "team/bad (schedule '61 * * * *' is not a cron schedule), "
        "team/late (last at 2026-03-07T12:00:00Z), team/never (never)"
    )


def test_databases_and_backups_from_their_bodies() -> None:
    def body(name: str, status: dict[str, Any], **spec: Any) -> dict[str, Any]:
        meta = {"name": name, "namespace": "team", "creationTimestamp": "2026-03-01T00:00:00Z"}
        return {"metadata": meta, "spec": spec, "status": status}

    provisioned = {"credentials": {"username": "app_login"}}
    databases = [
        body("own", provisioned, backup={"schedule": "@hourly"}),
        body("inherits", provisioned),
        body("refused", {}),
        {
            **body("leaving", provisioned),
            "metadata": {
                "name": "leaving",
                "namespace": "team",
                "deletionTimestamp": "2026-03-09T00:00:00Z",
            },
        },
    ]
    done = {"phase": "Succeeded", "finishedAt": "2026-03-09T02:00:00Z"}
    backups = {
        ("team", "own"): [
            body("own-1", done),
            {**body("own-2", done), "metadata": {"name": "own-2", "deletionTimestamp": "x"}},
        ]
    }
    spec = managed("iso27001", backup={"objectStore": STORE, "schedule": "0 2 * * *"})
    found = posture.database_backups(spec, databases, backups)
    assert [(d.name, d.schedule) for d in found] == [
        ("team/own", "@hourly"),
        ("team/inherits", "0 2 * * *"),
    ]
    assert found[0].created == datetime(2026, 3, 1, tzinfo=UTC)
    assert found[0].backups == (
        BackupRecord(
            "own-1",
            "Succeeded",
            datetime(2026, 3, 9, 2, tzinfo=UTC),
            datetime(2026, 3, 1, tzinfo=UTC),
        ),
    )
    assert found[1].backups == ()


@pytest.mark.parametrize(
    ("annotations", "parameters", "encrypted"),
    [
        ({"vauban.dev/encrypted": "true"}, {}, True),
        ({}, {"encrypted": "true"}, True),
        ({}, {"kmsKeyId": "arn:key"}, True),
        ({}, {"type": "gp3"}, False),
        ({"vauban.dev/encrypted": "false"}, {}, False),
    ],
)
def test_storage_evidence(
    annotations: dict[str, str], parameters: dict[str, str], encrypted: bool
) -> None:
    evidence = compliance.storage_evidence("sc", annotations, parameters)
    assert evidence.encrypted is encrypted and evidence.evidence


def test_missing_storage_class_is_not_encrypted() -> None:
    assert not compliance.storage_evidence("gone", None, None).encrypted


def test_encrypted_condition() -> None:
    spec = managed("hds")
    assert compliance.encrypted_condition(spec, PLAIN).reason == "StorageClassNotEncrypted"
    assert compliance.encrypted_condition(spec, ENCRYPTED).status == "True"
    assert compliance.encrypted_condition(spec, None).status == "Unknown"
    assert compliance.requires_encryption(spec) and not compliance.requires_encryption(
        managed("iso27001")
    )


@pytest.mark.parametrize(
    ("profile", "classification", "allowed"),
    [
        ("none", "health", False),
        ("iso27001", "health", False),
        ("hds", "health", True),
        ("secnumcloud", "health", True),
        ("none", "confidential", True),
    ],
)
def test_health_data_placement(profile: str, classification: str, allowed: bool) -> None:
    condition = compliance.placement(profile, classification)
    assert (condition.status == "True") is allowed
    if not allowed:
        assert condition.reason == "ClusterNotCertified"


# -- audit logging (pgaudit) ------------------------------------------------------------------


def test_hds_and_secnumcloud_require_audit_logging() -> None:
    assert "audit-logging" not in compliance.rules_of("iso27001")
    for profile in ("hds", "secnumcloud"):
        assert "audit-logging" in compliance.rules_of(profile)
    assert evidence(managed("hds"), observed(), "audit-logging") == (
        True,
        "pgaudit is loaded; pgaudit.log = ddl,role",
    )


@pytest.mark.parametrize(
    ("audit", "expected"),
    [
        (ServerAudit(loaded=False), "pgaudit is not loaded: spec.postgresql needs"),
        (ServerAudit(loaded=True, log="none"), "pgaudit.log is none: nothing is logged"),
        (ServerAudit(loaded=True, log=""), "pgaudit.log is none"),
    ],
)
def test_audit_logging_unmet_says_why(audit: ServerAudit, expected: str) -> None:
    met, said = evidence(managed("hds"), observed(audit=audit), "audit-logging")
    assert not met and expected in said


def test_unobserved_audit_is_judged_on_the_spec_of_a_managed_cluster() -> None:
    nothing = ServerAudit.not_observed("the cluster is not ready")
    met, said = evidence(managed("hds"), observed(audit=nothing), "audit-logging")
    assert not met and "sharedPreloadLibraries [pgaudit]" in said
    audited = managed(
        "hds",
        postgresql={"sharedPreloadLibraries": ["pgaudit"], "parameters": {"pgaudit.log": "ddl"}},
    )
    met, said = evidence(audited, observed(audit=nothing), "audit-logging")
    assert met and said.startswith("pgaudit not observable (the cluster is not ready)")


def test_the_preload_is_rendered_for_cloudnativepg() -> None:
    spec = managed(
        "hds",
        postgresql={"sharedPreloadLibraries": ["pgaudit"], "parameters": {"pgaudit.log": "ddl"}},
    )
    body = cnpg.cluster(OWNER, spec, image_repository="registry/postgresql")
    assert body["spec"]["postgresql"]["shared_preload_libraries"] == ["pgaudit"]
    assert body["spec"]["postgresql"]["parameters"] == {"pgaudit.log": "ddl"}
    assert (
        "shared_preload_libraries"
        not in (cnpg.cluster(OWNER, managed("hds"), image_repository="r")["spec"]["postgresql"])
    )
