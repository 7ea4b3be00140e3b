"""The images the real node runs, built on this machine and cached: no registry, no Docker.

- `localhost/vauban-dev/pause:1`: tools/pause (Vauban's own sandbox program);
- `localhost/vauban-dev/postgresql:17`: Debian 13 packages, PostgreSQL 17, pgaudit and
  barman-cli-cloud (mmdebstrap);
- `ghcr.io/cloudnative-pg/cloudnative-pg:1.30.1`: its Go module, laid out as its Dockerfile
  does;
- `ghcr.io/cloudnative-pg/plugin-barman-cloud:v0.15.0` and `...-sidecar:v0.15.0`: the plugin's
  Go module, its sidecar beside Debian's barman-cli-cloud;
- `localhost/vauban-dev/vauban`, `.../vauban-agent`: the repository's Containerfile, on a
  Debian-made Python base.

Each is an OCI archive in `<cache>/images/`, named after a hash of what it is built from, so a
second run reuses it; `ctr images import` loads it into each node's containerd.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from vauban import __version__
from vauban.devcluster import debian, oci
from vauban.devcluster.build import (
    BARMAN_CLOUD_PLUGIN_VERSION,
    CLOUDNATIVEPG_VERSION,
    NodeBinaries,
    cache_dir,
    ensure_node_binaries,
    module_source,
)
from vauban.devcluster.containerfile import ContainerfileBuilder

logger = logging.getLogger(__name__)

REPOSITORY = "localhost/vauban-dev"
PAUSE_IMAGE = f"{REPOSITORY}/pause:1"
POSTGRES_REPOSITORY = f"{REPOSITORY}/postgresql"
"""VAUBAN_POSTGRES_IMAGE_REPOSITORY on the real node: Vauban tags it with the cluster's
version, so `spec.version: "17"` runs `localhost/vauban-dev/postgresql:17`."""
POSTGRES_IMAGE = f"{POSTGRES_REPOSITORY}:{debian.POSTGRES_MAJOR}"
CLOUDNATIVEPG_IMAGE = f"ghcr.io/cloudnative-pg/cloudnative-pg:{CLOUDNATIVEPG_VERSION[1:]}"
"""The name CloudNativePG's release manifest uses, so it runs unchanged."""
BARMAN_CLOUD_PLUGIN_IMAGE = (
    f"ghcr.io/cloudnative-pg/plugin-barman-cloud:{BARMAN_CLOUD_PLUGIN_VERSION}"
)
BARMAN_CLOUD_SIDECAR_IMAGE = (
    f"ghcr.io/cloudnative-pg/plugin-barman-cloud-sidecar:{BARMAN_CLOUD_PLUGIN_VERSION}"
)
OPERATOR_REPOSITORY = f"{REPOSITORY}/vauban"
AGENT_REPOSITORY = f"{REPOSITORY}/vauban-agent"
PYTHON_BASE = f"{REPOSITORY}/python:3-{debian.SUITE}"
"""The Containerfile's PYTHON_IMAGE here (python images cannot be pulled)."""

# operator/vauban/devcluster/images.py -> the repository root.
ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Image:
    name: str
    archive: Path


@dataclass(frozen=True)
class Images:
    pause: Image
    postgres: Image
    cloudnativepg: Image
    barman_cloud_plugin: Image
    barman_cloud_sidecar: Image
    operator: Image
    agent: Image

    def all(self) -> list[Image]:
        return [
            self.pause,
            self.postgres,
            self.cloudnativepg,
            self.barman_cloud_plugin,
            self.barman_cloud_sidecar,
            self.operator,
            self.agent,
        ]

    @property
    def operator_tag(self) -> str:
        return self.operator.name.rsplit(":", 1)[1]


def images_dir() -> Path:
    return cache_dir() / "images"


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _cached(kind: str, key: str) -> Path:
    return images_dir() / f"{kind}-{key}.tar"


def _replace_older(kind: str, keep: Path) -> None:
    """One archive per kind: older builds go."""
    for old in images_dir().glob(f"{kind}-*.tar"):
        if old != keep and old.name.rsplit("-", 1)[0] == kind:
            old.unlink(missing_ok=True)


