"""Evidence for auditors: per cluster and database, the compliance profile, each rule met or
not with its evidence, the storage class, key ids and ages, the last rotation, the last
successful and the last verified backup. Pure: objects as the apiserver returns them in, a
JSON-ready report or a Markdown page out. The same facts are in each object's status; the
report gathers them in one place, with the time it was made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from vauban.timefmt import parse_rfc3339, rfc3339


def _condition(status: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


def _state(status: Mapping[str, Any], type_: str) -> dict[str, Any]:
    condition = _condition(status, type_) or {}
    return {
        "status": condition.get("status", "Unknown"),
        "reason": condition.get("reason"),
        "message": condition.get("message"),
    }


def _age_days(stamp: str | None, now: datetime) -> float | None:
    then = parse_rfc3339(stamp)
    if then is None:
        return None
    return round((now - then).total_seconds() / 86400, 1)


def cluster_entry(body: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    meta, spec = body["metadata"], body.get("spec") or {}
    status = body.get("status") or {}
    encryption = status.get("encryption") or {}
    compliance = status.get("compliance") or {}
    return {
        "namespace": meta["namespace"],
        "name": meta["name"],
        "mode": spec.get("mode", "Managed"),
        "profile": (spec.get("compliance") or {}).get("profile", "none"),
        "ready": _state(status, "Ready"),
        "compliant": _state(status, "Compliant"),
        "encrypted": _state(status, "Encrypted"),
        "rules": compliance.get("rules", []),
        "storageClass": compliance.get("storageClass"),
        "storageEvidence": compliance.get("storageEvidence"),
        "keyProvider": encryption.get("provider"),
        "keyId": encryption.get("keyId"),
        "keyVersion": encryption.get("keyVersion"),
        "keyAgeDays": _age_days(encryption.get("keyCreated"), now),
        "lastRotation": encryption.get("lastRotation"),
        "survivesClusterLoss": encryption.get("survivesClusterLoss"),
        "recovery": encryption.get("recovery"),
    }


def database_entry(body: Mapping[str, Any]) -> dict[str, Any]:
    meta, spec = body["metadata"], body.get("spec") or {}
    status = body.get("status") or {}
    backup = status.get("backup") or {}
    return {
        "namespace": meta["namespace"],
        "name": meta["name"],
        "cluster": status.get("cluster"),
        "dataClassification": spec.get("dataClassification", "internal"),
        "ready": _state(status, "Ready"),
        "compliant": _state(status, "Compliant"),
        "backupHealthy": _state(status, "BackupHealthy"),
        "dataKeyId": backup.get("dataKeyId"),
        "lastBackup": backup.get("lastBackup"),
        "lastBackupTime": backup.get("lastBackupTime"),
        "lastVerifiedBackup": backup.get("lastVerifiedBackup"),
        "lastVerifiedTime": backup.get("lastVerifiedTime"),
        "lastCredentialRotation": (status.get("credentials") or {}).get("lastRotation"),
    }


def build(
    clusters: Sequence[Mapping[str, Any]], databases: Sequence[Mapping[str, Any]], now: datetime
) -> dict[str, Any]:
    cluster_entries = [cluster_entry(c, now) for c in clusters]
    database_entries = [database_entry(d) for d in databases]
    return {
        "generatedAt": rfc3339(now),
        "summary": {
            "clusters": len(cluster_entries),
            "clustersCompliant": sum(c["compliant"]["status"] == "True" for c in cluster_entries),
            "databases": len(database_entries),
            "databasesCompliant": sum(d["compliant"]["status"] == "True" for d in database_entries),
            "databasesWithVerifiedBackup": sum(
                bool(d["lastVerifiedTime"]) for d in database_entries
            ),
        },
        "clusters": sorted(cluster_entries, key=lambda c: (c["namespace"], c["name"])),
        "databases": sorted(database_entries, key=lambda d: (d["namespace"], d["name"])),
    }


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "—"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _survives(cluster: Mapping[str, Any]) -> str | None:
    """Said plainly: an auditor reads this column first."""
    survives = cluster.get("survivesClusterLoss")
    if survives is None:
        return None
    return f"{'yes' if survives else '**NO**'}: {cluster.get('recovery') or ''}"


def markdown(report: Mapping[str, Any]) -> str:
    """A page a person reads: one table per kind, then each cluster's rules."""
    summary = report["summary"]
    lines = [
        "# Vauban compliance report",
        "",
        f"Generated at {report['generatedAt']}.",
        "",
        f"- Clusters: {summary['clusters']} ({summary['clustersCompliant']} compliant)",
        f"- Databases: {summary['databases']} ({summary['databasesCompliant']} compliant, "
        f"{summary['databasesWithVerifiedBackup']} with a verified backup)",
        "",
        "## Clusters",
        "",
        "| Cluster | Profile | Compliant | Encrypted | Storage class | Key | Key age (days) "
        "| Last rotation | Backups survive cluster loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report["clusters"]:
        key = f"{c['keyProvider']}: {c['keyId']} v{c['keyVersion']}" if c["keyId"] else None
        lines.append(
            "| "
            + " | ".join(
                _cell(v)
                for v in (
                    f"{c['namespace']}/{c['name']}",
                    c["profile"],
                    c["compliant"]["status"],
                    c["encrypted"]["status"],
                    c["storageClass"],
                    key,
                    c["keyAgeDays"],
                    c["lastRotation"],
                    _survives(c),
                )
            )
            + " |"
        )
    lines += [
        "",
        "## Databases",
        "",
        "| Database | Cluster | Classification | Compliant | Backups | Data key | Last backup "
        "| Last verified |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in report["databases"]:
        lines.append(
            "| "
            + " | ".join(
                _cell(v)
                for v in (
                    f"{d['namespace']}/{d['name']}",
                    d["cluster"],
                    d["dataClassification"],
                    d["compliant"]["status"],
                    d["backupHealthy"]["status"],
                    d["dataKeyId"],
                    d["lastBackupTime"],
                    d["lastVerifiedTime"],
                )
            )
            + " |"
        )
    for c in report["clusters"]:
        if not c["rules"]:
            continue
        lines += ["", f"### Rules of {c['namespace']}/{c['name']} ({c['profile']})", ""]
        for rule in c["rules"]:
            mark = "met" if rule.get("met") else "**unmet**"
            lines.append(f"- `{rule.get('rule')}` — {mark}: {_cell(rule.get('evidence'))}")
    return "\n".join(lines) + "\n"
