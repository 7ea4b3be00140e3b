"""The operator's own blast radius, and the tenants' roles (issue 14, classes 4, 5 and 7).

Against a real kube-apiserver (a control plane of this module's own, with CloudNativePG's
Cluster CRD) where the chart is installed with the real helm binary. The operator is played
by a token of the chart's ServiceAccount (a TokenRequest, as the kubelet gets for its pod):
what it may do is exactly what the chart's RBAC and admission policies let it do.

What a compromised operator tries, and must not get: a token of another ServiceAccount (a
`kubernetes.io/service-account-token` Secret the token controller would fill in), any Secret
not labelled as Vauban's, a foreign Secret relabelled as Vauban's, a PostgreSQL server run from
an image of its choosing, a Job running another program. What it must keep: every write the
builders produce (their bodies are sent as they are). And tenants bound to `edit` manage
ManagedDatabases and ManagedBackups, never their status, never a ManagedCluster.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from support.helm import CHART, Helm, find, token_kubeconfig
from support.kube import OPERATOR_NAMESPACE, KubeCtl, eventually, own_control_plane
from vauban.api.cluster import ClusterRestore, ManagedClusterSpec
from vauban.builders import backup as agent
from vauban.builders import cnpg, credentials, keys

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        bool(os.environ.get("VAUBAN_TEST_KUBECONFIG")),
        reason="needs a control plane of its own (CloudNativePG's CRDs, cluster-wide policies)",
    ),
]

CLOUDNATIVEPG_VERSION = "v1.30.1"
RELEASE = "vauban"
SERVICE_ACCOUNT = "vauban"
# The chart's full name: the release's, which already contains the chart's.
FULLNAME = RELEASE
POLICY_PREFIX = f"ValidatingAdmissionPolicy '{FULLNAME}-operator-"
MANAGED_BY = {"app.kubernetes.io/managed-by": "vauban"}
VICTIM = "victim"


class Plane:
    """The module's control plane: the admin, and the operator as the chart made it."""

    def __init__(self, admin: KubeCtl, operator: KubeCtl) -> None:
        self.admin = admin
        self.operator = operator
        env = {
            e["name"]: e.get("value")
            for e in admin.get("deployment", RELEASE, OPERATOR_NAMESPACE)["spec"]["template"][
                "spec"
            ]["containers"][0]["env"]
        }
        # What the chart tells the operator to run: the policy must admit exactly these.
        self.agent_image = str(env["VAUBAN_AGENT_IMAGE"])
        self.postgres_repository = str(env["VAUBAN_POSTGRES_IMAGE_REPOSITORY"])


@pytest.fixture(scope="module")
def helm() -> Helm:
    from vauban.devcluster.build import ensure_tool

    return Helm(str(ensure_tool("helm")))


