"""What the local test servers share about their processes: a free loopback port, children
that die with the process that started them, stopping a whole process group, and the
context-manager protocol around `start()`."""

from __future__ import annotations

import abc
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Self

PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (at the time of the call)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accepts_connections(port: int, *, timeout: float, host: str = "127.0.0.1") -> bool:
    """Whether a TCP connection to `host:port` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def die_with(parent: int) -> Callable[[], None] | None:
    """A `preexec_fn` for the children: if the process that started them dies (a killed test
    run), the kernel kills the child too, so none is left running. Linux only; elsewhere
    `stop()` alone cleans up.

    SIGKILL, not SIGTERM: all components of a control plane get the signal at once, and a
    kube-apiserver whose etcd is already gone hangs in its graceful shutdown instead of exiting.

    The kernel ties the signal to the *thread* that forked, so a server must be started from a
    thread that outlives it (the main thread, in the CLI and under pytest)."""
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        # The parent may have died between fork and prctl: then nobody would send the signal.
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def stop_process_group(
    process: subprocess.Popen[bytes] | None,
    timeout: float,
    *,
    first: signal.Signals = signal.SIGTERM,
) -> None:
    """Send `first` to the process group led by `process` (started with
    `start_new_session=True`), wait up to `timeout` seconds, then SIGKILL the group and wait.
    Nothing to do when the process is not running."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, first)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class Managed(abc.ABC):
    """Started by `start()`, cleaned up by `close()`. As a context manager: `close()` on exit,
    and also when `start()` fails."""

    @abc.abstractmethod
    def start(self) -> object: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
