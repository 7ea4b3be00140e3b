"""`vauban run` imports the asynchronous Kubernetes client alone (vauban.kube.slim), none of
its large generated API classes (vauban.kube.rest), and no S3 client until a cluster has
backups (vauban.backup.storage_errors); the backup agent imports MinIO's S3 client without
its admin client (vauban.backup.slim)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

# In a process of its own: the test session has imported the whole library already.
PROBE = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import UTC, datetime
    from vauban.kube.slim import skip_unused_clients
    assert skip_unused_clients()
    from vauban.cli import parser
    parser()  # as `vauban run` does: every sub-command declared, the agent's included
    import kopf
    from kopf._cogs.helpers import thirdparty
    import vauban.main
    from vauban.kube.client import connect
    from vauban.kube.events import ObjectRef, _event
    from vauban.kube.resources import Kube

    async def main(path):
        api = await connect(path)
        kube = Kube(api)
        ref = ObjectRef("ManagedDatabase", "n", "a", "u")
        now = datetime.now(UTC)
        event = _event(ref, "Normal", "R", "m", now, now, 1)
        assert api.sanitize_for_serialization(event)["involvedObject"]["name"] == "a"
        assert (await kube.credentials()).server == "https://127.0.0.1:6443"
        await kube.close()

    asyncio.run(main(sys.argv[1]))
    assert thirdparty.V1ObjectMetaSync is None  # kopf left the synchronous models out
    assert sys.modules["kubernetes.client"] is None
    unused = ("config", "dynamic", "watch", "stream", "informer", "leaderelection", "utils")
    unused += tuple(f"aio.{name}" for name in ("dynamic", "watch", "stream", "leaderelection"))
    assert not [m for m in sys.modules if m.startswith(tuple(f"kubernetes.{n}" for n in unused))]
    # The generated API classes, by far the client's largest imports (vauban.kube.rest).
    generated = ("core_v1_api", "batch_v1_api", "storage_v1_api", "networking_v1_api")
    assert not [m for m in sys.modules if m.rsplit(".", 1)[-1] in generated]
    s3_and_agent = ("minio", "urllib3", "Crypto", "argon2", "zstandard")
    assert not [m for m in s3_and_agent if m in sys.modules]
    print("ok")
    """
)

KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: abc}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def test_the_operator_runs_on_the_asynchronous_client_alone(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(kubeconfig)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


AGENT_PROBE = textwrap.dedent(
    """
    import sys
    from vauban.backup.slim import skip_admin_client
    assert skip_admin_client()
    import vauban.backup.agent  # as `vauban agent` does, after skip_admin_client
    from vauban.backup.storage import ObjectStore

    store = ObjectStore("http://127.0.0.1:9", "us-east-1", "b", "key", "secret")
    assert store.endpoint == "http://127.0.0.1:9"
    assert not [m for m in ("Crypto", "argon2", "pycparser") if m in sys.modules]
    import minio
    assert minio.Minio is not None and minio.MinioAdmin is None
    assert not skip_admin_client()  # too late once minio is in
    print("ok")
    """
)


def test_the_agent_imports_the_s3_client_without_minios_admin_client() -> None:
    done = subprocess.run(
        [sys.executable, "-c", AGENT_PROBE],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
