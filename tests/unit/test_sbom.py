"""CycloneDX SBOMs of image archives: what the dpkg database and the dist-info folders of the
image say, in a document the CycloneDX schema accepts."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from vauban.devcluster import oci
from vauban.devcluster.sbom import image_sbom

STATUS = """Package: libc6
Status: install ok installed
Architecture: amd64
Version: 2.41-12

Package: removed-one
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: postgresql-client-17
Status: install ok installed
Architecture: amd64
Version: 17.6-0+deb13u1
"""


def _layer(path: Path, files: dict[str, str]) -> None:
    with tarfile.open(path, "w") as layer:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            layer.addfile(info, io.BytesIO(data))


def test_an_image_archive_becomes_a_valid_cyclonedx_bom(tmp_path: Path) -> None:
    _layer(
        tmp_path / "layer.tar",
        {
            "./var/lib/dpkg/status": STATUS,
            "./etc/os-release": "ID=debian\nVERSION_CODENAME=trixie\n",
            "./opt/vauban/lib/python3.13/site-packages/psycopg-3.3.9.dist-info/METADATA": (
                "Metadata-Version: 2.1\nName: psycopg\nVersion: 3.3.9\n"
            ),
            "./opt/vauban/lib/python3.13/site-packages/Kopf-1.45.0.dist-info/METADATA": (
                "Metadata-Version: 2.1\nName: kopf\nVersion: 1.45.0\n"
            ),
        },
    )
    archive = tmp_path / "image.tar"
    name = "ghcr.io/vauban-dev/vauban-agent:0.1.0"
    oci.write_archive(tmp_path / "layer.tar", oci.ImageConfig(), [name], archive)

    document = image_sbom(archive, name)
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(document) is None
    bom = json.loads(document)
    assert bom["metadata"]["component"] == {
        "bom-ref": name,
        "name": "ghcr.io/vauban-dev/vauban-agent",
        "type": "container",
        "version": "0.1.0",
    }
    purls = {c["purl"] for c in bom["components"]}
    assert purls == {
        "pkg:deb/debian/libc6@2.41-12?arch=amd64&distro=debian-trixie",
        "pkg:deb/debian/postgresql-client-17@17.6-0%2Bdeb13u1?arch=amd64&distro=debian-trixie",
        "pkg:pypi/psycopg@3.3.9",
        "pkg:pypi/kopf@1.45.0",
    }
    # The image depends on every component: the dependency graph is complete.
    (root,) = [d for d in bom["dependencies"] if d["ref"] == name]
    assert {d for d in root["dependsOn"]} == purls
