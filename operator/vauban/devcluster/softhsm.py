"""A SoftHSM2 token for tests: a PKCS#11 module on this machine, with its tokens in a
temporary folder of their own, in place of the HSM of a sovereign provider.

SoftHSM2 (OpenDNSSEC, BSD-2-Clause) is Debian's `softhsm2` package, which `.ci/run`
installs: a shared library speaking PKCS#11 (`libsofthsm2.so`) and `softhsm2-util`, which
initialises tokens. It reads its configuration from the file named by `SOFTHSM2_CONF`; this
helper writes one whose `directories.tokendir` is private to it, so the machine's own tokens
(`/var/lib/softhsm/tokens`) are never read or touched, and `close()` removes everything.

SoftHSM2 reads `SOFTHSM2_CONF` and its tokens when the module is initialised (C_Initialize),
once per process: a process must set `environ` before it first loads the module, and tokens
initialised later are not seen by a process that already loaded it. Hence every token is
initialised in `start()`, from the labels given up front.

Each token gets a random user PIN and security-officer PIN, written to `pin_file(label)`
(mode 0600), the way the operator reads its PIN from a mounted Secret. softhsm2-util takes
them on its command line: visible to `ps` on this machine for the instant it runs, acceptable
for throwaway test tokens and never how a real token is initialised.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from vauban.devcluster.process import Managed

# Where distributions install the module: Debian (both paths), Fedora/RHEL, Homebrew, source.
MODULE_CANDIDATES = (
    Path("/usr/lib/softhsm/libsofthsm2.so"),
    Path("/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"),
    Path("/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so"),
    Path("/usr/lib64/pkcs11/libsofthsm2.so"),
    Path("/opt/homebrew/lib/softhsm/libsofthsm2.so"),
    Path("/usr/local/lib/softhsm/libsofthsm2.so"),
)


class SoftHsmUnavailable(RuntimeError):
    """SoftHSM2 is not installed, or a token could not be initialised."""


def find_module() -> Path:
    """The SoftHSM2 PKCS#11 module of this machine."""
    for candidate in MODULE_CANDIDATES:
        if candidate.is_file():
            return candidate
    raise SoftHsmUnavailable(
        "SoftHSM2's PKCS#11 module (libsofthsm2.so) was not found: install Debian's softhsm2 "
        "package (apt-get install softhsm2; .ci/run does)"
    )


class SoftHsm(Managed):
    """SoftHSM2 tokens labelled `labels`, in a temporary folder. Start with `start()` or as a
    context manager; then `module`, `environ` and `pin_file(label)` are what a PKCS#11 client
    needs."""

    def __init__(self, labels: Iterable[str] = ("vauban",)) -> None:
        self.labels = tuple(labels)
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ValueError("give one or more distinct token labels")
        self.module = find_module()
        util = shutil.which("softhsm2-util")
        if util is None:
            raise SoftHsmUnavailable(
                "softhsm2-util was not found: install Debian's softhsm2 package"
            )
        self.util = util
        self.root = Path(tempfile.mkdtemp(prefix="vauban-softhsm-"))
        self.conf = self.root / "softhsm2.conf"
        self.tokens = self.root / "tokens"
        self._pins: dict[str, str] = {}

    @property
    def environ(self) -> dict[str, str]:
        """The environment variable SoftHSM2 reads its configuration from."""
        return {"SOFTHSM2_CONF": str(self.conf)}

    def pin_file(self, label: str) -> Path:
        """The file holding the user PIN of token `label`, no newline."""
        return self.root / "pins" / f"{label}.pin"

    def pin(self, label: str) -> str:
        """The user PIN of token `label` (for tests that check it never leaks)."""
        return self._pins[label]

    def start(self) -> None:
        self.tokens.mkdir(mode=0o700)
        (self.root / "pins").mkdir(mode=0o700)
        self.conf.write_text(
            f"directories.tokendir = {self.tokens}\n"
            "objectstore.backend = file\n"
            "log.level = ERROR\n"
            "slots.removable = false\n"
            "slots.mechanisms = ALL\n",
            encoding="utf-8",
        )
        env = {**os.environ, **self.environ}
        for label in self.labels:
            pin, so_pin = secrets.token_hex(8), secrets.token_hex(8)
            command = [self.util, "--init-token", "--free", "--label", label]
            command += ["--pin", pin, "--so-pin", so_pin]
            result = subprocess.run(
                command,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                output = (result.stdout + result.stderr).replace(pin, "***")
                raise SoftHsmUnavailable(
                    f"softhsm2-util could not initialise token {label!r}: "
                    f"{output.replace(so_pin, '***').strip()}"
                )
            self._pins[label] = pin
            path = self.pin_file(label)
            path.touch(mode=0o600)
            path.write_text(pin, encoding="utf-8")

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
