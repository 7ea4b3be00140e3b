"""CycloneDX SBOMs of container images, read from their OCI archives: no registry, no
container engine, no scanner. An image's Debian packages come from its dpkg database, its
Python distributions from the `*.dist-info` folders of its file system; the BOM is built and
serialised by the CycloneDX project's own library.

What a layer deletes (whiteouts) is honoured for the dpkg database only (the last layer's
copy wins); the images built here have one layer.
"""

from __future__ import annotations

import email.parser
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

DPKG_STATUS = "var/lib/dpkg/status"
_DIST_INFO = re.compile(r"(?:^|/)(?:site|dist)-packages/[^/]+\.dist-info/METADATA$")


@dataclass(frozen=True)
class Package:
    ecosystem: str
    """`deb` or `pypi`: the PURL type."""
    name: str
    version: str
    arch: str | None = None

    def purl(self, distro: str | None) -> PackageURL:
        if self.ecosystem == "deb":
            qualifiers = {"arch": self.arch or "all", **({"distro": distro} if distro else {})}
            return PackageURL("deb", "debian", self.name, self.version, qualifiers)
        return PackageURL("pypi", None, self.name.lower().replace("_", "-"), self.version)


def _layers(archive: tarfile.TarFile) -> Iterator[str]:
    """Member names of the image's layers, bottom first (the first manifest of index.json,
    following a nested index: `docker save` and `podman save --format oci-archive` write one)."""

    def blob(digest: str) -> dict[str, Any]:
        member = archive.extractfile(f"blobs/{digest.replace(':', '/')}")
        assert member is not None
        loaded: dict[str, Any] = json.load(member)
        return loaded

    index = archive.extractfile("index.json")
    if index is None:
        raise ValueError("not an OCI image archive: no index.json")
    document: dict[str, Any] = json.load(index)
    while "manifests" in document:
        document = blob(document["manifests"][0]["digest"])
    for layer in document["layers"]:
        yield "blobs/" + layer["digest"].replace(":", "/")


def _dpkg(status: str) -> list[Package]:
    """Installed packages of a dpkg status file (paragraphs of `Field: value`)."""
    found = []
    for paragraph in status.split("\n\n"):
        fields = email.parser.HeaderParser().parsestr(paragraph)
        if fields.get("Package") and "installed" in (fields.get("Status") or "").split():
            found.append(
                Package("deb", fields["Package"], fields["Version"], fields.get("Architecture"))
            )
    return found


def _os_release(text: str) -> str | None:
    values = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")
    )
    version = values.get("VERSION_CODENAME", "").strip('"')
    return f"debian-{version}" if values.get("ID", "").strip('"') == "debian" and version else None


def read_packages(archive_path: Path) -> tuple[list[Package], str | None]:
    """The packages in the image of an OCI archive, and its Debian release (PURL's distro)."""
    status, os_release = "", None
    python: dict[str, Package] = {}
    with tarfile.open(archive_path) as archive:
        for layer_name in _layers(archive):
            member = archive.extractfile(layer_name)
            assert member is not None
            with tarfile.open(fileobj=member, mode="r|*") as layer:
                for entry in layer:
                    path = str(PurePosixPath(entry.name.removeprefix("./")))
                    if not entry.isfile():
                        continue
                    if path == DPKG_STATUS:
                        status = _read(layer.extractfile(entry))
                    elif path in ("etc/os-release", "usr/lib/os-release"):
                        os_release = _os_release(_read(layer.extractfile(entry))) or os_release
                    elif _DIST_INFO.search(path):
                        meta = email.parser.HeaderParser().parsestr(_read(layer.extractfile(entry)))
                        if meta.get("Name") and meta.get("Version"):
                            python[path] = Package("pypi", meta["Name"], meta["Version"])
    return [*_dpkg(status), *sorted(set(python.values()), key=lambda p: p.name.lower())], os_release


def _read(member: IO[bytes] | None) -> str:
    assert member is not None
    return member.read().decode("utf-8", errors="replace")


def image_sbom(archive_path: Path, name: str) -> str:
    """The CycloneDX 1.6 JSON SBOM of the image in `archive_path`, named `name`."""
    packages, distro = read_packages(archive_path)
    repository, _, version = name.rpartition(":")
    bom = Bom()
    root = Component(
        name=repository or name,
        version=version or None,
        type=ComponentType.CONTAINER,
        bom_ref=name,
    )
    bom.metadata.component = root
    components = []
    for package in packages:
        purl = package.purl(distro)
        components.append(
            Component(
                name=package.name,
                version=package.version,
                type=ComponentType.LIBRARY
                if package.ecosystem == "pypi"
                else ComponentType.APPLICATION,
                purl=purl,
                bom_ref=purl.to_string(),
            )
        )
    for component in components:
        bom.components.add(component)
    bom.register_dependency(root, components)
    return JsonV1Dot6(bom).output_as_string(indent=2)
