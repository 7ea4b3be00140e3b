"""The Helm chart, checked by the real tools: helm lints and renders it (its values schema
refuses bad values), the apiserver accepts every rendered object (server-side dry run, then
for real), its PodSecurity admission accepts the operator's pod under the "restricted"
profile, promtool checks and unit-tests the alert rules, and the operator runs with nothing
but the chart's RBAC (a token of the chart's ServiceAccount)."""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.helm import CHART, Helm, find, token_kubeconfig, wait_for_operator_policy
from support.kube import KubeCtl, OperatorProcess, eventually, external_cluster, with_reason
from support.vauban_process import running_operator
from vauban.devcluster.postgres import PostgresServer

NAMESPACED = {"watchNamespaces": ["tenant-a", "tenant-b"]}
MONITORING = {
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "instances": {"podMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    },
    "prometheusRule": {"enabled": True, "runbookBaseURL": "https://docs.example.org/alerts"},
    "dashboard": {"enabled": True},
}
# prometheus-operator's CRDs, from its Go module (example/prometheus-operator-crd).
PROMETHEUS_OPERATOR_VERSION = "v0.92.1"
CLOUDNATIVEPG_VERSION = "v1.30.1"


@pytest.fixture(scope="module")
def helm() -> Helm:
    from vauban.devcluster.build import ensure_tool

    return Helm(str(ensure_tool("helm")))


@pytest.fixture(scope="module")
def promtool() -> str:
    from vauban.devcluster.build import ensure_tool

    return str(ensure_tool("promtool"))


def short(namespace: str) -> str:
    """A release name unique to the test: cluster-scoped objects are named after it."""
    return f"r{namespace[-6:]}"


# -- helm lint and the values schema ---------------------------------------------------------


@pytest.mark.parametrize(
    "values", [{}, {**NAMESPACED, **MONITORING}], ids=["defaults", "namespaced-monitoring"]
)
def test_chart_lints(helm: Helm, values: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(json.dumps(values), encoding="utf-8")
    result = helm.run("lint", "--strict", str(CHART), f"--values={path}", "--kube-version=1.36.3")
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"replicaCount": 2, "leaderElection": {"enabled": False}}, "/leaderElection/enabled"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "/watchNamespaces/0"),
        ({"operator": {"logLevel": "TRACE"}}, "/operator/logLevel"),
        ({"networkPolicy": {"postgresqlPorts": [70000]}}, "/networkPolicy/postgresqlPorts/0"),
        ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "/metrics/serviceMonitor"),
        ({"replicas": 3}, "additional properties 'replicas' not allowed"),
        ({"operator": {"pkcs11": {"module": "/hsm.so"}}}, "/operator/pkcs11/pinSecret"),
        ({"operator": {"pkcs11": {"module": "libhsm.so"}}}, "/operator/pkcs11/module"),
        ({"operator": {"recoveryPublicKey": "AAAA"}}, "/operator/recoveryPublicKey"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_schema_refuses_bad_values(helm: Helm, values: dict[str, Any], complaint: str) -> None:
    result = helm.template("vauban", "vauban-system", values, check=False)
    assert result.returncode != 0, f"{values} was accepted"
    assert "values don't meet the specifications of the schema" in result.stderr
    assert complaint in result.stderr


def test_one_replica_may_run_without_leader_election(helm: Helm) -> None:
    objects = helm.render(
        "vauban", "vauban-system", {"replicaCount": 1, "leaderElection": {"enabled": False}}
    )
    env = {e["name"]: e.get("value") for e in container(objects)["env"]}
    assert env["VAUBAN_LEADER_ELECTION"] == "false"
    # A lone replica has no PodDisruptionBudget: it would block every drain.
    assert not [o for o in objects if o["kind"] == "PodDisruptionBudget"]


def test_environment_is_what_the_operator_reads(
    helm: Helm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settings ignore unknown variables: a misspelt name in the chart would go unnoticed.
    Every VAUBAN_* variable the chart sets is a setting, and parses to what was meant."""
    from vauban.crypto import recovery
    from vauban.settings import Settings

    _, public = recovery.generate()
    values = {
        **NAMESPACED,
        "operator": {
            "recoveryPublicKey": public,
            "allowedBackupRegions": ["fr-par"],
            "kmip": {"host": "hsm.example", "clientSecret": "kmip-client"},
            "pkcs11": {
                "module": "/opt/pkcs11/lib/libvendor.so",
                "tokenLabel": "vauban",
                "pinSecret": "hsm-pin",
                "moduleVolume": {"image": {"reference": "registry.example/hsm-client:1"}},
            },
        },
    }
    objects = helm.render("vauban", "vauban-system", values)
    env = container(objects)["env"]
    volumes = find(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "kmip", "secret": {"secretName": "kmip-client"}} in volumes
    # The PIN is a file from the Secret, readable by the operator's group only; never a value
    # in the environment.
    pin = {"secretName": "hsm-pin", "items": [{"key": "pin", "path": "pin"}], "defaultMode": 0o440}
    assert {"name": "pkcs11-pin", "secret": pin} in volumes
    module = {"image": {"reference": "registry.example/hsm-client:1"}}
    assert {"name": "pkcs11-module", **module} in volumes
    mounts = {m["name"]: m for m in container(objects)["volumeMounts"]}
    assert mounts["pkcs11-module"] == {
        "name": "pkcs11-module",
        "mountPath": "/opt/pkcs11",
        "readOnly": True,
    }
    assert all("valueFrom" not in e or "secretKeyRef" not in e["valueFrom"] for e in env)
    known = {f"VAUBAN_{name.upper()}" for name in Settings.model_fields}
    assert {e["name"] for e in env} <= known
    for name in [n for n in os.environ if n.startswith("VAUBAN_")]:
        monkeypatch.delenv(name)
    for variable in env:
        monkeypatch.setenv(variable["name"], variable.get("value", "from-the-downward-api"))
    settings = Settings()
    assert settings.watch_namespaces == ["tenant-a", "tenant-b"]
    assert settings.allowed_backup_regions == ["fr-par"]
    assert settings.recovery_public_key == public
    assert settings.leader_election and settings.lease_duration_seconds == 15
    assert (settings.metrics_port, settings.liveness_port) == (8080, 0)
    assert settings.agent_image == "ghcr.io/vauban-dev/vauban-agent:0.1.0"
    assert (settings.kmip_host, settings.kmip_port) == ("hsm.example", 5696)
    assert str(settings.kmip_ca_file) == "/etc/vauban/kmip/ca.crt"
    assert str(settings.pkcs11_module) == "/opt/pkcs11/lib/libvendor.so"
    assert settings.pkcs11_token_label == "vauban"
    assert str(settings.pkcs11_pin_file) == f"{mounts['pkcs11-pin']['mountPath']}/pin"


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec = find(objects, "Deployment")["spec"]["template"]["spec"]
    return spec["containers"][0]  # type: ignore[no-any-return]


# -- what the chart renders ------------------------------------------------------------------


def rules_of(objects: list[dict[str, Any]], kind: str) -> dict[str, list[dict[str, Any]]]:
    """Rules of every Role or ClusterRole, by namespace/name."""
    return {
        f"{o['metadata'].get('namespace', '')}/{o['metadata']['name']}": o["rules"]
        for o in objects
        if o["kind"] == kind
    }


def test_rbac_is_least_privilege_and_says_why(helm: Helm) -> None:
    for values in ({}, NAMESPACED):
        objects = helm.render("vauban", "vauban-system", values)
        for kind in ("ClusterRole", "Role"):
            for name, rules in rules_of(objects, kind).items():
                for rule in rules:
                    for key in ("apiGroups", "resources", "verbs"):
                        assert "*" not in rule.get(key, []), f"wildcard in {name}: {rule}"
    # Each rule is preceded by the comment saying what it is for.
    rbac = helm.template("vauban", "vauban-system", NAMESPACED, only="rbac.yaml").stdout
    lines = rbac.splitlines()
    for i, line in enumerate(lines):
        if line.lstrip().startswith("- apiGroups:"):
            assert lines[i - 1].lstrip().startswith("#"), f"rule without a comment: {line}"


def resources(rules: list[dict[str, Any]]) -> set[str]:
    return {r for rule in rules for r in rule["resources"]}


def test_cluster_wide_and_namespaced_modes(helm: Helm) -> None:
    cluster_wide = helm.render("vauban", "vauban-system")
    granted = resources(find(cluster_wide, "ClusterRole", "vauban")["rules"])
    assert {"managedclusters", "secrets", "clusters", "jobs", "storageclasses"} <= granted
    assert "VAUBAN_WATCH_NAMESPACES" not in {e["name"] for e in container(cluster_wide)["env"]}

    namespaced = helm.render("vauban", "vauban-system", NAMESPACED)
    # Only cluster-scoped reads stay cluster-wide; the rest is a Role per watched namespace,
    # the operator's included (its agent's Jobs are watched there).
    granted = resources(find(namespaced, "ClusterRole", "vauban")["rules"])
    assert granted == {"customresourcedefinitions", "namespaces", "storageclasses"}
    roles = rules_of(namespaced, "Role")
    assert set(roles) == {
        "tenant-a/vauban",
        "tenant-b/vauban",
        "vauban-system/vauban",
        "vauban-system/vauban-self",
    }
    bindings = {
        f"{o['metadata']['namespace']}/{o['roleRef']['name']}"
        for o in namespaced
        if o["kind"] == "RoleBinding"
    }
    assert bindings == set(roles)
    env = {e["name"]: e.get("value") for e in container(namespaced)["env"]}
    assert json.loads(env["VAUBAN_WATCH_NAMESPACES"]) == ["tenant-a", "tenant-b"]

    # The Lease and the backup agent's CronJobs and pods: the operator's namespace only.
    own_only = {"leases", "cronjobs", "pods"}
    for objects in (cluster_wide, namespaced):
        others = rules_of(objects, "Role")
        own = others.pop("vauban-system/vauban-self")
        assert resources(own) == own_only | {"jobs", "secrets"}
        elsewhere = [find(objects, "ClusterRole", "vauban")["rules"], *others.values()]
        assert not [rules for rules in elsewhere if own_only & resources(rules)]


def test_chart_crds_are_the_generated_ones() -> None:
    """`vauban crds --check` (make lint) enforces it; this says it where the chart is tested."""
    from vauban.api import crdgen

    generated = crdgen.manifests()
    policy = f"{crdgen.DELETION_PROTECTION}.yaml"
    for name, content in generated.items():
        copy_ = CHART / ("admission" if name == policy else "crds") / name
        assert copy_.read_text(encoding="utf-8") == content, f"{copy_} is stale: run vauban crds"
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    from vauban import __version__

    assert chart["appVersion"] == __version__


def test_monitoring_is_off_by_default(helm: Helm) -> None:
    kinds = {o["kind"] for o in helm.render("vauban", "vauban-system")}
    assert not kinds & {"ServiceMonitor", "PrometheusRule", "ConfigMap"}
    objects = helm.render("vauban", "vauban-system", MONITORING)
    monitor = find(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == "metrics" and endpoint["honorLabels"] is True
    service = find(objects, "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    dashboard = json.loads(find(objects, "ConfigMap")["data"]["vauban.json"])
    assert dashboard["uid"] == "vauban-overview"


# -- the real apiserver ----------------------------------------------------------------------

APPLY = ("apply", "--server-side", "--force-conflicts", "--field-manager=helm-tests", "-f", "-")


@pytest.fixture
def cleanup_cluster_scoped(kube: KubeCtl) -> Iterator[Callable[[str], None]]:
    releases: list[str] = []
    yield releases.append
    for release in releases:
        kube.run(
            "delete",
            "clusterrole,clusterrolebinding,"
            "validatingadmissionpolicy,validatingadmissionpolicybinding",
            "-l",
            f"app.kubernetes.io/instance={release}",
            "--wait=false",
            check=False,
        )


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_rendered_chart_is_accepted_by_the_apiserver(
    kube: KubeCtl,
    crds: None,
    helm: Helm,
    namespace: str,
    mode: str,
    cleanup_cluster_scoped: Callable[[str], None],
) -> None:
    """Dry run first (nothing stored), then for real into a namespace that enforces the
    restricted Pod Security profile: the ReplicaSet's pods must be admitted."""
    release = short(namespace)
    cleanup_cluster_scoped(release)
    kube.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    values: dict[str, Any] = {}
    if mode == "namespaced":
        tenant = kube.unique_namespace("tenant")
        values = {"watchNamespaces": [namespace, tenant]}
    manifest = helm.template(release, namespace, values, crds=True).stdout

    dry = kube.run(*APPLY, "--dry-run=server", stdin=manifest)
    assert "(server dry run)" in dry.stdout
    assert kube.run("get", "deployments", "-n", namespace, "-o", "name").stdout == ""

    kube.run(*APPLY, stdin=manifest)
    kube.run("rollout", "status", f"deployment/{release}-vauban", "-n", namespace, "--timeout=60s")
    pods = kube.get_list("pods", namespace, f"-l=app.kubernetes.io/instance={release}")
    assert len(pods) == 2
    if mode == "namespaced":
        kube.run("get", "role", f"{release}-vauban", "-n", values["watchNamespaces"][1])
        kube.run("delete", "namespace", values["watchNamespaces"][1], "--wait=false")


def test_monitoring_objects_are_accepted(
    kube: KubeCtl,
    helm: Helm,
    namespace: str,
    cleanup_cluster_scoped: Callable[[str], None],
) -> None:
    """ServiceMonitor, PodMonitor and PrometheusRule against prometheus-operator's own CRDs."""
    from vauban.devcluster.build import BuildError, module_source

    try:
        source = module_source(
            "github.com/prometheus-operator/prometheus-operator", PROMETHEUS_OPERATOR_VERSION
        )
    except BuildError as e:
        pytest.skip(f"prometheus-operator's CRDs unavailable (structure checked above): {e}")
    bases = source / "example" / "prometheus-operator-crd"
    for crd in ("servicemonitors", "podmonitors", "prometheusrules"):
        kube.run("apply", "--server-side", "-f", str(bases / f"monitoring.coreos.com_{crd}.yaml"))
        kube.run("wait", "--for=condition=Established", f"crd/{crd}.monitoring.coreos.com")
    release = short(namespace)
    cleanup_cluster_scoped(release)
    manifest = helm.template(release, namespace, MONITORING).stdout
    kube.run(*APPLY, "--dry-run=server", stdin=manifest)
    kube.run(*APPLY, stdin=manifest)
    kube.run("get", "servicemonitor,prometheusrule", f"{release}-vauban", "-n", namespace)
    kube.run("get", "podmonitor", f"{release}-vauban-instances", "-n", namespace)


def operator_pod(objects: list[dict[str, Any]], namespace: str) -> dict[str, Any]:
    """A Pod made of the Deployment's pod template, as the ReplicaSet would make it."""
    template = find(objects, "Deployment")["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "vauban-psa", "namespace": namespace, **template["metadata"]},
        "spec": template["spec"],
    }


def _breaches() -> dict[str, Callable[[dict[str, Any]], None]]:
    def root(pod: dict[str, Any]) -> None:
        pod["spec"]["securityContext"].update(runAsNonRoot=False, runAsUser=0)
        pod["spec"]["containers"][0]["securityContext"].pop("runAsNonRoot")

    def escalation(pod: dict[str, Any]) -> None:
        pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True

    def capabilities(pod: dict[str, Any]) -> None:
        pod["spec"]["containers"][0]["securityContext"]["capabilities"] = {"add": ["NET_RAW"]}

    def seccomp(pod: dict[str, Any]) -> None:
        pod["spec"]["securityContext"].pop("seccompProfile")

    return {
        "root": root,
        "escalation": escalation,
        "capabilities": capabilities,
        "seccomp": seccomp,
    }


def test_operator_pod_meets_the_restricted_profile(
    kube: KubeCtl, helm: Helm, namespace: str
) -> None:
    """The apiserver's own PodSecurity admission is the judge; each breach is refused, so
    the check is shown to bite."""
    kube.run(
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    )
    objects = helm.render("vauban", namespace)
    kube.apply(find(objects, "ServiceAccount"))
    pod = operator_pod(objects, namespace)
    kube.run("apply", "--dry-run=server", "-f", "-", stdin=json.dumps(pod))
    # Where the platform assigns the ids (OpenShift), the pod names none and still passes.
    assigned = operator_pod(
        helm.render("vauban", namespace, {"platformAssignsUserIds": True}), namespace
    )
    context = assigned["spec"]["securityContext"]
    assert not {"runAsUser", "runAsGroup", "fsGroup"} & set(context), context
    kube.run("apply", "--dry-run=server", "-f", "-", stdin=json.dumps(assigned))

    for name, breach in _breaches().items():
        bad = copy.deepcopy(pod)
        breach(bad)
        result = kube.run(
            "apply", "--dry-run=server", "-f", "-", stdin=json.dumps(bad), check=False
        )
        assert result.returncode != 0, f"pod with breach {name!r} was admitted"
        assert "violates PodSecurity" in result.stderr, result.stderr


def test_instances_are_scraped_by_the_monitoring_peers_only(helm: Helm) -> None:
    """The PodMonitor selects managed instances; the operator is told whom each cluster's
    NetworkPolicy admits to their exporter: the peers who scrape the operator itself."""
    objects = helm.render("vauban", "vauban-system", MONITORING)
    monitor = find(objects, "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": "vauban",
        "cnpg.io/podRole": "instance",
    }
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert (endpoint["port"], endpoint["scheme"]) == ("metrics", "https")
    env = {
        e["name"]: e.get("value")
        for e in find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert json.loads(env["VAUBAN_INSTANCE_METRICS_FROM"]) == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }
    ]
    namespaced = helm.render("vauban", "vauban-system", {**NAMESPACED, **MONITORING})
    assert find(namespaced, "PodMonitor")["spec"]["namespaceSelector"] == {
        "matchNames": ["tenant-a", "tenant-b"]
    }


def test_make_release_packages_the_chart_and_plain_manifests_the_apiserver_accepts(
    kube: KubeCtl, helm: Helm, namespace: str, tmp_path: Path
) -> None:
    """`make release`, as a user without Helm would take its manifests: every object,
    CRDs and cluster-scoped ones included, is accepted by the apiserver (server-side dry
    run into this test's namespace)."""
    dist = tmp_path / "dist"
    subprocess.run(
        [
            "make",
            "-C",
            str(CHART.parents[1]),
            "release",
            f"RELEASE_DIR={dist}",
            f"RELEASE_NAMESPACE={namespace}",
            f"HELM={helm.binary}",
            # The SBOMs need the images built (the real node's tier); tests/unit/test_sbom.py
            # checks them on an archive of its own.
            "RELEASE_SBOM=0",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    version = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))["version"]
    assert (dist / f"vauban-{version}.tgz").is_file()
    manifests = dist / f"vauban-{version}.yaml"
    objects = [o for o in yaml.safe_load_all(manifests.read_text(encoding="utf-8")) if o]
    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "CustomResourceDefinition", "ClusterRole", "Deployment"} <= kinds
    assert objects[0] == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": namespace,
            "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
        },
    }
    sums = (dist / "SHA256SUMS").read_text(encoding="utf-8")
    assert f"vauban-{version}.tgz" in sums and manifests.name in sums
    kube.run(
        "apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f", str(manifests)
    )


