"""`vauban run` under tracemalloc, for BENCH_MEMORY=1: where the operator's memory goes.

Each SIGUSR1 writes a JSON file (BENCH_MEMORY_OUT, numbered) of what Python holds,
grouped by the package that allocated it and by the place in that package's code, so a
burst's growth can be read as the difference of two dumps. Tracing starts after the
imports (dump 0, nearly empty): start-up and the burst are what it compares. Tracing
doubles the interpreter's memory and slows it down: a traced run measures where memory
goes, never how much or how fast.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import tracemalloc
from collections import Counter
from pathlib import Path
from types import FrameType

FRAMES = 10
TOP = 40

_OWN = ("/operator/vauban/", "/site-packages/")


def _place(trace: tracemalloc.Traceback) -> tuple[str, str]:
    """(package, file:line) of the newest frame in Vauban's or a library's code: the
    allocation's cause, not the stdlib helper (json, copy, importlib) that made it."""
    for frame in reversed(trace):  # oldest first: the newest is last
        name = frame.filename
        for marker in _OWN:
            if marker in name:
                tail = name.split(marker, 1)[1]
                package = "vauban" if marker == "/operator/vauban/" else tail.split("/", 1)[0]
                return package, f"{tail}:{frame.lineno}"
    newest = trace[-1]
    return "stdlib", f"{Path(newest.filename).name}:{newest.lineno}"


def by_type() -> Counter[str]:
    """Bytes of the objects the collector tracks (containers), by type, and dicts by their
    first keys: what a thing held per object is (kopf's memories, index entries), where
    `by_place` says only which line parsed it."""
    gc.collect()
    sizes: Counter[str] = Counter()
    for o in gc.get_objects():
        if type(o) is dict:
            kind = f"dict{sorted(map(str, o))[:5]}"
        else:
            kind = f"{type(o).__module__}.{type(o).__qualname__}"
        sizes[kind] += sys.getsizeof(o)
    return sizes


def dump(path: Path) -> None:
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )
    packages: Counter[str] = Counter()
    places: Counter[str] = Counter()
    for stat in snapshot.statistics("traceback"):
        package, place = _place(stat.traceback)
        packages[package] += stat.size
        places[f"{package} {place}"] += stat.size
    path.write_text(
        json.dumps(
            {
                "traced_bytes": sum(packages.values()),
                "by_package": dict(packages.most_common(TOP)),
                "by_place": dict(places.most_common(TOP)),
                "by_type": dict(by_type().most_common(TOP)),
            },
            indent=1,
        )
    )


APIS = ("CoordinationV1Api", "CustomObjectsApi", "VersionApi")
"""The client's API classes the operator uses, which it loads on first use: imported before
tracing starts, as tracing makes their imports take minutes."""


def main() -> None:
    out = os.environ["BENCH_MEMORY_OUT"]
    dumps = iter(range(1, 1000))

    def on_signal(signum: int, frame: FrameType | None) -> None:
        dump(Path(f"{out}.{next(dumps)}.json"))

    from vauban.kube.slim import skip_unused_clients

    skip_unused_clients()  # as `vauban run` does, before anything imports the client
    from kubernetes.aio import client

    import vauban.main  # noqa: F401

    for api in APIS:
        getattr(client, api)
    # Traced from here: the imports' memory is read from RSS (bench/README.md), and what
    # start-up and the burst add is what the dumps compare.
    tracemalloc.start(FRAMES)
    dump(Path(f"{out}.0.json"))
    signal.signal(signal.SIGUSR1, on_signal)
    from vauban.cli import main as cli

    sys.exit(cli(["run"]))


if __name__ == "__main__":
    main()
