"""A TCP forwarder from this machine's loopback into the real node's network namespace:
`kubectl`, the tests and `make run` reach the apiserver (and the S3 server) at 127.0.0.1:PORT
while they listen on an address that exists only inside the namespace.

It listens on 127.0.0.1 in the namespace it starts in, then enters the target namespace
(`setns`), where every connection it opens is made: one process holds a socket on each side,
and no route between the namespaces exists.

    python -m vauban.devcluster.forward NETNS_PATH TARGET_HOST:PORT [LISTEN_PORT]

prints the port it listens on, then forwards until killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
import subprocess
import sys
from pathlib import Path

CLONE_NEWNET = 0x40000000


def enter_netns(path: str) -> None:
    """Move this (single-threaded) process into the network namespace at `path`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({path}): {os.strerror(errno)}")
    finally:
        os.close(fd)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()


async def _serve(listener: socket.socket, host: str, port: int) -> None:
    async def handle(
        client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            _pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer)
        )

    server = await asyncio.start_server(handle, sock=listener)
    async with server:
        await server.serve_forever()


def spawn(netns: Path, target: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start a forwarder (dying with this process) to `target` (host:port) inside `netns`;
    returns it and the 127.0.0.1 port it listens on."""
    from vauban.devcluster.process import die_with

    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "vauban.devcluster.forward", str(netns), target],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
            preexec_fn=die_with(os.getpid()),
        )
    assert process.stdout is not None
    line = process.stdout.readline().decode().strip()
    process.stdout.close()
    if not line.isdigit():
        process.kill()
        process.wait()
        raise RuntimeError(f"the forwarder to {target} did not start: {log.read_text()[-2000:]}")
    return process, int(line)


def main(argv: list[str]) -> int:
    netns, target = argv[0], argv[1]
    listen_port = int(argv[2]) if len(argv) > 2 else 0
    host, _, port = target.rpartition(":")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", listen_port))
    listener.listen(128)
    enter_netns(netns)
    print(listener.getsockname()[1], flush=True)
    asyncio.run(_serve(listener, host, int(port)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