# -- promtool --------------------------------------------------------------------------------


def rule_groups(helm: Helm) -> list[dict[str, Any]]:
    """The alert rules as the chart renders them (runbook URLs included)."""
    objects = helm.render("vauban", "vauban-system", MONITORING)
    groups: list[dict[str, Any]] = find(objects, "PrometheusRule")["spec"]["groups"]
    return groups


def test_alert_rules_pass_promtool_check(helm: Helm, promtool: str, tmp_path: Path) -> None:
    groups = rule_groups(helm)
    for group in groups:
        for rule in group["rules"]:
            anchor = rule["alert"].lower()
            assert rule["annotations"]["runbook_url"] == f"https://docs.example.org/alerts#{anchor}"
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": groups}), encoding="utf-8")
    result = _run(promtool, "check", "rules", str(rules))
    assert "SUCCESS" in result.stdout


def test_dashboard_queries_parse(helm: Helm, promtool: str, tmp_path: Path) -> None:
    """Every query of the dashboard, as a recording rule: promtool parses each with
    Prometheus' own parser (the $namespace variable filled as Grafana would)."""
    objects = helm.render("vauban", "vauban-system", MONITORING)
    dashboard = json.loads(find(objects, "ConfigMap")["data"]["vauban.json"])
    exprs = [
        target["expr"].replace("$namespace", ".*")
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    assert len(exprs) > 15
    rules = [{"record": f"vauban:dashboard:{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), "utf-8")
    assert "SUCCESS" in _run(promtool, "check", "rules", str(path)).stdout


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{name}{{{inner}}}", "values": values}


def _alert(name: str, at: str, *firing: dict[str, str]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": name, "exp_alerts": [{"exp_labels": f} for f in firing]}


def test_alerts_fire_on_synthetic_series(helm: Helm, promtool: str, tmp_path: Path) -> None:
    """`promtool test rules`: each alert on series shaped like the operator's. Annotations
    are left out here (promtool compares them whole; `check rules` parsed their templates)."""
    groups = copy.deepcopy(rule_groups(helm))
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}), "utf-8")
    shop = {"namespace": "shop"}
    orders = {**shop, "database": "orders"}
    fresh = {**shop, "database": "fresh"}
    cluster = {**shop, "cluster": "main"}
    primary = {**cluster, "pod": "main-1"}
    replica = {**cluster, "pod": "main-2"}
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # Ready, then not from minute 2 on.
                    _series("vauban_cluster_up", "1 1 0x60", **cluster, pod="a"),
                    # Last success at time 0, hourly schedule: too old after 2 h (+15 min).
                    _series(
                        "vauban_database_last_backup_success_timestamp_seconds", "0x200", **orders
                    ),
                    _series("vauban_database_backup_schedule_seconds", "3600x200", **orders),
                    # Backed up every minute: never too old.
                    _series(
                        "vauban_database_last_backup_success_timestamp_seconds", "0+60x200", **fresh
                    ),
                    _series("vauban_database_backup_schedule_seconds", "3600x200", **fresh),
                    # First failure appears at minute 10 (the series starts at 1), a second
                    # one at minute 90.
                    _series("vauban_database_backup_failures_total", "_x10 1x79 2x30", **orders),
                    _series(
                        "vauban_cluster_replication_lag_seconds",
                        "0x5 120x20",
                        **cluster,
                        replica="main-2",
                    ),
                    _series("vauban_key_age_seconds", "0+60x200", **cluster),
                    _series("vauban_key_rotation_period_seconds", "3600x200", **cluster),
                    _series(
                        "vauban_reconcile_total",
                        "0+1x60",
                        kind="ManagedDatabase",
                        result="error",
                    ),
                    _series("vauban_build_info", "1x5", version="0.1.0"),
                    # CloudNativePG's exporter, as the PodMonitor labels it: a replica that
                    # falls 2 min behind from minute 6, its primary whose archiving fails
                    # from minute 20 (last success at 600 s), and restarts at minute 40.
                    _series("cnpg_pg_replication_lag", "0x5 120x20", **replica),
                    _series("cnpg_pg_replication_in_recovery", "1x60", **replica),
                    _series("cnpg_pg_replication_lag", "0x60", **primary),
                    _series("cnpg_pg_replication_in_recovery", "0x60", **primary),
                    _series("cnpg_pg_stat_archiver_last_archived_time", "600x60", **primary),
                    _series("cnpg_pg_stat_archiver_last_failed_time", "-1x20 1200x40", **primary),
                    _series("cnpg_pg_postmaster_start_time", "100x40 2500x40", **primary),
                ],
                "alert_rule_test": [
                    _alert("VaubanClusterNotReady", "10m"),
                    _alert("VaubanClusterNotReady", "13m", {**cluster, "severity": "critical"}),
                    _alert("VaubanBackupTooOld", "2h"),
                    _alert("VaubanBackupTooOld", "2h20m", {**orders, "severity": "critical"}),
                    _alert("VaubanBackupFailed", "5m"),
                    _alert("VaubanBackupFailed", "15m", {**orders, "severity": "warning"}),
                    _alert("VaubanBackupFailed", "80m"),
                    _alert("VaubanBackupFailed", "95m", {**orders, "severity": "warning"}),
                    _alert("VaubanReplicationLagHigh", "8m"),
                    _alert(
                        "VaubanReplicationLagHigh",
                        "12m",
                        {**cluster, "replica": "main-2", "severity": "warning"},
                    ),
                    _alert("VaubanKeyRotationOverdue", "90m"),
                    _alert("VaubanKeyRotationOverdue", "2h10m", {**cluster, "severity": "warning"}),
                    _alert(
                        "VaubanOperatorReconcileErrors",
                        "25m",
                        {"kind": "ManagedDatabase", "severity": "warning"},
                    ),
                    _alert("VaubanInstanceReplicationLagHigh", "8m"),
                    _alert(
                        "VaubanInstanceReplicationLagHigh",
                        "12m",
                        {**replica, "severity": "warning"},
                    ),
                    _alert("VaubanWALArchivingFailing", "25m"),
                    _alert("VaubanWALArchivingFailing", "32m", {**primary, "severity": "critical"}),
                    _alert("VaubanInstanceRestarted", "39m"),
                    _alert("VaubanInstanceRestarted", "45m", {**primary, "severity": "warning"}),
                    _alert("VaubanInstanceRestarted", "60m"),
                    _alert("VaubanOperatorAbsent", "5m"),
                    # Gone after minute 5, absent once out of the 5 min look-back, then 10 min.
                    _alert("VaubanOperatorAbsent", "30m", {"severity": "critical"}),
                ],
            }
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests), "utf-8")
    result = _run(promtool, "test", "rules", str(tmp_path / "tests.yaml"))
    assert "SUCCESS" in result.stdout


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"{' '.join(argv)}:\n{result.stdout}\n{result.stderr}"
    return result