def _binary_image(kind: str, name: str, files: dict[str, Path], config: oci.ImageConfig) -> Image:
    """An image of a few files: `files` maps a path in the image to a file here."""
    key = hashlib.sha256(
        json.dumps(
            {
                "files": {k: _file_hash(v) for k, v in sorted(files.items())},
                "config": config.to_json(),
                "name": name,
                "layout": 1,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]
    archive = _cached(kind, key)
    if archive.is_file():
        return Image(name, archive)
    images_dir().mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=images_dir()))
    try:
        rootfs = scratch / "rootfs"
        for inside, source in files.items():
            target = rootfs / inside.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            target.chmod(0o755 if os.access(source, os.X_OK) else 0o644)
        _skeleton(rootfs)
        if kind == "cloudnative-pg":
            (rootfs / "manager").symlink_to("operator/manager_amd64")
        oci.archive_from_rootfs(rootfs, config, [name], archive)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _replace_older(kind, archive)
    return Image(name, archive)


def _skeleton(rootfs: Path) -> None:
    """What a distroless static image holds besides the program: users, a /tmp."""
    etc = rootfs / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/sbin/nologin\n"
        "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
    )
    (etc / "group").write_text("root:x:0:\nnonroot:x:65532:\n")
    (rootfs / "tmp").mkdir(exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    (rootfs / "home" / "nonroot").mkdir(parents=True, exist_ok=True)
    os.chown(rootfs / "home" / "nonroot", 65532, 65532)


def pause_image(binaries: NodeBinaries) -> Image:
    return _binary_image(
        "pause",
        PAUSE_IMAGE,
        {"/pause": binaries.pause},
        oci.ImageConfig(entrypoint=["/pause"], user="65535:65535"),
    )


def cloudnativepg_image(binaries: NodeBinaries) -> Image:
    """CloudNativePG's image as its Dockerfile lays it out: the manager at
    /operator/manager_<arch> (the instance pods' bootstrap copies it from there) and /manager
    pointing at it; its licence."""
    source = module_source("github.com/cloudnative-pg/cloudnative-pg", CLOUDNATIVEPG_VERSION)
    return _binary_image(
        "cloudnative-pg",
        CLOUDNATIVEPG_IMAGE,
        {
            "/operator/manager_amd64": binaries.cloudnativepg_manager,
            "/licenses/LICENSE": source / "LICENSE",
        },
        oci.ImageConfig(entrypoint=["/manager"], user="65532:65532", working_dir="/"),
    )


def barman_cloud_plugin_image(binaries: NodeBinaries) -> Image:
    """The plugin's operator: its manager alone, as upstream's image (Dockerfile.plugin)."""
    source = module_source(
        "github.com/cloudnative-pg/plugin-barman-cloud", BARMAN_CLOUD_PLUGIN_VERSION
    )
    return _binary_image(
        "plugin-barman-cloud",
        BARMAN_CLOUD_PLUGIN_IMAGE,
        {"/manager": binaries.barman_cloud_plugin, "/licenses/LICENSE": source / "LICENSE"},
        oci.ImageConfig(entrypoint=["/manager"], user="65532:65532", working_dir="/"),
    )


def barman_cloud_sidecar_image(binaries: NodeBinaries) -> Image:
    """The sidecar the plugin injects into instance pods (and recovery jobs): the same manager
    beside Debian's barman-cli-cloud, as upstream's Dockerfile.sidecar lays it out (upstream
    installs barman from PyPI on a distroless Python)."""
    key = hashlib.sha256(
        f"{debian.BARMAN_SIDECAR.key()}-{_file_hash(binaries.barman_cloud_plugin)}".encode()
    ).hexdigest()[:16]
    archive = _cached("barman-sidecar", key)
    if archive.is_file():
        return Image(BARMAN_CLOUD_SIDECAR_IMAGE, archive)
    images_dir().mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".barman-sidecar-", dir=images_dir()))
    try:
        rootfs = scratch / "rootfs"
        # cp -a: owners, device nodes and links as mmdebstrap made them.
        subprocess.run(["cp", "-a", str(_rootfs(debian.BARMAN_SIDECAR)), str(rootfs)], check=True)
        shutil.copyfile(binaries.barman_cloud_plugin, rootfs / "manager")
        (rootfs / "manager").chmod(0o755)
        config = oci.ImageConfig(
            entrypoint=["/manager"], user=f"{debian.POSTGRES_UID}:{debian.POSTGRES_UID}"
        )
        oci.archive_from_rootfs(rootfs, config, [BARMAN_CLOUD_SIDECAR_IMAGE], archive)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _replace_older("barman-sidecar", archive)
    return Image(BARMAN_CLOUD_SIDECAR_IMAGE, archive)


