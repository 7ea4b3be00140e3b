"""The fleet benchmark's chart: time-to-ready curves (share of objects Ready against seconds
since the burst began), one panel per N, Vauban against provider-sql, with the raw limits
as vertical lines; a last panel for managed clusters. Needs matplotlib
(bench/requirements.txt)."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run whose time to all-Ready is the median one (its curve is the one drawn)."""
    timed = [r for r in runs if r.get("time_to_all_ready_seconds") and r.get("curve")]
    if not timed:
        return None
    timed.sort(key=lambda r: r["time_to_all_ready_seconds"])
    return timed[(len(timed) - 1) // 2]


def _draw(ax: Any, run: dict[str, Any] | None, label: str, color: str) -> None:
    if run is None:
        return
    xs = [p[0] for p in run["curve"]]
    ys = [100 * p[1] for p in run["curve"]]
    ax.step(
        xs,
        ys,
        where="post",
        color=color,
        label=f"{label} ({run['time_to_all_ready_seconds']:.0f} s)",
    )


def _draw_rss(ax: Any, rss: list[tuple[str, dict[str, Any]]]) -> None:
    """RSS against Ready objects, one line per N: its slope is what each live object costs."""
    colors = ["tab:blue", "tab:green", "tab:purple", "tab:red", "tab:brown"]
    for (size, run), color in zip(rss, colors, strict=False):
        points = run["rss_over_ready"]["points"]
        ax.plot([p[1] for p in points], [p[2] for p in points], color=color, label=f"N={size}")
    ax.set_title("Operator RSS during the burst")
    ax.set_xlabel("ManagedDatabases Ready")
    ax.set_ylabel("RSS (MiB)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)


def draw(results: dict[str, Any], out: Path) -> Path:
    sizes = sorted(results["provisioning"], key=int)
    managed = sorted(results.get("managed") or {}, key=int)
    rss = [
        (size, run)
        for size in sizes
        if (run := _median_run(results["provisioning"][size].get("vauban", [])))
        and (run.get("rss_over_ready") or {}).get("points")
    ]
    panels = len(sizes) + (1 if managed else 0) + (1 if rss else 0)
    cols = min(2, max(panels, 1))
    rows = -(-max(panels, 1) // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.4 * rows), squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes[panels:]:
        ax.set_visible(False)
    for ax, size in zip(axes, sizes, strict=False):
        runs = results["provisioning"][size]
        _draw(ax, _median_run(runs.get("vauban", [])), "Vauban", "tab:blue")
        _draw(ax, _median_run(runs.get("peer", [])), "provider-sql", "tab:orange")
        for key, label, style in (("raw_sql", "raw SQL", ":"), ("raw_api", "raw API", "--")):
            values = [r["seconds"] for r in runs.get(key, []) if r.get("seconds")]
            if values:
                m = statistics.median(values)
                ax.axvline(m, color="grey", linestyle=style, label=f"{label} ({m:.1f} s)")
        ax.set_title(f"{size} ManagedDatabases (external)")
        ax.set_xlabel("seconds since the burst began")
        ax.set_ylabel("% Ready")
        ax.set_ylim(0, 102)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    if managed:
        ax = axes[len(sizes)]
        colors = ["tab:green", "tab:purple", "tab:red", "tab:brown"]
        for size, color in zip(managed, colors, strict=False):
            _draw(ax, _median_run(results["managed"][size]), f"{size} clusters", color)
        ax.set_title("ManagedClusters (managed, CloudNativePG)")
        ax.set_xlabel("seconds since the burst began")
        ax.set_ylabel("% Ready")
        ax.set_ylim(0, 102)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    if rss:
        _draw_rss(axes[len(sizes) + (1 if managed else 0)], rss)
    machine = results.get("machine", {})
    fig.suptitle(
        f"Time to Ready — Vauban {machine.get('vauban', '')} ({machine.get('vauban_commit', '')}),"
        f" {machine.get('nproc', '?')} cores; median run of {results['knobs']['repeats']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/fleet.json")
    print(draw(json.loads(source.read_text()), source.with_suffix(".png")))