# -- the operator with nothing but the chart's RBAC ------------------------------------------


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KubeCtl, Path]]:
    """A control plane of the module's own, empty: the chart installs the CRDs itself, and the
    operator runs with none of the session's (nor its operator) around."""
    if os.environ.get("VAUBAN_TEST_KUBECONFIG"):
        pytest.skip("needs a control plane of its own (installs CloudNativePG's CRDs)")
    from vauban.devcluster import LocalControlPlane, ensure_binaries
    from vauban.devcluster.build import module_source

    root = tmp_path_factory.mktemp("helm")
    with LocalControlPlane(root / "plane") as control_plane:
        kube = KubeCtl(str(ensure_binaries().kubectl), control_plane.kubeconfig)
        bases = module_source("github.com/cloudnative-pg/cloudnative-pg", CLOUDNATIVEPG_VERSION)
        kube.run(
            "apply",
            "--server-side",
            "-f",
            str(bases / "config" / "crd" / "bases" / ("postgresql.cnpg.io_clusters.yaml")),
        )
        yield kube, root


def install(kube: KubeCtl, helm: Helm, release: str, namespace: str, *args: str) -> None:
    """`helm install` as a user runs it. Without --wait: the chart's pods are kwok's fakes
    (the rollout is checked above); the operator under test is the process run below."""
    kube.run("create", "namespace", namespace)
    kube.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    helm.run(
        "install",
        release,
        str(CHART),
        f"--namespace={namespace}",
        *args,
        kubeconfig=kube.kubeconfig,
    )


