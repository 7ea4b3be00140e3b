"""The auditors' report, from objects as the apiserver returns them."""

from __future__ import annotations

from datetime import UTC, datetime

from vauban import report

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)

CLUSTER = {
    "metadata": {"namespace": "platform", "name": "hds-1"},
    "spec": {"mode": "Managed", "compliance": {"profile": "hds"}},
    "status": {
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Available"},
            {"type": "Compliant", "status": "False", "reason": "RulesUnmet", "message": "x"},
            {"type": "Encrypted", "status": "True", "reason": "StorageClassEncrypted"},
        ],
        "compliance": {
            "rules": [
                {"rule": "encrypted-storage", "met": True, "evidence": "annotation"},
                {"rule": "backup-region", "met": False, "evidence": "region us-east-1"},
            ],
            "storageClass": "luks",
            "storageEvidence": "annotation",
        },
        "encryption": {
            "provider": "kmip",
            "keyId": "vauban-kek-1",
            "keyVersion": 2,
            "keyCreated": "2026-11-19T12:00:00Z",
        },
    },
}
DATABASE = {
    "metadata": {"namespace": "care", "name": "records"},
    "spec": {"dataClassification": "health"},
    "status": {
        "cluster": "platform/hds-1",
        "conditions": [{"type": "Compliant", "status": "True", "reason": "PlacementAllowed"}],
        "backup": {
            "dataKeyId": "dek-1",
            "lastBackupTime": "2026-11-29T02:00:00Z",
            "lastVerifiedTime": "2026-11-29T04:00:00Z",
        },
    },
}


def test_report_gathers_evidence() -> None:
    built = report.build([CLUSTER], [DATABASE], NOW)
    assert built["summary"] == {
        "clusters": 1,
        "clustersCompliant": 0,
        "databases": 1,
        "databasesCompliant": 1,
        "databasesWithVerifiedBackup": 1,
    }
    cluster = built["clusters"][0]
    assert cluster["keyAgeDays"] == 10.0 and cluster["keyVersion"] == 2
    assert cluster["compliant"]["reason"] == "RulesUnmet"
    assert built["databases"][0]["dataKeyId"] == "dek-1"


def test_markdown_lists_unmet_rules() -> None:
    page = report.markdown(report.build([CLUSTER], [DATABASE], NOW))
    assert page.startswith("# Vauban compliance report")
    assert "| platform/hds-1 | hds | False | True | luks | kmip: vauban-kek-1 v2 | 10.0 |" in page
    assert "`backup-region` — **unmet**: region us-east-1" in page
    assert "| care/records | platform/hds-1 | health | True |" in page


def test_the_report_says_plainly_when_backups_die_with_the_cluster() -> None:
    lost = {
        **CLUSTER,
        "status": {
            **CLUSTER["status"],  # type: ignore[dict-item]
            "encryption": {
                "provider": "kubernetes-secret",
                "keyId": "vauban-kek-2",
                "keyVersion": 1,
                "survivesClusterLoss": False,
                "recovery": "no recovery key is configured",
            },
        },
    }
    built = report.build([lost], [], NOW)
    assert built["clusters"][0]["survivesClusterLoss"] is False
    page = report.markdown(built)
    assert "| **NO**: no recovery key is configured |" in page
    safe = report.markdown(report.build([CLUSTER], [], NOW))
    assert "**NO**" not in safe
