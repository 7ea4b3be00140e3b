"""Client pods of the end-to-end tier: psql with a ManagedDatabase's Secret, from a pod in
the tenant's namespace, as an application would connect."""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import Callable
from typing import Any

from support.kube import KubeCtl, condition, eventually
from vauban.devcluster.images import POSTGRES_IMAGE


def ready(kube: KubeCtl, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    obj = kube.get(kind, name, namespace)
    found = condition(obj, "Ready")
    return obj if found and found["status"] == "True" else None


def secret_values(kube: KubeCtl, namespace: str, name: str) -> dict[str, str]:
    data = kube.get("secret", name, namespace)["data"]
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def finished_pod(kube: KubeCtl, namespace: str, name: str) -> dict[str, Any] | None:
    pod = kube.get("pod", name, namespace)
    return pod if pod["status"].get("phase") in ("Succeeded", "Failed") else None


def client_pod(
    name: str, namespace: str, secret: str, values: dict[str, str], script: str, **env: str
) -> dict[str, Any]:
    """A pod running `script` with libpq's variables from a ManagedDatabase's Secret."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsUser": 26, "runAsNonRoot": True},
            "containers": [
                {
                    "name": "psql",
                    "image": POSTGRES_IMAGE,
                    "command": ["sh", "-c", script],
                    "env": [
                        {"name": "PGHOST", "value": values["host"]},
                        {"name": "PGPORT", "value": values["port"]},
                        {"name": "PGDATABASE", "value": values["dbname"]},
                        *({"name": k, "value": v} for k, v in env.items()),
                        *(
                            {
                                "name": variable,
                                "valueFrom": {"secretKeyRef": {"name": secret, "key": key}},
                            }
                            for variable, key in (
                                ("PGUSER", "username"),
                                ("PGPASSWORD", "password"),
                            )
                        ),
                    ],
                    "volumeMounts": [{"name": "credentials", "mountPath": "/credentials"}],
                }
            ],
            "volumes": [{"name": "credentials", "secret": {"secretName": secret}}],
        },
    }


PSQL = (
    'psql "host=$PGHOST port=$PGPORT dbname=$PGDATABASE user=$PGUSER '
    'sslmode=verify-full sslrootcert=/credentials/ca.crt" -v ON_ERROR_STOP=1 -At'
)

WRITER = """
conn="host=$PGHOST port=$PGPORT dbname=$PGDATABASE user=$PGUSER sslmode=verify-full \
sslrootcert=/credentials/ca.crt connect_timeout=2"
psql "$conn" -q -v ON_ERROR_STOP=1 -c "create table if not exists beats (at timestamptz)" || exit 1
end=$(( $(date +%s) + $SECONDS_TO_WRITE ))
while [ "$(date +%s)" -lt "$end" ]; do
  psql "$conn" -qAt -c "insert into beats values (clock_timestamp())
    returning 'ok|' || extract(epoch from at)" 2>/dev/null
  sleep 0.2
done
until psql "$conn" -qAt -c "select 'all|' || string_agg(extract(epoch from at)::text, ','
    order by at) from beats"; do sleep 1; done
"""
"""A client writing a row every 0.2 s, each on a new session (as an application's pool
reconnects), printing each acknowledged write; then every row the table holds."""


def write_through(
    kube: KubeCtl, tenant: str, pod: str, fault: Callable[[], None], *, instances: int
) -> float:
    """A client of ManagedDatabase orders on ManagedCluster main (of `instances`) writes
    through `fault`, done once it has had writes acknowledged for 10 s:
    every write acknowledged before the fault is still there afterwards, and writes resume.
    Returns the longest time writes were refused, as the client saw it."""
    eventually(
        lambda: ready(kube, "manageddatabase", "orders", tenant),
        timeout=180,
        what="the ManagedDatabase Ready",
    )
    values = secret_values(kube, tenant, "orders-credentials")
    kube.apply(client_pod(pod, tenant, "orders-credentials", values, WRITER, SECONDS_TO_WRITE="75"))
    eventually(
        lambda: kube.get("pod", pod, tenant)["status"].get("phase") == "Running",
        timeout=60,
        what=f"{pod} running",
    )
    time.sleep(10)  # writes acknowledged by the first primary
    faulted_at = time.time()
    fault()
    writer = eventually(lambda: finished_pod(kube, tenant, pod), timeout=240, what=pod)
    log = kube.run("logs", pod, "-n", tenant).stdout
    assert writer["status"]["phase"] == "Succeeded", log
    acknowledged = [line[3:] for line in log.splitlines() if line.startswith("ok|")]
    kept = next(line[4:] for line in log.splitlines() if line.startswith("all|")).split(",")
    before = [at for at in acknowledged if float(at) < faulted_at - 1]
    assert before, log
    assert set(before) <= set(kept), "a write acknowledged before the fault was lost"
    assert float(acknowledged[-1]) > faulted_at, "writes resumed after the fault"
    times = sorted(float(at) for at in acknowledged)
    refused = max(b - a for a, b in itertools.pairwise(times) if a >= faulted_at - 5)
    eventually(
        lambda: (
            (ready(kube, "managedcluster", "main", tenant) or {})
            .get("status", {})
            .get("readyInstances")
            == instances
        ),
        timeout=300,
        what="every instance ready again",
    )
    return refused
