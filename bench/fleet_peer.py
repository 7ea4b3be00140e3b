"""The peer: Crossplane's provider-sql (Go, controller-runtime), built from its source and its
Go modules, run out of cluster against the same control plane and PostgreSQL.

The Go module proxy refuses `github.com/crossplane-contrib/provider-sql` itself (403 "This
module version is not available", for the version list and for each version tried), so the
wrapper module `tools/provider-sql` cannot `require` it the way `tools/kwok` requires kwok.
The benchmark builds it from a source tree of the pinned tag instead: PROVIDER_SQL_SRC, or
~/.cache/vauban/src/provider-sql-<version>/ (a `git archive` of the tag); every dependency
comes from the module proxy, checked against the tree's own go.sum. Without a source tree the
peer is skipped and the results say why. Its code is never committed here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from vauban.devcluster.build import cache_dir

VERSION = "v0.16.0"
GROUP = "postgresql.sql.m.crossplane.io"
API_VERSION = f"{GROUP}/v1alpha1"


class PeerUnavailable(RuntimeError):
    """The peer cannot be built here; the message says why."""


def source_dir() -> Path:
    explicit = os.environ.get("PROVIDER_SQL_SRC")
    return Path(explicit) if explicit else cache_dir() / "src" / f"provider-sql-{VERSION}"


def binary() -> Path:
    """The provider binary, built once into ~/.cache/vauban/bin/provider-sql-<version>/.
    Named provider-sql so its user agent (controller-runtime's default: the binary's name)
    tells its requests apart in the audit log."""
    target = cache_dir() / "bin" / f"provider-sql-{VERSION}" / "provider-sql"
    if target.is_file():
        return target
    source = source_dir()
    if not (source / "cmd" / "provider").is_dir():
        raise PeerUnavailable(
            f"no source tree of provider-sql {VERSION} at {source} (set PROVIDER_SQL_SRC to a "
            "checkout of the tag); the Go module proxy refuses the module itself (403)"
        )
    go = shutil.which("go")
    if go is None:
        raise PeerUnavailable("the Go toolchain (go) is needed to build provider-sql")
    staging = target.parent.with_name(target.parent.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    result = subprocess.run(
        [go, "build", "-trimpath", "-o", str(staging / "provider-sql"), "./cmd/provider"],
        cwd=source,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "GOFLAGS": "-mod=readonly -buildvcs=false", "CGO_ENABLED": "0"},
    )
    if result.returncode != 0:
        raise PeerUnavailable(f"go build of provider-sql failed:\n{result.stderr[-3000:]}")
    shutil.rmtree(target.parent, ignore_errors=True)
    staging.rename(target.parent)
    return target


def crds() -> Path:
    return source_dir() / "package" / "crds"


def provider_config(namespace: str, port: int) -> list[tuple[str, dict[str, Any]]]:
    """The connection Secret and the ProviderConfig `default` of a namespace."""
    from fleet_kube import path_of
    from fleet_pg import ADMIN_PASSWORD

    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db-conn", "namespace": namespace},
        "stringData": {
            "username": "peer_admin",
            "password": ADMIN_PASSWORD,
            "endpoint": "127.0.0.1",
            "port": str(port),
        },
    }
    config = {
        "apiVersion": API_VERSION,
        "kind": "ProviderConfig",
        "metadata": {"name": "default", "namespace": namespace},
        "spec": {
            "sslMode": "disable",
            "credentials": {
                "source": "PostgreSQLConnectionSecret",
                "connectionSecretRef": {"name": "db-conn"},
            },
        },
    }
    return [
        (path_of("v1", "secrets", namespace), secret),
        (path_of(API_VERSION, "providerconfigs", namespace), config),
    ]


def role_and_database(namespace: str, role: str, database: str) -> list[tuple[str, dict[str, Any]]]:
    """What stands for one ManagedDatabase: a login Role whose credentials go to a Secret, and
    a Database it owns."""
    from fleet_kube import path_of

    ref = {"kind": "ProviderConfig", "name": "default"}
    return [
        (
            path_of(API_VERSION, "roles", namespace),
            {
                "apiVersion": API_VERSION,
                "kind": "Role",
                "metadata": {"name": role, "namespace": namespace},
                "spec": {
                    "forProvider": {"privileges": {"login": True}},
                    "writeConnectionSecretToRef": {"name": f"{role}-credentials"},
                    "providerConfigRef": ref,
                },
            },
        ),
        (
            path_of(API_VERSION, "databases", namespace),
            {
                "apiVersion": API_VERSION,
                "kind": "Database",
                "metadata": {"name": database, "namespace": namespace},
                "spec": {"forProvider": {"owner": role}, "providerConfigRef": ref},
            },
        ),
    ]


def start(kubeconfig: Path, log: Path, metrics_port: int) -> subprocess.Popen[bytes]:
    """The provider with its defaults (poll 10m, sync 1h, max-reconcile-rate 10), out of
    cluster: controller-runtime reads KUBECONFIG."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(binary()), f"--metrics-bind-address=127.0.0.1:{metrics_port}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        )