def _rootfs(recipe: debian.Recipe) -> Path:
    """A recipe's root file system folder, built once (the Containerfile's base)."""
    folder = images_dir() / "rootfs" / f"{recipe.name}-{recipe.key()}"
    if (folder / "etc" / "os-release").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{recipe.name}-", dir=folder.parent))
    try:
        # mmdebstrap wants to create the folder itself, or find it empty.
        debian.mmdebstrap(recipe, scratch / "rootfs")
        for old in folder.parent.glob(f"{recipe.name}-*"):
            shutil.rmtree(old, ignore_errors=True)
        (scratch / "rootfs").rename(folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder


def postgres_image() -> Image:
    recipe = debian.POSTGRES
    archive = _cached("postgresql", recipe.key())
    if archive.is_file():
        return Image(POSTGRES_IMAGE, archive)
    images_dir().mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".postgresql-", dir=images_dir()))
    try:
        layer = scratch / "layer.tar"
        debian.mmdebstrap(recipe, layer)
        major = debian.POSTGRES_MAJOR
        config = oci.ImageConfig(
            env={"PATH": f"/usr/lib/postgresql/{major}/bin:{oci.DEFAULT_PATH}", "LANG": "C.UTF-8"},
            cmd=["postgres"],
            user=str(debian.POSTGRES_UID),
            labels={
                "org.opencontainers.image.title": f"PostgreSQL {major} (Debian {debian.SUITE})",
                "org.opencontainers.image.description": "Built by vauban dev for the real node",
            },
        )
        oci.write_archive(layer, config, [POSTGRES_IMAGE], archive)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _replace_older("postgresql", archive)
    return Image(POSTGRES_IMAGE, archive)


def python_base() -> tuple[Path, oci.ImageConfig, str]:
    recipe = debian.PYTHON_BASE
    config = oci.ImageConfig(env={"PATH": oci.DEFAULT_PATH, "LANG": "C.UTF-8"}, cmd=["python3"])
    return _rootfs(recipe), config, recipe.key()


AGENT_BUILD_ARGS = {
    "PYTHON_IMAGE": PYTHON_BASE,
    # No PGDG here: Debian's own PostgreSQL client, of the major the instances run.
    "PGDG_URL": "",
    "POSTGRES_MAJORS": debian.POSTGRES_MAJOR,
}


def vauban_images(source: Path = ROOT) -> tuple[Image, Image]:
    """Vauban's operator and agent images from the checkout at `source`, by its Containerfile."""
    builder = ContainerfileBuilder(
        source / "Containerfile",
        source,
        cache=images_dir() / "containerfile",
        bases={PYTHON_BASE: python_base},
        build_args=AGENT_BUILD_ARGS,
    )
    built = []
    for target, repository in (("operator", OPERATOR_REPOSITORY), ("agent", AGENT_REPOSITORY)):
        stage = builder.build(target)
        name = f"{repository}:{__version__}-dev.{stage.key[:12]}"
        archive = _cached(f"vauban-{target}", stage.key)
        if not archive.is_file():
            oci.archive_from_rootfs(stage.rootfs, stage.config, [name], archive)
            _replace_older(f"vauban-{target}", archive)
        built.append(Image(name, archive))
    return built[0], built[1]


def ensure_images(source: Path = ROOT) -> Images:
    """Every image of the real node, built if the cache lacks it."""
    started = time.monotonic()
    binaries = ensure_node_binaries()
    operator, agent = vauban_images(source)
    images = Images(
        pause=pause_image(binaries),
        postgres=postgres_image(),
        cloudnativepg=cloudnativepg_image(binaries),
        barman_cloud_plugin=barman_cloud_plugin_image(binaries),
        barman_cloud_sidecar=barman_cloud_sidecar_image(binaries),
        operator=operator,
        agent=agent,
    )
    _collect_blobs(images)
    logger.info("images ready in %.0f s", time.monotonic() - started)
    return images


def blobs_dir() -> Path:
    return images_dir() / "blobs"


