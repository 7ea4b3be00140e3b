"""What ships beside the operator, checked without a cluster: the alert rules and the Grafana
dashboard name only metrics the operator exports, every alert has a runbook, and the images
are built non-root with no build tools in their final stages. (promtool and the apiserver
check the same files in tests/integration/test_helm.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from vauban.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "vauban"

# The metrics of docs/metrics.md, those the operator exports already and those that come with
# backups and keys: alerts and the dashboard may use these and nothing else.
ANNOUNCED = {
    "vauban_build_info",
    "vauban_api_errors_total",
    "vauban_api_up",
    "vauban_reconcile_total",
    "vauban_reconcile_duration_seconds",
    "vauban_objects",
    "vauban_cluster_up",
    "vauban_cluster_ready_instances",
    "vauban_cluster_replication_lag_seconds",
    "vauban_cluster_connections",
    "vauban_cluster_max_connections",
    "vauban_database_up",
    "vauban_database_size_bytes",
    "vauban_database_connections",
    "vauban_database_last_backup_success_timestamp_seconds",
    "vauban_database_last_backup_duration_seconds",
    "vauban_database_last_backup_size_bytes",
    "vauban_database_backup_failures_total",
    "vauban_database_backup_schedule_seconds",
    "vauban_database_last_verified_backup_timestamp_seconds",
    "vauban_database_restore_verification_failures_total",
    "vauban_key_age_seconds",
    "vauban_key_rotation_period_seconds",
}
HISTOGRAMS = {"vauban_reconcile_duration_seconds"}
# CloudNativePG's instance exporter: series of its default queries
# (config/manager/default-monitoring.yaml), which the vauban.instances alerts read.
CLOUDNATIVEPG = {
    "cnpg_pg_replication_lag",
    "cnpg_pg_replication_in_recovery",
    "cnpg_pg_stat_archiver_last_archived_time",
    "cnpg_pg_stat_archiver_last_failed_time",
    "cnpg_pg_postmaster_start_time",
}

REQUIRED_ALERTS = {
    "VaubanClusterNotReady",
    "VaubanReplicationLagHigh",
    "VaubanBackupTooOld",
    "VaubanBackupFailed",
    "VaubanRestoreVerificationFailed",
    "VaubanKeyRotationOverdue",
    "VaubanOperatorReconcileErrors",
    "VaubanInstanceReplicationLagHigh",
    "VaubanWALArchivingFailing",
    "VaubanInstanceRestarted",
}


def exported() -> set[str]:
    """Sample names the operator's registry exports (counters with _total, info with _info)."""
    suffix = {"counter": "_total", "info": "_info"}
    return {family.name + suffix.get(family.type, "") for family in Metrics().registry.collect()}


def metric_names(expr: str) -> set[str]:
    """Vauban's (and CloudNativePG's) metric names in a PromQL expression; a histogram's
    series count as its name."""
    names = set()
    for name in re.findall(r"\b(?:vauban|cnpg)_[a-z_]+\b", expr):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        names.add(base if base in HISTOGRAMS else name)
    return names


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((CHART / "monitoring" / "alerts.yaml").read_text(encoding="utf-8"))
    return [rule for group in groups["groups"] for rule in group["rules"]]


def test_alert_metric_names_exist() -> None:
    known = ANNOUNCED | exported() | CLOUDNATIVEPG
    for rule in alert_rules():
        used = metric_names(rule["expr"])
        assert used, f"{rule['alert']} uses no Vauban metric"
        assert used <= known, f"{rule['alert']} uses unknown metrics {used - known}"


def test_every_alert_has_a_runbook() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= REQUIRED_ALERTS
    runbooks = (ROOT / "docs" / "alerts.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^## (\w+)$", runbooks, re.M))
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        # The chart's runbook_url is <base>#<alert in lower case>: GitHub's anchor of "## <alert>".
        assert rule["alert"] in sections, f"no runbook section for {rule['alert']} in alerts.md"


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (CHART / "monitoring" / "dashboard.json").read_text(encoding="utf-8")
    )
    return data


def test_dashboard_queries_use_existing_metrics() -> None:
    board = dashboard()
    known = ANNOUNCED | exported() | CLOUDNATIVEPG
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"]), "duplicate panel ids"
    for panel in panels:
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            used = metric_names(target["expr"])
            assert used, f"panel {panel['title']!r}: {target['expr']}"
            assert used <= known, f"panel {panel['title']!r} uses unknown metrics {used - known}"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert metric_names(variables["namespace"]["query"]["query"]) <= known
    # Every metric the alerts watch is also on the dashboard, so an alert can be looked into.
    on_board = {n for p in panels for t in p["targets"] for n in metric_names(t["expr"])}
    for rule in alert_rules():
        if rule["alert"] != "VaubanOperatorAbsent":
            assert metric_names(rule["expr"]) <= on_board, rule["alert"]


# -- images ----------------------------------------------------------------------------------


def stages() -> dict[str, list[str]]:
    """Containerfile instructions by stage name (continuation lines joined)."""
    text = (ROOT / "Containerfile").read_text(encoding="utf-8")
    lines = re.sub(r"\\\n\s*", " ", text).splitlines()
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if match := re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.I):
            current = found.setdefault(match.group(1), [])
        current.append(line)
    return found


def test_images_are_non_root_and_free_of_build_tools() -> None:
    found = stages()
    assert list(found)[-1] == "operator", "the default target (the last stage) is the operator"
    text = (ROOT / "Containerfile").read_text(encoding="utf-8")
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.search(r":\d+\.\d+\.\d+-slim-\w+$", base.group(1)), "base not pinned"
    for final in ("operator", "agent"):
        users = [line for line in found[final] if line.startswith("USER")]
        assert users == ["USER 65532:65532"], f"{final} must end as a numeric non-root user"
    # What the final images are made of: their own stages and the runtime they start from.
    shipped = " ".join(found["runtime"] + found["agent"] + found["operator"])
    for tool in ("gcc", "build-essential", "make ", "curl", "gnupg", "git "):
        assert tool not in shipped, f"{tool.strip()} in a final image"
    assert "pip uninstall" in shipped
    assert "COPY --from=build /opt/vauban /opt/vauban" in shipped


def test_agent_has_a_client_for_every_supported_major() -> None:
    from vauban.api.cluster import SUPPORTED_MAJORS

    agent = " ".join(stages()["agent"])
    majors = re.search(r'ARG POSTGRES_MAJORS="([^"]+)"', agent)
    assert majors and tuple(majors.group(1).split()) == SUPPORTED_MAJORS


@pytest.mark.parametrize("kept", ["pyproject.toml", "README.md", "LICENSE", "operator/"])
def test_build_context_holds_only_the_package(kept: str) -> None:
    rules = (ROOT / ".containerignore").read_text(encoding="utf-8").splitlines()
    rules = [r for r in rules if r and not r.startswith("#")]
    assert rules[0] == "*", "everything is excluded unless named"
    assert f"!{kept}" in rules
