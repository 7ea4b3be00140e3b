"""Compliance profiles as rules: each rule, each profile, storage evidence and placement."""

from __future__ import annotations

from typing import Any

import pytest

from vauban.api.cluster import ManagedClusterSpec
from vauban.reconcile import compliance
from vauban.reconcile.compliance import Facts, StorageEvidence

STORE = {
    "bucket": "backups",
    "region": "eu-west-3",
    "credentialsSecretRef": {"name": "bucket"},
}
ENCRYPTED = StorageEvidence("luks", True, "annotation")
PLAIN = StorageEvidence("standard", False, "no evidence")


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


def test_hds_on_plain_storage_without_backups() -> None:
    spec = managed("hds")
    assert unmet(spec, Facts(storage=PLAIN)) == [
        "backups-configured",
        "encrypted-storage",
        "backup-region",
    ]
    condition = compliance.assess(spec, Facts(storage=PLAIN)).condition()
    assert condition.status == "False" and condition.reason == "RulesUnmet"
    assert "encrypted-storage" in condition.message


def test_hds_met() -> None:
    spec = managed("hds", backup={"objectStore": STORE})
    facts = Facts(storage=ENCRYPTED, allowed_backup_regions=("eu-west-3",))
    assert unmet(spec, facts) == []
    assert compliance.assess(spec, facts).condition().reason == "RulesMet"


def test_backup_region_and_load_balancers() -> None:
    spec = managed("hds", backup={"objectStore": STORE})
    facts = Facts(storage=ENCRYPTED, allowed_backup_regions=("fr-par",), load_balancers=("lb",))
    assert unmet(spec, facts) == ["backup-region", "no-load-balancer"]


def test_secnumcloud_requires_a_key_manager() -> None:
    spec = managed("secnumcloud", backup={"objectStore": STORE})
    assert unmet(spec, Facts(storage=ENCRYPTED)) == ["external-key-manager"]


def test_external_tls_rule_reads_ssl_mode() -> None:
    def external(mode: str) -> ManagedClusterSpec:
        return ManagedClusterSpec.model_validate(
            {
                "mode": "External",
                "external": {"host": "db", "adminSecretRef": {"name": "a"}, "sslMode": mode},
                "compliance": {"profile": "iso27001"},
                "backup": {"objectStore": STORE},
            }
        )

    assert unmet(external("verify-full"), Facts()) == []
    assert unmet(external("require"), Facts()) == ["tls-required"]


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
