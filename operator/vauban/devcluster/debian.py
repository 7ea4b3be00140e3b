"""Root file systems from Debian packages (mmdebstrap), for the real node's images: no
registry, no container engine, only the Debian archive.

Debian 13 (trixie) is the release: it serves PostgreSQL 17 (the sample clusters' version),
barman-cli-cloud 3.13 (CloudNativePG's WAL archiving) and Python 3.13. Debian 12 (bookworm)
serves PostgreSQL 15 only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

SUITE = "trixie"
MIRRORS = (
    f"deb http://deb.debian.org/debian {SUITE} main",
    f"deb http://deb.debian.org/debian {SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {SUITE}-security main",
)
# What no image here needs: documentation, manual pages, translations.
SLIM = (
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
    "/usr/share/lintian/*",
)


class DebianError(RuntimeError):
    """mmdebstrap failed; the message carries the end of its output."""


@dataclass(frozen=True)
class Recipe:
    """One mmdebstrap run: its result is cached under the hash of this recipe."""

    name: str
    packages: tuple[str, ...]
    exclude: tuple[str, ...] = SLIM
    essential_hooks: tuple[str, ...] = ()
    customize_hooks: tuple[str, ...] = ()
    variant: str = "minbase"
    suite: str = SUITE
    mirrors: tuple[str, ...] = MIRRORS
    notes: dict[str, str] = field(default_factory=dict)

    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def mmdebstrap(recipe: Recipe, target: Path) -> None:
    """Build `recipe` into `target`: a folder, or a tarball when it ends in `.tar`."""
    binary = shutil.which("mmdebstrap")
    if binary is None:
        raise DebianError("mmdebstrap is needed to build images (apt-get install mmdebstrap)")
    argv = [
        binary,
        f"--variant={recipe.variant}",
        "--mode=root",
        "--quiet",
        f"--include={','.join(recipe.packages)}",
        *(f"--dpkgopt=path-exclude={pattern}" for pattern in recipe.exclude),
        *(f"--essential-hook={hook}" for hook in recipe.essential_hooks),
        *(f"--customize-hook={hook}" for hook in recipe.customize_hooks),
        recipe.suite,
        str(target),
        *recipe.mirrors,
    ]
    started = time.monotonic()
    logger.info("building the %s root file system from Debian %s", recipe.name, recipe.suite)
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise DebianError(f"mmdebstrap of {recipe.name} failed:\n{tail}")
    logger.info("built the %s root file system in %.0f s", recipe.name, time.monotonic() - started)


# -- the recipes ------------------------------------------------------------------------------

POSTGRES_MAJOR = "17"
POSTGRES_UID = 26
"""CloudNativePG runs PostgreSQL as uid and gid 26 (its `postgresUID`/`postgresGID`)."""

POSTGRES = Recipe(
    name="postgresql",
    packages=(
        f"postgresql-{POSTGRES_MAJOR}",
        # Audit logging (spec.postgresql.sharedPreloadLibraries: [pgaudit]), which the hds and
        # secnumcloud profiles require.
        f"postgresql-{POSTGRES_MAJOR}-pgaudit",
        # CloudNativePG's WAL archiving and base backups to S3 (barman-cloud-*), with boto3.
        "barman-cli-cloud",
        "python3-boto3",
        "ca-certificates",
    ),
    exclude=(
        *SLIM,
        # JIT (LLVM, about 100 MB): PostgreSQL runs without it when its provider is absent.
        "/usr/lib/x86_64-linux-gnu/libLLVM*",
        "/usr/lib/x86_64-linux-gnu/libz3.so*",
        f"/usr/lib/postgresql/{POSTGRES_MAJOR}/lib/llvmjit*",
        f"/usr/lib/postgresql/{POSTGRES_MAJOR}/lib/bitcode/*",
    ),
    essential_hooks=(
        # The postgres user with CloudNativePG's ids, before postgresql-common would make one;
        # and no "main" cluster made at install time (CloudNativePG runs initdb itself).
        f'echo "postgres:x:{POSTGRES_UID}:{POSTGRES_UID}:PostgreSQL administrator:'
        f'/var/lib/postgresql:/bin/bash" >> "$1/etc/passwd"',
        f'echo "postgres:x:{POSTGRES_UID}:" >> "$1/etc/group"',
        'mkdir -p "$1/etc/postgresql-common/createcluster.d"',
        'echo "create_main_cluster = false" > '
        '"$1/etc/postgresql-common/createcluster.d/vauban.conf"',
    ),
    customize_hooks=(
        f'test "$(chroot "$1" id -u postgres)" = {POSTGRES_UID}',
        f'chroot "$1" /usr/lib/postgresql/{POSTGRES_MAJOR}/bin/postgres --version',
        'chroot "$1" barman-cloud-wal-archive --version',
        f'test -e "$1/usr/lib/postgresql/{POSTGRES_MAJOR}/lib/pgaudit.so"',
        # CloudNativePG's instances write their sockets and lock files here.
        'install -d -o 26 -g 26 -m 2775 "$1/var/run/postgresql"',
    ),
)

PYTHON_BASE = Recipe(
    name="python",
    packages=("python3", "python3-venv", "python-is-python3", "ca-certificates"),
    customize_hooks=(
        # What python:3-slim images are, on Debian's own Python: pip and setuptools installed
        # with pip (so a build stage may uninstall them), no "externally managed" marker.
        'rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED',
        'chroot "$1" sh -c \'pip=$(echo /usr/share/python-wheels/pip-*.whl); '
        'python3 "$pip/pip" install --quiet --no-index --no-cache-dir '
        '--root-user-action=ignore "$pip" /usr/share/python-wheels/setuptools-*.whl\'',
        'chroot "$1" python -m pip --version',
    ),
)

BARMAN_SIDECAR = Recipe(
    name="barman-sidecar",
    packages=(
        # What plugin-barman-cloud's sidecar runs: barman-cloud-wal-archive, -wal-restore,
        # -backup, -restore and friends, with boto3 for S3.
        "barman-cli-cloud",
        "python3-boto3",
        "ca-certificates",
    ),
    essential_hooks=(
        # The sidecar runs as CloudNativePG's postgres user (26), beside PostgreSQL.
        f'echo "postgres:x:{POSTGRES_UID}:{POSTGRES_UID}:PostgreSQL administrator:'
        f'/var/lib/postgresql:/bin/sh" >> "$1/etc/passwd"',
        f'echo "postgres:x:{POSTGRES_UID}:" >> "$1/etc/group"',
    ),
    customize_hooks=('chroot "$1" barman-cloud-wal-archive --version',),
)