@pytest.fixture(scope="module")
def plane(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    from vauban.devcluster.build import module_source
    from vauban.devcluster.install import barman_cloud_crd

    root = tmp_path_factory.mktemp("operator-rbac")
    with own_control_plane(root) as admin:
        bases = module_source("github.com/cloudnative-pg/cloudnative-pg", CLOUDNATIVEPG_VERSION)
        crd = bases / "config" / "crd" / "bases" / "postgresql.cnpg.io_clusters.yaml"
        admin.run("apply", "--server-side", "-f", str(crd))
        admin.run("apply", "--server-side", "-f", str(barman_cloud_crd()))
        # Right after the apply the CRD may have no conditions yet, which `kubectl wait` takes
        # for an error rather than for "not yet".
        eventually(
            lambda: (
                admin.run(
                    "wait",
                    "--for=condition=Established",
                    "crd/clusters.postgresql.cnpg.io",
                    "crd/objectstores.barmancloud.cnpg.io",
                    check=False,
                ).returncode
                == 0
                or None
            ),
            timeout=60,
            what="CloudNativePG's Cluster CRD established",
        )
        # As a platform team installs it: cluster-wide, the widest RBAC the chart grants.
        helm.run(
            "install",
            RELEASE,
            str(CHART),
            f"--namespace={OPERATOR_NAMESPACE}",
            # The plane has the deletion protection policy already (crds/, as `make run`).
            "--set=deletionProtectionPolicy.enabled=false",
            kubeconfig=admin.kubeconfig,
        )
        # A ServiceAccount worth stealing: cluster-admin, in a namespace of its own.
        admin.run("create", "namespace", VICTIM)
        admin.run("create", "serviceaccount", "root", "-n", VICTIM)
        admin.run(
            "create",
            "clusterrolebinding",
            "victim-root",
            "--clusterrole=cluster-admin",
            f"--serviceaccount={VICTIM}:root",
        )
        config = token_kubeconfig(admin, SERVICE_ACCOUNT, OPERATOR_NAMESPACE, root / "operator")
        plane = Plane(admin, KubeCtl(admin.binary, config))
        wait_for_policies(plane)
        yield plane


def wait_for_policies(plane: Plane) -> None:
    """The apiserver enforces a new policy once its informer has it, a moment after the
    install: until then the operator's writes would pass (seen: a token minted). Each policy
    is probed with a server-side dry run (admission runs, nothing is stored) of a write it
    refuses."""
    owner = cnpg.Owner(name="probe", namespace=OPERATOR_NAMESPACE, uid="probe")
    evil = "registry.attacker.example/x:1"
    network_policy = cnpg.network_policy(
        owner, cluster_spec(), operator_namespaces=(OPERATOR_NAMESPACE,)
    )
    network_policy["spec"]["podSelector"] = {"matchLabels": {"app": "probe"}}
    job = agent.job(
        agent_run(plane, OPERATOR_NAMESPACE, "backup"), name="probe", namespace=OPERATOR_NAMESPACE
    )
    job["spec"]["template"]["spec"]["containers"][0]["image"] = evil
    cron = agent.cronjob(
        agent_run(plane, OPERATOR_NAMESPACE, "backup"),
        name="probe",
        namespace=OPERATOR_NAMESPACE,
        schedule="0 2 * * *",
    )
    cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"] = evil
    probes = {
        "secrets": opaque("probe", OPERATOR_NAMESPACE),
        "networkpolicies": unowned(network_policy),
        "cnpg-clusters": unowned(cnpg.cluster(owner, cluster_spec(), image_repository=evil)),
        "agent-jobs": job,
        "agent-cronjobs": cron,
    }
    for policy, body in probes.items():

        def enforced(policy: str = policy, body: dict[str, Any] = body) -> bool | None:
            result = plane.operator.run(
                "create", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(body), check=False
            )
            return f"{POLICY_PREFIX}{policy}'" in result.stderr or None

        eventually(enforced, timeout=30, what=f"the policy {policy} enforced")


@pytest.fixture
def tenant(plane: Plane, request: pytest.FixtureRequest) -> Iterator[str]:
    name = plane.admin.unique_namespace(request.node.name)
    yield name
    plane.admin.run("delete", "namespace", name, "--wait=false", check=False)


def create(kube: KubeCtl, body: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return kube.run("create", "-f", "-", stdin=yaml.safe_dump(body), check=False)


def server_side_apply(kube: KubeCtl, body: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """As the operator writes: server-side apply with its field manager, forced."""
    return kube.run(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=vauban",
        "-f",
        "-",
        stdin=yaml.safe_dump(body),
        check=False,
    )


def refused_by_policy(result: subprocess.CompletedProcess[str], policy: str) -> None:
    """Refused, and by the chart's admission policy `policy` (not by chance)."""
    assert result.returncode != 0, f"accepted:\n{result.stdout}"
    assert f"{POLICY_PREFIX}{policy}'" in result.stderr, result.stderr


def refused_by_rbac(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode != 0, f"accepted:\n{result.stdout}"
    user = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{SERVICE_ACCOUNT}"
    assert f'is forbidden: User "{user}" cannot' in result.stderr, result.stderr


def refused(result: subprocess.CompletedProcess[str]) -> None:
    """Refused by RBAC or by the chart's admission policy: either holds the line."""
    assert result.returncode != 0, f"accepted:\n{result.stdout}"
    assert POLICY_PREFIX in result.stderr or "is forbidden: User" in result.stderr, result.stderr


def allowed(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr


def exists(kube: KubeCtl, kind: str, name: str, namespace: str) -> bool:
    result = kube.run("get", kind, name, "-n", namespace, "-o", "name", check=False)
    if result.returncode == 0:
        return True
    assert "NotFound" in result.stderr, result.stderr
    return False


def token_secret(
    name: str, namespace: str, account: str, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/service-account-token",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels or {},
            "annotations": {"kubernetes.io/service-account.name": account},
        },
    }


def opaque(name: str, namespace: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "stringData": {"password": "hunter2"},
    }


def clone(body: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(body)


def unowned(body: dict[str, Any]) -> dict[str, Any]:
    """A builder's body without its owner reference: the owners (Vauban's objects) do not
    exist here, and the garbage collector would delete what they own while the test runs."""
    body["metadata"].pop("ownerReferences", None)
    return body


# -- (a) the operator cannot obtain another identity's token --------------------------------


@pytest.mark.parametrize(
    ("namespace", "account", "labels"),
    [
        # A cluster-admin ServiceAccount of another namespace, labelled as Vauban's (only the
        # type stops it) and not (the label stops it too).
        (VICTIM, "root", MANAGED_BY),
        (VICTIM, "root", {}),
        # kube-system's own, and the operator's namespace (where its RBAC is widest).
        ("kube-system", "default", MANAGED_BY),
        (OPERATOR_NAMESPACE, "default", MANAGED_BY),
        (OPERATOR_NAMESPACE, SERVICE_ACCOUNT, MANAGED_BY),
    ],
    ids=["victim-labelled", "victim", "kube-system", "own-namespace", "itself"],
)
@pytest.mark.parametrize("write", ["create", "server-side-apply"])
def test_operator_cannot_mint_a_service_account_token(
    plane: Plane, namespace: str, account: str, labels: dict[str, str], write: str
) -> None:
    name = f"stolen-{account}-{write}"[:63]
    body = token_secret(name, namespace, account, labels)
    result = (
        create(plane.operator, body)
        if write == "create"
        else server_side_apply(plane.operator, body)
    )
    refused(result)
    # The cluster-wide ClusterRole lets the operator create Secrets everywhere: here it is
    # the policy that refuses (a namespaced install's RBAC would, outside its namespaces).
    refused_by_policy(result, "secrets")
    # Nothing was stored, so the token controller had nothing to fill in: no Secret of the
    # namespace holds a token of that account.
    assert not exists(plane.admin, "secret", name, namespace)
    tokens = [
        s["metadata"]["name"]
        for s in plane.admin.get_list("secrets", namespace)
        if s.get("type") == "kubernetes.io/service-account-token"
        and s["metadata"].get("annotations", {}).get("kubernetes.io/service-account.name")
        == account
    ]
    assert not tokens


def test_a_minted_token_would_be_seen(plane: Plane) -> None:
    """The control of the test above: the same Secret made by an administrator is filled in
    with a token by the controller manager within seconds, so "no Secret, no token" is what
    the refusal achieved, not a controller that never runs here."""
    allowed(create(plane.admin, token_secret("control", VICTIM, "root")))
    try:
        data = eventually(
            lambda: plane.admin.get("secret", "control", VICTIM).get("data", {}).get("token"),
            timeout=30,
            what="the token controller fills in the control Secret",
        )
        assert base64.b64decode(data)
    finally:
        plane.admin.run("delete", "secret", "control", "-n", VICTIM)


@pytest.mark.parametrize(
    ("type_", "namespace"),
    [
        ("bootstrap.kubernetes.io/token", "kube-system"),
        ("kubernetes.io/dockerconfigjson", VICTIM),
        ("kubernetes.io/tls", VICTIM),
    ],
)
def test_operator_writes_no_other_credential_type(plane: Plane, type_: str, namespace: str) -> None:
    """A bootstrap token joins nodes (and authenticates as system:bootstrappers); registry
    and TLS credentials are identities too. The operator writes none of them."""
    body = opaque("other-type", namespace, MANAGED_BY)
    body["type"] = type_
    body["stringData"] = {
        "bootstrap.kubernetes.io/token": {
            "token-id": "abcdef",
            "token-secret": "0123456789abcdef",
            "usage-bootstrap-authentication": "true",
        },
        "kubernetes.io/dockerconfigjson": {".dockerconfigjson": '{"auths": {}}'},
        "kubernetes.io/tls": {"tls.crt": "", "tls.key": ""},
    }[type_]
    if type_.startswith("bootstrap"):
        body["metadata"]["name"] = "bootstrap-token-abcdef"
    result = create(plane.operator, body)
    refused_by_policy(result, "secrets")
    assert not exists(plane.admin, "secret", body["metadata"]["name"], namespace)


def test_operator_cannot_ask_for_a_token_directly(plane: Plane) -> None:
    """The other ways to a token, refused by RBAC alone: a TokenRequest, a pod mounting the
    ServiceAccount, a binding to a stronger role."""
    refused_by_rbac(plane.operator.run("create", "token", "root", "-n", VICTIM, check=False))
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "thief", "namespace": VICTIM},
        "spec": {
            "serviceAccountName": "root",
            "containers": [{"name": "c", "image": "registry.example/anything"}],
        },
    }
    refused_by_rbac(create(plane.operator, pod))
    refused_by_rbac(
        plane.operator.run(
            "create",
            "clusterrolebinding",
            "escalate",
            "--clusterrole=cluster-admin",
            f"--serviceaccount={OPERATOR_NAMESPACE}:{SERVICE_ACCOUNT}",
            check=False,
        )
    )
    # Nor can it lift the policies that bound it.
    refused_by_rbac(
        plane.operator.run(
            "delete",
            "validatingadmissionpolicybinding",
            f"{FULLNAME}-operator-secrets",
            check=False,
        )
    )


# -- (a) Secrets: only Vauban's --------------------------------------------------------------


def test_unlabelled_secret_is_refused(plane: Plane, tenant: str) -> None:
    for write in (create, server_side_apply):
        refused_by_policy(write(plane.operator, opaque("foreign", tenant)), "secrets")
    assert not exists(plane.admin, "secret", "foreign", tenant)


def test_foreign_secret_cannot_be_relabelled_changed_or_deleted(plane: Plane, tenant: str) -> None:
    """A Secret someone else made (here a tenant's, and Helm's own release record) cannot
    be made Vauban's by adding the label, nor changed or deleted: the policy reads the
    Secret as stored (oldObject), not only as sent."""
    allowed(create(plane.admin, opaque("bank-db", tenant)))
    before = plane.admin.get("secret", "bank-db", tenant)
    label = "app.kubernetes.io/managed-by=vauban"
    attempts = [
        plane.operator.run("label", "secret", "bank-db", "-n", tenant, label, check=False),
        plane.operator.run(
            "patch",
            "secret",
            "bank-db",
            "-n",
            tenant,
            "--type=merge",
            "-p",
            json.dumps({"data": {"password": base64.b64encode(b"mine").decode()}}),
            check=False,
        ),
        server_side_apply(plane.operator, opaque("bank-db", tenant, MANAGED_BY)),
    ]
    for result in attempts:
        refused_by_policy(result, "secrets")
    after = plane.admin.get("secret", "bank-db", tenant)
    assert after["metadata"].get("labels") == before["metadata"].get("labels")
    assert after["data"] == before["data"]
    # Helm's record of the release, in the operator's own namespace, where RBAC lets the
    # operator delete Secrets: the policy does not.
    records = plane.admin.get_list("secrets", OPERATOR_NAMESPACE, "-l=owner=helm")
    assert records
    record = records[0]["metadata"]["name"]
    result = plane.operator.run("delete", "secret", record, "-n", OPERATOR_NAMESPACE, check=False)
    refused_by_policy(result, "secrets")
    assert exists(plane.admin, "secret", record, OPERATOR_NAMESPACE)


def test_operator_keeps_its_own_secret_writes(plane: Plane, tenant: str) -> None:
    """Every kind of Secret the operator writes, built by its builders, written as it writes
    them: still allowed under the policy."""
    owner = cnpg.Owner(name="main", namespace=tenant, uid="00000000-0000-0000-0000-000000000001")
    # A managed cluster's superuser Secret, created once.
    allowed(create(plane.operator, unowned(cnpg.superuser_secret(owner))))
    # A tenant's credentials, server-side applied, then applied again (an update).
    endpoint = credentials.Endpoint(host="main-rw", port=5432, dbname="orders", sslmode="require")
    for password in ("first", "rotated"):
        body = credentials.credentials_secret(
            name="orders",
            namespace=tenant,
            owner_uid="00000000-0000-0000-0000-000000000002",
            username="orders_owner",
            password=password,
            endpoint=endpoint,
        )
        allowed(server_side_apply(plane.operator, unowned(body)))
    # Keys and the agent's Secret, in the operator's namespace; changed, annotated, deleted.
    kek = keys.kek_secret(
        keys.KekOwner(namespace=tenant, name="main", uid=owner.uid),
        namespace=OPERATOR_NAMESPACE,
        provider="kubernetes-secret",
        versions={1: "a2V5"},
        current=1,
        created={1: "2026-01-01T00:00:00Z"},
    )
    allowed(create(plane.operator, kek))
    name = kek["metadata"]["name"]
    allowed(
        plane.operator.run(
            "patch",
            "secret",
            name,
            "-n",
            OPERATOR_NAMESPACE,
            "--type=merge",
            "-p",
            json.dumps({"metadata": {"annotations": {"vauban.dev/created-v2": "now"}}}),
            check=False,
        )
    )
    database = agent.Database(namespace=tenant, name="orders", uid=owner.uid)
    body = agent.agent_secret(
        name=agent.agent_secret_name(database, "backup"),
        namespace=OPERATOR_NAMESPACE,
        database=database,
        operation="backup",
        login=agent.AgentLogin("main-rw", 5432, "orders_owner", "pw", "orders", "require"),
        store=agent.Store("backups", "eu-west-3", None, "", "id", "secret"),
        key=agent.DataKey("dek-1", b"\0" * 32),
    )
    allowed(server_side_apply(plane.operator, body))
    for secret in (name, body["metadata"]["name"]):
        allowed(
            plane.operator.run("delete", "secret", secret, "-n", OPERATOR_NAMESPACE, check=False)
        )


# -- (a) NetworkPolicies, CloudNativePG Clusters, the agent's Jobs ---------------------------


def cluster_spec() -> ManagedClusterSpec:
    return ManagedClusterSpec.model_validate(
        {
            "version": "17",
            "instances": 3,
            "storage": {"size": "1Gi"},
            "backup": {
                "objectStore": {
                    "bucket": "backups",
                    "region": "eu-west-3",
                    "endpoint": "https://s3.example",
                    "credentialsSecretRef": {"name": "bucket"},
                },
                "schedule": "0 2 * * *",
            },
        }
    )


def test_network_policies_only_for_postgresql_ingress(plane: Plane, tenant: str) -> None:
    owner = cnpg.Owner(name="main", namespace=tenant, uid="00000000-0000-0000-0000-000000000003")
    body = unowned(
        cnpg.network_policy(owner, cluster_spec(), operator_namespaces=(OPERATOR_NAMESPACE,))
    )
    allowed(server_side_apply(plane.operator, body))
    # Opened to the world: refused.
    opened = clone(body)
    opened["spec"]["ingress"].append({"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]})
    refused_by_policy(server_side_apply(plane.operator, opened), "networkpolicies")
    # Another workload's traffic, and a policy someone else wrote: refused.
    other = clone(body)
    other["metadata"]["name"] = "bank-app"
    other["spec"]["podSelector"] = {"matchLabels": {"app": "bank"}}
    refused_by_policy(server_side_apply(plane.operator, other), "networkpolicies")
    foreign: dict[str, Any] = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "tenant-own", "namespace": tenant},
        "spec": {"podSelector": {"matchLabels": {"cnpg.io/cluster": "main"}}},
    }
    allowed(create(plane.admin, foreign))
    foreign["metadata"]["labels"] = MANAGED_BY
    foreign["spec"]["policyTypes"] = ["Ingress"]
    refused_by_policy(server_side_apply(plane.operator, foreign), "networkpolicies")


def test_cloudnativepg_cluster_runs_only_allowed_images(plane: Plane, tenant: str) -> None:
    owner = cnpg.Owner(name="main", namespace=tenant, uid="00000000-0000-0000-0000-000000000004")
    good = unowned(cnpg.cluster(owner, cluster_spec(), image_repository=plane.postgres_repository))
    allowed(server_side_apply(plane.operator, good))

    def variant(name: str, change: dict[str, Any]) -> dict[str, Any]:
        body = clone(good)
        body["metadata"]["name"] = name
        body["spec"].update(change)
        # None removes a field (an image catalog instead of an image name).
        body["spec"] = {k: v for k, v in body["spec"].items() if v is not None}
        return body

    variants: list[tuple[str, dict[str, Any]]] = [
        # An image of the attacker's choosing, or the right repository without a version.
        ("evil", {"imageName": "registry.attacker.example/postgresql:17"}),
        ("lookalike", {"imageName": f"{plane.postgres_repository}-evil:17"}),
        ("latest", {"imageName": f"{plane.postgres_repository}:latest"}),
        (
            "catalog",
            {
                "imageCatalogRef": {
                    "apiGroup": "postgresql.cnpg.io",
                    "kind": "ImageCatalog",
                    "name": "evil",
                    "major": 17,
                },
                "imageName": None,
            },
        ),
        # Another identity for the pods, or a projected token.
        (
            "identity",
            {
                "serviceAccountTemplate": {
                    "metadata": {
                        "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/admin"}
                    }
                }
            },
        ),
        (
            "projected",
            {
                "projectedVolumeTemplate": {
                    "sources": [{"serviceAccountToken": {"audience": "vault", "path": "token"}}]
                }
            },
        ),
        ("env", {"env": [{"name": "LD_PRELOAD", "value": "/tmp/x.so"}]}),
        # Code run at init, or a copy of another server.
        ("initsql", {"bootstrap": {"initdb": {"postInitSQL": ["ALTER ROLE app SUPERUSER"]}}}),
        (
            "copy",
            {
                "externalClusters": [
                    {"name": "bank", "connectionParameters": {"host": "bank-rw.bank"}}
                ],
                "bootstrap": {"pg_basebackup": {"source": "bank"}},
            },
        ),
    ]
    origin = {"name": "origin", "plugin": {"name": cnpg.BARMAN_PLUGIN, "parameters": {}}}
    variants += [
        # A recovery by streaming from another server, or from another cluster's ObjectStore.
        (
            "stream",
            {
                "externalClusters": [
                    {**origin, "connectionParameters": {"host": "bank-rw.bank"}},
                ],
                "bootstrap": {"recovery": {"source": "origin"}},
            },
        ),
        (
            "borrowed",
            {
                "externalClusters": [
                    {
                        **origin,
                        "plugin": {
                            "name": cnpg.BARMAN_PLUGIN,
                            "parameters": {"barmanObjectName": "bank-archive"},
                        },
                    }
                ],
                "bootstrap": {"recovery": {"source": "origin"}},
            },
        ),
        ("backup", {"bootstrap": {"recovery": {"backup": {"name": "bank-base"}}}}),
        # Another role than CloudNativePG's application one: CloudNativePG would reset its
        # password after the recovery (to the cluster's app Secret's).
        (
            "owner",
            {"bootstrap": {"recovery": {"source": "origin", "owner": "vauban_admin"}}},
        ),
        # The deprecated in-tree archiving (credentials the ObjectStore policy would not see).
        (
            "intree",
            {
                "backup": {
                    "barmanObjectStore": {
                        "destinationPath": "s3://x",
                        "s3Credentials": {"inheritFromIAMRole": True},
                    }
                }
            },
        ),
    ]
    for name, change in variants:
        refused_by_policy(server_side_apply(plane.operator, variant(name, change)), "cnpg-clusters")
        assert not exists(plane.admin, "clusters.postgresql.cnpg.io", name, tenant)
    # What spec.restore renders passes: the cluster's own recovery ObjectStore, by the plugin.
    restoring = cluster_spec().model_copy(
        update={"restore": ClusterRestore(from_cluster="orders", target_time=None)}
    )
    copy_owner = cnpg.Owner(name="copy", namespace=tenant, uid=owner.uid)
    recovery = unowned(
        cnpg.cluster(copy_owner, restoring, image_repository=plane.postgres_repository)
    )
    # As CloudNativePG's defaulting webhook, which runs before the policy, leaves it.
    recovery["spec"]["bootstrap"]["recovery"] |= {"database": "app", "owner": "app"}
    allowed(server_side_apply(plane.operator, recovery))
    # The stored one cannot be switched to another image either (an update).
    switched = clone(good)
    switched["spec"]["imageName"] = "registry.attacker.example/postgresql:17"
    refused_by_policy(server_side_apply(plane.operator, switched), "cnpg-clusters")
    stored = plane.admin.get("clusters.postgresql.cnpg.io", "main", tenant)
    assert stored["spec"]["imageName"] == f"{plane.postgres_repository}:17"


def test_object_stores_use_the_buckets_credentials_only(plane: Plane, tenant: str) -> None:
    owner = cnpg.Owner(name="main", namespace=tenant, uid="00000000-0000-0000-0000-000000000006")
    spec = cluster_spec()
    assert spec.backup is not None
    good = unowned(cnpg.archive_store(owner, spec.backup))
    allowed(server_side_apply(plane.operator, good))
    identity = clone(good)
    identity["metadata"]["name"] = "identity"
    identity["spec"]["configuration"]["s3Credentials"] = {"inheritFromIAMRole": True}
    sidecar = clone(good)
    sidecar["metadata"]["name"] = "sidecar"
    sidecar["spec"]["instanceSidecarConfiguration"] = {
        "env": [{"name": "AWS_ROLE_ARN", "value": "arn:aws:iam::1:role/admin"}]
    }
    foreign = clone(good)
    foreign["metadata"]["name"] = "foreign"
    foreign["metadata"]["labels"] = {}
    for body in (identity, sidecar, foreign):
        refused_by_policy(server_side_apply(plane.operator, body), "barman-objectstores")
        assert not exists(
            plane.admin, "objectstores.barmancloud.cnpg.io", body["metadata"]["name"], tenant
        )


def agent_run(plane: Plane, tenant: str, operation: agent.Operation) -> agent.AgentRun:
    database = agent.Database(namespace=tenant, name="orders", uid="0000-5")
    return agent.AgentRun(
        operation=operation,
        database=database,
        secret=agent.agent_secret_name(database, "backup"),
        image=plane.agent_image,
        location="vauban/orders/0000-5/manual",
    )


def test_agent_jobs_run_only_the_agent(plane: Plane, tenant: str) -> None:
    run = agent_run(plane, tenant, "backup")
    job = agent.job(run, name="backup-ok", namespace=OPERATOR_NAMESPACE, backup="orders-now")
    allowed(create(plane.operator, job))
    cron = agent.cronjob(
        run, name="backup-cron", namespace=OPERATOR_NAMESPACE, schedule="0 2 * * *"
    )
    allowed(server_side_apply(plane.operator, cron))

    def variant(name: str, change: Any) -> dict[str, Any]:
        body = clone(job)
        body["metadata"]["name"] = name
        change(body["spec"]["template"]["spec"])
        return body

    def image(pod: dict[str, Any]) -> None:
        pod["containers"][0]["image"] = "registry.attacker.example/shell:1"

    def command(pod: dict[str, Any]) -> None:
        pod["containers"][0]["command"] = ["sh", "-c", "cat /var/run/secrets/*"]

    def privileged(pod: dict[str, Any]) -> None:
        pod["containers"][0]["securityContext"]["privileged"] = True
        pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True

    def host_path(pod: dict[str, Any]) -> None:
        pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}})

    def token(pod: dict[str, Any]) -> None:
        pod["automountServiceAccountToken"] = True
        pod["serviceAccountName"] = SERVICE_ACCOUNT

    for name, change in [
        ("image", image),
        ("command", command),
        ("privileged", privileged),
        ("host-path", host_path),
        ("token", token),
    ]:
        refused_by_policy(create(plane.operator, variant(name, change)), "agent-jobs")
    evil_cron = clone(cron)
    image(evil_cron["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    refused_by_policy(server_side_apply(plane.operator, evil_cron), "agent-cronjobs")


# -- (b) tenants: edit and view --------------------------------------------------------------


def as_user(
    kube: KubeCtl, user: str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return kube.run(*args, f"--as={user}", stdin=stdin, check=False)


def test_tenant_roles_join_edit_and_view(plane: Plane, tenant: str) -> None:
    admin = plane.admin
    admin.run("create", "rolebinding", "alice", "--clusterrole=edit", "--user=alice", "-n", tenant)
    admin.run("create", "rolebinding", "bob", "--clusterrole=view", "--user=bob", "-n", tenant)

    def can(user: str, verb: str, resource: str, subresource: str = "") -> bool:
        extra = [f"--subresource={subresource}"] if subresource else []
        result = as_user(admin, user, "auth", "can-i", verb, resource, *extra, "-n", tenant)
        return bool(result.stdout.strip() == "yes")

    # The aggregation controller copies the tenant roles into edit and view.
    eventually(
        lambda: can("alice", "create", "manageddatabases.vauban.dev") or None,
        timeout=30,
        what="vauban-tenant-edit aggregated into edit",
    )
    eventually(
        lambda: can("bob", "list", "managedbackups.vauban.dev") or None,
        timeout=30,
        what="vauban-tenant-view aggregated into view",
    )
    cluster: dict[str, Any] = {
        "apiVersion": "vauban.dev/v1alpha1",
        "kind": "ManagedCluster",
        "metadata": {"name": "main", "namespace": tenant},
        "spec": {"version": "17", "instances": 1, "storage": {"size": "1Gi"}},
    }
    database: dict[str, Any] = {
        "apiVersion": "vauban.dev/v1alpha1",
        "kind": "ManagedDatabase",
        "metadata": {"name": "orders", "namespace": tenant},
        "spec": {"clusterRef": {"name": "main"}, "databaseName": "orders", "owner": "orders_owner"},
    }
    backup: dict[str, Any] = {
        "apiVersion": "vauban.dev/v1alpha1",
        "kind": "ManagedBackup",
        "metadata": {"name": "orders-now", "namespace": tenant},
        "spec": {"databaseRef": {"name": "orders"}},
    }
    # ManagedClusters are the platform's: alice reads them, never writes them.
    forbidden = as_user(admin, "alice", "create", "-f", "-", stdin=yaml.safe_dump(cluster))
    assert "forbidden" in forbidden.stderr, forbidden.stderr
    allowed(admin.run("create", "-f", "-", stdin=yaml.safe_dump(cluster), check=False))
    for args in (
        ("patch", "managedcluster", "main", "--type=merge", "-p", '{"spec":{"instances":3}}'),
        ("delete", "managedcluster", "main"),
    ):
        result = as_user(admin, "alice", *args, "-n", tenant)
        assert "forbidden" in result.stderr, result.stderr
    allowed(as_user(admin, "alice", "get", "managedcluster", "main", "-n", tenant))
    # Databases and backups are hers.
    for body in (database, backup):
        allowed(as_user(admin, "alice", "create", "-f", "-", stdin=yaml.safe_dump(body)))
    # Their status is the operator's: no patch, update or apply of the status subresource.
    for kind, name in (
        ("manageddatabase", "orders"),
        ("managedbackup", "orders-now"),
        ("managedcluster", "main"),
    ):
        forged = json.dumps({"status": {"phase": "Ready"}})
        result = as_user(
            admin,
            "alice",
            "patch",
            kind,
            name,
            "-n",
            tenant,
            "--subresource=status",
            "--type=merge",
            "-p",
            forged,
        )
        assert "forbidden" in result.stderr and "status" in result.stderr, result.stderr
        assert not can("alice", "update", f"{kind}s.vauban.dev", "status")
    assert admin.get("manageddatabase", "orders", tenant).get("status", {}).get("phase") != "Ready"
    # Nor the finalizers subresource (only Kubernetes' owner-deletion check uses it).
    assert not can("alice", "update", "manageddatabases.vauban.dev", "finalizers")
    # bob reads, writes nothing.
    allowed(
        as_user(
            admin, "bob", "get", "manageddatabases,managedbackups,managedclusters", "-n", tenant
        )
    )
    backup["metadata"]["name"] = "bobs"
    result = as_user(admin, "bob", "create", "-f", "-", stdin=yaml.safe_dump(backup))
    assert "forbidden" in result.stderr, result.stderr


# -- what the chart renders ------------------------------------------------------------------


def test_tenant_roles_exclude_every_subresource(helm: Helm) -> None:
    objects = helm.render("vauban", OPERATOR_NAMESPACE)
    view = find(objects, "ClusterRole", "vauban-tenant-view")
    edit = find(objects, "ClusterRole", "vauban-tenant-edit")
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    for role in (view, edit):
        for rule in role["rules"]:
            assert rule["apiGroups"] == ["vauban.dev"]
            assert not [r for r in rule["resources"] if "/" in r or r == "*"], rule
    written = {r for rule in edit["rules"] for r in rule["resources"]}
    assert written == {"manageddatabases", "managedbackups"}
    # servicebinding.io's reconciler reads where the Secret is, never a Secret through us.
    binder = find(objects, "ClusterRole", "vauban-servicebinding")
    assert binder["metadata"]["labels"]["servicebinding.io/controller"] == "true"
    assert binder["rules"] == [
        {
            "apiGroups": ["vauban.dev"],
            "resources": ["manageddatabases"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    # A second release (namespaced installs) leaves them to the first.
    objects = helm.render("other", "other", {"tenantRoles": {"enabled": False}})
    assert not [
        o
        for o in objects
        if o["metadata"]["name"].startswith(("vauban-tenant-", "vauban-servicebinding"))
    ]


def test_metrics_are_reachable_from_monitoring_only(helm: Helm) -> None:
    """/metrics names every tenant's databases: the NetworkPolicy admits the monitoring
    pods only, and the schema refuses a selector that would admit every namespace."""
    objects = helm.render("vauban", OPERATOR_NAMESPACE)
    policy = find(objects, "NetworkPolicy")
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert ingress["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }
    ]
    # Helm merges values into the defaults: emptying the selector takes a null.
    values: dict[str, Any] = {
        "networkPolicy": {"metrics": {"namespaceSelector": {"matchLabels": None}}}
    }
    result = helm.template("vauban", OPERATOR_NAMESPACE, values, check=False)
    assert result.returncode != 0 and "/networkPolicy/metrics/namespaceSelector" in result.stderr


def test_policies_bind_the_operator_alone(helm: Helm) -> None:
    """Each policy matches the chart's ServiceAccount by name: people and other controllers
    are not bound by it, and each release's operator by its own."""
    objects = helm.render("vauban", OPERATOR_NAMESPACE)
    policies = [o for o in objects if o["kind"] == "ValidatingAdmissionPolicy"]
    bindings = {
        o["spec"]["policyName"] for o in objects if o["kind"] == "ValidatingAdmissionPolicyBinding"
    }
    operator = [p for p in policies if "-operator-" in p["metadata"]["name"]]
    assert {p["metadata"]["name"].split("-operator-")[1] for p in operator} == {
        "secrets",
        "networkpolicies",
        "cnpg-clusters",
        "cnpg-scheduledbackups",
        "barman-objectstores",
        "volumeclaims",
        "agent-jobs",
        "agent-cronjobs",
    }
    user = f"system:serviceaccount:{OPERATOR_NAMESPACE}:vauban"
    for policy in operator:
        assert policy["metadata"]["name"] in bindings
        assert policy["spec"]["failurePolicy"] == "Fail"
        (condition,) = policy["spec"]["matchConditions"]
        assert condition["expression"] == f"request.userInfo.username == '{user}'"
