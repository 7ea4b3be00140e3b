"""The tenant's credentials Secret: the keys CloudNativePG and PGO write, so applications
written for either mount it unchanged."""

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
    user, secret = quote(username, safe=""), quote(password, safe="")
    where = f"{endpoint.host}:{endpoint.port}/{quote(endpoint.dbname, safe='')}"
    values = {
        "username": username,
        "password": password,
        "host": endpoint.host,
        "port": str(endpoint.port),
        "dbname": endpoint.dbname,
        "sslmode": endpoint.sslmode,
        "uri": f"postgresql://{user}:{secret}@{where}?sslmode={endpoint.sslmode}",
        "jdbc-uri": f"jdbc:postgresql://{where}?user={user}&password={secret}"
        f"&sslmode={endpoint.sslmode}",
        "pgpass": ":".join(
            _pgpass_escape(v)
            for v in (endpoint.host, str(endpoint.port), endpoint.dbname, username, password)
        )
        + "\n",
    }
    if endpoint.ca_pem:
        values["ca.crt"] = endpoint.ca_pem
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


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")
