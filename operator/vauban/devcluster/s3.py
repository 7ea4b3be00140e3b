"""A real S3 object store on 127.0.0.1: versitygw (built from its Go module, like the control
plane) serving a temporary folder, over HTTP or HTTPS (a certificate from a local CA). Where
the backup tests and `make run` store backups.

versitygw runs its POSIX backend with a versioning folder, so buckets created with Object Lock
are versioned and enforce retention as S3 does. Each object is a plain file under
`root/<bucket>/<key>`, which lets tests damage a stored backup the way a faulty disk would.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import urllib3
from cryptography.x509.oid import ExtendedKeyUsageOID
from minio import Minio

from vauban.devcluster import forward, pki
from vauban.devcluster.build import ensure_tool
from vauban.devcluster.process import (
    Managed,
    accepts_connections,
    die_with,
    free_port,
    stop_process_group,
)


class S3Server(Managed):
    """versitygw on a free loopback port, with its own root credentials."""

    def __init__(
        self,
        buckets: tuple[str, ...] = (),
        locked_buckets: tuple[str, ...] = (),
        region: str = "us-east-1",
        *,
        port: int | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        tls: bool = False,
        netns: Path | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        """Random port and credentials unless given (`make run` fixes them for its samples).
        With `netns` (the real node's namespace), it listens on `host` there, where pods reach
        it; this process reaches it through a forwarder on 127.0.0.1 (`local_port`)."""
        self.binary = ensure_tool("versitygw")
        self.root = Path(tempfile.mkdtemp(prefix="vauban-s3-"))
        self.data = self.root / "data"
        self.region = region
        self.netns = netns
        self.host = host
        self.port = port or free_port()
        self.local_port = self.port
        self._forwarder: subprocess.Popen[bytes] | None = None
        self.access_key = access_key or f"vauban{secrets.token_hex(4)}"
        self.secret_key = secret_key or secrets.token_urlsafe(24)
        self.process: subprocess.Popen[bytes] | None = None
        self._buckets = buckets
        self._locked_buckets = locked_buckets
        self.tls = tls
        self.ca_file: Path | None = None
        """With tls, the CA that signed the server's certificate (for 127.0.0.1)."""

    @property
    def endpoint(self) -> str:
        """Where its clients reach it (inside the namespace, with `netns`)."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def object_path(self, bucket: str, key: str) -> Path:
        """The file holding an object (its current version)."""
        return self.data / bucket / key

    def client(self) -> Minio:
        return Minio(
            f"127.0.0.1:{self.local_port}",
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=self.tls,
            region=self.region,
            http_client=urllib3.PoolManager(ca_certs=str(self.ca_file)) if self.ca_file else None,
        )

    def create_bucket(self, name: str, *, object_lock: bool = False) -> None:
        self.client().make_bucket(name, object_lock=object_lock)

    def start(self) -> S3Server:
        self.data.mkdir(parents=True, exist_ok=True)
        (self.root / "versions").mkdir(exist_ok=True)
        tls: list[str] = []
        if self.tls:
            tls = self._certificates(self.root / "pki")
        log = (self.root / "versitygw.log").open("ab")
        enter = ["nsenter", f"--net={self.netns}", "--"] if self.netns else []
        self.process = subprocess.Popen(
            [
                *enter,
                str(self.binary),
                "--port",
                f"{self.host}:{self.port}",
                "--region",
                self.region,
                *tls,
                "--quiet",
                "posix",
                "--versioning-dir",
                str(self.root / "versions"),
                str(self.data),
            ],
            # Credentials by environment: they would show in `ps` as arguments.
            env={
                **os.environ,
                "ROOT_ACCESS_KEY_ID": self.access_key,
                "ROOT_SECRET_ACCESS_KEY": self.secret_key,
            },
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with(os.getpid()),
        )
        log.close()
        if self.netns is not None:
            self._forwarder, self.local_port = forward.spawn(
                self.netns, f"{self.host}:{self.port}", self.root / "forwarder.log"
            )
        deadline = time.monotonic() + 30
        while not self._listening():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = (self.root / "versitygw.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"versitygw did not start:\n{tail}")
            time.sleep(0.05)
        for bucket in self._buckets:
            self.create_bucket(bucket)
        for bucket in self._locked_buckets:
            self.create_bucket(bucket, object_lock=True)
        return self

    def _certificates(self, directory: Path) -> list[str]:
        """A CA (kept as `ca_file`) and the server's certificate for 127.0.0.1: versitygw's
        arguments."""
        directory.mkdir(parents=True, exist_ok=True)
        ca, ca_key = pki.certificate_authority("vauban-s3-test-ca")
        cert, key = pki.leaf_certificate(
            ca,
            ca_key,
            pki.name("vauban-s3-test-server"),
            ExtendedKeyUsageOID.SERVER_AUTH,
            pki.LOOPBACK,
        )
        self.ca_file = directory / "ca.crt"
        pki.write_cert(self.ca_file, ca)
        pki.write_cert(directory / "server.crt", cert)
        pki.write_key(directory / "server.key", key)
        return ["--cert", str(directory / "server.crt"), "--key", str(directory / "server.key")]

    def _listening(self) -> bool:
        if self.netns is None:
            return accepts_connections(self.port, timeout=0.5)
        # Through the forwarder: the connection succeeds only if versitygw answers.
        try:
            self.client().bucket_exists("vauban-probe")
        except Exception:
            return False
        return True

    def stop(self) -> None:
        stop_process_group(self.process, 10)
        stop_process_group(self._forwarder, 5)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    close = destroy
