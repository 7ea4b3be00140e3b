from __future__ import annotations

from typing import Any

from vauban.api.cluster import ManagedClusterSpec
from vauban.builders import cnpg

OWNER = cnpg.Owner(name="main", namespace="team", uid="uid-1")


def spec(**overrides: Any) -> ManagedClusterSpec:
    raw = {"version": "17", "instances": 3, "storage": {"size": "20Gi"}}
    return ManagedClusterSpec.model_validate({**raw, **overrides})


def test_cluster_carries_the_spec_and_the_security_posture() -> None:
    body = cnpg.cluster(
        OWNER,
        spec(
            storage={"size": "20Gi", "storageClassName": "encrypted"},
            resources={"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "2Gi"}},
            postgresql={"parameters": {"max_connections": "200"}},
        ),
        image_repository="registry.example/postgresql",
    )
    assert body["apiVersion"] == "postgresql.cnpg.io/v1"
    assert body["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert body["metadata"]["labels"]["vauban.dev/cluster"] == "main"
    s = body["spec"]
    assert s["instances"] == 3
    assert s["imageName"] == "registry.example/postgresql:17"
    assert s["storage"] == {"size": "20Gi", "storageClass": "encrypted"}
    assert s["resources"] == {
        "requests": {"cpu": "1", "memory": "2Gi"},
        "limits": {"memory": "2Gi"},
    }
    assert s["postgresql"]["parameters"] == {"max_connections": "200"}
    assert s["postgresql"]["pg_hba"][0] == "hostnossl all all all reject"
    assert all("scram-sha-256" in line for line in s["postgresql"]["pg_hba"][1:])
    assert s["superuserSecret"] == {"name": "main-superuser"}
    assert s["affinity"]["enablePodAntiAffinity"] is True
    assert s["monitoring"]["tls"]["enabled"] is True
    assert s["enablePDB"] is True


def test_single_instance_has_no_disruption_budget() -> None:
    assert (
        cnpg.cluster(OWNER, spec(instances=1), image_repository="r")["spec"]["enablePDB"] is False
    )


def test_superuser_secret_is_random_and_owned() -> None:
    first, second = cnpg.superuser_secret(OWNER), cnpg.superuser_secret(OWNER)
    assert first["type"] == "kubernetes.io/basic-auth"
    assert first["stringData"]["username"] == "postgres"
    assert len(first["stringData"]["password"]) >= 32
    assert first["stringData"]["password"] != second["stringData"]["password"]
    assert first["metadata"]["ownerReferences"][0]["kind"] == "ManagedCluster"


def test_network_policy_admits_tenants_and_operators_only() -> None:
    policy = cnpg.network_policy(
        OWNER,
        spec(allowedNamespaces={"names": ["shop"], "selector": {"matchLabels": {"t": "1"}}}),
        operator_namespaces=("vauban-system", "cnpg-system"),
    )
    assert policy["spec"]["podSelector"] == {"matchLabels": {"cnpg.io/cluster": "main"}}
    peers, tenants, operators = policy["spec"]["ingress"]
    assert peers == {"from": [{"podSelector": {"matchLabels": {"cnpg.io/cluster": "main"}}}]}
    assert tenants["ports"] == [{"protocol": "TCP", "port": 5432}]
    names = tenants["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"]
    assert names == ["shop", "team"]
    assert tenants["from"][1]["namespaceSelector"]["matchLabels"] == {"t": "1"}
    assert operators["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == [
        "cnpg-system",
        "vauban-system",
    ]


def test_network_policy_admits_the_monitoring_peers_to_the_exporter_only() -> None:
    prometheus = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    policy = cnpg.network_policy(
        OWNER, spec(), operator_namespaces=("vauban-system",), metrics_from=[prometheus]
    )
    scrapes = policy["spec"]["ingress"][-1]
    assert scrapes == {"from": [prometheus], "ports": [{"protocol": "TCP", "port": 9187}]}
    # Nobody configured: no rule, rather than one admitting every source.
    alone = cnpg.network_policy(OWNER, spec(), operator_namespaces=("vauban-system",))
    assert len(alone["spec"]["ingress"]) == 3


def test_major_of_versions_and_images() -> None:
    assert cnpg.major("17") == "17"
    assert cnpg.major("17.6") == "17"
    assert cnpg.major("ghcr.io/cloudnative-pg/postgresql:16.4-bookworm") == "16"


STORE = {
    "bucket": "backups",
    "endpoint": "https://s3.example",
    "region": "eu-west-3",
    "prefix": "vauban/",
    "credentialsSecretRef": {"name": "bucket"},
}


def test_cluster_archives_wal_through_the_barman_cloud_plugin() -> None:
    backup = {"objectStore": STORE, "retention": {"maxAge": "36h"}, "schedule": "0 2 * * *"}
    body = cnpg.cluster(OWNER, spec(backup=backup), image_repository="repo")
    assert "backup" not in body["spec"]  # the deprecated in-tree barmanObjectStore
    assert body["spec"]["plugins"] == [
        {
            "name": "barman-cloud.cloudnative-pg.io",
            "isWALArchiver": True,
            "parameters": {"barmanObjectName": "main-archive"},
        }
    ]
    store = cnpg.archive_store(OWNER, spec(backup=backup).backup)  # type: ignore[arg-type]
    assert store["kind"] == "ObjectStore" and store["metadata"]["name"] == "main-archive"
    assert store["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    configuration = store["spec"]["configuration"]
    assert configuration["destinationPath"] == "s3://backups/vauban/team/main/wal-archive"
    assert configuration["endpointURL"] == "https://s3.example"
    assert configuration["s3Credentials"]["accessKeyId"] == {"name": "bucket", "key": "accessKeyId"}
    assert store["spec"]["retentionPolicy"] == "2d"  # 36 h, rounded up to whole days
    assert "serverName" not in configuration  # the plugin's rule: a Cluster parameter


def test_no_backup_policy_no_archiving() -> None:
    body = cnpg.cluster(OWNER, spec(), image_repository="repo")["spec"]
    assert "backup" not in body and "plugins" not in body


def test_restore_recovers_the_other_clusters_archive_to_a_time() -> None:
    backup = {"objectStore": STORE}
    restore = {"fromCluster": "orders", "targetTime": "2026-12-06T07:00:00Z"}
    wanted = spec(backup=backup, restore=restore)
    body = cnpg.cluster(OWNER, wanted, image_repository="repo")["spec"]
    assert body["bootstrap"] == {
        "recovery": {"source": "origin", "recoveryTarget": {"targetTime": "2026-12-06T07:00:00Z"}}
    }
    (origin,) = body["externalClusters"]
    assert origin["plugin"]["parameters"] == {
        "barmanObjectName": "main-recovery",
        "serverName": "orders",
    }
    # It archives to its own path, beside the one it recovers.
    assert body["plugins"][0]["parameters"] == {"barmanObjectName": "main-archive"}
    assert wanted.restore is not None and wanted.backup is not None
    source = cnpg.recovery_store(OWNER, wanted.restore, wanted.backup)
    assert source["metadata"]["name"] == "main-recovery"
    assert (
        source["spec"]["configuration"]["destinationPath"]
        == "s3://backups/vauban/team/orders/wal-archive"
    )
    assert "retentionPolicy" not in source["spec"]  # never prunes another cluster's archive
    to_the_end = cnpg.cluster(
        OWNER, spec(backup=backup, restore={"fromCluster": "orders"}), image_repository="repo"
    )["spec"]
    assert to_the_end["bootstrap"] == {"recovery": {"source": "origin"}}


def test_scheduled_base_backups_use_cloudnativepg_cron() -> None:
    scheduled = cnpg.scheduled_backup(OWNER, "0 2 * * *")
    assert scheduled["spec"]["schedule"] == "0 0 2 * * *"
    assert scheduled["spec"]["cluster"] == {"name": "main"}
    assert scheduled["spec"]["method"] == "plugin"
    assert scheduled["spec"]["pluginConfiguration"] == {"name": cnpg.BARMAN_PLUGIN}
    assert cnpg.scheduled_backup(OWNER, "@daily")["spec"]["schedule"] == "@daily"


def test_continuous_archiving_is_read_from_cloudnativepg_and_the_plugin() -> None:
    from vauban.reconcile.cluster import continuous_archiving

    assert continuous_archiving("main", {"spec": {}}, None) is None
    engine = {
        "spec": {"plugins": [{"name": cnpg.BARMAN_PLUGIN, "isWALArchiver": True}]},
        "status": {
            "conditions": [
                {
                    "type": "ContinuousArchiving",
                    "status": "False",
                    "message": "unexpected failure invoking barman-cloud-wal-archive",
                }
            ],
            # Deprecated, and not updated for plugins: not what is reported.
            "firstRecoverabilityPoint": "2020-01-01T00:00:00Z",
        },
    }
    store = {
        "status": {
            "serverRecoveryWindow": {
                "main": {
                    "firstRecoverabilityPoint": "2026-11-28T02:00:00Z",
                    "lastSuccessfulBackupTime": "2026-12-05T02:00:00Z",
                },
                "other": {"firstRecoverabilityPoint": "2026-01-01T00:00:00Z"},
            }
        }
    }
    assert continuous_archiving("main", engine, store) == {
        "archiving": False,
        "message": "unexpected failure invoking barman-cloud-wal-archive",
        "firstRecoverabilityPoint": "2026-11-28T02:00:00Z",
        "lastSuccessfulBackup": "2026-12-05T02:00:00Z",
    }
    assert continuous_archiving("main", engine, None) == {
        "archiving": False,
        "message": "unexpected failure invoking barman-cloud-wal-archive",
    }
