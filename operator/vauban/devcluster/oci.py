"""OCI image archives written without a registry or a container engine: one layer (a tar of a
root file system), its config and manifest, in the OCI image layout `ctr images import` reads.

Each archive names its image with the `io.containerd.image.name` annotation, so containerd
imports it under exactly the name a manifest uses (`ghcr.io/cloudnative-pg/...:1.30.1`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LAYER = "application/vnd.oci.image.layer.v1.tar"
CONFIG = "application/vnd.oci.image.config.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class ImageConfig:
    """The runtime part of an image's config (what `docker inspect` calls Config)."""

    env: dict[str, str] = field(default_factory=lambda: {"PATH": DEFAULT_PATH})
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    user: str = ""
    working_dir: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    exposed_ports: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        config: dict[str, Any] = {"Env": [f"{k}={v}" for k, v in self.env.items()]}
        if self.entrypoint is not None:
            config["Entrypoint"] = self.entrypoint
        if self.cmd is not None:
            config["Cmd"] = self.cmd
        if self.user:
            config["User"] = self.user
        if self.working_dir:
            config["WorkingDir"] = self.working_dir
        if self.labels:
            config["Labels"] = self.labels
        if self.exposed_ports:
            config["ExposedPorts"] = {p if "/" in p else f"{p}/tcp": {} for p in self.exposed_ports}
        return config

    @classmethod
    def from_json(cls, config: dict[str, Any]) -> ImageConfig:
        env = dict(item.split("=", 1) for item in config.get("Env", []))
        return cls(
            env=env,
            entrypoint=config.get("Entrypoint"),
            cmd=config.get("Cmd"),
            user=config.get("User", ""),
            working_dir=config.get("WorkingDir", ""),
            labels=dict(config.get("Labels") or {}),
            exposed_ports=[p.removesuffix("/tcp") for p in config.get("ExposedPorts") or {}],
        )


def tar_rootfs(rootfs: Path, out: Path) -> None:
    """A layer: the whole tree, numeric owners, extended attributes (file capabilities)."""
    subprocess.run(
        [
            "tar",
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "--sort=name",
            "-C",
            str(rootfs),
            "-cf",
            str(out),
            ".",
        ],
        check=True,
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_archive(layer: Path, config: ImageConfig, names: list[str], out: Path) -> str:
    """Write an OCI archive of one uncompressed layer to `out`, named `names` (containerd
    references). Returns the manifest's digest. The layer file is left in place."""
    layer_digest = _sha256(layer)
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": config.to_json(),
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
        "history": [{"created_by": "vauban.devcluster (one layer)"}],
    }
    config_bytes = json.dumps(image_config, sort_keys=True).encode()
    config_digest = hashlib.sha256(config_bytes).hexdigest()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {
            "mediaType": CONFIG,
            "digest": f"sha256:{config_digest}",
            "size": len(config_bytes),
        },
        "layers": [
            {"mediaType": LAYER, "digest": f"sha256:{layer_digest}", "size": layer.stat().st_size}
        ],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    manifest_digest = hashlib.sha256(manifest_bytes).hexdigest()
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [
            {
                "mediaType": MANIFEST,
                "digest": f"sha256:{manifest_digest}",
                "size": len(manifest_bytes),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1],
                },
            }
            for name in names
        ],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, partial_name = tempfile.mkstemp(prefix=f".{out.name}-", dir=out.parent)
    os.close(fd)
    partial = Path(partial_name)
    try:
        with tarfile.open(partial, "w") as archive:

            def add_bytes(name: str, data: bytes) -> None:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
                archive.addfile(info, io.BytesIO(data))

            add_bytes("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
            add_bytes("index.json", json.dumps(index).encode())
            add_bytes(f"blobs/sha256/{manifest_digest}", manifest_bytes)
            add_bytes(f"blobs/sha256/{config_digest}", config_bytes)
            archive.add(layer, arcname=f"blobs/sha256/{layer_digest}", recursive=False)
        partial.rename(out)
    finally:
        partial.unlink(missing_ok=True)
    return f"sha256:{manifest_digest}"


def archive_from_rootfs(rootfs: Path, config: ImageConfig, names: list[str], out: Path) -> str:
    """Pack a root file system folder as a one-layer image archive."""
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="vauban-layer-", dir=out.parent))
    try:
        layer = scratch / "layer.tar"
        tar_rootfs(rootfs, layer)
        return write_archive(layer, config, names, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