def tenant_objects(
    kube: KubeCtl, namespace: str, postgres: PostgresServer, admin: tuple[str, str]
) -> None:
    """What a tenant applies: an adopted server, a database on it, a server that does not
    answer, and a CloudNativePG cluster."""
    kube.run("create", "namespace", namespace)
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "admin", "namespace": namespace},
            "stringData": {"username": admin[0], "password": admin[1]},
        }
    )
    kube.apply(external_cluster(namespace, "legacy", postgres.port))
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    kube.apply(external_cluster(namespace, "gone", 1))
    kube.apply(
        {
            "apiVersion": "vauban.dev/v1alpha1",
            "kind": "ManagedDatabase",
            "metadata": {"name": "orders", "namespace": namespace},
            "spec": {
                "clusterRef": {"name": "legacy"},
                "databaseName": f"orders_{namespace.replace('-', '_')}",
                "owner": f"orders_{namespace.replace('-', '_')}_owner",
            },
        }
    )
    kube.apply(
        {
            "apiVersion": "vauban.dev/v1alpha1",
            "kind": "ManagedCluster",
            "metadata": {"name": "main", "namespace": namespace},
            "spec": {"version": "17", "instances": 1, "storage": {"size": "1Gi"}},
        }
    )


def assert_reconciled_everything(kube: KubeCtl, namespace: str, operator: OperatorProcess) -> None:
    for kind, name, reason in (
        ("managedcluster", "legacy", "Available"),
        ("managedcluster", "gone", "Unreachable"),
        ("manageddatabase", "orders", "Available"),
        ("managedcluster", "main", "Provisioning"),
    ):
        eventually(
            functools.partial(with_reason, kube, kind, name, namespace, reason),
            timeout=60,
            what=f"{kind} {name} {reason}",
        )
    kube.get("secret", "orders-credentials", namespace)
    kube.get("clusters.postgresql.cnpg.io", "main", namespace)
    kube.get("networkpolicy", "main-postgresql", namespace)
    # Deletion with Retain: volumes and Secrets are looked up and released.
    kube.run("delete", "managedcluster", "main", "-n", namespace, "--timeout=60s")
    # The client's and kopf's words for a refusal (kopf carries on without what it may not
    # watch, so a missing permission could otherwise go unnoticed). Not a bare 403: kopf's
    # debug lines quote resourceVersions, which reach 403 too.
    refusals = re.findall(
        r".*(?:\(403\)|\bcode\W+403\b|forbidden|not enough permissions).*",
        operator.log_text(),
        re.I,
    )
    assert not refusals, "\n".join(refusals[:5])
    assert not operator.metric("vauban_reconcile_total", result="error")


