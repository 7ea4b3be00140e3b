"""`make run`: the operator on a local cluster, with the CRDs and samples applied.

When VAUBAN_KUBECONFIG names a cluster, that cluster is used as it is. Otherwise, on the real
node (`dev_run_real`), Vauban is installed by its chart with images built from this checkout
and its pods, CloudNativePG's and PostgreSQL's run for real; with kwok's fake nodes
(`dev_run`), the operator runs here as a process against a control plane on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from vauban.api.crdgen import KINDS
from vauban.main import configure_logging, run
from vauban.settings import Settings

logger = logging.getLogger(__name__)

LOCAL = Path(".local")


def kubectl(binary: Path, kubeconfig: Path, *args: str, stdin: str | None = None) -> None:
    subprocess.run(
        [str(binary), f"--kubeconfig={kubeconfig}", *args], check=True, input=stdin, text=True
    )


def wait_established(
    binary: Path, kubeconfig: Path, crds: list[str], timeout: float = 60.0
) -> None:
    """Until every CRD says Established. `kubectl wait --for=condition=...` fails at once on a
    CRD the apiserver has not given a status yet ("conditions accessor error: <nil>"), which
    happens right after an apply: poll the condition instead, an absent status meaning not
    yet."""
    template = '{.status.conditions[?(@.type=="Established")].status}'
    deadline = time.monotonic() + timeout
    pending = list(crds)
    while pending:
        pending = [
            crd
            for crd in pending
            if subprocess.run(
                [
                    str(binary),
                    f"--kubeconfig={kubeconfig}",
                    "get",
                    f"crd/{crd}",
                    f"-o=jsonpath={template}",
                ],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            != "True"
        ]
        if pending and time.monotonic() > deadline:
            raise SystemExit(f"CRDs not Established after {timeout:g} s: {', '.join(pending)}")
        if pending:
            time.sleep(0.2)


@contextlib.contextmanager
def cluster(settings: Settings) -> Iterator[tuple[Path, Path]]:
    """(kubeconfig, kubectl) of the configured cluster, or of a local one started for us."""
    from vauban.devcluster import LocalControlPlane, ensure_binaries

    binaries = ensure_binaries()
    LOCAL.mkdir(exist_ok=True)
    (LOCAL / "bin").mkdir(exist_ok=True)
    link = LOCAL / "bin" / "kubectl"
    link.unlink(missing_ok=True)
    link.symlink_to(binaries.kubectl)
    if settings.kubeconfig is not None:
        yield settings.kubeconfig, binaries.kubectl
        return
    with LocalControlPlane() as plane:
        stable = LOCAL / "kubeconfig"
        stable.write_bytes(plane.kubeconfig.read_bytes())
        stable.chmod(0o600)
        yield stable.resolve(), binaries.kubectl


# What samples/20-managedcluster-external.yaml adopts, and where it backs up.
SAMPLE_SERVER_PORT = 5432
SAMPLE_ADMIN = ("vauban_admin", "change-me")
SAMPLE_S3_PORT = 7070
SAMPLE_S3_CREDENTIALS = ("vauban-demo", "vauban-demo-secret")
SAMPLE_BUCKET = "vauban-demo"


@contextlib.contextmanager
def sample_server() -> Iterator[None]:
    """A local PostgreSQL for the external sample to adopt, when port 5432 is free and the
    machine has PostgreSQL's binaries; otherwise the sample says Unreachable, honestly."""
    from vauban.devcluster.postgres import PostgresServer

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", SAMPLE_SERVER_PORT)) == 0:
            logger.warning(
                "127.0.0.1:%d is taken: the external sample adopts whatever runs there",
                SAMPLE_SERVER_PORT,
            )
            yield
            return
    try:
        server = PostgresServer(port=SAMPLE_SERVER_PORT)
    except RuntimeError as e:
        logger.warning("no PostgreSQL for the external sample: %s", e)
        yield
        return
    try:
        server.start()
        server.create_role(*SAMPLE_ADMIN, "CREATEROLE", "CREATEDB")
        yield
    finally:
        server.destroy()


@contextlib.contextmanager
def sample_bucket() -> Iterator[None]:
    """A local S3 server (versitygw) with the bucket the external sample backs up to, when
    its port is free; otherwise backups of the sample say why they fail."""
    from vauban.devcluster.s3 import S3Server

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", SAMPLE_S3_PORT)) == 0:
            logger.warning("127.0.0.1:%d is taken: the samples back up to it", SAMPLE_S3_PORT)
            yield
            return
    access_key, secret_key = SAMPLE_S3_CREDENTIALS
    server = S3Server(port=SAMPLE_S3_PORT, access_key=access_key, secret_key=secret_key)
    try:
        server.start()
        server.create_bucket(SAMPLE_BUCKET)
        yield
    finally:
        server.destroy()


