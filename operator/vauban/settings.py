"""The operator's settings: one typed, frozen object built once at start-up from `VAUBAN_*`
environment variables. Nothing reads the environment anywhere else."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

FIELD_MANAGER = "vauban"
FINALIZER = "vauban.dev/finalizer"
RECOVERY_PUBLIC_KEY = re.compile(r"vauban-recovery-public:[A-Za-z0-9+/]{43}=")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VAUBAN_", frozen=True, extra="ignore")

    kubeconfig: Path | None = None
    """Kubeconfig to use; in-cluster credentials or ~/.kube/config when unset."""

    namespace: str = "vauban-system"
    """The operator's own namespace (its key-encryption keys and leases live there)."""

    watch_namespaces: list[str] = Field(default_factory=list)
    """Namespaces to watch; every namespace when empty (cluster-wide install)."""

    recheck_interval_seconds: float = Field(default=30.0, gt=0)
    """How often an object waiting on a dependency (a cluster not yet ready, a missing Secret)
    is looked at again. No API call is made unless something changed."""

    postgres_image_repository: str = "ghcr.io/cloudnative-pg/postgresql"
    """Repository of the PostgreSQL images managed clusters run, tagged by version. A
    sovereign cloud points this at its own registry mirror."""

    agent_image: str = "ghcr.io/vauban-dev/vauban-agent:0.1.0"
    """Image of the backup agent (`vauban agent`, with PostgreSQL's client tools) that backup,
    restore and restore-test Jobs run, in the operator's namespace."""

    kmip_host: str | None = None
    """Host of the platform's KMIP key manager (an HSM); the `kmip` key provider is available
    only when it is set."""

    kmip_port: int = Field(default=5696, ge=1, le=65535)
    kmip_cert_file: Path | None = None
    """Client certificate the operator presents to the key manager (mutual TLS)."""

    kmip_key_file: Path | None = None
    kmip_ca_file: Path | None = None
    """CA that signed the key manager's certificate."""

    kmip_server_name: str | None = None
    """Name the key manager's certificate must carry; `kmip_host` when unset."""

    pkcs11_module: Path | None = None
    """The PKCS#11 module (the HSM vendor's shared library) of the platform's HSM; the `pkcs11`
    key provider is available only when it is set, with `pkcs11_token_label` and
    `pkcs11_pin_file`."""

    pkcs11_token_label: str | None = None
    """Label of the token (HSM partition, slot) holding the operator's key-encryption keys."""

    pkcs11_pin_file: Path | None = None
    """File holding the token user's PIN (a mounted Secret; one trailing newline is ignored).
    Read at each login, never logged."""

    recovery_public_key: str | None = None
    """The platform's recovery public key (`vauban-recovery-public:...`, made by `vauban
    recovery-key generate`; the private half stays offline with the platform's security
    officers). Each key-encryption key of the `kubernetes-secret` provider is sealed to it
    and stored in the cluster's bucket, so backups survive the loss of this Kubernetes
    cluster. Unset: they do not, and the clusters' status says so."""

    recovery_key_secret: str = "vauban-recovery-key"  # noqa: S105 - a name, not a key
    """Secret of `namespace` (key `privateKey`) the security officers create only during a
    recovery: with it, a ManagedCluster's backup.import opens KEKs of the
    `kubernetes-secret` provider escrowed by the lost cluster. Delete it once imported."""

    allowed_backup_regions: list[str] = Field(default_factory=list)
    """Regions the hds and secnumcloud profiles allow for backup buckets (the platform's
    sovereign regions); any region when empty."""

    cloudnativepg_namespace: str = "cnpg-system"
    """Namespace of the CloudNativePG operator, admitted by each cluster's NetworkPolicy."""

    instance_metrics_from: list[dict[str, Any]] = Field(default_factory=list)
    """NetworkPolicyPeers (JSON) admitted to the managed instances' exporter (:9187) by each
    cluster's NetworkPolicy: the platform's Prometheus. Nobody when empty."""

    platform_assigns_user_ids: bool = False
    """Agent Jobs leave runAsUser/runAsGroup to the platform (OpenShift's restricted-v2 SCC
    assigns them from the namespace's range) instead of the images' 65532."""

    cluster_domain: str = Field(
        default="cluster.local", pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
    )
    """The Kubernetes cluster's DNS domain, which completes a managed cluster's Service name
    in the credentials Secret's `fqdn-uri` and `fqdn-jdbc-uri`."""

    probe_interval_seconds: float = Field(default=300.0, gt=0)
    """How often each ready cluster is probed: its server's health, and with one query for
    all its databases, their sizes and sessions and whether their roles are still there."""

    stale_upload_seconds: float = Field(default=86400.0, gt=0)
    """Multipart uploads under a cluster's backup prefix started longer ago than this are
    aborted (swept once per probe interval): a backup agent aborts its own on failure, but
    not when the object store was down at that moment. Longer than the longest backup."""

    resync_interval_seconds: float = Field(default=3600.0, gt=0)
    """How often a ready database is reconciled in full although nothing changed: drift the
    probe cannot see (a password changed by hand, an extension dropped) is repaired, and a
    refused tenant login reported, within this time. Each database's turn falls in the
    interval's last quarter, fixed by its name, so a fleet provisioned in one burst is not
    re-read in one burst."""

    max_concurrent_reconciles_per_cluster: int = Field(default=8, ge=1, le=100)
    """How many databases of one server are reconciled at the same time: a managed
    cluster's, or an external host and port, shared by every ManagedCluster that adopts it.
    Each holds at most one admin session and one other connection to the server, so this
    bounds what Vauban takes of its max_connections during a burst (plus as many admin
    sessions kept idle for a few seconds); those waiting hold nothing."""

    leader_election: bool = False
    """Run only while holding the Lease `vauban-leader` in `namespace`: with several
    replicas, exactly one reconciles; the others stand by and take over."""

    lease_duration_seconds: int = Field(default=15, ge=3, le=300)
    """How long a silent leader keeps the Lease before a standby takes over."""

    pod_name: str = ""
    """This replica's identity in the Lease (the downward API's metadata.name); host name
    and process id when unset."""

    log_format: Literal["json", "plain"] = "plain"
    """json for log collectors, plain for people."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    liveness_port: int = Field(default=8081, ge=0, le=65535)
    """Port of kopf's /healthz liveness endpoint; 0 disables it."""

    metrics_port: int = Field(default=8080, ge=0, le=65535)
    """Port of /metrics (Prometheus) and /readyz; 0 disables them."""

    @property
    def namespaces(self) -> list[str]:
        """The namespaces the operator watches: the listed ones and its own (the agent's Jobs
        and the key-encryption keys live there), or none listed for every namespace."""
        if not self.watch_namespaces:
            return []
        return sorted({*self.watch_namespaces, self.namespace})

    @field_validator("recovery_public_key")
    @classmethod
    def _valid_recovery_key(cls, value: str | None) -> str | None:
        # Any 32 bytes are an X25519 public key: the shape is the whole check. The message
        # says what is expected, never what was given (a private key pasted by mistake).
        if value is None or not value.strip():
            return None
        if not RECOVERY_PUBLIC_KEY.fullmatch(value.strip()):
            raise ValueError(
                "the recovery public key is 'vauban-recovery-public:' and the base64 of 32 "
                "bytes, as `vauban recovery-key generate` prints it"
            )
        return value.strip()