@pytest.fixture
def admin(postgres: PostgresServer) -> tuple[str, str]:
    import secrets

    name, password = f"admin_{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    postgres.create_role(name, password, "CREATEROLE", "CREATEDB")
    return name, password


def test_operator_runs_with_the_cluster_wide_rbac(
    plane: tuple[KubeCtl, Path], helm: Helm, postgres: PostgresServer, admin: tuple[str, str]
) -> None:
    kube, root = plane
    install(kube, helm, "vauban", "vauban-system")
    tenant_objects(kube, "tenant-a", postgres, admin)
    config = token_kubeconfig(kube, "vauban", "vauban-system", root / "sa-cluster-wide")
    wait_for_operator_policy(KubeCtl(kube.binary, config), "vauban-system")
    with running_operator(
        config,
        root / "cluster-wide.log",
        VAUBAN_NAMESPACE="vauban-system",
        VAUBAN_LEADER_ELECTION="true",
        VAUBAN_POD_NAME="rbac-test",
    ) as operator:
        assert_reconciled_everything(kube, "tenant-a", operator)
        lease = kube.get("lease", "vauban-leader", "vauban-system")
        assert lease["spec"]["holderIdentity"] == "rbac-test"


def test_operator_runs_with_the_namespaced_rbac(
    plane: tuple[KubeCtl, Path], helm: Helm, postgres: PostgresServer, admin: tuple[str, str]
) -> None:
    """A second release watching only tenant-b. CRDs are cluster-wide: Helm leaves those
    that exist; the deletion protection policy and the tenant roles belong to one release
    (the first). The operator's own policies are per release: this one's bind it too."""
    kube, root = plane
    tenant_objects(kube, "tenant-b", postgres, admin)
    install(
        kube,
        helm,
        "tenants",
        "vauban-tenants",
        "--set=deletionProtectionPolicy.enabled=false",
        "--set=tenantRoles.enabled=false",
        "--set=watchNamespaces={tenant-b}",
    )
    config = token_kubeconfig(kube, "tenants-vauban", "vauban-tenants", root / "sa-namespaced")
    wait_for_operator_policy(KubeCtl(kube.binary, config), "vauban-tenants")
    with running_operator(
        config,
        root / "namespaced.log",
        VAUBAN_NAMESPACE="vauban-tenants",
        VAUBAN_WATCH_NAMESPACES='["tenant-b"]',
        VAUBAN_LEADER_ELECTION="true",
        VAUBAN_POD_NAME="rbac-test-namespaced",
    ) as operator:
        assert_reconciled_everything(kube, "tenant-b", operator)