def layer_blobs(archive: Path) -> list[Path]:
    """The archive's layers as files of the blob store (extracted from it the first time):
    each node's containerd gets them as hard links, not as copies."""
    store = blobs_dir()
    with tarfile.open(archive) as tar:

        def member(name: str) -> IO[bytes]:
            file = tar.extractfile(name)
            if file is None:
                raise RuntimeError(f"{archive} has no {name}")
            return file

        def blob(digest: str) -> IO[bytes]:
            return member(f"blobs/sha256/{digest.removeprefix('sha256:')}")

        index = json.load(member("index.json"))
        digests = sorted(
            {
                layer["digest"].removeprefix("sha256:")
                for entry in index["manifests"]
                for layer in json.load(blob(entry["digest"]))["layers"]
            }
        )
        paths = []
        for digest in digests:
            path = store / digest
            if not path.is_file():
                store.mkdir(parents=True, exist_ok=True)
                fd, name = tempfile.mkstemp(prefix=f".{digest[:12]}-", dir=store)
                partial = Path(name)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(blob(digest), out, 1 << 20)
                partial.chmod(0o444)
                partial.replace(path)
            paths.append(path)
    return paths


def index_archive(archive: Path) -> Path:
    """The archive without its layers (index, manifests, configs), made once: what each node
    imports after its layers are in place."""
    small = images_dir() / "index" / archive.name
    if small.is_file():
        return small
    layers = {f"blobs/sha256/{blob.name}" for blob in layer_blobs(archive)}
    small.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{archive.name}-", dir=small.parent)
    os.close(fd)
    partial = Path(name)
    try:
        with tarfile.open(archive) as full, tarfile.open(partial, "w") as out:
            for member in full.getmembers():
                if member.name not in layers:
                    out.addfile(member, full.extractfile(member) if member.isfile() else None)
        partial.replace(small)
    finally:
        partial.unlink(missing_ok=True)
    return small


def _collect_blobs(images: Images) -> None:
    """Drop the blob store's layers and the layer-less archives no cached image has any more."""
    keep = {path.name for image in images.all() for path in layer_blobs(image.archive)}
    for blob in blobs_dir().iterdir():
        if blob.name not in keep:
            blob.unlink(missing_ok=True)
    archives = {index_archive(image.archive).name for image in images.all()}
    for small in (images_dir() / "index").iterdir():
        if small.name not in archives:
            small.unlink(missing_ok=True)


def import_images(ctr: list[str], images: list[Image], content: Path) -> None:
    """Load images into a containerd (`ctr` with its address), namespace k8s.io, without
    copying gigabytes through it for every node: each layer is hard-linked into its content
    store (`content`, its io.containerd.content.v1.content folder) and recorded there (an
    ingest that finds the blob already present), after the archive's index, manifests and
    configs are imported. Not unpacked: containerd's CRI plugin unpacks an image when a
    container first needs it, so a node pays only for the images its pods run."""
    target = content / "blobs" / "sha256"
    target.mkdir(parents=True, exist_ok=True)

    def run(*args: str, what: str, stdin: Path | None = None) -> None:
        with stdin.open("rb") if stdin else contextlib.nullcontext() as source:
            result = subprocess.run(
                [*ctr, "-n", "k8s.io", *args],
                stdin=source or subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )
        if result.returncode != 0:
            error = result.stderr.decode(errors="replace")[-2000:]
            raise RuntimeError(f"{what} failed:\n{error}")

    for image in images:
        # The manifests first: they reference the layers (containerd's garbage-collection
        # labels), so a layer recorded next is never collected as unreferenced meanwhile.
        run(
            "images",
            "import",
            "--no-unpack",
            str(index_archive(image.archive)),
            what=f"ctr import of {image.name}",
        )
        for blob in layer_blobs(image.archive):
            linked = target / blob.name
            if not linked.exists():
                try:
                    os.link(blob, linked)
                except OSError:  # another file system: a copy, as containerd would make
                    shutil.copyfile(blob, linked)
            # containerd finds the blob in place and only records it (ctr seeks its input to
            # the end and commits); the blob is its input in case it did not.
            run(
                "content",
                "ingest",
                f"--expected-size={blob.stat().st_size}",
                f"--expected-digest=sha256:{blob.name}",
                f"vauban-layer-{blob.name}",
                what=f"recording layer {blob.name[:12]} of {image.name}",
                stdin=blob,
            )
