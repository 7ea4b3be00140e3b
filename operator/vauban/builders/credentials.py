"""The tenant's credentials Secret: the keys CloudNativePG and PGO write, so applications
written for either mount it unchanged, and servicebinding.io's (`type`, `provider`,
`database`, `sslrootcert`), so Spring Cloud Bindings, Quarkus and other binders read it
without glue."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from vauban.api.common import API_VERSION
from vauban.builders.cnpg import MANAGED_BY

DATABASE_LABEL = "vauban.dev/database"


@dataclass(frozen=True)
class Endpoint:
    """Where applications reach the database."""

    host: str
    port: int
    dbname: str
    sslmode: str
    ca_pem: str | None = None
    fqdn: str | None = None
    """The host's fully qualified name, when `host` is not one (a Service's
    `<name>.<namespace>.svc`, completed with the cluster domain)."""


def secret_name(database: str) -> str:
    return f"{database}-credentials"


def credentials_secret(
    *,
    name: str,
    namespace: str,
    owner_uid: str,
    username: str,
    password: str,
    endpoint: Endpoint,
) -> dict[str, Any]:
    values = {
        "username": username,
        "user": username,
        "password": password,
        "host": endpoint.host,
        "port": str(endpoint.port),
        "dbname": endpoint.dbname,
        "database": endpoint.dbname,
        "sslmode": endpoint.sslmode,
        "uri": _uri(endpoint.host, endpoint, username, password),
        "jdbc-uri": _jdbc_uri(endpoint.host, endpoint, username, password),
        "fqdn-uri": _uri(endpoint.fqdn or endpoint.host, endpoint, username, password),
        "fqdn-jdbc-uri": _jdbc_uri(endpoint.fqdn or endpoint.host, endpoint, username, password),
        "pgpass": ":".join(
            _pgpass_escape(v)
            for v in (endpoint.host, str(endpoint.port), endpoint.dbname, username, password)
        )
        + "\n",
        # servicebinding.io: what kind of service this is, and who provides it.
        "type": "postgresql",
        "provider": "vauban",
    }
    if endpoint.ca_pem:
        values["ca.crt"] = endpoint.ca_pem
        # A file name in the projected binding, which binders join to its directory.
        values["sslrootcert"] = "ca.crt"
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/basic-auth",
        "metadata": {
            "name": secret_name(name),
            "namespace": namespace,
            "labels": {**MANAGED_BY, DATABASE_LABEL: name},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "ManagedDatabase",
                    "name": name,
                    "uid": owner_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        # data rather than stringData: server-side apply tracks data field by field.
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
    }


def _uri(host: str, endpoint: Endpoint, username: str, password: str) -> str:
    user, secret = quote(username, safe=""), quote(password, safe="")
    where = f"{host}:{endpoint.port}/{quote(endpoint.dbname, safe='')}"
    return f"postgresql://{user}:{secret}@{where}?sslmode={endpoint.sslmode}"


def _jdbc_uri(host: str, endpoint: Endpoint, username: str, password: str) -> str:
    user, secret = quote(username, safe=""), quote(password, safe="")
    where = f"{host}:{endpoint.port}/{quote(endpoint.dbname, safe='')}"
    return f"jdbc:postgresql://{where}?user={user}&password={secret}&sslmode={endpoint.sslmode}"


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")
