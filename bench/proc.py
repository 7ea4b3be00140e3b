"""Reading what a process costs, for the benchmarks: CPU from /proc, and py-spy's samples
summed by function."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and of its children, ended (cutime, cstime: a PostgreSQL server's
    backends, once reaped) or alive (its background processes, sessions still open)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    total = sum(int(fields[k]) for k in (11, 12, 13, 14)) / CLOCK_TICKS
    for child in children:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += cpu_seconds(int(child))
    return total


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy samples a Python process, every thread, until `stop_profiler` (collapsed
    stacks). Sampling costs the process a little: profiled runs say so in their results."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "50",
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_profiler(
    profiler: subprocess.Popen[bytes], out: Path, interesting: Sequence[str]
) -> dict[str, Any] | None:
    """The functions where the process spent its samples: by own time (the leaf), and
    including callees for the code whose path holds one of `interesting`."""
    profiler.send_signal(signal.SIGINT)
    try:
        profiler.wait(timeout=60)
    except subprocess.TimeoutExpired:
        profiler.kill()
    if not out.exists():
        return None
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in out.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame(f) for f in stack.split(";") if f]
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count

    def top(counts: dict[str, int], k: int) -> list[tuple[str, float]]:
        return [
            (name, round(100 * c / total, 1))
            for name, c in sorted(counts.items(), key=lambda x: -x[1])[:k]
        ]

    return {
        "samples": total,
        "own_percent": top(own, 20),
        "inclusive_percent": top(
            {f: c for f, c in inclusive.items() if any(m in f for m in interesting)}, 30
        ),
        "file": str(out),
    }


def _frame(text: str) -> str:
    """`func (path/to/site-packages/pkg/mod.py:12)` -> `func (pkg/mod.py)`."""
    name, _, where = text.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "operator/", "lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})"
