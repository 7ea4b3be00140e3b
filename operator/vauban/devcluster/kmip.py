"""A real KMIP server on 127.0.0.1: PyKMIP's reference server, with its own CA, a server
certificate and one client certificate, all made fresh for each start.

It is what the tests of the `kmip` key provider talk to, in place of the HSM of a sovereign
provider. It speaks KMIP 1.0 to 2.0 over mutual TLS 1.2 and keeps its keys in an SQLite file
in a temporary folder that `stop()` removes: nothing survives a stop, by design.

The server runs as `python -m vauban.devcluster.kmip CONFIG.json` in its own process group,
so `stop()` can kill it with the helper processes PyKMIP forks (a multiprocessing manager and
a policy loader), and it dies with the process that started it (see `_serve`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.x509.oid import ExtendedKeyUsageOID

from vauban.devcluster import pki
from vauban.devcluster.process import (
    PR_SET_PDEATHSIG,
    Managed,
    accepts_connections,
    die_with,
    free_port,
    stop_process_group,
)

CLIENT_IDENTITY = "vauban-operator"
"""The client certificate's common name: PyKMIP's server takes it as the client's identity
and makes it the owner of the keys that client creates (its `default` operation policy lets
only the owner use them)."""


class KmipServerError(RuntimeError):
    """The server did not start; the message carries the end of its log."""


@dataclass(frozen=True)
class KmipPki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def create_pki(directory: Path, *, client_identity: str = CLIENT_IDENTITY) -> KmipPki:
    """A CA, the server's certificate (127.0.0.1 and localhost) and a client certificate.

    ECDSA P-256 like the control plane's: PyKMIP's `TLS1.2` suite offers ECDHE-ECDSA with
    AES-GCM. The client certificate carries the clientAuth extended key usage, which PyKMIP's
    server requires before it reads the identity."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = pki.certificate_authority("vauban-kmip-test-ca", path_length=0)
    server, server_key = pki.leaf_certificate(
        ca,
        ca_key,
        pki.name("vauban-kmip-test-server"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        pki.LOOPBACK,
    )
    client, client_key = pki.leaf_certificate(
        ca, ca_key, pki.name(client_identity), ExtendedKeyUsageOID.CLIENT_AUTH
    )

    paths = KmipPki(
        ca_cert=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )
    pki.write_cert(paths.ca_cert, ca)
    pki.write_cert(paths.server_cert, server)
    pki.write_key(paths.server_key, server_key)
    pki.write_cert(paths.client_cert, client)
    pki.write_key(paths.client_key, client_key)
    return paths


class KmipServer(Managed):
    """PyKMIP's server on a free port of 127.0.0.1. Start with `start()` or as a context
    manager; then `host`, `port` and the client's `cert_file`, `key_file` and `ca_file` are
    what a KMIP client needs."""

    host = "127.0.0.1"

    def __init__(self, *, port: int | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="vauban-kmip-"))
        self.port = port or free_port()
        self.pki = create_pki(self.root / "pki")
        self.log = self.root / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def cert_file(self) -> Path:
        return self.pki.client_cert

    @property
    def key_file(self) -> Path:
        return self.pki.client_key

    @property
    def ca_file(self) -> Path:
        return self.pki.ca_cert

    def start(self, timeout: float = 30.0) -> None:
        policies = self.root / "policies"
        policies.mkdir(exist_ok=True)
        config = self.root / "server.json"
        config.write_text(
            json.dumps(
                {
                    "hostname": self.host,
                    "port": self.port,
                    "certificate_path": str(self.pki.server_cert),
                    "key_path": str(self.pki.server_key),
                    "ca_path": str(self.pki.ca_cert),
                    # TLS 1.2 with ECDHE suites only; "Basic" would offer TLS 1.0-era RSA suites.
                    "auth_suite": "TLS1.2",
                    # Explicit, or PyKMIP would use /tmp/pykmip.database, shared by every run.
                    "database_path": str(self.root / "keys.sqlite"),
                    # An empty folder: the built-in `default` policy is the one that applies.
                    "policy_path": str(policies),
                    "log_path": str(self.root / "pykmip.log"),
                }
            ),
            encoding="utf-8",
        )
        # The package's own folder on the path: the child imports this module by name even
        # when Vauban is not installed (pytest's `pythonpath` reaches only this process).
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p
        )
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "vauban.devcluster.kmip", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.root,
                start_new_session=True,
                preexec_fn=die_with(os.getpid()),
            )
        deadline = time.monotonic() + timeout
        while not self._listening():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise KmipServerError(f"the KMIP server did not start:\n{self.tail()}")
            time.sleep(0.1)

    def _listening(self) -> bool:
        # PyKMIP binds in start() and listens right before its accept loop: a TCP connection
        # that succeeds means the next one is served.
        return accepts_connections(self.port, timeout=1, host=self.host)

    def tail(self, lines: int = 40) -> str:
        text = ""
        for log in (self.log, self.root / "pykmip.log"):
            with contextlib.suppress(OSError):
                text += log.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Kill the server and its helpers at once. SIGKILL, not SIGTERM: PyKMIP's server
        notices SIGTERM only when its accept() times out (10 s), then joins every thread for up
        to 10 s each; there is nothing to flush, since its database is thrown away."""
        stop_process_group(self.process, 10, first=signal.SIGKILL)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    close = destroy


def _serve(config_path: Path) -> None:
    """The server process: PyKMIP's server with the settings `KmipServer.start` wrote.

    PyKMIP forks a multiprocessing manager (and a policy loader) that would outlive this
    process if it were killed: every child forked from here gets the same parent-death
    signal, so killing this process (or the test run above it) leaves nothing behind."""
    if sys.platform == "linux":
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
        os.register_at_fork(after_in_child=lambda: prctl(PR_SET_PDEATHSIG, signal.SIGKILL))

    from kmip.services.server.server import (  # type: ignore[import-untyped]
        KmipServer as PyKmipServer,
    )

    settings = json.loads(config_path.read_text(encoding="utf-8"))
    server = PyKmipServer(
        hostname=settings["hostname"],
        port=settings["port"],
        certificate_path=settings["certificate_path"],
        key_path=settings["key_path"],
        ca_path=settings["ca_path"],
        auth_suite=settings["auth_suite"],
        # None: no /etc/pykmip/server.conf is read, only what is given here.
        config_path=None,
        log_path=settings["log_path"],
        policy_path=settings["policy_path"],
        enable_tls_client_auth=True,
        logging_level="INFO",
        live_policies=False,
        database_path=settings["database_path"],
    )
    with server:
        server.serve()


if __name__ == "__main__":
    _serve(Path(sys.argv[1]))