@contextlib.contextmanager
def agent_runner(kubectl_binary: Path, kubeconfig: Path, namespace: str) -> Iterator[None]:
    """On the local control plane, the backup agent's pods run for real, on this machine;
    kwok fakes every other pod. A configured cluster runs them itself."""
    from vauban.devcluster.agentrunner import AgentRunner

    runner = AgentRunner(str(kubectl_binary), kubeconfig, namespace).start()
    try:
        yield
    finally:
        runner.stop()


def dev_run(crds: Path, samples: Path | None) -> int:
    settings = Settings()
    configure_logging(settings)
    with (
        cluster(settings) as (kubeconfig, kubectl_binary),
        sample_server() if samples is not None else contextlib.nullcontext(),
        sample_bucket() if samples is not None else contextlib.nullcontext(),
    ):
        kubectl(
            kubectl_binary,
            kubeconfig,
            "apply",
            "--server-side",
            "--field-manager=vauban-dev",
            "-f",
            str(crds),
        )
        wait_established(kubectl_binary, kubeconfig, [kind.crd_name for kind in KINDS])
        kubectl(
            kubectl_binary,
            kubeconfig,
            "apply",
            "-f",
            "-",
            stdin=f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {settings.namespace}\n",
        )
        if samples is not None:
            for sample in sorted(samples.glob("*.yaml")):
                kubectl(kubectl_binary, kubeconfig, "apply", "-f", str(sample))
        print(
            "\nVauban is running. In another terminal:\n"
            f"  export KUBECONFIG={kubeconfig} PATH={LOCAL.resolve() / 'bin'}:$PATH\n"
            "  kubectl get mdbc,mdb,mbk -A\n"
            "Stop with Ctrl-C.\n",
            flush=True,
        )
        local = settings.kubeconfig is None
        with (
            agent_runner(kubectl_binary, kubeconfig, settings.namespace)
            if local
            else contextlib.nullcontext(),
            contextlib.suppress(KeyboardInterrupt),
        ):
            asyncio.run(run(settings.model_copy(update={"kubeconfig": kubeconfig})))
    return 0


def dev_run_real(samples: Path | None) -> int:
    """The real node: CloudNativePG and Vauban (by its chart) in a cluster whose pods run,
    the samples applied, and their status shown as it changes until Ctrl-C. The samples'
    servers (the external sample's PostgreSQL, the bucket) listen in the cluster's network
    namespace, where pods reach them: their 127.0.0.1 becomes that namespace's address."""
    import time

    from vauban.devcluster import ensure_binaries
    from vauban.devcluster.postgres import PostgresServer
    from vauban.devcluster.realnode import API_IP, RealCluster
    from vauban.devcluster.s3 import S3Server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    kubectl_binary = ensure_binaries().kubectl
    (LOCAL / "bin").mkdir(parents=True, exist_ok=True)
    link = LOCAL / "bin" / "kubectl"
    link.unlink(missing_ok=True)
    link.symlink_to(kubectl_binary)
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(RealCluster(nodes=3))
        kubeconfig = LOCAL / "kubeconfig"
        kubeconfig.write_bytes(cluster.kubeconfig.read_bytes())
        kubeconfig.chmod(0o600)
        kubeconfig = kubeconfig.resolve()
        access_key, secret_key = SAMPLE_S3_CREDENTIALS
        bucket = S3Server(
            netns=cluster.netns_path,
            host=API_IP,
            port=SAMPLE_S3_PORT,
            access_key=access_key,
            secret_key=secret_key,
        )
        stack.callback(bucket.destroy)
        bucket.start()
        bucket.create_bucket(SAMPLE_BUCKET)
        try:
            server = PostgresServer(port=SAMPLE_SERVER_PORT, netns=cluster.netns_path, host=API_IP)
        except RuntimeError as e:
            logger.warning("no PostgreSQL for the external sample: %s", e)
        else:
            stack.callback(server.destroy)
            server.start()
            server.create_role(*SAMPLE_ADMIN, "CREATEROLE", "CREATEDB")
        cluster.install_stack(object_storage_ports=[SAMPLE_S3_PORT])
        for sample in sorted(samples.glob("*.yaml")) if samples is not None else []:
            text = sample.read_text(encoding="utf-8").replace("127.0.0.1", API_IP)
            kubectl(kubectl_binary, kubeconfig, "apply", "-f", "-", stdin=text)
        print(
            "\nVauban runs in the cluster (namespace vauban-system). In another terminal:\n"
            f"  export KUBECONFIG={kubeconfig} PATH={LOCAL.resolve() / 'bin'}:$PATH\n"
            "  kubectl get mdbc,mdb,mbk -A; kubectl get pods -A -o wide\n"
            "  kubectl -n vauban-system logs -f deploy/vauban\n"
            "Stop with Ctrl-C.\n",
            flush=True,
        )
        shown = ""
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                current = subprocess.run(
                    [str(kubectl_binary), f"--kubeconfig={kubeconfig}", "get", "mdbc,mdb", "-A"],
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout
                if current != shown:
                    print(time.strftime("%H:%M:%S"), current, sep="\n", flush=True)
                    shown = current
                time.sleep(5)
    return 0
