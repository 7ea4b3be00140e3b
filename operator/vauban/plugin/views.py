"""What `kubectl vauban` shows and creates, decided without I/O: objects as the apiserver
returns them in, a JSON-ready summary, the text a person reads, or a manifest, out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from vauban import report
from vauban.api.backup import MANAGED_BACKUP
from vauban.api.common import API_VERSION, human_size
from vauban.api.database import MANAGED_DATABASE
from vauban.timefmt import parse_rfc3339


def age(stamp: object, now: datetime) -> str | None:
    """How long ago, as kubectl prints ages (45s, 12m, 5h, 3d); None for no time."""
    then = parse_rfc3339(stamp)
    if then is None:
        return None
    seconds = max(0, int((now - then).total_seconds()))
    for limit, unit, size in ((120, "s", 1), (7200, "m", 60), (172800, "h", 3600)):
        if seconds < limit:
            return f"{seconds // size}{unit}"
    return f"{seconds // 86400}d"


def _conditions(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {k: c.get(k) for k in ("type", "status", "reason", "message", "lastTransitionTime")}
        for c in status.get("conditions") or []
    ]


def _ready(status: Mapping[str, Any]) -> dict[str, Any]:
    """The Ready condition, empty when there is none yet."""
    found: dict[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {}
    )
    return found


def _ref(obj: Mapping[str, Any]) -> str:
    return f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"


def backup_entry(backup: Mapping[str, Any]) -> dict[str, Any]:
    status = backup.get("status") or {}
    ready = _ready(status)
    return {
        "name": backup["metadata"]["name"],
        "phase": status.get("phase"),
        "reason": ready.get("reason"),
        "trigger": status.get("trigger"),
        "size": status.get("size") or human_size(status.get("sizeBytes")),
        "finishedAt": status.get("finishedAt"),
        "verification": (status.get("verification") or {}).get("result"),
    }


def cluster_view(
    cluster: Mapping[str, Any], databases: Sequence[Mapping[str, Any]], now: datetime
) -> dict[str, Any]:
    """A cluster at a glance: conditions, instances and primary, backups, key and
    compliance (the compliance report's own entry), and the databases placed on it."""
    spec, status = cluster.get("spec") or {}, cluster.get("status") or {}
    entry = report.cluster_entry(cluster, now)
    archiving = status.get("continuousArchiving") or {}
    store = (spec.get("backup") or {}).get("objectStore") or {}
    placed = [d for d in databases if (d.get("status") or {}).get("cluster") == _ref(cluster)]
    return {
        "kind": "ManagedCluster",
        "namespace": cluster["metadata"]["namespace"],
        "name": cluster["metadata"]["name"],
        "mode": spec.get("mode", "Managed"),
        "phase": status.get("phase"),
        "conditions": _conditions(status),
        "version": status.get("version") or spec.get("version"),
        "instances": {
            "desired": spec.get("instances", 1),
            "observed": status.get("instances"),
            "ready": status.get("readyInstances"),
            "primary": status.get("currentPrimary"),
            "replicas": (status.get("health") or {}).get("replicas") or [],
        },
        "endpoints": status.get("endpoints") or {},
        "backups": {
            "bucket": store.get("bucket"),
            "schedule": (spec.get("backup") or {}).get("schedule"),
            "walArchiving": archiving.get("archiving"),
            "lastBaseBackup": archiving.get("lastSuccessfulBackup"),
        },
        "key": {
            "provider": entry["keyProvider"],
            "id": entry["keyId"],
            "version": entry["keyVersion"],
            "age": age((status.get("encryption") or {}).get("keyCreated"), now),
            "lastRotation": entry["lastRotation"],
        },
        "compliance": {
            "profile": entry["profile"],
            "compliant": entry["compliant"]["status"],
            "rules": entry["rules"],
        },
        "databases": [
            {
                "name": _ref(d),
                "phase": (d.get("status") or {}).get("phase"),
                "size": (d.get("status") or {}).get("size"),
            }
            for d in sorted(placed, key=_ref)
        ],
    }


def database_view(
    database: Mapping[str, Any], backups: Sequence[Mapping[str, Any]], now: datetime
) -> dict[str, Any]:
    """A database at a glance: conditions, credentials and their age, backups and the last
    verification, data key, compliance."""
    spec, status = database.get("spec") or {}, database.get("status") or {}
    entry = report.database_entry(database)
    credentials = status.get("credentials") or {}
    mine = [
        b
        for b in backups
        if ((b.get("spec") or {}).get("databaseRef") or {}).get("name")
        == database["metadata"]["name"]
    ]
    mine.sort(key=lambda b: str(b["metadata"].get("creationTimestamp")), reverse=True)
    return {
        "kind": "ManagedDatabase",
        "namespace": database["metadata"]["namespace"],
        "name": database["metadata"]["name"],
        "cluster": status.get("cluster"),
        "database": spec.get("databaseName"),
        "phase": status.get("phase"),
        "conditions": _conditions(status),
        "size": status.get("size") or human_size(status.get("sizeBytes")),
        "connections": status.get("connections"),
        "credentials": {
            "secret": credentials.get("secretName"),
            "username": credentials.get("username"),
            "lastRotation": credentials.get("lastRotation"),
            "age": age(credentials.get("lastRotation"), now),
        },
        "backups": {
            "schedule": (spec.get("backup") or {}).get("schedule"),
            "last": entry["lastBackup"],
            "lastTime": entry["lastBackupTime"],
            "lastVerified": entry["lastVerifiedBackup"],
            "lastVerifiedTime": entry["lastVerifiedTime"],
            "dataKeyId": entry["dataKeyId"],
            "items": [backup_entry(b) for b in mine],
        },
        "restore": status.get("restore"),
        "compliance": {
            "dataClassification": entry["dataClassification"],
            "compliant": entry["compliant"]["status"],
            "reason": entry["compliant"]["reason"],
        },
    }


def dash(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def _condition_lines(conditions: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["Conditions:"]
    for c in conditions:
        message = f"  {c['message']}" if c.get("message") else ""
        lines.append(f"  {c['type']:<16} {c['status']:<8} {dash(c.get('reason')):<24}{message}")
    if not conditions:
        lines.append("  (none yet: the operator has not reconciled it)")
    return lines


def render_cluster(view: Mapping[str, Any]) -> str:
    instances, key = view["instances"], view["key"]
    backups, compliance = view["backups"], view["compliance"]
    lines = [
        f"ManagedCluster {view['namespace']}/{view['name']}  ({view['mode']}, PostgreSQL "
        f"{dash(view['version'])}, phase {dash(view['phase'])})",
        *_condition_lines(view["conditions"]),
        f"Instances:  {dash(instances['ready'])}/{instances['desired']} ready, "
        f"primary {dash(instances['primary'])}",
    ]
    lines += [
        f"  replica {r.get('name')}: {dash(r.get('state'))}, lag {dash(r.get('lagSeconds'))}s"
        for r in instances["replicas"]
    ]
    endpoints = view["endpoints"]
    lines += [
        f"Endpoints:  rw {dash(endpoints.get('readWrite'))}  ro {dash(endpoints.get('readOnly'))}",
        f"Backups:    bucket {dash(backups['bucket'])}, WAL archiving "
        f"{dash(backups['walArchiving'])}, last base backup {dash(backups['lastBaseBackup'])}",
        f"Key:        {dash(key['provider'])} {dash(key['id'])} v{dash(key['version'])}, "
        f"age {dash(key['age'])}, last rotation {dash(key['lastRotation'])}",
        f"Compliance: profile {compliance['profile']}, compliant {compliance['compliant']}",
    ]
    for rule in compliance["rules"]:
        mark = "met  " if rule.get("met") else "UNMET"
        lines.append(f"  {mark} {rule.get('rule')}: {rule.get('evidence')}")
    lines.append(f"Databases:  {len(view['databases'])}")
    lines += [f"  {d['name']}  {dash(d['phase'])}  {dash(d['size'])}" for d in view["databases"]]
    return "\n".join(lines) + "\n"


def render_database(view: Mapping[str, Any]) -> str:
    credentials, backups = view["credentials"], view["backups"]
    lines = [
        f"ManagedDatabase {view['namespace']}/{view['name']}  (database "
        f"{dash(view['database'])} on {dash(view['cluster'])}, phase {dash(view['phase'])})",
        *_condition_lines(view["conditions"]),
        f"Size:        {dash(view['size'])}, {dash(view['connections'])} connections",
        f"Credentials: Secret {dash(credentials['secret'])}, login "
        f"{dash(credentials['username'])}, rotated {dash(credentials['age'])} ago",
        f"Backups:     schedule {dash(backups['schedule'])}, last {dash(backups['last'])} "
        f"({dash(backups['lastTime'])}), last verified {dash(backups['lastVerified'])} "
        f"({dash(backups['lastVerifiedTime'])})",
        f"Data key:    {dash(backups['dataKeyId'])}",
    ]
    lines += [
        f"  {b['name']:<32} {dash(b['phase']):<10} {dash(b['trigger']):<10} "
        f"{dash(b['size']):<10} verified {dash(b['verification'])}"
        for b in backups["items"]
    ]
    if view["restore"]:
        restore = view["restore"]
        lines.append(f"Restored:    from {restore.get('source')}, {restore.get('phase')}")
    compliance = view["compliance"]
    lines.append(
        f"Compliance:  {compliance['dataClassification']} data, compliant "
        f"{compliance['compliant']} ({dash(compliance['reason'])})"
    )
    return "\n".join(lines) + "\n"


def backup_manifest(namespace: str, name: str, database: str) -> dict[str, Any]:
    """An on-demand ManagedBackup, as a tenant would write it."""
    return {
        "apiVersion": API_VERSION,
        "kind": MANAGED_BACKUP.kind,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/created-by": "kubectl-vauban"},
        },
        "spec": {"databaseRef": {"name": database}},
    }


def restore_manifest(
    source: Mapping[str, Any],
    name: str,
    *,
    backup: str | None,
    database_name: str,
    owner: str,
) -> dict[str, Any]:
    """A new ManagedDatabase on the source's cluster, filled from one of its backups (the
    latest successful one unless `backup` names one). Database and owner names are new: the
    source keeps its own."""
    spec = source.get("spec") or {}
    restore = (
        {"backupRef": {"name": backup}} if backup else {"databaseRef": {"name": _name(source)}}
    )
    copied = {k: spec[k] for k in ("clusterRef", "extensions", "dataClassification") if k in spec}
    return {
        "apiVersion": API_VERSION,
        "kind": MANAGED_DATABASE.kind,
        "metadata": {
            "name": name,
            "namespace": source["metadata"]["namespace"],
            "labels": {"app.kubernetes.io/created-by": "kubectl-vauban"},
        },
        "spec": {**copied, "databaseName": database_name, "owner": owner, "restore": restore},
    }


def _name(obj: Mapping[str, Any]) -> str:
    return str(obj["metadata"]["name"])


def identifier(name: str) -> str:
    """An object name as a PostgreSQL identifier (lower case, underscores)."""
    return name.replace("-", "_").replace(".", "_")[:63]


def progress(obj: Mapping[str, Any]) -> str:
    """One line of a wait: the phase and the Ready condition's reason and message."""
    status = obj.get("status") or {}
    ready = _ready(status)
    parts = [dash(status.get("phase")), dash(ready.get("reason"))]
    if ready.get("message"):
        parts.append(str(ready["message"]))
    return " · ".join(parts)


def finished(obj: Mapping[str, Any]) -> bool | None:
    """For a wait: True once Ready, False once Stalled (it will not get there without a
    change), None while it is on its way."""
    conditions = {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}
    generation = obj["metadata"].get("generation")
    observed = (obj.get("status") or {}).get("observedGeneration")
    if observed is not None and generation is not None and observed < generation:
        return None
    if (conditions.get("Ready") or {}).get("status") == "True":
        return True
    if (conditions.get("Stalled") or {}).get("status") == "True":
        return False
    if (obj.get("status") or {}).get("phase") == "Failed":
        return False
    return None
